"""sampling.fill = "random": a query the filter leaves short gets the rest of its negatives drawn at random from
the corpus, outside its candidates, excluded and judged like them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mining_jobs.candidates import normalized_hash
from mining_jobs.config import ConfigError, MineConfig, load_config
from mining_jobs.filtering import filter_reason
from retriever.data import load_beir
from retriever.judge import save_judge

pytest_plugins = ("mining_fixtures",)
from mining_fixtures import mine, mining_env, read_manifest, read_rows  # noqa: E402

N = 5


def _hand_judge(folder):
    """A judge of one feature (BM25 normalised by the query's best): a retrieved candidate tends to score high,
    a random document low."""
    save_judge(folder, ["bm25"], np.zeros(1), np.ones(1), np.array([1.0]), (4.0, -2.0), {"bi": "", "ce": ""},
               {"dense_model": "default"})
    return folder


def _triples(run):
    return {r["query_id"]: r for r in read_rows(run / "triples.parquet")}


def _job(tmp_path, tiny_bi_encoder, *extra):
    return ["--data", "adi", "--split", "test", "--cross-encoder", str(_hand_judge(tmp_path / "judge")),
            "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "candidates.bm25_k=10",
            "--set", "candidates.dense_k=10", "--set", f"sampling.num_negatives={N}",
            # strict: most retrieved candidates score above max_score, so queries are left short; the
            # threshold placed on the labelled positives replaces the margin (as in the sparse-label benchmark)
            "--set", "filter.max_score=-1.0", "--set", "filter.recall_target=0.3", *extra]


def test_the_option_is_checked_and_leaves_existing_fingerprints_alone(monkeypatch):
    import mining_jobs.config as config

    with pytest.raises(ConfigError, match="sampling.fill"):
        load_config(overrides=['sampling.fill="bm25"'])
    base = MineConfig().fingerprint()
    assert load_config(overrides=['sampling.fill="random"']).fingerprint() != base
    monkeypatch.delitem(config.NEW_SAMPLING_DEFAULTS, "fill")
    assert MineConfig().fingerprint() != base  # unset, the key is left out: jobs mined before it resume


@pytest.mark.usefixtures("torch_one_thread")
def test_short_queries_are_filled_with_judged_random_documents_outside_their_candidates(
        monkeypatch, data_root, tmp_path, tiny_bi_encoder):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    off, on, small = tmp_path / "off", tmp_path / "on", tmp_path / "small_shards"
    assert mine(off, *_job(tmp_path, tiny_bi_encoder)) == 0
    assert mine(on, *_job(tmp_path, tiny_bi_encoder, "--set", 'sampling.fill="random"')) == 0
    assert mine(small, *_job(tmp_path, tiny_bi_encoder, "--set", 'sampling.fill="random"',
                             "--set", "output.shard_size=3")) == 0
    t_off, t_on = _triples(off), _triples(on)
    short = {q for q, r in t_off.items() if len(r["negative_ids"]) < N}
    assert len(short) >= 5  # the strict filter leaves queries short without the fill
    col = load_beir(data_root / "adi", "test", name="adi")
    texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
    cands = read_rows(on / "candidates.parquet")
    retrieved = {(c["query_id"], c["doc_id"]) for c in cands if c["sources"] != ["random"]}
    assert retrieved == {(c["query_id"], c["doc_id"]) for c in read_rows(off / "candidates.parquet")}
    threshold = read_manifest(on)["auto_threshold"]["chosen"]["score_threshold"]
    assert threshold == read_manifest(off)["auto_threshold"]["chosen"]["score_threshold"]
    cfg = load_config(overrides=["cross_encoder.model=x", "filter.max_score=-1.0"]).filter
    cfg.relative_margin, cfg.score_threshold = None, threshold
    filled = 0
    for q, r in t_on.items():
        before = t_off[q]
        k = len(before["negative_ids"])
        # the retrieved negatives come first and are those mined without the fill
        assert r["negative_ids"][:k] == before["negative_ids"]
        assert all(s != "random" for s in r["negative_sources"][:k])
        assert len(r["negative_ids"]) == N  # 82 documents: enough to fill every query
        extra = r["negative_ids"][k:]
        assert all(s == "random" for s in r["negative_sources"][k:])
        pos = {d for d, g in col.qrels[q].items() if g >= 1}
        pos_hashes = {normalized_hash(texts[d]) for d in pos}
        for d in extra:
            assert (q, d) not in retrieved and d not in pos and normalized_hash(texts[d]) not in pos_hashes
        assert len(set(r["negative_ids"])) == N
        filled += len(extra)
    assert filled > 0
    # the drawn documents were judged by the same rule as the retrieved ones
    drawn = [c for c in cands if c["sources"] == ["random"]]
    judged = {"kept", "not_sampled", "filtered:max_score", "filtered:score_threshold"}
    assert {c["fate"] for c in drawn} <= judged | {"positive", "duplicate", "self"}
    for c in drawn:
        if c["fate"] in judged:
            reason = filter_reason(c["ce_score"], c["positive_score"], cfg)
            assert reason == (None if c["fate"] in ("kept", "not_sampled") else c["fate"])
    m = read_manifest(on)
    fill = m["counts"]["random_fill"]
    assert fill["negatives"] == filled == sum(c["fate"] == "kept" for c in drawn)
    assert fill["drawn"] == len(drawn) and fill["queries"] == len(short)
    assert fill["filtered"] == sum(c["fate"].startswith("filtered:") for c in drawn)
    assert m["counts"]["queries_without_negatives"] == 0
    assert "random_fill" not in read_manifest(off)["counts"]
    assert f"**{filled}** of {len(drawn)} drawn" in (on / "report.md").read_text()
    # seeded per query: another sharding draws the same documents
    assert _triples(small) == t_on


@pytest.mark.usefixtures("torch_one_thread")
def test_without_a_judge_the_fill_draws_what_retrieval_lacks(monkeypatch, data_root, tmp_path, tiny_bi_encoder):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    run = tmp_path / "run"
    assert mine(run, "--data", "adi", "--split", "test", "--set", "candidates.dense=false",
                "--set", "candidates.bm25_k=2", "--set", f"sampling.num_negatives={N}",
                "--set", 'sampling.fill="random"') == 0
    for r in _triples(run).values():
        assert len(r["negative_ids"]) == N and r["negative_scores"] == []
        assert r["negative_sources"].count("random") >= N - 2


def test_training_says_when_a_strict_filter_costs_it_rows_and_what_to_do(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mining_jobs.train import dropped_rows_warning, load_examples

    path = tmp_path / "triples.parquet"
    rows = [{"query_id": str(i), "query": f"q{i}", "positive": f"p{i}", "negatives": ["n"] if i < 6 else []}
            for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    _, info = load_examples(str(path), 1)
    assert info["rows"] == 6 and info["rows_dropped_few_negatives"] == 4
    msg = dropped_rows_warning(info, 1)
    assert msg.startswith("4 of the 10 triples rows have fewer than 1 negative(s)") and "sampling.fill" in msg
    assert dropped_rows_warning({"rows_in": 10, "rows_dropped_few_negatives": 1}, 1) is None


def _stub_resources(n_docs: int, reranker=None):
    from mining_jobs.shard import Resources

    ids = [f"d{i}" for i in range(n_docs)]
    texts = [f"document number {i}" for i in range(n_docs)]
    return Resources(None, [], ids, {d: i for i, d in enumerate(ids)}, texts,
                     [normalized_hash(t) for t in texts], None, None, None, None, reranker, None, set())


def _short_shard(qids: list[str], positives: dict[str, list[int]], pos_score: float | None = None):
    from mining_jobs.shard import Shard

    sh = Shard(list(qids), [f"query {q}" for q in qids])
    sh.cands = [[] for _ in qids]  # nothing retrieved survived: every negative must come from the fill
    sh.positives = [positives.get(q, [0]) for q in qids]
    sh.pos_scores = [pos_score] * len(qids)
    sh.extra = [[] for _ in qids]
    sh.chosen = [[] for _ in qids]
    return sh


def test_a_querys_fill_does_not_depend_on_the_queries_beside_it_even_when_its_draws_are_excluded():
    from mining_jobs.shard import fill_stage

    cfg = load_config(overrides=['sampling.fill="random"', "sampling.num_negatives=2"])
    res = _stub_resources(40)
    crowded = {"a0": list(range(36))}  # 36 of the 40 documents are its positives: most draws are excluded
    counters = {"ce_pairs": 0, "ce_pairs_scored": 0, "score_s": 0.0}
    alone = _short_shard(["a0"], crowded)
    fill_stage(res, cfg, alone, counters)
    beside = _short_shard(["a0", "b1"], crowded)
    fill_stage(res, cfg, beside, counters)
    assert [c.doc for c in alone.chosen[0]] == [c.doc for c in beside.chosen[0]]
    assert [(c.doc, c.fate) for c in alone.cands[0]] == [(c.doc, c.fate) for c in beside.cands[0]]
    assert len(beside.chosen[1]) == 2 and all(c.doc >= 36 for c in alone.chosen[0])


class _ConstantJudge:
    """Every pair scores ``logit``."""

    def __init__(self, logit: float):
        self.logit = logit

    def cache_prefix(self) -> str:
        return "constant"

    def score(self, pairs, show_progress=None):
        return np.full(len(pairs), self.logit, dtype=np.float32)


def test_a_draw_the_judge_finds_relevant_is_relabelled_like_a_retrieved_candidate_not_kept_as_a_negative():
    from mining_jobs.shard import fill_stage

    # positive probability 0.993, the draws' 0.953: under the 1% margin they pass the filter, but they are
    # above filter.relabel_above 0.9
    sets = ['sampling.fill="random"', "sampling.num_negatives=2", "cross_encoder.model=x",
            "filter.relative_margin=0.01"]
    counters = {"ce_pairs": 0, "ce_pairs_scored": 0, "score_s": 0.0}
    res = _stub_resources(40, _ConstantJudge(3.0))
    sh = _short_shard(["q"], {}, pos_score=5.0)
    fill_stage(res, load_config(overrides=[*sets, "filter.relabel_above=0.9"]), sh, counters)
    assert sh.chosen == [[]] and sh.extra[0] and all(c.fate == "relabelled" for c in sh.extra[0])
    assert counters["ce_pairs"] == len(sh.cands[0]) - sum(c.fate == "positive" for c in sh.cands[0])
    sh = _short_shard(["q"], {}, pos_score=5.0)
    fill_stage(res, load_config(overrides=sets), sh, counters)  # without relabelling: kept as negatives
    assert len(sh.chosen[0]) == 2 and sh.extra == [[]]


def test_planted_pairs_drawn_at_random_count_among_the_negatives_not_among_the_retrieved():
    import pyarrow as pa

    from mining_jobs.planted import planted_stats

    planted = {"hidden": {("q", "d1"), ("q", "d2")}}
    retrieved = pa.Table.from_pylist([{"query_id": "q", "doc_id": "d1", "ce_score": 2.0, "fate": "filtered:max_score"},
                                      {"query_id": "q", "doc_id": "d3", "ce_score": 0.0, "fate": "kept"}])
    triples = pa.Table.from_pylist([{"query_id": "q", "negative_ids": ["d3", "d2"]}])  # d2 drawn at random
    a = planted_stats(planted, "planted.json", {"q"}, retrieved, triples)["all"]
    assert (a["retrieved"], a["removed"], a["in_negatives"], a["missed_not_sampled"]) == (1, 1, 1, 0)
