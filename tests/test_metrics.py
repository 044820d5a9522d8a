"""Metrics (retriever.metrics): hand-computed values, trec_eval conventions, equality with pytrec_eval,
and the paired randomization test."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import pytrec_eval

from retriever.data import load_beir
from retriever.metrics import (
    DEFAULT_METRICS,
    aggregate,
    average_precision,
    evaluate,
    mrr,
    ndcg,
    per_query,
    precision,
    randomization_test,
    recall,
)
from retriever.runs import ranked, truncate


def run_of(*doc_ids: str) -> dict[str, float]:
    """Scores that rank ``doc_ids`` in the given order (5, 4, 3, ...)."""
    return {d: float(len(doc_ids) - i) for i, d in enumerate(doc_ids)}


# ------------------------------------------------------------------------------------ nDCG


def test_ndcg_graded_by_hand():
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": run_of("x", "a", "b", "c")}
    # ranking x, a, b, c (x unjudged: gain 0; c judged 0)
    # DCG@10  = 0/log2(2) + 2/log2(3) + 1/log2(4) + 0/log2(5) = 1.261860 + 0.5 = 1.761860
    # IDCG@10 = 2/log2(2) + 1/log2(3)                         = 2 + 0.630930  = 2.630930
    # nDCG@10 = 1.761860 / 2.630930 = 0.669672
    expected = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    got = evaluate(qrels, run, ["ndcg@10"])["ndcg@10"]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(0.669672, abs=1e-6)
    # nDCG@2 = (2/log2(3)) / (2 + 1/log2(3)) = 1.261860 / 2.630930 = 0.479625
    assert evaluate(qrels, run, ["ndcg@2"])["ndcg@2"] == pytest.approx(0.479625, abs=1e-6)
    # nDCG@1: x at rank 1 has gain 0 -> 0
    assert evaluate(qrels, run, ["ndcg@1"])["ndcg@1"] == 0.0


def test_ndcg_perfect_and_swapped():
    judged = {"a": 2, "b": 1}
    assert ndcg(["a", "b"], judged, 10) == pytest.approx(1.0)
    # b, a: DCG = 1 + 2/log2(3) = 2.261860; IDCG = 2 + 1/log2(3) = 2.630930 -> 0.859719
    assert ndcg(["b", "a"], judged, 10) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert ndcg(["b", "a"], judged, 10) == pytest.approx(0.859719, abs=1e-6)
    # linear gain, not 2^rel - 1: with exponential gains this would be (1 + 3/log2 3)/(3 + 1/log2 3) = 0.797
    assert ndcg(["b", "a"], judged, 10) != pytest.approx(0.797, abs=1e-3)


def test_ndcg_ideal_uses_all_positive_judgments_even_unretrieved():
    # 3 relevant judged, only one retrieved at rank 1: DCG = 1; IDCG = 1 + 1/log2(3) + 1/2 = 2.130930 -> 0.469279
    assert ndcg(["a"], {"a": 1, "b": 1, "c": 1}, 10) == pytest.approx(0.469279, abs=1e-6)
    # negative grades give no gain and are not in the ideal
    assert ndcg(["n", "a"], {"n": -1, "a": 1}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg(["a"], {"a": 0}, 10) == 0.0  # nothing relevant: 0, not a division by zero


# ------------------------------------------------------------------------------------ MRR


def test_mrr_first_relevant_at_rank_3():
    qrels = {"q": {"a": 1, "b": 1}}
    run = {"q": run_of("x", "y", "a", "z", "b")}
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == pytest.approx(1 / 3)
    assert evaluate(qrels, run, ["mrr@2"])["mrr@2"] == 0.0


def test_mrr_none_in_top_10_is_zero():
    ranking = [f"x{i}" for i in range(10)] + ["a"]  # relevant at rank 11
    assert mrr(ranking, {"a"}, 10) == 0.0
    assert mrr(ranking, {"a"}, 11) == pytest.approx(1 / 11)
    run = {"q": run_of(*ranking)}
    assert evaluate({"q": {"a": 1}}, run, ["mrr@10"]) == {"mrr@10": 0.0}


def test_mrr_docstring_example():
    assert evaluate({"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}, ["mrr@10"]) == {"mrr@10": 0.5}


# ------------------------------------------------------------------------------------ recall, precision, MAP


QRELS_3REL = {"q": {"a": 1, "b": 1, "c": 1, "d": 0}}
RUN_5 = {"q": run_of("a", "x", "b", "d", "y")}  # relevant at ranks 1 and 3; c never retrieved


def test_recall_by_hand():
    m = evaluate(QRELS_3REL, RUN_5, ["recall@1", "recall@2", "recall@3", "recall@5", "recall@100"])
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["recall@100"] == pytest.approx(2 / 3)
    assert recall(["a"], set(), 10) == 0.0


def test_precision_by_hand():
    m = evaluate(QRELS_3REL, RUN_5, ["precision@1", "precision@2", "P@3", "precision@5", "precision@10"])
    assert m["precision@1"] == 1.0
    assert m["precision@2"] == pytest.approx(1 / 2)
    assert m["P@3"] == pytest.approx(2 / 3)
    assert m["precision@5"] == pytest.approx(2 / 5)
    # trec_eval's P_10 divides by 10 even though only 5 documents were retrieved
    assert m["precision@10"] == pytest.approx(2 / 10)
    assert precision([], {"a"}, 5) == 0.0


def test_map_by_hand():
    # AP = (P@1 + P@3) / |R| = (1/1 + 2/3) / 3 = 5/9 = 0.555556 (c, never retrieved, counts in |R|)
    assert evaluate(QRELS_3REL, RUN_5, ["map"])["map"] == pytest.approx(5 / 9)
    assert average_precision(["x", "a"], {"a"}) == pytest.approx(1 / 2)
    # cut-off: only "a" at rank 1 counted -> (1/1) / 3
    assert average_precision(["a", "x", "b"], {"a", "b", "c"}, k=2) == pytest.approx(1 / 3)
    assert average_precision(["a"], set()) == 0.0


def test_default_metrics_and_bad_names():
    assert set(evaluate(QRELS_3REL, RUN_5)) == set(DEFAULT_METRICS) == {"ndcg@10", "mrr@10", "recall@100", "map"}
    with pytest.raises(ValueError, match="unknown metric 'bleu@4'"):
        evaluate(QRELS_3REL, RUN_5, ["bleu@4"])
    with pytest.raises(ValueError, match="cut-off must be a positive integer"):
        evaluate(QRELS_3REL, RUN_5, ["ndcg@0"])
    with pytest.raises(ValueError, match="cut-off must be a positive integer"):
        evaluate(QRELS_3REL, RUN_5, ["ndcg@ten"])


# ------------------------------------------------------------------------------------ trec_eval conventions


def test_ties_are_broken_by_doc_id_descending():
    assert [d for d, _ in ranked({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5, "y": 2.0})] == ["y", "c", "b", "a", "z"]
    # string order, like trec_eval's strcmp: "9" > "10"
    assert [d for d, _ in ranked({"10": 1.0, "9": 1.0, "100": 1.0})] == ["9", "100", "10"]
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}  # all tied: order c, b, a -> "a" at rank 3
    assert evaluate(qrels, run, ["mrr@10"])["mrr@10"] == pytest.approx(1 / 3)
    assert evaluate(qrels, run, ["ndcg@10"])["ndcg@10"] == pytest.approx(1 / math.log2(4))
    # and pytrec_eval agrees
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    assert ref["q"]["recip_rank"] == pytest.approx(1 / 3)


def test_query_missing_from_run_scores_zero_and_counts():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}}
    pq = per_query(qrels, run, ["mrr@10", "ndcg@10", "recall@100", "map"])
    for metric in pq:
        assert pq[metric] == {"q1": 1.0, "q2": 0.0}
    assert evaluate(qrels, run, ["mrr@10", "map"]) == {"mrr@10": 0.5, "map": 0.5}


def test_query_only_in_run_is_ignored():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "q3": {"a": 1.0, "b": 0.5}}
    pq = per_query(qrels, run, ["mrr@10"])
    assert set(pq["mrr@10"]) == {"q1", "q2"}
    assert evaluate(qrels, run, ["mrr@10"]) == {"mrr@10": 0.5}


def test_relevance_level():
    qrels = {"q": {"a": 2, "b": 1}}
    run = {"q": run_of("b", "a")}
    m1 = evaluate(qrels, run, ["mrr@10", "recall@1", "map", "precision@1", "ndcg@10"], relevance_level=1)
    m2 = evaluate(qrels, run, ["mrr@10", "recall@1", "map", "precision@1", "ndcg@10"], relevance_level=2)
    assert m1["mrr@10"] == 1.0 and m2["mrr@10"] == pytest.approx(1 / 2)
    assert m1["recall@1"] == pytest.approx(1 / 2) and m2["recall@1"] == 0.0
    # level 1: AP = (1/1 + 2/2)/2 = 1; level 2: only a relevant, at rank 2 -> 1/2
    assert m1["map"] == 1.0 and m2["map"] == pytest.approx(1 / 2)
    assert m1["precision@1"] == 1.0 and m2["precision@1"] == 0.0
    # nDCG uses the grades themselves, whatever the level (as trec_eval)
    assert m1["ndcg@10"] == m2["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_aggregate_means():
    assert aggregate({"m": {"a": 1.0, "b": 0.0, "c": 0.5}, "empty": {}}) == {"m": 0.5, "empty": 0.0}


# ------------------------------------------------------------------------------------ pytrec_eval equality


def assert_matches_pytrec_eval(qrels, run, relevance_level=1):
    """Per query, our ndcg@10 / recall@100 / map / precision@5 equal trec_eval's ndcg_cut_10 / recall_100 /
    map / P_5, and our mrr@10 equals recip_rank on the run cut to 10."""
    ours = per_query(qrels, run, ["ndcg@10", "recall@100", "map", "mrr@10", "precision@5"], relevance_level)
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100", "map", "P_5"},
                                          relevance_level=relevance_level).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"},
                                         relevance_level=relevance_level).evaluate(truncate(run, 10))
    assert full, "pytrec_eval evaluated no query"
    pairs = [("ndcg@10", full, "ndcg_cut_10"), ("recall@100", full, "recall_100"), ("map", full, "map"),
             ("precision@5", full, "P_5"), ("mrr@10", cut, "recip_rank")]
    for qid in qrels:
        for ours_name, ref, ref_name in pairs:
            if qid in ref:
                assert ours[ours_name][qid] == pytest.approx(ref[qid][ref_name], abs=1e-6), (qid, ours_name)
            else:  # pytrec_eval skips queries absent from the run; we score them 0
                assert qid not in run or not run[qid]
                assert ours[ours_name][qid] == 0.0
    return ours, full


@pytest.fixture(scope="module")
def scifact_bm25(data_root):
    from retriever.bm25 import BM25Index

    col = load_beir(data_root / "scifact", "test")
    index = BM25Index().index(col.doc_ids, col.doc_texts(), show_progress=False)
    run = index.search(list(col.queries.values()), k=100, query_ids=list(col.queries), show_progress=False)
    return col, run


def test_bm25_scifact_matches_pytrec_eval(scifact_bm25):
    col, run = scifact_bm25
    assert set(run) == set(col.qrels)
    assert all(0 < len(docs) <= 100 for docs in run.values())
    ours, full = assert_matches_pytrec_eval(col.qrels, run)
    assert len(full) == 300
    means = aggregate(ours)
    # sanity: published BM25 nDCG@10 on SciFact test is 0.665-0.687
    assert 0.60 < means["ndcg@10"] < 0.72
    ref_mean = float(np.mean([v["ndcg_cut_10"] for v in full.values()]))
    assert means["ndcg@10"] == pytest.approx(ref_mean, abs=1e-6)


def test_synthetic_ties_and_graded_qrels_match_pytrec_eval():
    rng = random.Random(1234)
    docs = [f"d{i}" for i in range(60)]  # d7 vs d10 vs d59: string order matters for ties
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(40):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 12))
        qrels[qid] = {d: rng.choice([-1, 0, 1, 1, 2, 3]) for d in judged}
        retrieved = rng.sample(docs, rng.randint(5, 50))
        run[qid] = {d: float(rng.randint(0, 3)) for d in retrieved}  # four score values: many ties
    qrels["q_unretrieved"] = {"d1": 2}  # judged but absent from the run
    run["q_unjudged"] = {"d1": 1.0}  # in the run only
    for level in (1, 2):
        ours, _ = assert_matches_pytrec_eval(qrels, run, relevance_level=level)
        assert ours["map"]["q_unretrieved"] == 0.0
        assert "q_unjudged" not in ours["map"]


# ------------------------------------------------------------------------------------ randomization test


def test_randomization_identical_runs():
    a = {f"q{i}": i / 30 for i in range(30)}
    r = randomization_test(a, dict(a), n_resamples=2000, seed=0)
    assert r["p_value"] == 1.0
    assert r["delta"] == 0.0
    assert r["mean_a"] == r["mean_b"] == pytest.approx(np.mean(list(a.values())))
    assert r["n_queries"] == 30


def test_randomization_better_on_every_query():
    a = {f"q{i}": 0.3 + 0.01 * i for i in range(30)}
    b = {q: v + 0.1 + 0.001 * i for i, (q, v) in enumerate(a.items())}
    r = randomization_test(a, b, n_resamples=10_000, seed=0)
    # only the all-same-sign flips (probability 2/2^30) reach the observed |mean|
    assert r["p_value"] < 0.01
    assert r["p_value"] >= 1 / 10_001  # the +1 correction: never 0
    assert r["delta"] == pytest.approx(0.1 + 0.001 * 14.5)
    assert r["mean_b"] > r["mean_a"]
    # two-sided: swapping the runs flips delta, keeps p
    s = randomization_test(b, a, n_resamples=10_000, seed=0)
    assert s["p_value"] == r["p_value"]
    assert s["delta"] == pytest.approx(-r["delta"])


def test_randomization_seeded_is_reproducible():
    rng = np.random.default_rng(7)
    a = {f"q{i}": float(x) for i, x in enumerate(rng.random(25))}
    b = {q: v + float(e) for (q, v), e in zip(a.items(), rng.normal(0.02, 0.2, 25), strict=True)}
    r1 = randomization_test(a, b, n_resamples=3000, seed=42)
    r2 = randomization_test(a, b, n_resamples=3000, seed=42)
    assert r1 == r2
    assert 0.0 < r1["p_value"] <= 1.0


def test_randomization_p_value_close_to_exact():
    diffs = [0.1, 0.2, -0.05, 0.3, 0.0, 0.15, -0.1, 0.25, 0.05, -0.2]
    a = {f"q{i}": 0.5 for i in range(10)}
    b = {f"q{i}": 0.5 + d for i, d in enumerate(diffs)}
    observed = abs(np.mean(diffs))
    flips = list(itertools.product([-1, 1], repeat=10))
    exact = sum(abs(np.mean(np.array(s) * diffs)) >= observed - 1e-12 for s in flips) / len(flips)
    r = randomization_test(a, b, n_resamples=20_000, seed=3)
    assert r["p_value"] == pytest.approx(exact, abs=0.015)
    assert 0.05 < exact < 0.5  # a meaningful, non-trivial p-value


def test_randomization_uses_common_queries_only():
    a = {"q1": 0.1, "q2": 0.2, "only_a": 1.0}
    b = {"q1": 0.3, "q2": 0.4, "only_b": 0.0}
    r = randomization_test(a, b, n_resamples=100)
    assert r["n_queries"] == 2
    assert r["mean_a"] == pytest.approx(0.15) and r["mean_b"] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="share no query"):
        randomization_test({"x": 1.0}, {"y": 1.0})
