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
from retriever.data import load_beir
from retriever.rerank import CrossEncoderScorer, FoldSet, load_reranker

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


def test_report_shows_reranking_quality(fold_set):
    report = json.loads((fold_set / "report.json").read_text())
    ev = report["eval"]
    assert ev["depth"] == 10 and ev["queries"] == 35
    for name in ("bm25", "reranked"):
        assert 0.0 <= ev[name]["ndcg@10"] <= 1.0
    # reranking only permutes BM25's top 10, so recall@100 is the same
    assert ev["reranked"]["recall@100"] == pytest.approx(ev["bm25"]["recall@100"])
    md = (fold_set / "report.md").read_text()
    assert "Reranking BM25 top-10" in md and "| reranked |" in md


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
