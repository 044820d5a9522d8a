"""The job service against the command line on the same jobs: N mining jobs run (a) one after another as
`hardneg mine` processes, (b) submitted at once to `hardneg serve` with W `hardneg worker` processes.
Reports wall time, the service's per-job overhead (queue wait, claim to start) and the ratio.

    python -m benchmarks.bench_service --jobs 8 --workers 2 --data scifact --split train
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.machine import describe, markdown, write_result
from mining_jobs.service.client import Client

REPO = Path(__file__).resolve().parents[1]
HARDNEG = [sys.executable, "-m", "mining_jobs.cli"]


def job_config(data: str, split: str, i: int) -> dict:
    """BM25 candidates only (no model): the job's own work is small, so the overheads show."""
    return {"data": {"name": data, "split": split}, "candidates": {"dense": False, "bm25_k": 30},
            "sampling": {"num_negatives": 3, "strategy": "random", "seed": i}}


def to_toml(cfg: dict) -> str:
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in vals.items())
                     for s, vals in cfg.items()) + "\n"


def run_cli(configs: list[dict], tmp: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        path = tmp / f"cli{i}.toml"
        path.write_text(to_toml(cfg))
        subprocess.run([*HARDNEG, "-q", "mine", "--config", str(path), "--out", str(tmp / f"cli{i}")], env=env,
                       cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_service(configs: list[dict], workers: int, tmp: Path, env: dict[str, str]) -> tuple[float, list[dict]]:
    home, port = tmp / "home", free_port()
    env = {**env, "HARDNEG_HOME": str(home)}
    procs = [subprocess.Popen([*HARDNEG, "serve", "--port", str(port)], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    client = Client(f"http://127.0.0.1:{port}")
    try:
        while True:
            try:
                client.jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        # workers start first and wait for work (as a running service's workers do)
        procs += [subprocess.Popen([*HARDNEG, "-q", "worker", "--name", f"w{w}", "--poll", "0.2"], env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for w in range(workers)]
        time.sleep(8)  # let the workers import torch & co before the clock starts
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(configs)) as pool:
            ids = [j["id"] for j in pool.map(lambda c: client.submit("mine", c), configs)]
        jobs = [client.wait(i, poll=0.2) for i in ids]
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    bad = [j for j in jobs if j["state"] != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} jobs did not succeed: {bad[0]['error']}")
    return wall, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    env = {**os.environ, "HARDNEG_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env.setdefault("HARDNEG_DATA", str(REPO.parent / "shared" / "data"))
    configs = [job_config(args.data, args.split, i) for i in range(args.jobs)]
    cli_s = run_cli(configs, tmp, env)
    svc_s, jobs = run_service(configs, args.workers, tmp, env)
    same = all((tmp / f"cli{i}" / "triples.parquet").read_bytes() ==
               (Path(j["run_dir"]) / "triples.parquet").read_bytes() for i, j in enumerate(jobs))
    run_s = [j["timings"]["running_s"] for j in jobs]
    queued = [j["timings"]["queued_s"] for j in jobs]
    mined = [j["metrics"]["seconds"] for j in jobs]
    overhead = [r - m for r, m in zip(run_s, mined, strict=True)]
    data = {"jobs": args.jobs, "workers": args.workers, "collection": f"{args.data}/{args.split}",
            "cli_sequential_s": cli_s, "service_s": svc_s, "ratio": cli_s / svc_s, "triples_identical": same,
            "per_job": {"running_s_median": statistics.median(run_s), "mining_s_median": statistics.median(mined),
                        "worker_overhead_s_median": statistics.median(overhead),
                        "queued_s_max": max(queued)}}
    lines = [
        "# The job service vs the command line", "",
        f"{args.jobs} BM25-only mining jobs on {args.data}/{args.split} (random sampling, a different seed each), "
        f"run one after another as `hardneg mine` processes, then submitted at once to `hardneg serve` with "
        f"{args.workers} workers (started and idle before the clock starts). Same machine, same script.", "",
        "| | wall time | ratio |", "|---|---|---|",
        f"| `hardneg mine` x {args.jobs}, sequential | {cli_s:.1f} s | 1.00x |",
        f"| service, {args.workers} workers | {svc_s:.1f} s | {cli_s / svc_s:.2f}x |", "",
        f"Per job in the service (median): {statistics.median(run_s):.2f} s from claim to recorded success, of which "
        f"{statistics.median(mined):.2f} s is the mining job's own total; worker overhead (store updates, run "
        f"folder, log) {statistics.median(overhead):.2f} s. Longest queue wait {max(queued):.1f} s.",
        f"Triples identical to the command line's, job for job: {same}.", "",
        "Where the gain comes from: a worker imports torch, transformers and the rest once, where each `hardneg "
        "mine` process pays it again (several seconds), and two workers use both cores. With jobs whose own work "
        "is minutes, the ratio tends to the worker count at best (here: the cores).", "",
        "## Machine", "", markdown(describe()),
        f"Command: `python -m benchmarks.bench_service --jobs {args.jobs} --workers {args.workers} --data {args.data} "
        f"--split {args.split}`", ""]
    write_result("service", data, lines)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
