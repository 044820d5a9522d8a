"""benchmarks.record_run: a job's report becomes a result file through write_result, images copied beside it."""

from __future__ import annotations

import json

from benchmarks.record_run import record


def test_record_run_copies_report_facts_and_images(tmp_path):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "report.md").write_text("# ANCE loop on scifact\n\n| round | x |\n|---|---|\n| 1 | 0.6772 |\n\n"
                                   "![metrics over rounds](metrics.png)\n")
    (run / "metrics.png").write_bytes(b"\x89PNG fake")
    (run / "summary.json").write_text(json.dumps({"best_round": 1}))
    (run / "bm25").mkdir()
    (run / "bm25" / "metrics.json").write_text(json.dumps({"ndcg@10": 0.5}))
    res = tmp_path / "results"
    record(run, "demo", "make demo", res_dir=res)

    md = (res / "demo.md").read_text()
    assert md.startswith("# ANCE loop on scifact\n")
    assert "| 1 | 0.6772 |" in md
    assert "![metrics over rounds](demo_metrics.png)" in md
    assert (res / "demo_metrics.png").read_bytes() == b"\x89PNG fake"
    assert "## Machine" in md and "`make demo`" in md
    data = json.loads((res / "demo.json").read_text())
    assert data["files"] == {"summary.json": {"best_round": 1}, "bm25/metrics.json": {"ndcg@10": 0.5}}
    assert data["command"] == "make demo" and "cpu" in data["machine"]


def test_record_run_titles_a_summary_without_heading(tmp_path):
    run = tmp_path / "evaluate"
    run.mkdir()
    (run / "summary.md").write_text("scifact / test: 3 queries, 5 documents\n\n| retriever | ndcg@10 |\n")
    record(run, "evaluate", "make evaluate", res_dir=tmp_path / "out")
    md = (tmp_path / "out" / "evaluate.md").read_text()
    assert md.startswith("# evaluate\n\nscifact / test: 3 queries")


def test_record_run_states_the_whole_commands_wall_time(tmp_path, monkeypatch):
    import sys
    import time

    run = tmp_path / "demo"
    run.mkdir()
    (run / "report.md").write_text("# ANCE loop on scifact\n\nTotal 285 s in this invocation.\n")
    record(run, "demo", "make demo", res_dir=tmp_path / "a", wall_seconds=990.4)
    md = (tmp_path / "a" / "demo.md").read_text()
    assert "`make demo` took 990 s (16.5 min) of wall-clock time" in md
    assert json.loads((tmp_path / "a" / "demo.json").read_text())["wall_seconds"] == 990.4
    record(run, "demo", "make demo", res_dir=tmp_path / "b")  # without it: no claim about the whole command
    assert "wall-clock" not in (tmp_path / "b" / "demo.md").read_text()
    assert json.loads((tmp_path / "b" / "demo.json").read_text())["wall_seconds"] is None
    # the command line: --started is the start in seconds since the epoch
    import benchmarks.record_run as rr

    seen = {}
    monkeypatch.setattr(rr, "record", lambda *a, **k: seen.update(k))
    monkeypatch.setattr(sys, "argv", ["record_run", str(run), "demo", "--command", "make demo",
                                      "--started", str(time.time() - 120)])
    rr.main()
    assert 120 <= seen["wall_seconds"] < 600
