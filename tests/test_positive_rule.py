"""The positive-aware filter rule: judge logit + cosine to the nearest labelled positive, fitted on the job's
own queries with two or more positives (``filter.auto_threshold``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mining_jobs.config import ConfigError, MineConfig, load_config
from mining_jobs.filtering import filter_reason, filter_score
from mining_jobs.judge_check import fit_positive_rule, loo_rows, population_rows
from retriever.judge import save_judge

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mine, mining_env, read_manifest  # noqa: E402

pytest_plugins = ("mining_fixtures",)


def _hand_judge(folder, weight: float):
    """A judge of one feature (BM25 normalised by the query's best) with the given sign."""
    save_judge(folder, ["bm25"], np.zeros(1), np.ones(1), np.array([weight]), (4.0, -2.0), {"bi": "", "ce": ""},
               {"dense_model": "default"})
    return folder


def _synthetic(seed: int, n_hidden: int = 200, n_others: int = 4000, gap: float = 0.35):
    """Hidden positives resemble the labelled positive (high cosine) and score a little higher; the judge's
    logit alone separates them badly."""
    rng = np.random.default_rng(seed)
    hidden = np.c_[rng.normal(0.5, 1.0, n_hidden), rng.uniform(0.6 - gap, 1.0, n_hidden)]
    others = np.c_[rng.normal(0.0, 1.0, n_others), rng.uniform(0.0, 0.6, n_others)]
    return hidden, others


def test_the_fitted_rule_weighs_the_cosine_and_beats_the_logit_alone_at_the_same_cost():
    hidden, others = _synthetic(0)
    rule = fit_positive_rule(hidden, others, 0.25)
    assert rule["logit_weight"] == 1.0 and rule["positive_cosine_weight"] > 1.0
    assert rule["cost"] <= 0.25
    z = lambda x: x @ np.array([rule["logit_weight"], rule["positive_cosine_weight"]])  # noqa: E731
    assert rule["recall"] == pytest.approx(float((z(hidden) > rule["score_threshold"]).mean()))
    assert rule["cost"] == pytest.approx(float((z(others) > rule["score_threshold"]).mean()))
    # the judge's logit alone at the same cost bound catches far fewer
    t_logit = np.sort(others[:, 0])[::-1][int(0.25 * len(others))]
    assert rule["recall"] > float((hidden[:, 0] > t_logit).mean()) + 0.2
    assert fit_positive_rule(hidden, others, 0.25) == rule  # deterministic


def test_the_cost_bound_holds_and_recall_grows_with_it():
    hidden, others = _synthetic(1, gap=0.5)
    rules = [fit_positive_rule(hidden, others, c) for c in (0.01, 0.05, 0.1, 0.25, 0.5)]
    for c, r in zip((0.01, 0.05, 0.1, 0.25, 0.5), rules, strict=True):
        assert r["cost"] <= c
    assert all(a["recall"] <= b["recall"] for a, b in zip(rules, rules[1:], strict=False))


def test_no_cost_is_paid_for_nothing_when_the_hidden_positives_separate():
    rng = np.random.default_rng(2)
    hidden = np.c_[rng.normal(0, 1, 50), rng.uniform(0.95, 1.0, 50)]
    others = np.c_[rng.normal(0, 1, 500), rng.uniform(0.0, 0.5, 500)]
    rule = fit_positive_rule(hidden, others, 0.25)
    assert rule["recall"] == 1.0 and rule["cost"] == 0.0  # the threshold rose above every other candidate


def test_the_rule_needs_both_kinds_of_rows():
    with pytest.raises(ValueError, match="hidden positives and other candidates"):
        fit_positive_rule(np.zeros((0, 2)), np.ones((3, 2)), 0.25)


def test_leave_one_out_rows_by_hand():
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    # one query: positives 0 and 1, candidates 2 and 3; scores positives first
    hidden, others = loo_rows([np.array([2.0, 1.0, 0.5, -1.0])], [[0, 1]], [[0, 1, 2, 3]], emb)
    # hiding 0: its cosine to 1 is 0.6; hiding 1: its cosine to 0 is 0.6
    assert hidden.tolist() == [[2.0, pytest.approx(0.6)], [1.0, pytest.approx(0.6)]]
    # candidates against the remaining positive: first against 1, then against 0
    assert others.tolist() == [[0.5, pytest.approx(0.8)], [-1.0, pytest.approx(0.96)],
                               [0.5, pytest.approx(0.0)], [-1.0, pytest.approx(0.8)]]
    single = loo_rows([np.array([1.0, 0.0])], [[0]], [[0, 2]], emb)  # one positive: nothing to hide
    assert single[0].shape == (0, 2) and single[1].shape == (0, 2)


def test_the_cost_bound_holds_on_the_population_the_filter_meets():
    """Multi-positive queries' candidates score higher than a job's average candidate: a bound measured on
    them filters far less than the bound of the job's candidates. Measured on the population instead, the
    bound holds there, the rule filters more of it than the others-only fit does, and catches more."""
    hidden, others = _synthetic(3)
    rng = np.random.default_rng(4)
    population = np.r_[others, np.c_[rng.normal(-1.0, 1.0, 8000), rng.uniform(0.0, 0.5, 8000)]]
    for use_cosine in (True, False):
        narrow = fit_positive_rule(hidden, others, 0.25, use_cosine)
        wide = fit_positive_rule(hidden, others, 0.25, use_cosine, population=population)
        w = np.array([wide["logit_weight"], wide["positive_cosine_weight"]])
        assert (narrow["logit_weight"], narrow["positive_cosine_weight"]) == tuple(w)  # same weights
        assert wide["cost"] == pytest.approx(float((population @ w > wide["score_threshold"]).mean()))
        assert wide["cost"] <= 0.25 and wide["cost"] > 0.2
        narrow_cost = float((population @ w > narrow["score_threshold"]).mean())
        assert narrow_cost < 0.2  # the others-only bound leaves much of the budget unused on the population
        assert wide["score_threshold"] < narrow["score_threshold"] and wide["recall"] > narrow["recall"]
    with pytest.raises(ValueError, match="population"):
        fit_positive_rule(hidden, others, 0.25, population=np.zeros((0, 2)))


def test_population_rows_by_hand():
    emb = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    # query 1: positives 0 and 1, candidates 2 and 3; query 2: positive 2, candidate 0; query 3: no candidate
    rows = population_rows([np.array([2.0, 1.0, 0.5, -1.0]), np.array([3.0, 0.25]), np.array([1.0])],
                           [[0, 1], [2], [3]], [[0, 1, 2, 3], [2, 0], [3]], emb)
    # every candidate against its query's nearest labelled positive (all of them labelled, as in the job)
    assert rows.tolist() == [[0.5, pytest.approx(0.8)], [-1.0, pytest.approx(0.96)], [0.25, pytest.approx(0.0)]]


def test_the_score_threshold_rule():
    cfg = load_config(overrides=["filter.relative_margin=0.0", "filter.score_threshold=1.0",
                                 "filter.positive_cosine_weight=2.0", "filter.logit_weight=0.5",
                                 "cross_encoder.model=x"]).filter
    assert filter_score(1.0, 0.5, cfg) == pytest.approx(1.5)
    assert filter_reason(-5.0, 0.0, cfg, cosine=0.9) is None  # 0.5 * -5 + 1.8 = -0.7: kept by this rule
    assert filter_reason(0.0, 9.0, cfg, cosine=0.6) == "filtered:score_threshold"  # 1.2 > 1.0
    assert filter_reason(1.0, 9.0, cfg, cosine=None) is None  # no cosine counts as 0: 0.5 < 1.0


def test_settings_are_checked_and_leave_existing_fingerprints_alone():
    with pytest.raises(ConfigError, match="needs judge scores") as e:
        load_config(overrides=["filter.auto_threshold=true"])
    assert e.value.field == "filter.auto_threshold"
    with pytest.raises(ConfigError, match="set only one") as e:
        load_config(overrides=["filter.auto_threshold=true", "filter.auto_margin=true", "cross_encoder.model=x"])
    assert e.value.field == "filter.auto_threshold"
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["filter.score_threshold=0.5"])
    assert e.value.field == "filter.score_threshold"
    # the new settings enter a fingerprint only when set: jobs run before them resume
    base = MineConfig()
    assert base.fingerprint() == load_config(overrides=["filter.logit_weight=1.0"]).fingerprint()
    assert base.fingerprint() != load_config(overrides=["filter.auto_threshold=true",
                                                        "cross_encoder.model=x"]).fingerprint()
    # where the cost bound holds: read only by auto_threshold; 'multi' (the earlier fit) keeps the earlier
    # fingerprint, the new default 'all' is another job
    assert base.filter.auto_threshold_cost_on == "all"
    assert base.fingerprint() == load_config(overrides=["filter.auto_threshold_cost_on=multi"]).fingerprint()
    auto = ["filter.auto_threshold=true", "cross_encoder.model=x"]
    fp = {on: load_config(overrides=[*auto, f"filter.auto_threshold_cost_on={on}"]).fingerprint()
          for on in ("all", "multi")}
    assert fp["all"] != fp["multi"] and fp["all"] == load_config(overrides=auto).fingerprint()
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["filter.auto_threshold_cost_on=some"])
    assert e.value.field == "filter.auto_threshold_cost_on"


