"""Judges: the ranking helpers on hand-checkable inputs, BM25 scores of given documents, `hardneg train-judge`
and `hardneg judge-report` on tiny models, a learned judge as the mining filter, and the judge guard (a
judge worse than the retrieval it judges is reported, or refused with filter.require_better_judge)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.bm25 import BM25Index
from retriever.data import load_beir
from retriever.judge import EnsembleJudge, JudgeError, fit_platt, fit_ranker, mean_ndcg10, roc_auc, save_judge

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mine, mining_env, read_manifest  # noqa: E402

pytest_plugins = ("mining_fixtures",)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_roc_auc_by_hand():
    # positives 0.9 and 0.4; negatives 0.5 and 0.1: of 4 (pos, neg) pairs 3 are ordered right
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.5, 0.4, 0.1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)  # a tie counts half
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_mean_ndcg10_by_hand():
    labels = np.array([0, 1, 1, 0])
    groups = np.array([0, 0, 1, 1])
    # query 0: the positive at rank 2 -> 1/log2(3); query 1: the positive at rank 1 -> 1
    scores = np.array([0.9, 0.5, 0.8, 0.1])
    assert mean_ndcg10(labels, scores, groups) == pytest.approx((1 / np.log2(3) + 1) / 2)


def test_fit_ranker_weights_the_informative_feature_and_platt_is_monotone():
    rng = np.random.default_rng(0)
    n_q, per = 40, 10
    groups = np.repeat(np.arange(n_q), per)
    labels = np.zeros(n_q * per)
    labels[::per] = 1
    x = np.column_stack([labels * 2 + rng.normal(size=len(labels)), rng.normal(size=len(labels))])
    w = fit_ranker(x, labels, groups, c=1.0)
    assert w[0] > 0 and abs(w[1]) < w[0] / 3
    a, b = fit_platt(x @ w, labels)
    assert a > 0
    with pytest.raises(JudgeError, match="nothing to fit"):
        fit_ranker(x, np.zeros(len(labels)), groups, c=1.0)


def test_bm25_score_docs_equals_search(data_root):
    col = load_beir(data_root / "adi", "test")
    idx = BM25Index().index(col.doc_ids, col.doc_texts(), show_progress=False)
    qs = [col.queries[q] for q in sorted(col.queries)[:5]]
    docs, scores = idx.search_arrays(qs, k=10, show_progress=False)
    got = idx.score_docs(qs, [d[d >= 0] for d in docs])
    for g, s, d in zip(got, scores, docs, strict=True):
        np.testing.assert_allclose(g, s[d >= 0], rtol=1e-6)
    ref = BM25Index("rank_bm25").index(col.doc_ids, col.doc_texts(), show_progress=False)
    rdocs, rscores = ref.search_arrays(qs[:2], k=5, show_progress=False)
    for g, s in zip(ref.score_docs(qs[:2], list(rdocs)), rscores, strict=True):
        np.testing.assert_allclose(g, s, rtol=1e-5)


def _hand_judge(folder: Path, weight: float) -> Path:
    """A judge of one feature (BM25 normalised by the query's best) with the given sign."""
    save_judge(folder, ["bm25"], np.zeros(1), np.ones(1), np.array([weight]), (4.0, -2.0), {"bi": "", "ce": ""},
               {"dense_model": "default"})
    return folder


@pytest.fixture
def env(monkeypatch, data_root, tmp_path):
    mining_env(monkeypatch, data_root, tmp_path / "cache")


def test_unbound_judge_refuses_to_score(tmp_path):
    j = EnsembleJudge(_hand_judge(tmp_path / "j", 1.0))
    with pytest.raises(JudgeError, match="bind"):
        j.score_pairs(["q"], ["d"], [("q", "d")])


def test_train_judge_then_report_then_mine_with_it(env, data_root, tmp_path, tiny_bi_encoder, capsys):
    from mining_jobs.cli import main

    judge = tmp_path / "judge"
    # adi has only a test split; the judge may be trained on it here: what is tested is the plumbing
    rc = main(["-q", "train-judge", "--data", "adi", "--split", "test", "--out", str(judge), "--dense-model",
               str(tiny_bi_encoder), "--features", "bm25,bm25_log,dense,dense_gap,bi", "--bi-steps", "2",
               "--bi-batch-size", "8", "--depth", "10"])
    assert rc == 2  # a judge is never trained on a test split
    assert "never on dev or test" in capsys.readouterr().err
    adi = tmp_path / "adi"
    (adi / "qrels").mkdir(parents=True)
    src = data_root / "adi"
    for f in ("corpus.jsonl", "queries.jsonl"):
        (adi / f).write_text((src / f).read_text())
    (adi / "qrels" / "train.tsv").write_text((src / "qrels" / "test.tsv").read_text())
    rc = main(["-q", "train-judge", "--data", str(adi), "--split", "train", "--out", str(judge), "--dense-model",
               str(tiny_bi_encoder), "--features", "bm25,bm25_log,dense,dense_gap,bi", "--bi-steps", "2",
               "--bi-batch-size", "8", "--depth", "10"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((judge / "judge.json").read_text())
    assert meta["features"] == ["bm25", "bm25_log", "dense", "dense_gap", "bi"]
    assert len(meta["weights"]) == 5 and meta["components"]["bi"] == "bi"
    assert json.loads((judge / "bi" / "folds.json").read_text())["kind"] == "bi-encoder"
    # BM25 carries adi: the fitted judge puts a positive weight on it
    assert meta["weights"][0] > 0
    q = meta["held_in_quality"]
    assert 0 <= q["judge_cv_ndcg@10"] <= 1 and 0 <= q["fused_retrieval_ndcg@10"] <= 1

    out = tmp_path / "report"
    rc = main(["-q", "judge-report", "--judge", f"bm25,hybrid,{judge}", "--data", str(adi), "--split", "train",
               "--depth", "20", "--pool-depth", "10", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    for name in ("bm25", "hybrid", str(judge)):
        r = rep["judges"][name]
        assert r["rerank"]["queries"] == 35 and 0 <= r["rerank"]["ndcg@10"] <= 1
        assert 0 <= r["auc_pooled"] <= 1
    assert rep["judges"]["bm25"]["p_vs_bm25"] == 1.0

    run = tmp_path / "mined"
    assert mine(run, "--data", str(adi), "--split", "train", "--cross-encoder", str(judge),
                "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "candidates.bm25_k=10",
                "--set", "candidates.dense_k=10") == 0
    m = read_manifest(run)
    assert m["judge_check"]["queries"] == 35
    assert m["counts"]["fates"].get("kept", 0) > 0
    assert "judge check" in (run / "report.md").read_text() or "Warning: the judge" in (run / "report.md").read_text()


def test_judge_worse_than_retrieval_is_reported_and_can_be_refused(env, tmp_path, tiny_bi_encoder, capsys):
    bad = _hand_judge(tmp_path / "bad", -1.0)  # ranks by BM25 reversed: worse than any retrieval order
    model = f"candidates.model={json.dumps(str(tiny_bi_encoder))}"
    run = tmp_path / "run"
    assert mine(run, "--data", "adi", "--split", "test", "--cross-encoder", str(bad), "--set", model) == 0
    check = read_manifest(run)["judge_check"]
    assert check["judge_better"] is False
    assert check["judge_ndcg@10"] < check["fused_retrieval_ndcg@10"]
    report = (run / "report.md").read_text()
    assert report.index("Warning: the judge ranks **WORSE than**") < report.index("## What happened")

    refused = tmp_path / "refused"
    rc = mine(refused, "--data", "adi", "--split", "test", "--cross-encoder", str(bad), "--set", model,
              "--set", "filter.require_better_judge=true")
    assert rc == 2
    assert "require_better_judge" in capsys.readouterr().err
    assert not (refused / "triples.parquet").exists() and not list((refused / "shards").glob("*.parquet"))

    good = _hand_judge(tmp_path / "good", 1.0)
    ok = tmp_path / "ok"
    assert mine(ok, "--data", "adi", "--split", "test", "--cross-encoder", str(good), "--set", model,
                "--set", "filter.judge_check_queries=10") == 0
    c = read_manifest(ok)["judge_check"]
    assert c["queries"] == 10 and c["judge_ndcg@10"] > check["judge_ndcg@10"]


DOCS = [
    {"_id": "d1", "title": "Solar power", "text": "Solar panels convert sunlight into electricity for homes."},
    {"_id": "d2", "title": "Wind power", "text": "Wind turbines convert the wind into electricity on farms."},
    {"_id": "d3", "title": "Hydro power", "text": "Dams turn falling water into electricity with turbines."},
    {"_id": "d4", "title": "Batteries", "text": "Batteries store electricity from solar panels for the night."},
    {"_id": "d5", "title": "Coal", "text": "Coal plants burn coal to make steam and electricity."},
    {"_id": "d6", "title": "Nuclear", "text": "Nuclear reactors split atoms; the heat makes electricity."},
    # a near duplicate of d1 (other words, so no text-hash duplicate): an unlabelled positive of q1
    {"_id": "d_near", "title": "Solar power", "text": "Solar panels convert sunlight into electricity for homes "
                                                      "and offices."},
]
QUERIES = [{"_id": "q1", "text": "how do solar panels make electricity for homes"},
           {"_id": "q2", "text": "wind turbines and electricity"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def test_relabelling_puts_a_planted_duplicate_among_the_positives(make_beir, env, tmp_path):
    from mining_fixtures import read_rows

    from retriever.rerank import sigmoid

    folder = make_beir(DOCS, QUERIES, QRELS)
    judge = _hand_judge(tmp_path / "judge", 1.0)
    common = ["--data", str(folder), "--split", "test", "--cross-encoder", str(judge), "--set", "candidates.dense=false",
              "--set", "sampling.num_negatives=3", "--set", "filter.relative_margin=0.0"]
    plain = tmp_path / "plain"
    assert mine(plain, *common) == 0
    (q1,) = [r for r in read_rows(plain / "triples.parquet") if r["query_id"] == "q1"]
    assert "d_near" in q1["negative_ids"]  # without relabelling the false negative is a negative

    out = tmp_path / "relabel"
    assert mine(out, *common, "--set", "filter.relabel_above=0.75") == 0
    cands = read_rows(out / "candidates.parquet")
    fate = {(c["query_id"], c["doc_id"]): c for c in cands}
    assert fate[("q1", "d_near")]["fate"] == "relabelled"
    assert sigmoid(fate[("q1", "d_near")]["ce_score"]) >= 0.75
    for c in cands:  # exactly the scored candidates at or above the threshold are relabelled
        if c["ce_score"] is not None and c["fate"] not in ("positive", "duplicate", "self"):
            assert (c["fate"] == "relabelled") == (float(sigmoid(c["ce_score"])) >= 0.75), c
    rows = [r for r in read_rows(out / "triples.parquet") if r["query_id"] == "q1"]
    assert {(r["positive_id"], r["positive_source"]) for r in rows} == {("d1", "qrels"), ("d_near", "relabelled")}
    for r in rows:
        assert "d_near" not in r["negative_ids"] and "d1" not in r["negative_ids"]
    m = read_manifest(out)
    assert m["counts"]["fates"]["relabelled"] >= 1
    assert "relabelled" in (out / "report.md").read_text()


def test_auto_margin_is_chosen_on_hidden_positives_and_reproducible(env, tmp_path, tiny_bi_encoder):
    from mining_fixtures import read_rows

    from mining_jobs.config import load_config
    from mining_jobs.filtering import filter_reason
    from mining_jobs.judge_check import AUTO_MARGINS

    judge = _hand_judge(tmp_path / "judge", 1.0)
    args = ["--data", "adi", "--split", "test", "--cross-encoder", str(judge),
            "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "filter.auto_margin=true",
            "--set", "filter.relative_margin=0.9"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert mine(a, *args) == 0 and mine(b, *args) == 0
    ma, mb = read_manifest(a), read_manifest(b)
    auto = ma["auto_margin"]
    assert auto == mb["auto_margin"]  # the same inputs choose the same margin
    assert auto["queries"] > 0 and auto["hidden_positives"] >= 2 * auto["queries"]
    assert auto["chosen"] in AUTO_MARGINS and [x["relative_margin"] for x in auto["sweep"]] == list(AUTO_MARGINS)
    chosen = next(x for x in auto["sweep"] if x["relative_margin"] == auto["chosen"])
    ok = [x for x in auto["sweep"] if x["cost"] <= 0.25]
    if ok:  # the best recall within the cost bound
        assert chosen["recall"] == max(x["recall"] for x in ok) and chosen["cost"] <= 0.25
    else:  # nothing within the bound: the cheapest, and the report says why
        assert chosen["cost"] == min(x["cost"] for x in auto["sweep"]) and "no margin costs" in auto["why"]
    # a looser cost bound admits every margin: the best recall overall
    loose = tmp_path / "loose"
    assert mine(loose, *args, "--set", "filter.auto_margin_max_cost=1.0") == 0
    la = read_manifest(loose)["auto_margin"]
    assert la["sweep"] == auto["sweep"]
    assert next(x for x in la["sweep"] if x["relative_margin"] == la["chosen"])["recall"] == \
        max(x["recall"] for x in la["sweep"])
    # recall and cost grow with the margin
    assert all(x["recall"] <= y["recall"] and x["cost"] <= y["cost"] for x, y in
               zip(auto["sweep"], auto["sweep"][1:], strict=False))
    assert ma["config"]["filter"]["relative_margin"] == 0.9  # the job's config stays the user's
    cfg = load_config(overrides=[f"filter.relative_margin={auto['chosen']}"]).filter
    for c in read_rows(a / "candidates.parquet"):  # the shards filtered with the chosen margin
        if c["fate"] in ("kept", "not_sampled"):
            assert filter_reason(c["ce_score"], c["positive_score"], cfg) is None
        if c["fate"] == "filtered:relative_margin":
            assert filter_reason(c["ce_score"], c["positive_score"], cfg) == "filtered:relative_margin"
    assert "margin chosen automatically" in (a / "report.md").read_text()
