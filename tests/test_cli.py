"""The ``hardneg`` command line, in-process (``mining_jobs.cli.main``) and through the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mining_jobs.cli import main
from retriever.data import load_beir
from retriever.metrics import DEFAULT_METRICS, evaluate
from retriever.runs import read_trec, write_trec


@pytest.fixture
def cli_env(data_root: Path, tmp_path: Path, monkeypatch) -> Path:
    """``$HARDNEG_DATA`` -> the real collections, ``$HARDNEG_CACHE`` -> a fresh folder; offline hub."""
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    monkeypatch.setenv("HARDNEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")  # -q would set it for the whole process; keep it scoped
    return data_root


@pytest.fixture(scope="module")
def adi_qrels(data_root: Path):
    return load_beir(data_root / "adi", "test").qrels


def _check_metrics_file(folder: Path, qrels) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    for key in DEFAULT_METRICS:
        assert key in metrics, key
        assert isinstance(metrics[key], float)
        assert 0.0 <= metrics[key] <= 1.0
    run = read_trec(folder / "run.trec")
    assert run, "empty run file"
    recomputed = evaluate(qrels, run)
    for key in DEFAULT_METRICS:
        assert recomputed[key] == pytest.approx(metrics[key], abs=1e-9), key
    return metrics


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_bm25_on_adi(cli_env, tmp_path, capsys, adi_qrels):
    out = tmp_path / "run"
    rc = main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "bm25", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = _check_metrics_file(out, adi_qrels)
    assert metrics["ndcg@10"] > 0.3  # BM25 on adi: about 0.49
    assert metrics["num_queries"] == len(adi_qrels)
    assert "ndcg@10" in captured.out
    assert "| bm25 |" in captured.out
    assert f"{metrics['ndcg@10']:.4f}" in captured.out
    for name in ("per_query.json", "manifest.json", "run.trec"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["retriever"] == "bm25"
    assert manifest["collection"]["name"] == "adi"
    run = read_trec(out / "run.trec")
    assert set(run) <= set(adi_qrels)
    assert max(len(d) for d in run.values()) <= 100  # --top-k default

    # a second run into the same folder is refused and leaves the finished run alone
    before = (out / "metrics.json").read_bytes()
    rc = main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "bm25", "--out", str(out),
               "--k1", "0.3"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "--overwrite" in captured.err
    assert (out / "metrics.json").read_bytes() == before

    # with --overwrite it replaces it (k1 changes the scores)
    rc = main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "bm25", "--out", str(out),
               "--k1", "0.3", "--overwrite"])
    capsys.readouterr()
    assert rc == 0
    assert (out / "metrics.json").read_bytes() != before
    _check_metrics_file(out, adi_qrels)


def test_evaluate_refuses_a_foreign_non_empty_folder(cli_env, tmp_path, capsys, adi_qrels):
    """evaluate never writes into a folder that holds no evaluation, not even with --overwrite (one or several
    retrievers); a folder written by an evaluation from before run.json is replaced with --overwrite."""
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    base = ["-q", "evaluate", "--data", "adi", "--split", "test", "--out", str(foreign)]
    for extra in ([], ["--overwrite"], ["--retriever", "bm25,dense"]):
        assert main([*base, *extra]) == 2, extra
        assert "is not empty and holds no hardneg evaluation (no run.json)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    assert (foreign / "thesis.tex").read_text() == "years of work"

    old = tmp_path / "old"  # an evaluation's files without run.json
    old.mkdir()
    for name in ("metrics.json", "manifest.json", "per_query.json"):
        (old / name).write_text("{}")
    assert main(["-q", "evaluate", "--data", "adi", "--split", "test", "--out", str(old)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "evaluate", "--data", "adi", "--split", "test", "--out", str(old), "--overwrite"]) == 0
    capsys.readouterr()
    assert (old / "run.json").is_file()
    _check_metrics_file(old, adi_qrels)


@pytest.mark.slow
def test_evaluate_bm25_dense_hybrid_on_adi(cli_env, tmp_path, capsys, adi_qrels):
    out = tmp_path / "multi"
    rc = main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "bm25,dense,hybrid",
               "--bf16", "off", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = {}
    for r in ("bm25", "dense", "hybrid"):
        assert (out / r).is_dir(), r
        results[r] = _check_metrics_file(out / r, adi_qrels)
    assert not (out / "metrics.json").exists()
    summary = (out / "summary.md").read_text()
    for r in ("bm25", "dense", "hybrid"):
        assert f"| {r} |" in summary
    assert "p (ndcg@10 vs bm25)" in summary
    assert "ndcg@10" in captured.out and "| hybrid |" in captured.out
    assert results["dense"]["ndcg@10"] > 0.3
    # fusing two comparable runs does not fall below the worse of them on adi
    assert results["hybrid"]["ndcg@10"] >= min(results["bm25"]["ndcg@10"], results["dense"]["ndcg@10"])
    manifest = json.loads((out / "dense" / "manifest.json").read_text())
    assert manifest["dense"]["embedding_cache"]["cache"] == "miss"
    assert Path(manifest["dense"]["embedding_cache"]["path"]).is_relative_to(tmp_path / "cache")


def test_unknown_data_returns_2(cli_env, tmp_path, capsys):
    rc = main(["-q", "evaluate", "--data", "no_such_collection_xyz", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 2
    assert "no_such_collection_xyz" in captured.err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_unknown_retriever_returns_2(cli_env, tmp_path, capsys):
    rc = main(["-q", "evaluate", "--data", "adi", "--retriever", "bm25,splade", "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert rc == 2
    assert "splade" in captured.err
    assert not (tmp_path / "o").exists()


def test_unknown_split_returns_2(cli_env, tmp_path, capsys):
    rc = main(["-q", "evaluate", "--data", "adi", "--split", "train", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "train" in capsys.readouterr().err


def _self_matching_collection(root: Path) -> Path:
    """A tiny BEIR folder where query ``q1`` is also a document id, with the same text (so it ranks first)."""
    folder = root / "selfcol"
    (folder / "qrels").mkdir(parents=True)
    docs = [
        {"_id": "q1", "title": "", "text": "volcanic eruptions and lava flows"},
        {"_id": "d2", "title": "Volcanoes", "text": "lava flows from volcanic eruptions destroy villages"},
        {"_id": "d3", "title": "", "text": "the stock market and investors"},
        {"_id": "q2", "title": "", "text": "quantum computers and qubits"},
        {"_id": "d5", "title": "", "text": "qubits in quantum computing hardware"},
    ]
    queries = [{"_id": "q1", "text": "volcanic eruptions and lava flows"},
               {"_id": "q2", "text": "quantum computers and qubits"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td5\t1\n")
    return folder


def test_drop_self(cli_env, tmp_path, capsys):
    folder = _self_matching_collection(tmp_path)
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    assert main(["-q", "evaluate", "--data", str(folder), "--out", str(keep)]) == 0
    assert main(["-q", "evaluate", "--data", str(folder), "--out", str(drop), "--drop-self"]) == 0
    capsys.readouterr()
    kept, dropped = read_trec(keep / "run.trec"), read_trec(drop / "run.trec")
    # without the flag each query finds itself first ...
    for qid in ("q1", "q2"):
        assert max(kept[qid], key=kept[qid].get) == qid
    # ... with it, its own id is gone and nothing else changes
    for qid in ("q1", "q2"):
        assert qid not in dropped[qid]
        assert dropped[qid] == {d: s for d, s in kept[qid].items() if d != qid}
    lines = (drop / "run.trec").read_text().splitlines()
    assert not [ln for ln in lines if ln.split()[0] == ln.split()[2]]
    # the relevant document now ranks first: perfect scores
    metrics = json.loads((drop / "metrics.json").read_text())
    assert metrics["mrr@10"] == pytest.approx(1.0)
    assert json.loads((keep / "metrics.json").read_text())["mrr@10"] == pytest.approx(0.5)


def test_compare_in_process(cli_env, tmp_path, capsys, adi_qrels):
    a = {q: {d: 1.0 for d in docs} for q, docs in adi_qrels.items()}  # perfect run
    b = {q: {"1": 1.0} for q in adi_qrels}
    write_trec(a, tmp_path / "a.trec")
    write_trec(b, tmp_path / "b.trec")
    rc = main(["-q", "compare", str(tmp_path / "a.trec"), str(tmp_path / "b.trec"), "--data", "adi",
               "--resamples", "500"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "p (randomization)" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("| ndcg@10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == pytest.approx(1.0)
    assert float(cells[4]) < 0.05  # a perfect run against a poor one


# ----------------------------------------------------------------------------------- console script


def _script() -> str:
    exe = Path(sys.executable).parent / "hardneg"
    if not exe.is_file():
        pytest.fail(f"console script not installed next to {sys.executable}: pip install -e .")
    return str(exe)


def _env(data_root: Path, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HARDNEG_DATA": str(data_root), "HARDNEG_CACHE": str(tmp_path / "cache"),
                "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    return env


@pytest.mark.slow  # two processes; the installed script is checked in the fast tier by the bad-data exit code
def test_console_script_help(tmp_path, data_root):
    res = subprocess.run([_script(), "--help"], capture_output=True, text=True, timeout=120,
                         env=_env(data_root, tmp_path))
    assert res.returncode == 0, res.stderr
    assert "evaluate" in res.stdout and "compare" in res.stdout
    res = subprocess.run([_script(), "evaluate", "--help"], capture_output=True, text=True, timeout=120,
                         env=_env(data_root, tmp_path))
    assert res.returncode == 0, res.stderr
    assert "--drop-self" in res.stdout and "--overwrite" in res.stdout


@pytest.mark.slow
def test_console_script_compare(tmp_path, data_root, cli_env, capsys):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(["-q", "evaluate", "--data", "adi", "--out", str(run_a)]) == 0
    assert main(["-q", "evaluate", "--data", "adi", "--out", str(run_b), "--bm25-backend", "rank_bm25",
                 "--k1", "0.9"]) == 0
    capsys.readouterr()
    res = subprocess.run([_script(), "-q", "compare", str(run_a / "run.trec"), str(run_b / "run.trec"),
                          "--data", "adi", "--split", "test", "--resamples", "1000"],
                         capture_output=True, text=True, timeout=180, env=_env(data_root, tmp_path))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("| metric |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert any(c.startswith("p") for c in cols), cols
    p_col = cols.index("p (randomization)")
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    for m in DEFAULT_METRICS:
        row = next(ln for ln in lines if ln.startswith(f"| {m} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0.0 < float(cells[p_col]) <= 1.0
        assert float(cells[1]) == pytest.approx(metrics_a[m], abs=5e-5)


def test_console_script_bad_data_exit_code(tmp_path, data_root):
    res = subprocess.run([_script(), "-q", "evaluate", "--data", "no_such_collection_xyz", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120,
                         env=_env(data_root, tmp_path))
    assert res.returncode == 2
    assert "no_such_collection_xyz" in res.stderr


@pytest.mark.slow
def test_console_script_quiet_evaluate(tmp_path, data_root):
    # -q: "warnings only, no progress bars" -- no INFO/DEBUG log lines from any library on stderr
    out = tmp_path / "q"
    res = subprocess.run([_script(), "-q", "evaluate", "--data", "adi", "--out", str(out)],
                         capture_output=True, text=True, timeout=180, env=_env(data_root, tmp_path))
    assert res.returncode == 0, res.stderr
    assert "| bm25 |" in res.stdout
    assert (out / "metrics.json").is_file()
    noisy = [ln for ln in res.stderr.splitlines() if " DEBUG " in ln or " INFO " in ln]
    assert not noisy, noisy