@pytest.fixture
def env(monkeypatch, data_root, tmp_path):
    mining_env(monkeypatch, data_root, tmp_path / "cache")


@pytest.mark.usefixtures("torch_one_thread")
def test_auto_threshold_mines_with_the_fitted_rule_and_is_reproducible(env, tmp_path, tiny_bi_encoder):
    from mining_fixtures import read_rows

    judge = _hand_judge(tmp_path / "judge", 1.0)
    args = ["--data", "adi", "--split", "test", "--cross-encoder", str(judge),
            "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "filter.auto_threshold=true"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert mine(a, *args) == 0 and mine(b, *args) == 0
    ma, mb = read_manifest(a), read_manifest(b)
    auto = ma["auto_threshold"]
    assert auto == mb["auto_threshold"]  # the same inputs fit the same rule
    assert auto["queries"] > 0 and auto["hidden_positives"] >= 2 * auto["queries"]
    rule = auto["chosen"]
    assert rule["cost"] <= 0.25 and 0.0 <= rule["recall"] <= 1.0
    assert ma["config"]["filter"]["auto_threshold"] and ma["config"]["filter"]["score_threshold"] is None
    cfg = load_config(overrides=["cross_encoder.model=x", "filter.relative_margin=0.0"]).filter
    cfg.relative_margin = None
    cfg.score_threshold, cfg.logit_weight, cfg.positive_cosine_weight = (
        rule["score_threshold"], rule["logit_weight"], rule["positive_cosine_weight"])
    fates = set()
    for c in read_rows(a / "candidates.parquet"):
        fates.add(c["fate"])
        if c["fate"] in ("kept", "not_sampled", "filtered:score_threshold"):
            assert c["positive_cosine"] is not None  # every judged candidate carries its cosine
            expected = None if c["fate"] != "filtered:score_threshold" else "filtered:score_threshold"
            assert filter_reason(c["ce_score"], c["positive_score"], cfg, cosine=c["positive_cosine"]) == expected
    assert "filtered:score_threshold" in fates and "filtered:relative_margin" not in fates
    assert "positive-aware rule fitted automatically" in (a / "report.md").read_text()
    assert ma["models"]["false_negative_filter"] == "on (score_threshold (positive-aware, fitted on this job))"
    assert "positive-aware rule" in (a / "report.md").read_text().split("## What happened")[1]  # fate explained
    # the cost bound holds on the candidates of all the job's queries (adi's 35 are all sampled): the share of
    # the job's judged candidates the rule filtered is the cost the fit reports
    judged = [f for f in (c["fate"] for c in read_rows(a / "candidates.parquet"))
              if f in ("kept", "not_sampled", "filtered:score_threshold")]
    assert auto["cost_sample_queries"] > auto["queries"]  # single-positive queries are in the sample too
    assert judged.count("filtered:score_threshold") / len(judged) == pytest.approx(rule["cost"])
    # the earlier fit, bound measured on the multi-positive queries only, is still there by name
    m = tmp_path / "m"
    assert mine(m, *args, "--set", "filter.auto_threshold_cost_on=multi") == 0
    multi = read_manifest(m)["auto_threshold"]
    assert multi["cost_sample_queries"] == multi["queries"] == auto["queries"]
    assert multi["hidden_positives"] == auto["hidden_positives"]


@pytest.mark.usefixtures("torch_one_thread")
def test_a_job_with_one_positive_per_query_uses_the_rule_stored_with_the_judge(env, data_root, tmp_path,
                                                                                 tiny_bi_encoder):
    from mining_jobs.cli import main

    src = data_root / "adi"
    full, sparse = tmp_path / "adi_full", tmp_path / "adi_sparse"
    qrels = (src / "qrels" / "test.tsv").read_text().splitlines()
    kept, seen = [qrels[0]], set()
    for line in qrels[1:]:  # one positive per query: nothing for a job to fit the rule on
        q = line.split("\t")[0]
        if q not in seen:
            seen.add(q)
            kept.append(line)
    for folder, lines in ((full, qrels), (sparse, kept)):
        (folder / "qrels").mkdir(parents=True)
        for f in ("corpus.jsonl", "queries.jsonl"):
            (folder / f).write_text((src / f).read_text())
        (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    judge = tmp_path / "judge"
    assert main(["-q", "train-judge", "--data", str(full), "--split", "train", "--out", str(judge),
                 "--dense-model", str(tiny_bi_encoder), "--depth", "10"]) == 0
    stored = json.loads((judge / "judge.json").read_text())["positive_rule"]
    assert stored["fit_queries"] > 0 and stored["hidden_positives"] >= 2 * stored["fit_queries"]
    assert stored["cost"] <= 0.25 and "positive-aware filter rule" in (judge / "report.md").read_text().lower()
    run = tmp_path / "mined"
    assert mine(run, "--data", str(sparse), "--split", "train", "--cross-encoder", str(judge),
                "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}",
                "--set", "filter.auto_threshold=true") == 0
    auto = read_manifest(run)["auto_threshold"]
    assert auto["source"] == "judge" and auto["queries"] == 0
    assert all(auto["chosen"][k] == stored[k] for k in ("logit_weight", "positive_cosine_weight", "score_threshold"))
    assert "the judge's own rule" in (run / "report.md").read_text()
    # a judge without a stored rule leaves the margins in place, and says so
    meta = json.loads((judge / "judge.json").read_text())
    meta["positive_rule"] = None
    (judge / "judge.json").write_text(json.dumps(meta))
    bare = tmp_path / "bare"
    assert mine(bare, "--data", str(sparse), "--split", "train", "--cross-encoder", str(judge),
                "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}",
                "--set", "filter.auto_threshold=true") == 0
    m = read_manifest(bare)
    assert m["auto_threshold"]["chosen"] is None and "no rule stored" in m["auto_threshold"]["why"]
    assert "filtered:score_threshold" not in m["counts"]["fates"]


@pytest.mark.usefixtures("torch_one_thread")
def test_the_judge_report_measures_the_fitted_rules_on_hidden_positives(env, data_root, tmp_path):
    from mining_jobs.cli import main

    src = data_root / "adi"
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    by_q: dict[str, list[str]] = {}
    for line in lines[1:]:
        q, d, g = line.split("\t")
        if int(g) >= 1:
            by_q.setdefault(q, []).append(d)
    hidden = [(q, sorted(ds)[-1]) for q, ds in sorted(by_q.items()) if len(ds) >= 3]
    assert hidden  # adi has queries with three or more positives
    col = tmp_path / "adi_hidden"
    (col / "qrels").mkdir(parents=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (col / f).write_text((src / f).read_text())
    (col / "qrels" / "train.tsv").write_text("\n".join([lines[0]] + [
        f"{q}\t{d}\t1" for q, ds in sorted(by_q.items()) for d in ds if (q, d) not in set(hidden)]) + "\n")
    (col / "planted.json").write_text(json.dumps({"hidden_positives": hidden}))
    n_multi = sum(len(ds) - ((q, sorted(ds)[-1]) in set(hidden)) >= 2 for q, ds in by_q.items())
    out = tmp_path / "report"
    assert main(["-q", "judge-report", "--judge", "bm25,dense", "--data", str(col), "--split", "train",
                 "--depth", "20", "--pool-depth", "10", "--out", str(out), "--planted-data", str(col),
                 "--planted-split", "train", "--planted", str(col / "planted.json")]) == 0
    rep = json.loads((out / "report.json").read_text())
    for name in ("bm25", "dense"):
        pa, alone = rep["judges"][name]["planted_positive_aware"], rep["judges"][name]["planted_score_threshold"]
        for r in (pa, alone):
            assert r["fitted"] and r["fit_cost"] <= 0.25 and r["fit_queries"] == n_multi
            assert 0 <= r["hidden_positives_recall"] <= 1 and 0 <= r["other_candidates_filtered"] <= 1
            assert r["hidden_positives_in_pool"] <= len(hidden)
        assert alone["positive_cosine_weight"] == 0.0
    assert "Fitted rules" in (out / "report.md").read_text()


@pytest.mark.parametrize(("overrides", "field"), [
    (["filter.score_threshold=nan"], "filter.score_threshold"),  # would never filter
    (["filter.score_threshold=1.0", "filter.positive_cosine_weight=inf"], "filter.logit_weight"),
    (["filter.score_threshold=-1.0", "filter.logit_weight=0.0"], "filter.logit_weight"),  # filters everything
    (["filter.auto_threshold=true", "filter.score_threshold=2.0"], "filter.auto_threshold"),  # would be overridden
    (["filter.auto_threshold=true", "filter.positive_cosine_weight=3.0"], "filter.auto_threshold"),
    (["filter.positive_cosine_weight=3.0"], "filter.positive_cosine_weight"),  # weighs no rule
    (["filter.logit_weight=2.0"], "filter.positive_cosine_weight"),
])
def test_rule_settings_that_would_do_nothing_or_everything_are_refused(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["cross_encoder.model=x", *overrides])
    assert e.value.field == field


def test_the_what_if_table_counts_candidates_the_rule_filtered_as_margin_candidates():
    import pyarrow as pa

    from mining_jobs.triples import what_if

    cfg = load_config(overrides=["cross_encoder.model=x", "filter.score_threshold=0.5",
                                 "filter.positive_cosine_weight=2.0"]).filter
    cands = pa.table({"query_id": ["q1", "q1", "q2"], "ce_score": [-6.0, -6.0, 6.0],
                      "positive_score": [6.0, 6.0, 6.0],
                      "fate": ["filtered:score_threshold", "kept", "filtered:score_threshold"]})
    rows = {(r["rule"], r["margin"]): r for r in what_if(cands, 2, ["q1", "q2"], cfg)}
    # q1's candidate filtered by the rule scores far below its positive: every margin would keep it
    assert all(r["negatives"] >= 2 for r in rows.values())
    assert rows[("relative", 0.1)]["queries_with_n"] == 1 and rows[("relative", 0.1)]["negatives"] == 2
    # q2's scores as high as its positive: only a margin of 0 keeps it
    assert rows[("absolute", 0.0)]["negatives"] == 3 and rows[("absolute", 1.0)]["negatives"] == 2


def _adi_copy(data_root, folder, keep_two: int):
    """adi's test split as a train split where only ``keep_two`` queries keep two positives, the rest one."""
    src = data_root / "adi"
    lines = (src / "qrels" / "test.tsv").read_text().splitlines()
    kept, count = [lines[0]], {}
    for line in lines[1:]:
        q = line.split("\t")[0]
        n_multi = sum(1 for v in count.values() if v >= 2)
        limit = 2 if (count.get(q, 0) == 1 and n_multi < keep_two) or count.get(q, 0) >= 2 else 1
        if count.get(q, 0) < limit:
            count[q] = count.get(q, 0) + 1
            kept.append(line)
    (folder / "qrels").mkdir(parents=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (folder / f).write_text((src / f).read_text())
    (folder / "qrels" / "train.tsv").write_text("\n".join(kept) + "\n")
    return sum(1 for v in count.values() if v >= 2)


@pytest.mark.usefixtures("torch_one_thread")
def test_too_few_positives_to_hide_and_no_stored_rule_keep_the_margins(env, data_root, tmp_path, tiny_bi_encoder):
    col = tmp_path / "adi_few"
    assert _adi_copy(data_root, col, 2) == 2  # two queries with two positives: 4 to hide, fewer than 10
    run = tmp_path / "mined"
    assert mine(run, "--data", str(col), "--split", "train", "--cross-encoder", str(_hand_judge(tmp_path / "j", 1.0)),
                "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}",
                "--set", "filter.auto_threshold=true") == 0
    m = read_manifest(run)
    auto = m["auto_threshold"]
    assert auto["chosen"] is None and auto["queries"] == 2 and auto["hidden_positives"] == 4
    assert "at least 10" in auto["why"]
    assert "filtered:score_threshold" not in m["counts"]["fates"]
    assert "not fitted" in (run / "report.md").read_text()


@pytest.mark.usefixtures("torch_one_thread")
def test_a_resumed_job_keeps_the_rule_it_started_with(env, tmp_path, tiny_bi_encoder, monkeypatch):
    import mining_jobs.mine as mine_module
    from mining_jobs.shard import shard_paths

    args = ["--data", "adi", "--split", "test", "--cross-encoder", str(_hand_judge(tmp_path / "judge", 1.0)),
            "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "filter.auto_threshold=true",
            "--set", "output.shard_size=10"]
    run = tmp_path / "run"
    assert mine(run, *args) == 0
    first = read_manifest(run)
    stored = json.loads((run / "job.json").read_text())["auto_choices"]
    assert stored["auto_threshold"] == first["auto_threshold"] and first["auto_threshold"]["chosen"] is not None
    cpath, tpath = shard_paths(run, 1)
    before = tpath.read_bytes()
    for p in [*run.glob("*.parquet"), run / "manifest.json", run / "report.md", tpath]:  # as if killed mid-way
        p.unlink()

    def refit(*a, **k):
        raise AssertionError("a resumed job must not fit its rule again")

    monkeypatch.setattr(mine_module, "choose_threshold", refit)
    assert mine(run, *args) == 0
    again = read_manifest(run)
    assert again["auto_threshold"] == first["auto_threshold"] and again["counts"]["shards_resumed"] >= 1
    assert tpath.read_bytes() == before
