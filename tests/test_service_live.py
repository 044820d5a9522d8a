"""The job service for real: `hardneg serve` (uvicorn) and `hardneg worker` processes on loopback.
Twenty jobs submitted at once to two workers each succeed exactly once with the right artifacts; a worker
killed with SIGKILL mid-job leaves the job to the next worker, which finishes it with byte-identical triples;
a public bind without a token is refused, and with one, requests without it get 401."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("fastapi", reason="the service extra: pip install 'hardneg[service]'")
pytest.importorskip("uvicorn", reason="the service extra: pip install 'hardneg[service]'")

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import subprocess_env  # noqa: E402

from mining_jobs.service.client import Client, ClientError  # noqa: E402
from mining_jobs.service.store import SQLiteJobStore  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder
# server and worker processes, SIGKILL/SIGTERM, every job kind through a worker: make test-all only (a worker
# running one job in-process is in the fast tier: tests/test_jobstore.py)
pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
HARDNEG = [sys.executable, "-m", "mining_jobs.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A server and workers as subprocesses over one service home; everything is stopped at the end."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.procs: list[subprocess.Popen] = []
        self.logs = home.parent / "proc-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([*HARDNEG, *args], env=env or self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        p.log_path = self.logs / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def serve(self, host: str = "127.0.0.1", env: dict[str, str] | None = None) -> str:
        port = free_port()
        p = self.start(f"serve-{port}", "serve", "--home", str(self.home), "--host", host, "--port", str(port),
                       env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return url
            except OSError:
                if p.poll() is not None:
                    pytest.fail(f"server exited: {p.log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("server did not start within 60 s")
                time.sleep(0.1)

    def worker(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, "worker", "--home", str(self.home), "--name", name, "--poll", "0.2", *args)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def service(tmp_path, data_root):
    env = subprocess_env(data_root, tmp_path / "cache")
    env["HARDNEG_HOME"] = str(tmp_path / "home")
    svc = Service(tmp_path / "home", env)
    yield svc
    svc.stop()


def mine_config(num_negatives: int, seed: int, strategy: str) -> dict:
    """A BM25-only job on adi (82 documents, 35 queries): seconds to run, no model to load."""
    return {"data": {"name": "adi", "split": "test"}, "candidates": {"dense": False, "bm25_k": 20},
            "sampling": {"num_negatives": num_negatives, "seed": seed, "strategy": strategy},
            "output": {"shard_size": 8}}


def reference_triples(config: dict, out: Path, env: dict[str, str]) -> bytes:
    """The same job through the command line (`hardneg mine --config`), for comparison."""
    toml = out.with_suffix(".toml")
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    toml.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([*HARDNEG, "-q", "mine", "--config", str(toml), "--out", str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "triples.parquet").read_bytes()


def test_twenty_concurrent_jobs_two_workers_each_succeeds_exactly_once(service, tmp_path):
    url = service.serve()
    client = Client(url)
    configs = [mine_config(n, seed, strategy) for n, seed, strategy in
               ((1, 1, "top"), (2, 7, "random"), (3, 3, "top"), (4, 11, "random"))]
    plan = [configs[i % len(configs)] for i in range(20)]
    service.worker("w1")
    service.worker("w2")
    with ThreadPoolExecutor(max_workers=20) as pool:  # all twenty submitted at once
        jobs = list(pool.map(lambda c: client.submit("mine", c[1], name=f"job-{c[0]}"), enumerate(plan)))
    ids = [j["id"] for j in jobs]
    assert len(set(ids)) == 20
    finished = [client.wait(i, timeout=600, poll=0.5) for i in ids]
    assert [j["state"] for j in finished] == ["succeeded"] * 20, [(j["id"], j["error"]) for j in finished]
    assert [j["attempts"] for j in finished] == [1] * 20, "a job was taken twice"
    assert {j["worker"] for j in finished} == {"w1", "w2"}, "both workers should have run jobs"
    # exactly once: each job was started and finished once, by one worker, in the workers' logs
    logs = "".join(p.log_path.read_text() for p in service.procs[1:])
    for i in ids:
        assert logs.count(f"job {i} succeeded") == 1, i
        assert logs.count(f": job {i} (mine), attempt") == 1, i
    # correct artifacts: the triples equal the command line's for the same config, byte for byte
    refs = [reference_triples(c, tmp_path / f"ref{k}", service.env) for k, c in enumerate(configs)]
    for k, (job, cfg) in enumerate(zip(finished, plan, strict=True)):
        got = client.fetch(job["id"], "triples.parquet", tmp_path / f"fetched-{k}.parquet").read_bytes()
        assert got == refs[k % len(configs)], job["id"]
        rows = pq.read_table(tmp_path / f"fetched-{k}.parquet").to_pylist()
        assert all(len(r["negative_ids"]) == cfg["sampling"]["num_negatives"] for r in rows)
        assert job["metrics"]["queries"] == 35
        names = {a["name"] for a in client.artifacts(job["id"])}
        assert {"triples.parquet", "manifest.json", "report.md", "candidates.parquet"} <= names
    assert all(j["stage"] == "done" and j["finished_at"] >= j["started_at"] >= j["created_at"] for j in finished)
    # the CLI client talks to the same server
    out = subprocess.run([*HARDNEG, "status", ids[0], "--server", url], env=service.env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "succeeded" in out.stdout
    fetched = subprocess.run([*HARDNEG, "fetch", ids[0], "report.md", "-o", str(tmp_path), "--server", url],
                             env=service.env, capture_output=True, text=True, timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "report.md").read_text().startswith("#")
    # a raw request with dot segments (no client-side normalisation) cannot leave the run folder
    conn = http.client.HTTPConnection(url.split("//")[1])
    conn.request("GET", f"/jobs/{ids[0]}/artifacts/../../jobs.sqlite")
    resp = conn.getresponse()
    assert resp.status in (400, 404) and b"SQLite" not in resp.read()


def test_worker_killed_mid_job_is_resumed_by_another_with_identical_triples(service, tmp_path, tiny_cross_encoder,
                                                                            monkeypatch):
    from retriever.small_models import build_small_bi_encoder

    bi = build_small_bi_encoder(tmp_path / "bi")
    config = {"data": {"name": "cranfield", "split": "test"},
              "candidates": {"model": str(bi), "bm25_k": 20, "dense_k": 20},
              "cross_encoder": {"model": str(tiny_cross_encoder), "max_length": 64},
              "sampling": {"num_negatives": 3}, "output": {"shard_size": 5}}
    store = SQLiteJobStore(service.home)
    from mining_jobs.service import kinds

    monkeypatch.setenv("HARDNEG_DATA", service.env["HARDNEG_DATA"])
    job = store.create("mine", kinds.resolve("mine", config))
    ref = store.create("mine", kinds.resolve("mine", config))  # the same job, run without interruption later
    roots = ["--data-root", service.env["HARDNEG_DATA"], "--data-root", str(tmp_path),
             "--data-root", str(tiny_cross_encoder.parent)]  # the path policy: the models live in tmp folders
    w1 = service.worker("w1", "--lease", "2", *roots)
    deadline = time.monotonic() + 300
    while True:  # kill the worker once the job has finished a few of its 45 shards
        j = store.get(job.id)
        if j.stage == "shards" and (j.progress.get("done") or 0) >= 3:
            break
        if w1.poll() is not None or j.state not in ("running", "queued"):
            pytest.fail(f"the job ended before the kill: {j.state} {j.error} {w1.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("no shard finished within 300 s")
        time.sleep(0.05)
    os.kill(w1.pid, signal.SIGKILL)
    assert w1.wait(timeout=30) == -signal.SIGKILL
    killed = store.get(job.id)
    assert killed.state == "running" and killed.worker == "w1", "a SIGKILLed worker cannot report anything"
    shards_done = len(list((Path(killed.run_dir) / "shards").glob("*.triples.parquet")))
    assert 3 <= shards_done < 45, shards_done
    assert not (Path(killed.run_dir) / "triples.parquet").exists()
    # a new worker takes the job over once w1's lease (2 s) has passed, then runs the reference job
    w2 = service.worker("w2", "--lease", "2", "--max-jobs", "2", *roots)
    assert w2.wait(timeout=600) == 0, w2.log_path.read_text()[-3000:]
    resumed, uninterrupted = store.get(job.id), store.get(ref.id)
    assert resumed.state == "succeeded" and resumed.worker == "w2" and resumed.attempts == 2, resumed.error
    assert uninterrupted.state == "succeeded" and uninterrupted.attempts == 1
    manifest = json.loads((Path(resumed.run_dir) / "manifest.json").read_text())
    assert manifest["counts"]["shards_resumed"] >= shards_done
    for name in ("triples.parquet", "candidates.parquet", "ntuple.parquet", "triplets.parquet"):
        a, b = Path(resumed.run_dir) / name, Path(uninterrupted.run_dir) / name
        assert a.read_bytes() == b.read_bytes(), name


def test_public_bind_needs_a_token_and_enforces_it(service, tmp_path):
    env = {k: v for k, v in service.env.items() if k != "HARDNEG_TOKEN"}
    refused = subprocess.run([*HARDNEG, "serve", "--home", str(service.home), "--host", "0.0.0.0", "--port",
                              str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "HARDNEG_TOKEN" in refused.stderr, refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    env_token = {**env, "HARDNEG_TOKEN": "s3cret-token"}
    url = service.serve(host="0.0.0.0", env=env_token)
    store = SQLiteJobStore(service.home)
    with pytest.raises(ClientError) as err:
        Client(url, token="").submit("mine", mine_config(1, 1, "top"))
    assert err.value.status == 401
    with pytest.raises(ClientError) as err:
        Client(url, token="wrong").jobs()
    assert err.value.status == 401
    assert store.list() == []  # refused requests changed nothing
    job = Client(url, token_file=str(token_file)).submit("mine", mine_config(1, 1, "top"))
    assert [j.id for j in store.list()] == [job["id"]]


def test_running_job_is_cancelled_at_its_next_checkpoint_and_the_worker_goes_on(tmp_path, data_root, monkeypatch,
                                                                               tiny_cross_encoder, torch_one_thread):
    import threading

    from mining_jobs.service import kinds
    from mining_jobs.service.worker import Worker

    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    monkeypatch.setenv("HARDNEG_CACHE", str(tmp_path / "cache"))
    store = SQLiteJobStore(tmp_path / "home")
    long = {"data": {"name": "cranfield", "split": "test"}, "candidates": {"dense": False},
            "cross_encoder": {"model": str(tiny_cross_encoder), "max_length": 64},
            "output": {"shard_size": 1}}  # 225 shards, each scored by the cross-encoder: many checkpoints
    victim = store.create("mine", kinds.resolve("mine", long))
    after = store.create("mine", kinds.resolve("mine", mine_config(2, 1, "top")))
    worker = Worker(store, name="w", lease_s=30, poll_s=0.1, data_roots=[data_root, tiny_cross_encoder.parent])
    thread = threading.Thread(target=worker.serve, kwargs={"max_jobs": 2})
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while (store.get(victim.id).progress.get("done") or 0) < 2:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.02)
        assert store.cancel(victim.id).cancel_requested
    finally:
        thread.join(timeout=300)
    v, a = store.get(victim.id), store.get(after.id)
    assert v.state == "cancelled" and v.stage == "shards" and v.progress["done"] < 225, (v.state, v.progress)
    assert not (Path(v.run_dir) / "triples.parquet").exists()
    assert a.state == "succeeded", a.error  # the worker went on with the next job


def test_every_job_kind_runs_through_a_worker_and_chains_by_job_reference(tmp_path, data_root, monkeypatch,
                                                                          tiny_cross_encoder, torch_one_thread):
    """evaluate, mine, train (on the mined triples, named 'job:<id>'), train-reranker and iterate, each run by a
    worker into its own run folder, with the command line's files there."""
    from fastapi.testclient import TestClient

    from mining_jobs.service.server import create_app
    from mining_jobs.service.worker import Worker
    from retriever.small_models import build_small_bi_encoder

    for k, v in {"HARDNEG_DATA": str(data_root), "HARDNEG_CACHE": str(tmp_path / "cache"), "TQDM_DISABLE": "1",
                 "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    bi = str(build_small_bi_encoder(tmp_path / "bi"))
    store = SQLiteJobStore(tmp_path / "home")
    roots = [data_root, tmp_path, tiny_cross_encoder.parent]  # the path policy: models live in tmp folders
    api = TestClient(create_app(store, data_roots=roots))
    worker = Worker(store, name="w", lease_s=60, poll_s=0.1, data_roots=roots)

    def run(kind: str, config: dict) -> dict:
        r = api.post("/jobs", json={"kind": kind, "config": config})
        assert r.status_code == 201, r.text
        assert worker.serve(max_jobs=1) == 1
        job = api.get(f"/jobs/{r.json()['id']}").json()
        assert job["state"] == "succeeded", job["error"]
        return job

    ev = run("evaluate", {"data": "adi", "split": "test", "retrievers": ["bm25", "dense"], "model": bi})
    assert set(ev["metrics"]["metrics"]) == {"bm25", "dense"}
    assert (Path(ev["run_dir"]) / "bm25" / "metrics.json").is_file()
    mined = run("mine", {"data": {"name": "adi", "split": "test"}, "candidates": {"model": bi},
                         "sampling": {"num_negatives": 2}})
    assert mined["metrics"]["triples"] > 0
    trained = run("train", {"triples": f"job:{mined['id']}", "base_model": bi, "max_steps": 2, "batch_size": 8})
    assert trained["metrics"]["steps"] == 2 and Path(trained["metrics"]["model"]).is_dir()
    assert trained["config"]["triples"] == str(Path(mined["run_dir"]).resolve())
    ce = run("train-reranker", {"data": "adi", "split": "test", "folds": 1, "epochs": 1, "backbone":
                                str(tiny_cross_encoder), "max_length": 64, "eval_split": ""})
    assert ce["metrics"]["models"] == ["model"] and (Path(ce["run_dir"]) / "folds.json").is_file()
    loop = run("iterate", {"loop": {"data": "adi", "rounds": 1, "base_model": bi, "dev_split": "test:dev",
                                    "test_split": ""},
                           "mine": {"data": {"split": "test:fit"}, "cross_encoder": {"model": f"job:{ce['id']}"}},
                           "train": {"max_steps": 2, "batch_size": 8}})
    assert [r["round"] for r in loop["metrics"]["rounds"]] == [0, 1]
    assert (Path(loop["run_dir"]) / "report.md").is_file()
    assert len(store.list(state="succeeded")) == 5


def test_sigterm_gives_the_job_back_and_cancel_stops_a_stage_without_checkpoints(service, tmp_path, monkeypatch):
    """A dense evaluation encodes a corpus in one stage with no checkpoint inside. SIGTERM makes its worker give
    the job back to the queue at once and exit; the next worker takes it over; a cancel request then stops it
    within seconds (the heartbeat thread interrupts the job), and that worker goes on with the next job."""
    from mining_jobs.service import kinds

    monkeypatch.setenv("HARDNEG_DATA", service.env["HARDNEG_DATA"])
    store = SQLiteJobStore(service.home)
    slow = store.create("evaluate", kinds.resolve("evaluate", {"data": "cranfield", "split": "test",
                                                               "retrievers": ["dense"]}))

    def wait_for(pred, what: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {store.get(slow.id)}"
            time.sleep(0.05)

    w1 = service.worker("w1")
    wait_for(lambda: store.get(slow.id).stage == "dense", "the dense stage")
    time.sleep(1.0)  # inside the corpus encoding
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=60) == 0, w1.log_path.read_text()[-2000:]
    back = store.get(slow.id)
    assert back.state == "queued" and back.attempts == 1, back
    w2 = service.worker("w2", "--max-jobs", "2")
    wait_for(lambda: store.get(slow.id).stage == "dense" and store.get(slow.id).worker == "w2", "the takeover")
    time.sleep(1.0)
    t0 = time.monotonic()
    store.cancel(slow.id)
    wait_for(lambda: store.get(slow.id).state == "cancelled", "the cancellation", timeout=30)
    stopped_after = time.monotonic() - t0
    assert stopped_after < 10, stopped_after  # encoding cranfield takes far longer than this here
    assert not (Path(slow.run_dir) / "metrics.json").exists()
    nxt = store.create("mine", kinds.resolve("mine", mine_config(1, 1, "top")))
    assert w2.wait(timeout=120) == 0, w2.log_path.read_text()[-2000:]
    assert store.get(nxt.id).state == "succeeded"
    assert store.get(slow.id).attempts == 2
