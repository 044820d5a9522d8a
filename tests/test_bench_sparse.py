"""The sparse-label benchmark: the derived collection, the hidden-positive counts, resumable rows (pending rows
are shown as such, never invented) and the table's ratios, on tiny hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_readme_commands import benchmark_parser

from benchmarks import bench_sparse as B


@pytest.fixture
def parser(monkeypatch):
    return benchmark_parser("benchmarks.bench_sparse", monkeypatch)


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        out.setdefault(q, {})[d] = int(g)
    return out


def test_derive_keeps_one_positive_per_training_query_and_hides_the_rest(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    info = B.derive("adi", tmp_path / "a", seed=13)
    full = _qrels(data_root / "adi" / "qrels" / "test.tsv")
    train, test = _qrels(tmp_path / "a" / "qrels" / "train.tsv"), _qrels(tmp_path / "a" / "qrels" / "test.tsv")
    hidden = json.loads((tmp_path / "a" / "planted.json").read_text())["hidden_positives"]
    assert not set(train) & set(test) and train and test
    assert all(len(v) == 1 for v in train.values())  # one labelled positive per training query
    assert all(v == {d: g for d, g in full[q].items() if g >= 1} for q, v in test.items())  # all of them
    for q, v in train.items():  # the kept positive and the hidden ones are exactly the query's positives
        hid = {d for hq, d in hidden if hq == q}
        assert set(v) | hid == {d for d, g in full[q].items() if g >= 1} and not set(v) & hid
    assert info["hidden_positives"] == len(hidden) and info["train_queries"] == len(train)
    # the same seed derives the same collection; another seed another split
    B.derive("adi", tmp_path / "b", seed=13)
    assert (tmp_path / "b" / "qrels" / "train.tsv").read_text() == (tmp_path / "a" / "qrels" / "train.tsv").read_text()
    B.derive("adi", tmp_path / "c", seed=14)
    assert (tmp_path / "c" / "qrels" / "train.tsv").read_text() != (tmp_path / "a" / "qrels" / "train.tsv").read_text()


def test_hidden_share_counts_every_negative_and_the_first(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"query_id": "1", "negative_ids": ["a", "b", "c"]},
                                         {"query_id": "2", "negative_ids": ["x", "a"]},
                                         {"query_id": "3", "negative_ids": []}]), path)
    got = B.hidden_share(path, {("1", "b"), ("2", "x"), ("2", "b")})
    assert got == {"rows": 3, "negatives": 5, "hidden_in_negatives": 2, "hidden_share": 0.4,
                   "first_negative_hidden_share": 0.5, "random_fill_negatives": 0, "random_fill_hidden": 0}


def _run_with_draws(folder: Path, **draws: str) -> Path:
    """A mining folder whose candidates.parquet holds query 1's retrieved a (kept) and z (filtered) and the
    documents the fill drew (doc id -> fate)."""
    folder.mkdir()
    rows = [{"query_id": "1", "doc_id": "a", "fate": "kept", "sources": ["bm25"]},
            {"query_id": "1", "doc_id": "z", "fate": "filtered:score_threshold", "sources": ["bm25"]}]
    rows += [{"query_id": "1", "doc_id": d, "fate": f, "sources": ["random"]} for d, f in draws.items()]
    pq.write_table(pa.Table.from_pylist(rows), folder / "candidates.parquet")
    return folder


def test_negatives_drawn_at_random_are_counted_with_the_others_and_apart(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"query_id": "1", "negative_ids": ["a", "b", "c"], "negative_sources": ["bm25", "random", "random"]},
        {"query_id": "2", "negative_ids": ["x", "y"], "negative_sources": ["bm25+dense", "random"]}]), path)
    got = B.hidden_share(path, {("1", "b"), ("2", "x"), ("1", "z")})
    assert got["negatives"] == 5 and got["hidden_in_negatives"] == 2  # a hidden positive drawn at random counts
    assert got["random_fill_negatives"] == 3 and got["random_fill_hidden"] == 1
    run = _run_with_draws(tmp_path / "run", b="kept", q="filtered:score_threshold")
    f = B.filter_stats(run, {("1", "b"), ("1", "z")})
    # the filter's columns are about the retrieved candidates; the draws are counted apart
    assert (f["hidden_candidates"], f["hidden_filtered"], f["other_candidates"], f["other_filtered"]) == (1, 1, 1, 0)
    assert f["fill"] == {"drawn": 2, "negatives": 1, "hidden_negatives": 1, "filtered": 1, "hidden_drawn": 1,
                         "hidden_filtered": 0}
    # a random row: the fill differs per draw, its counts are the mean over the draws
    other = _run_with_draws(tmp_path / "run2", b="filtered:score_threshold", r="kept", t="not_sampled", q="kept")
    both = B.draws_filter_stats([run, other], {("1", "b"), ("1", "z")})
    assert both["hidden_filtered"] == 1 and both["other_candidates"] == 1
    assert both["fill"] == {"drawn": 3.0, "negatives": 1.5, "hidden_negatives": 0.5, "filtered": 1.0,
                            "hidden_drawn": 1.0, "hidden_filtered": 0.5}
    notes = B.fill_notes({"x": {"label": "row x", "filter": both}, "y": {"label": "row y", "filter": f | {"fill": None}}})
    assert notes == ["", "- row x: 3.0 documents drawn at random per draw on average, 1.5 became negatives (0.5 of "
                         "them hidden positives); the judge filtered 1.0 of the draws, 0.5 of the 1.0 hidden "
                         "positives among them."]


def test_rows_not_trained_are_pending_and_only_the_named_rows_train(parser, tmp_path, monkeypatch):
    triples = tmp_path / "t.parquet"
    triples.write_bytes(b"some triples")
    args = parser.parse_args(["--train", "--train-rows", "scifact-random", "--rows-dir", str(tmp_path / "rows")])
    trained = []

    def fake_training(cfg):
        trained.append(cfg.triples)
        return {"model": "m"}

    monkeypatch.setattr("mining_jobs.train.run_training", fake_training)
    monkeypatch.setattr(B, "evaluate_model", lambda model, folder, splits: {
        "test": {"metrics": {"ndcg@10": 0.5}, "per_query": {"ndcg@10": {"q1": 0.5}}}})
    # a row this invocation may not train and nobody stored: pending, nothing trained, nothing written
    assert B.train_eval(args, tmp_path, triples, tmp_path / "w", 1, 1, "med", "scifact") is None
    assert not trained and not (tmp_path / "rows").exists()
    got = B.train_eval(args, tmp_path, triples, tmp_path / "w", 1, 1, "med", "scifact-random")
    assert got["ndcg@10"] == 0.5 and trained == [str(triples)]
    stored = tmp_path / "rows" / "med__scifact-random__s1.json"
    assert json.loads(stored.read_text())["key"] == B.row_key(args, "med", "scifact-random", triples, 1, 1)
    # reused while its key matches, also with --report-only; other triples are another row
    report = parser.parse_args(["--train", "--report-only", "--rows-dir", str(tmp_path / "rows")])
    assert B.train_eval(report, tmp_path, triples, tmp_path / "w", 1, 1, "med", "scifact-random")["ndcg@10"] == 0.5
    triples.write_bytes(b"other triples")
    assert B.train_eval(report, tmp_path, triples, tmp_path / "w", 1, 1, "med", "scifact-random") is None
    assert len(trained) == 1


def _miner(label: str, hidden: int, negatives: int = 10) -> dict:
    return {"label": label, "negatives": negatives, "hidden_in_negatives": hidden, "hidden_share": hidden / negatives,
            "first_negative_hidden_share": 0.0, "filter": None}


def _row(v: float) -> dict:
    return {"ndcg@10": v, "per_query": {"a": v, "b": v}}


def test_the_table_compares_each_row_with_no_filter_and_with_its_own_sampler(parser):
    args = parser.parse_args(["--train", "--seeds", "1,2"])
    miners = {"none": _miner("n", 9), "scifact": _miner("s", 6), "none-random": _miner("nr", 6),
              "scifact-random": _miner("sr", 3)}
    down = {"none": [_row(0.5), _row(0.5)], "scifact": [_row(0.6), _row(0.6)],
            "none-random": [_row(0.55), _row(0.55)], "scifact-random": [_row(0.6), None]}
    results = {"med": {"collection": {"documents": 1, "train_queries": 1, "hidden_positives": 1, "test_queries": 1,
                                      "test_positives": 1}, "own_judge_held_in": {}, "miners": miners,
                       "downstream": down}}
    summary, lines = B.render(results, args, 1.0)
    m = summary["med"]["miners"]
    assert m["scifact"]["hidden_vs_no_filter"] == pytest.approx(6 / 9)
    assert m["scifact"]["hidden_vs_same_sampler"] == pytest.approx(6 / 9)  # its sampler is the default's
    assert m["scifact-random"]["hidden_vs_no_filter"] == pytest.approx(3 / 9)
    assert m["scifact-random"]["hidden_vs_same_sampler"] == pytest.approx(3 / 6)  # against none-random
    assert m["none-random"]["hidden_vs_same_sampler"] is None
    assert [B.same_sampler_control(r) for r in ("none", "own", "st-none", "st-own", "scifact-ce-random")] == \
        [None, "none", None, "st-none", "none-random"]
    d = summary["med"]["downstream"]
    assert d["scifact"]["target_met"] is False  # 0.67 of the no-filter count: more than 1/3
    assert d["none-random"]["target_met"] is None  # no filter: no target
    assert d["scifact-random"] == {"pending": True, "seeds_done": 1}  # one seed of two: no mean is shown
    text = "\n".join(lines)
    assert "| " + B.LABELS["scifact-random"] + " | pending (1 of 2 seeds trained) |" in text


def test_mining_is_reused_only_with_the_same_config_and_judge_recipe(parser, tmp_path, monkeypatch):
    args = parser.parse_args([])
    calls = []

    def fake_mining(cfg, out):
        calls.append(cfg.output.overwrite)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"config_fingerprint": cfg.fingerprint()}))

    recipe = {"value": "recipe-1"}
    monkeypatch.setattr(B, "run_mining", fake_mining)
    monkeypatch.setattr(B, "judge_fingerprint", lambda folder: recipe["value"])
    out = tmp_path / "mine_scifact"
    B.mine_hardneg(args, tmp_path / "data", out, "runs/some_judge")
    B.mine_hardneg(args, tmp_path / "data", out, "runs/some_judge")
    assert calls == [False]  # mined once, then reused
    recipe["value"] = "recipe-2"  # the judge refitted at the same path with other settings
    B.mine_hardneg(args, tmp_path / "data", out, "runs/some_judge")
    assert calls == [False, True]  # mined again, over the old folder
    B.mine_hardneg(args, tmp_path / "data", out, "runs/some_judge", 'sampling.strategy="random"')
    assert calls == [False, True, True]  # another config
    # a folder mined before the bench recorded the recipe: kept when its config is the same
    (out / "bench_key.json").unlink()
    B.mine_hardneg(args, tmp_path / "data", out, "runs/some_judge", 'sampling.strategy="random"')
    assert calls == [False, True, True]
    assert json.loads((out / "bench_key.json").read_text())["judge"] == "recipe-2"


def test_a_random_row_is_the_mean_of_one_draw_per_seed_and_its_target_is_judged_on_that_mean(parser, tmp_path):
    draws = {}
    for s, negs in ((1, ["a", "b"]), (2, ["a", "c"]), (3, ["c", "d"])):
        draws[s] = tmp_path / f"t{s}.parquet"
        pq.write_table(pa.Table.from_pylist([{"query_id": "1", "negative_ids": negs}]), draws[s])
    hidden = {("1", "a"), ("1", "b")}
    got = B.mean_over_draws({s: B.hidden_share(t, hidden) for s, t in draws.items()})
    assert got["hidden_per_draw"] == {1: 2, 2: 1, 3: 0}
    assert got["hidden_in_negatives"] == pytest.approx(1.0) and got["negatives"] == 2
    assert got["hidden_share"] == pytest.approx(0.5)
    # the table shows the mean and each draw; the target holds on the mean (1 of 3 here: met), although
    # one draw alone (2 of 3) would not meet it
    args = parser.parse_args(["--train", "--seeds", "1,2,3"])
    miners = {"none": _miner("n", 3, 2), "scifact-random": {"label": "sr", **got, "filter": None}}
    down = {"none": [_row(0.5)] * 3, "scifact-random": [_row(0.6)] * 3}
    results = {"med": {"collection": {"documents": 1, "train_queries": 1, "hidden_positives": 2, "test_queries": 1,
                                      "test_positives": 1}, "own_judge_held_in": {}, "miners": miners,
                       "downstream": down}}
    summary, lines = B.render(results, args, 1.0)
    assert summary["med"]["miners"]["scifact-random"]["hidden_vs_no_filter"] == pytest.approx(1 / 3)
    assert summary["med"]["downstream"]["scifact-random"]["target_met"] is True
    assert "| sr | 2 | 1 (draws: 2, 1, 0) | 50.0% |" in "\n".join(lines)
    assert B.count(21.333) == "21.3" and B.count(22.0) == "22"


def test_the_recall_target_rows_place_the_threshold_on_the_labelled_positives_and_the_others_do_not(parser):
    from mining_jobs.config import load_config

    args = parser.parse_args([])
    assert args.recall_target == 0.9
    for miner in B.RANDOM_ROWS:
        cfg = load_config(None, [*B.draw_settings(args, miner, 2), "cross_encoder.model=x"])
        assert cfg.sampling.strategy == "random" and cfg.sampling.seed == 2
        assert cfg.filter.recall_target == (0.9 if miner in B.RECALL_ROWS else None)
        assert cfg.sampling.fill == ("random" if miner in B.FILL_ROWS else "none")
    assert set(B.FILL_ROWS) <= set(B.RECALL_ROWS)
    assert set(B.RECALL_ROWS) <= set(B.RANDOM_ROWS) and set(B.RECALL_ROWS) <= set(B.TRANSFERRED)
    other = parser.parse_args(["--recall-target", "0.8"])
    assert load_config(None, [*B.draw_settings(other, "scifact-ce-recall-random", 1),
                              "cross_encoder.model=x"]).filter.recall_target == 0.8


def test_one_configuration_meets_the_target_everywhere_only_if_it_does_on_every_collection(parser):
    args = parser.parse_args(["--train", "--seeds", "1"])
    results = {}
    for name, (fill_hidden, margin_hidden) in {"cisi": (1, 2), "med": (2, 6)}.items():
        miners = {"none": _miner("n", 9), "scifact": _miner("s", margin_hidden),
                  "scifact-recall-fill-random": _miner("f", fill_hidden)}
        down = {"none": [_row(0.5)], "scifact": [_row(0.6)], "scifact-recall-fill-random": [_row(0.55)]}
        results[name] = {"collection": {"documents": 1, "train_queries": 1, "hidden_positives": 1, "test_queries": 1,
                                        "test_positives": 1}, "own_judge_held_in": {}, "miners": miners,
                         "downstream": down}
    results["cranfield"] = {**results["med"], "downstream": {**results["med"]["downstream"],
                                                             "scifact-recall-fill-random": [None]}}
    summary, lines = B.render(results, args, 1.0)
    across = summary.pop("across")
    # scifact: met on cisi (2 of 9), not on med (6 of 9); the fill row: met on both, pending on cranfield
    assert across == {"scifact": False, "scifact-recall-fill-random": None}
    text = "\n".join(lines)
    assert "| " + B.LABELS["scifact"] + " | met | not met | not met | not met |" in text
    assert "| " + B.LABELS["scifact-recall-fill-random"] + " | met | met | pending | pending |" in text
