"""Runs (retriever.runs: TREC files, drop_self, truncate) and reciprocal-rank fusion (retriever.fusion)."""

from __future__ import annotations

import re

import pytest

from retriever.errors import DataError
from retriever.fusion import reciprocal_rank_fusion
from retriever.runs import drop_self, ranked, read_trec, truncate, write_trec

# ------------------------------------------------------------------------------------ TREC files

RUN = {
    "q2": {"d1": 0.5, "d3": 12.25, "d2": 0.5, "d10": -1.125},
    "q1": {"a": 3.0, "b": 1.0 / 3.0},
}


def test_write_trec_lines_are_in_trec_eval_order(tmp_path):
    path = write_trec(RUN, tmp_path / "sub" / "run.trec", tag="bm25")
    assert path == tmp_path / "sub" / "run.trec"
    assert path.read_text().splitlines() == [
        "q1 Q0 a 1 3.0 bm25",
        f"q1 Q0 b 2 {1 / 3!r} bm25",  # repr: the exact float, so re-reading keeps the order
        "q2 Q0 d3 1 12.25 bm25",
        "q2 Q0 d2 2 0.5 bm25",  # tie with d1: doc id descending
        "q2 Q0 d1 3 0.5 bm25",
        "q2 Q0 d10 4 -1.125 bm25",
    ]
    assert not (tmp_path / "sub" / "run.trec.tmp").exists()


def test_write_then_read_round_trip(tmp_path):
    path = write_trec(RUN, tmp_path / "run.trec")
    back = read_trec(path)
    assert set(back) == set(RUN)
    for qid, docs in RUN.items():
        assert set(back[qid]) == set(docs)
        for did, score in docs.items():
            assert back[qid][did] == pytest.approx(score, abs=1e-6)
        assert [d for d, _ in ranked(back[qid])] == [d for d, _ in ranked(docs)]
    # the ranks in the file follow the order read_trec's run gives back
    for line in path.read_text().splitlines():
        qid, _, did, rank, _, tag = line.split()
        assert tag == "hardneg"
        assert [d for d, _ in ranked(back[qid])][int(rank) - 1] == did


def test_round_trip_larger_run(tmp_path):
    run = {f"q{q}": {f"d{d}": round((q * 31 + d * 17) % 23 / 7.0, 6) for d in range(30)} for q in range(5)}
    back = read_trec(write_trec(run, tmp_path / "r.trec"))
    for qid in run:
        assert back[qid] == pytest.approx(run[qid], abs=1e-6)
        assert [d for d, _ in ranked(back[qid])] == [d for d, _ in ranked(run[qid])]


def test_write_trec_rejects_whitespace_ids_and_keeps_old_file(tmp_path):
    path = write_trec({"q": {"d": 1.0}}, tmp_path / "run.trec")
    before = path.read_text()
    with pytest.raises(ValueError, match="ids that are empty or hold whitespace"):
        write_trec({"q": {"bad id": 1.0}}, path)
    assert path.read_text() == before  # never half a file at the target


def test_read_trec_skips_blank_lines_and_accepts_any_whitespace(tmp_path):
    p = tmp_path / "run.txt"
    p.write_text("q1 Q0 a 1 2.5 tag\n\nq1\tQ0\tb\t2\t1e-3\ttag\n")
    assert read_trec(p) == {"q1": {"a": 2.5, "b": 0.001}}


def test_read_trec_malformed_line(tmp_path):
    p = tmp_path / "run.txt"
    p.write_text("q1 Q0 a 1 2.5 tag\nq1 Q0 b 2 1.5\n")
    with pytest.raises(DataError, match=re.escape(f"{p}:2:") + " expected 6 columns .* got 5"):
        read_trec(p)


def test_read_trec_non_numeric_score(tmp_path):
    p = tmp_path / "run.txt"
    p.write_text("q1 Q0 a 1 2.5 tag\nq1 Q0 b 2 1.5 tag\nq1 Q0 c 3 high tag\n")
    with pytest.raises(DataError, match=re.escape(f"{p}:3:") + " score 'high' is not a number"):
        read_trec(p)


def test_read_trec_duplicate_document(tmp_path):
    p = tmp_path / "run.txt"
    p.write_text("q1 Q0 a 1 2.5 tag\nq2 Q0 a 1 2.5 tag\nq1 Q0 a 2 1.5 tag\n")
    with pytest.raises(DataError, match=re.escape(f"{p}:3:") + " document 'a' listed twice for query 'q1'"):
        read_trec(p)


def test_read_trec_missing_file(tmp_path):
    p = tmp_path / "none.trec"
    with pytest.raises(DataError, match=re.escape(str(p)) + ": run file not found"):
        read_trec(p)


# ------------------------------------------------------------------------------------ drop_self, truncate


def test_drop_self():
    run = {"q1": {"q1": 9.0, "d1": 1.0, "q2": 0.5}, "q2": {"q2": 3.0}, "q3": {"d1": 1.0}}
    assert drop_self(run) == {"q1": {"d1": 1.0, "q2": 0.5}, "q2": {}, "q3": {"d1": 1.0}}
    assert run["q1"]["q1"] == 9.0  # input not modified


