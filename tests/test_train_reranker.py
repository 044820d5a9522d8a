"""`hardneg train-reranker`: a cross-fitted fold set on adi with a tiny backbone, its report, and how the
mining job uses it (each query scored by the fold model that never trained on it)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mining_jobs.cli import main
from mining_jobs.train_reranker import fold_assignment
from retriever import metrics as M
from retriever.bm25 import BM25Index
from retriever.data import load_beir
from retriever.rerank import CrossEncoderScorer, FoldSet, load_reranker
from retriever.runs import ranked

pytest.register_assert_rewrite("mining_fixtures")
pytest_plugins = ("mining_fixtures",)

from mining_fixtures import mining_env  # noqa: E402


@pytest.fixture(scope="module")
def fold_set(tmp_path_factory, data_root, tiny_cross_encoder, torch_one_thread) -> Path:
    mp = pytest.MonkeyPatch()
    mining_env(mp, data_root, tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("ce") / "folds"
    rc = main(["-q", "train-reranker", "--data", "adi", "--split", "test", "--folds", "2", "--backbone",
               str(tiny_cross_encoder), "--max-length", "48", "--negatives", "2", "--eval-split", "test",
               "--eval-depth", "10", "--out", str(out)])
    mp.undo()
    assert rc == 0
    return out


def test_fold_assignment_is_balanced_seeded_and_complete():
    qids = [f"q{i}" for i in range(11)]
    a = fold_assignment(qids, 3, seed=1)
    assert set(a) == set(qids)
    assert sorted(Counter(a.values()).values()) == [3, 4, 4]
    assert a == fold_assignment(qids, 3, seed=1)
    assert a != fold_assignment(qids, 3, seed=2)


def test_fold_set_files_and_cross_fitting(fold_set, data_root):
    meta = json.loads((fold_set / "folds.json").read_text())
    col = load_beir(data_root / "adi", "test")
    assert meta["folds"] == 2 and meta["models"] == ["fold_0", "fold_1"]
    assert set(meta["assignment"]) == set(col.qrels)
    for k, stats in enumerate(meta["training"]):
        held_out = sum(1 for v in meta["assignment"].values() if v == k)
        assert stats["train_queries"] == len(col.qrels) - held_out  # trained without its own fold
        assert stats["steps"] > 0
        assert (fold_set / f"fold_{k}" / "config.json").is_file()
    assert FoldSet.is_fold_set(fold_set)


def test_report_shows_reranking_quality(fold_set, data_root):
    """The report's numbers are those of BM25's top 10 on adi test and of the same lists reordered by the fold
    set (each query by the fold model that never trained on it), recomputed here from the collection and the
    saved models; the reranker does reorder them, and report.md prints what report.json holds."""
    report = json.loads((fold_set / "report.json").read_text())
    ev = report["eval"]
    assert ev["split"] == "test" and ev["depth"] == 10 and ev["queries"] == 35
    col = load_beir(data_root / "adi", "test")
    texts = col.doc_texts()
    qids = sorted(col.queries)
    bm25 = BM25Index().index(col.doc_ids, texts, show_progress=False)
    run = bm25.search([col.queries[q] for q in qids], k=10, query_ids=qids, show_progress=False)
    fs = load_reranker(str(fold_set), max_length=48)
    pos = {d: i for i, d in enumerate(col.doc_ids)}
    flat = [(q, d) for q in qids for d in run[q]]
    scores = fs.score_queries([q for q, _ in flat], [(col.queries[q], texts[pos[d]]) for q, d in flat])
    reranked: dict[str, dict[str, float]] = {}
    for (q, d), s in zip(flat, scores, strict=True):
        reranked.setdefault(q, {})[d] = float(s)
    def order(run_q: dict[str, float]) -> list[str]:
        return [d for d, _ in ranked(run_q)]

    assert any(order(reranked[q]) != order(run[q]) for q in qids), "the fold set left every BM25 order as it was"
    for name, got in (("bm25", run), ("reranked", reranked)):
        want = M.evaluate({q: col.qrels[q] for q in qids}, got)
        for metric in ("ndcg@10", "mrr@10", "recall@100", "map"):
            assert ev[name][metric] == pytest.approx(want[metric], abs=1e-6), (name, metric)
    want_p = M.randomization_test(M.per_query(col.qrels, run, ["ndcg@10"])["ndcg@10"],
                                  M.per_query(col.qrels, reranked, ["ndcg@10"])["ndcg@10"])["p_value"]
    assert ev["p_value_ndcg@10"] == pytest.approx(want_p)
    md = (fold_set / "report.md").read_text()
    assert "Reranking BM25 top-10 on held-out test (35 queries)" in md
    for name in ("bm25", "reranked"):
        m = ev[name]
        assert (f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | {m['map']:.4f} |"
                in md), name
    assert f"p = {ev['p_value_ndcg@10']:.4f}" in md


def test_each_query_is_scored_by_the_model_that_did_not_train_on_it(fold_set):
    fs = load_reranker(str(fold_set), max_length=48)
    assert isinstance(fs, FoldSet)
    qids = sorted(fs.assignment)[:4] + ["unseen-query"]
    pairs = [(f"query {q}", "some document text about retrieval") for q in qids]
    got = fs.score_queries(qids, pairs)
    for i, q in enumerate(qids):
        if q in fs.assignment:
            direct = fs.scorers[fs.assignment[q]].score([pairs[i]])[0]
        else:  # a query in no fold gets the mean of the fold models
            direct = np.mean([s.score([pairs[i]])[0] for s in fs.scorers])
        assert got[i] == pytest.approx(direct, abs=1e-5)
    assert isinstance(fs.scorers[0], CrossEncoderScorer)


def test_existing_fold_set_is_not_overwritten_silently(fold_set, capsys):
    before = (fold_set / "folds.json").read_text()
    assert main(["train-reranker", "--data", "adi", "--split", "test", "--out", str(fold_set)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (fold_set / "folds.json").read_text() == before


def test_refused_run_folders_raise_the_projects_error(tmp_path):
    """A folder holding a fold set (here one from before run.json) or files that are no fold set is refused with
    RunFolderError (a HardnegError, not FileExistsError), before any data is read; the folder is left alone."""
    from mining_jobs.runfolder import RunFolderError
    from mining_jobs.train_reranker import RerankerJob, run_train_reranker
    from retriever.errors import HardnegError

    old = tmp_path / "old"
    old.mkdir()
    (old / "folds.json").write_text("{}")
    with pytest.raises(RunFolderError, match="fold set written by an earlier hardneg.*--overwrite") as err:
        run_train_reranker(RerankerJob(data="nowhere", out=str(old)))
    assert isinstance(err.value, HardnegError) and not isinstance(err.value, FileExistsError)
    assert (old / "folds.json").read_text() == "{}"
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(RunFolderError, match="holds no hardneg fold set"):
        run_train_reranker(RerankerJob(data="nowhere", out=str(foreign), overwrite=True))
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_resume_keeps_finished_folds_and_trains_the_rest(tmp_path, data_root, tiny_cross_encoder, torch_one_thread,
                                                         monkeypatch):
    """The job service resumes a fold set whose worker died: a fold with its fold.json (written after its
    weights) is kept, byte for byte; a fold without it is trained again; other settings never reuse a fold."""
    from mining_jobs.train_reranker import FOLD_DONE, RerankerJob, run_train_reranker
    from retriever.rerank_train import TrainArgs

    mining_env(monkeypatch, data_root, tmp_path / "cache")

    def job(**kw) -> RerankerJob:
        return RerankerJob(data="adi", split="test", out=str(tmp_path / "ce"), folds=2, negatives=2, eval_split=None,
                           overwrite=True, resume=True, train=TrainArgs(backbone=str(tiny_cross_encoder),
                                                                       max_length=48, epochs=1, **kw))

    run_train_reranker(job())
    out = tmp_path / "ce"
    weights = {k: (out / k / "model.safetensors").read_bytes() for k in ("fold_0", "fold_1")}
    stamp0 = (out / "fold_0" / "model.safetensors").stat().st_mtime_ns
    (out / "fold_1" / FOLD_DONE).unlink()  # as if the worker died while training fold 1
    (out / "folds.json").unlink()
    run_train_reranker(job())
    assert (out / "fold_0" / "model.safetensors").stat().st_mtime_ns == stamp0  # kept, not retrained
    assert (out / "fold_1" / FOLD_DONE).is_file() and (out / "folds.json").is_file()
    assert (out / "fold_1" / "model.safetensors").read_bytes() == weights["fold_1"]  # same seed: same weights
    run_train_reranker(job(lr=3e-4))  # other settings: every fold is trained again
    assert (out / "fold_0" / "model.safetensors").stat().st_mtime_ns != stamp0
