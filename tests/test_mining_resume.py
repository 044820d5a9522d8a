"""A mining job killed with SIGKILL mid-run resumes per shard in the same --out and ends with the same files,
byte for byte, as a run that was never interrupted. The SIGKILL of a real process is slow (``make test-all``);
the fast tier resumes, in-process, from the files such a kill leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("mining_fixtures")  # assertions in the helpers stay rewritten
from mining_fixtures import OUTPUT_FILES, mine, mining_env, read_manifest, subprocess_env  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder
REPO = Path(__file__).resolve().parents[1]
COMPARED = ("triples.parquet", "candidates.parquet", "ntuple.parquet", "triplets.parquet")


def _cmd(out: Path, ce: Path, score_cache: Path) -> list[str]:
    return [sys.executable, "-m", "mining_jobs.cli", "-q", "mine", "--data", "adi", "--split", "test",
            "--cross-encoder", str(ce), "--set", "output.shard_size=3",
            "--set", f"output.score_cache={json.dumps(str(score_cache))}", "--out", str(out)]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_sigkilled_job_resumes_to_identical_files(tmp_path, data_root, tiny_cross_encoder):
    env = subprocess_env(data_root, tmp_path / "cache")  # embeddings shared by the three runs
    # 1. an uninterrupted run (it also fills the embedding cache, so the next start is quicker)
    ref = tmp_path / "ref"
    _run(_cmd(ref, tiny_cross_encoder, tmp_path / "ref_scores.sqlite"), env)
    ref_manifest = read_manifest(ref)
    n_shards = ref_manifest["counts"]["shards"]
    assert n_shards == 12  # 35 queries in shards of 3

    # 2. the same job, killed with SIGKILL as soon as its first shard is on disk
    out = tmp_path / "out"
    cmd = _cmd(out, tiny_cross_encoder, tmp_path / "scores.sqlite")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not list((out / "shards").glob("*.triples.parquet")):
            if proc.poll() is not None:
                pytest.fail(f"the job ended (rc {proc.returncode}) before writing a shard: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no shard written within 240 s")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert rc == -signal.SIGKILL, f"the job was not killed (rc {rc}); it finished before the kill landed"
    assert not (out / "manifest.json").exists(), "killed job must not look finished"
    assert not (out / "triples.parquet").exists()
    done = sorted((out / "shards").glob("*.triples.parquet"))
    assert 1 <= len(done) < n_shards, [p.name for p in done]
    assert (out / "job.json").is_file()

    # 3. the same command again: resumes the finished shards, mines the rest
    _run(cmd, env)
    m = read_manifest(out)
    assert m["counts"]["shards_resumed"] >= len(done) >= 1
    assert m["counts"]["shards"] == n_shards
    assert m["counts"]["ce_pairs"] < ref_manifest["counts"]["ce_pairs"]  # resumed shards were not re-scored
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    for name in COMPARED:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert m["counts"]["fates"] == ref_manifest["counts"]["fates"]
    assert m["queries_without_negatives"] == ref_manifest["queries_without_negatives"]
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"

    # 4. a third start finds the finished job and refuses
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds this finished job" in again.stderr


def test_job_resumes_from_what_a_kill_leaves_to_identical_files(tmp_path, monkeypatch, data_root, tiny_cross_encoder,
                                                                 torch_one_thread):
    """In-process variant: a folder as a kill during the last shard leaves it (job.json and the finished shards;
    no merged files) is finished by the same command, which mines only the missing shard, keeps the others
    untouched and writes the files of an uninterrupted run, byte for byte."""
    mining_env(monkeypatch, data_root, tmp_path / "cache")

    def args(scores: str) -> list[str]:
        return ["--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
                "--set", "candidates.dense=false", "--set", "output.shard_size=10",
                "--set", f"output.score_cache={json.dumps(str(tmp_path / scores))}"]

    ref, out = tmp_path / "ref", tmp_path / "out"
    assert mine(ref, *args("ref.sqlite")) == 0
    assert mine(out, *args("out.sqlite")) == 0
    ref_manifest = read_manifest(ref)
    assert ref_manifest["counts"]["shards"] == 4  # 35 queries in shards of 10
    for p in [*out.glob("*.parquet"), out / "manifest.json", out / "report.md", *out.glob("shards/00003.*")]:
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert len(kept) == 6 and (out / "job.json").is_file()
    assert mine(out, *args("out.sqlite")) == 0
    m = read_manifest(out)
    assert m["counts"]["shards"] == 4 and m["counts"]["shards_resumed"] == 3
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished shard was mined again"
    assert m["counts"]["ce_pairs"] < ref_manifest["counts"]["ce_pairs"]  # only the missing shard was scored
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    for name in COMPARED:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert m["counts"]["fates"] == ref_manifest["counts"]["fates"]