def test_truncate():
    run = {"q": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 2.0, "e": 0.0}, "r": {"x": 1.0}}
    cut = truncate(run, 3)
    assert cut == {"q": {"b": 3.0, "d": 2.0, "c": 2.0}, "r": {"x": 1.0}}  # d before c: tie, id descending
    assert list(cut["q"]) == ["b", "d", "c"]
    assert truncate(run, 2)["q"] == {"b": 3.0, "d": 2.0}
    assert truncate(run, 10) == run
    assert truncate(run, 0) == {"q": {}, "r": {}}


# ------------------------------------------------------------------------------------ RRF

A = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}  # ranks a1 b2 c3
B = {"q": {"d": 0.9, "e": 0.8, "a": 0.7}}  # ranks d1 e2 a3


def test_rrf_hand_computed_k60():
    fused = reciprocal_rank_fusion([A, B], k=60)
    f = fused["q"]
    assert f["a"] == pytest.approx(1 / 61 + 1 / 63)  # rank 1 in A, rank 3 in B: 0.032266
    assert f["a"] == pytest.approx(0.0322664, abs=1e-7)
    assert f["b"] == pytest.approx(1 / 62)  # missing from B: gets nothing from it
    assert f["c"] == pytest.approx(1 / 63)
    assert f["d"] == pytest.approx(1 / 61)
    assert f["e"] == pytest.approx(1 / 62)
    # order: a, d, then the tie e = b broken by id descending, then c
    assert list(f) == ["a", "d", "e", "b", "c"]


def test_rrf_uses_ranks_not_scores():
    # the same order with very different score scales fuses to the same values
    scaled = {"q": {"d": 900.0, "e": 1.0, "a": -5.0}}
    assert reciprocal_rank_fusion([A, scaled]) == reciprocal_rank_fusion([A, B])


def test_rrf_ties_inside_a_run_use_trec_eval_order():
    tied = {"q": {"x": 1.0, "y": 1.0}}  # trec_eval order: y (rank 1), x (rank 2)
    f = reciprocal_rank_fusion([tied], k=10)["q"]
    assert f == {"y": pytest.approx(1 / 11), "x": pytest.approx(1 / 12)}


def test_rrf_docstring_example_values():
    # run 1: a rank 1, b rank 2; run 2: b rank 1; k = 1
    # b = 1/(1+2) + 1/(1+1) = 0.833333; a = 1/(1+1) = 0.5
    fused = reciprocal_rank_fusion([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 5.0}}], k=1)
    assert fused == {"q": {"b": pytest.approx(5 / 6), "a": pytest.approx(0.5)}}
    assert list(fused["q"]) == ["b", "a"]


def test_rrf_weights():
    f = reciprocal_rank_fusion([A, B], k=60, weights=[2.0, 0.5])["q"]
    assert f["a"] == pytest.approx(2 / 61 + 0.5 / 63)
    assert f["b"] == pytest.approx(2 / 62)
    assert f["d"] == pytest.approx(0.5 / 61)
    assert list(f) == ["a", "b", "c", "d", "e"]
    # a zero weight removes a run's contribution (its docs stay, with score 0)
    g = reciprocal_rank_fusion([A, B], k=60, weights=[1.0, 0.0])["q"]
    assert g["a"] == pytest.approx(1 / 61) and g["d"] == 0.0


def test_rrf_top_k():
    f = reciprocal_rank_fusion([A, B], k=60, top_k=2)
    assert f == {"q": {"a": pytest.approx(1 / 61 + 1 / 63), "d": pytest.approx(1 / 61)}}
    assert list(reciprocal_rank_fusion([A, B], top_k=3)["q"]) == ["a", "d", "e"]


def test_rrf_query_in_one_run_only():
    a = {"q": {"x": 1.0}, "only_a": {"y": 2.0, "z": 1.0}}
    b = {"q": {"x": 5.0}}
    fused = reciprocal_rank_fusion([a, b], k=60)
    assert set(fused) == {"q", "only_a"}
    assert fused["q"] == {"x": pytest.approx(2 / 61)}
    assert fused["only_a"] == {"y": pytest.approx(1 / 61), "z": pytest.approx(1 / 62)}


def test_rrf_single_run_keeps_order():
    f = reciprocal_rank_fusion([A])["q"]
    assert list(f) == ["a", "b", "c"]
    assert f == {"a": pytest.approx(1 / 61), "b": pytest.approx(1 / 62), "c": pytest.approx(1 / 63)}


def test_rrf_does_not_modify_inputs():
    a_copy = {q: dict(d) for q, d in A.items()}
    reciprocal_rank_fusion([A, B], top_k=1)
    assert A == a_copy


def test_rrf_errors():
    with pytest.raises(ValueError, match="no runs given"):
        reciprocal_rank_fusion([])
    with pytest.raises(ValueError, match="k must be positive, got 0"):
        reciprocal_rank_fusion([A], k=0)
    with pytest.raises(ValueError, match="k must be positive, got -5"):
        reciprocal_rank_fusion([A], k=-5)
    with pytest.raises(ValueError, match="1 weights for 2 runs"):
        reciprocal_rank_fusion([A, B], weights=[1.0])
    with pytest.raises(ValueError, match="3 weights for 2 runs"):
        reciprocal_rank_fusion([A, B], weights=[1.0, 1.0, 1.0])
