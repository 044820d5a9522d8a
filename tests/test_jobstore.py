"""The job store (SQLite): atomic claims, leases, cancellation, requeue; the kinds' config resolution with
errors that name the field; and a worker running a queued job in-process (the live service, with server and
worker processes, is tests/test_service_live.py, in the slow tier)."""

from __future__ import annotations

import threading
import time

import pytest

from mining_jobs.config import ConfigError
from mining_jobs.service import kinds
from mining_jobs.service.store import JobStoreError, SQLiteJobStore


@pytest.fixture
def store(tmp_path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "home", kinds.NAMES)  # the store knows no kind: it is given their names


def test_create_get_list_and_save_then_load(store, tmp_path):
    a = store.create("mine", {"data": {"name": "adi"}}, name="first")
    b = store.create("train", {"lr": 1e-5})
    assert a.state == "queued" and a.attempts == 0 and a.run_dir == str(store.run_dir(a.id))
    assert store.get(a.id).config == {"data": {"name": "adi"}}
    assert [j.id for j in store.list()] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list(kind="mine")] == [a.id]
    assert store.get("nope") is None
    # a second store over the same home sees the same jobs (the file is the state)
    again = SQLiteJobStore(tmp_path / "home")
    assert again.get(a.id).to_dict()["name"] == "first"
    with pytest.raises(JobStoreError, match="unknown job kind 'dance'; expected one of mine, train-reranker"):
        store.create("dance", {})
    assert again.create("dance", {}).kind == "dance"  # a store opened without kind names holds any kind


def test_claims_are_exclusive_across_threads(store, tmp_path):
    ids = {store.create("mine", {"i": i}).id for i in range(40)}
    got: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def claimer(name: str) -> None:
        try:
            own = SQLiteJobStore(tmp_path / "home")  # one connection per claimer, as separate workers have
            start.wait(timeout=30)  # all claimers race from the same moment, not one thread per scheduler slice
            while (job := own.claim(name, lease_s=60)) is not None:
                with lock:
                    got.append((job.id, name))
                time.sleep(0.002)  # a worker runs its job before claiming the next, so the others get turns
        except BaseException as exc:  # noqa: BLE001 - a claimer that dies (e.g. "database is locked") fails the test
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({w for _, w in got}) > 1, "the claimers should have shared the jobs"
    claimed = [j for j, _ in got]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"
    assert {store.get(j).attempts for j in ids} == {1}
    assert all(store.get(j).worker == w for j, w in got)


def test_expired_lease_is_taken_over_and_old_holder_is_locked_out(store):
    job = store.create("mine", {})
    first = store.claim("w1", lease_s=0.2)
    assert first.id == job.id and first.claim
    assert store.claim("w2", lease_s=5) is None  # the lease holds
    assert store.heartbeat(job.id, first.claim, lease_s=0.2) is not None
    time.sleep(0.3)
    taken = store.claim("w1", lease_s=5)  # w1 stopped beating: its job is resumable, even by a worker of
    assert taken.id == job.id and taken.attempts == 2 and taken.claim != first.claim  # the same name
    assert store.heartbeat(job.id, first.claim, 5) is None  # the old holder is locked out by its claim
    assert store.progress(job.id, first.claim, "shards", 1, 3) is None
    assert store.finish(job.id, first.claim, "failed") is False
    assert store.requeue(job.id, first.claim) is False
    assert store.progress(job.id, taken.claim, "shards", 2, 3).progress == {"done": 2, "total": 3}
    assert store.finish(job.id, taken.claim, "succeeded", metrics={"triples": 3})
    done = store.get(job.id)
    assert done.state == "succeeded" and done.metrics == {"triples": 3} and done.finished_at >= done.started_at
    assert done.stage == "done"


def test_cancel_queued_running_and_finished(store):
    queued, running = store.create("mine", {}), store.create("mine", {})
    c = store.cancel(queued.id)
    assert c.state == "cancelled" and c.finished_at is not None
    held = store.claim("w", 60)
    assert held.id == running.id  # the cancelled job is never claimed
    r = store.cancel(running.id)
    assert r.state == "running" and r.cancel_requested  # the worker stops at its next checkpoint
    assert store.heartbeat(running.id, held.claim, 60).cancel_requested
    assert store.finish(running.id, held.claim, "cancelled")
    with pytest.raises(JobStoreError, match="already cancelled"):
        store.cancel(running.id)
    with pytest.raises(KeyError):
        store.cancel("nope")


def test_dead_worker_after_cancel_request_ends_cancelled_not_resumed(store):
    job = store.create("mine", {})
    store.claim("w1", lease_s=0.1)
    store.cancel(job.id)
    time.sleep(0.2)
    assert store.claim("w2", 60) is None
    assert store.get(job.id).state == "cancelled"


def test_requeue_gives_the_job_back(store):
    job = store.create("mine", {})
    held = store.claim("w1", 60)
    assert store.requeue(job.id, held.claim)
    assert store.get(job.id).state == "queued"
    again = store.claim("w2", 60)
    assert again.attempts == 2
    store.cancel(job.id)  # asked to stop, then its worker shuts down: it ends cancelled, not queued again
    assert store.requeue(job.id, again.claim)
    assert store.get(job.id).state == "cancelled" and store.get(job.id).finished_at is not None
    assert store.claim("w3", 60) is None


def test_a_job_that_keeps_killing_its_workers_is_failed_after_max_attempts(store):
    job = store.create("mine", {})
    for _ in range(3):
        assert store.claim("w", lease_s=0.01, max_attempts=3).id == job.id  # each worker dies (no heartbeat)
        time.sleep(0.02)
    assert store.claim("w", lease_s=60, max_attempts=3) is None
    failed = store.get(job.id)
    assert failed.state == "failed" and "died 3 times" in failed.error


def test_old_store_files_are_migrated(tmp_path):
    import sqlite3

    home = tmp_path / "old"
    home.mkdir()
    db = sqlite3.connect(home / "jobs.sqlite")
    from mining_jobs.service.store import SCHEMA

    db.executescript(SCHEMA.replace(",\n    claim TEXT", ""))
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    db.commit()
    db.close()
    store = SQLiteJobStore(home)
    job = store.create("mine", {})
    assert store.claim("w", 60).claim and store.get(job.id).state == "running"


def test_finish_refuses_a_non_terminal_state(store):
    job = store.create("mine", {})
    held = store.claim("w", 60)
    with pytest.raises(JobStoreError, match="terminal"):
        store.finish(job.id, held.claim, "running")


# ---------------------------------------------------------------------------------------------- kinds


@pytest.fixture
def data_env(monkeypatch, data_root):
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))


@pytest.mark.parametrize(("kind", "raw", "field"), [
    ("mine", {"filter": {"relative_margin": 2}}, "filter.relative_margin"),
    ("mine", {"sampling": {"num_negatives": "five"}}, "sampling.num_negatives"),
    ("mine", {"sampling": {"strategy": "best"}}, "sampling.strategy"),
    ("mine", {"bogus": {}}, "bogus"),
    ("mine", {"data": {"name": "no-such-collection"}}, "data.name"),
    ("mine", {"data": {"name": "adi", "split": "train"}}, "data.split"),
    ("mine", {"output": {"overwrite": True}}, "output.overwrite"),
    ("mine", {"engine": "spark"}, "engine"),
    ("train", {"lr": -1.0, "triples": "x"}, "lr"),
    ("train", {"triples": "/no/such/run"}, "triples"),
    ("train", {"out": "/tmp/x"}, "out"),
    ("train", {"loss": 3}, "loss"),
    ("evaluate", {"retrievers": ["bm25", "magic"]}, "retrievers"),
    ("evaluate", {"top_k": 0}, "top_k"),
    ("train-reranker", {"folds": 0}, "folds"),
    ("train-reranker", {"bf16": "maybe"}, "bf16"),
    ("iterate", {"mine": {"filter": {"bogus": 1}}}, "mine.filter.bogus"),
    ("iterate", {"loop": {"rounds": 0}}, "loop.rounds"),
    ("iterate", {"loop": {"out": "/tmp/elsewhere"}}, "loop.out"),
    ("iterate", {"train": {"max_steps": 2.5}}, "train.max_steps"),
    ("iterate", {"train": {"lr": -1.0}}, "train.lr"),
    ("iterate", {"train": {"bf16": "maybe"}}, "train.bf16"),
    ("iterate", {"mine": {"data": {"eval_splits": ["nosuch"]}}}, "mine.data.eval_splits"),
    ("evaluate", {"stemmer": "klingon"}, "stemmer"),
    ("evaluate", {"bm25_backend": "nope"}, "bm25_backend"),
    ("train", {"triples": __file__}, "triples"),
    ("train", {"triples": "x", "bf16": "maybe"}, "bf16"),
    ("train-reranker", {"lr": float("nan")}, "lr"),
    ("mine", {"data": {"eval_splits": [3]}}, "data.eval_splits"),
    ("mine", {"data": {"name": "adi", "split": "test", "eval_splits": ["train"]}}, "data.eval_splits"),
])
def test_invalid_configs_name_their_field(data_env, kind, raw, field):
    with pytest.raises(ConfigError) as err:
        kinds.resolve(kind, raw)
    assert kinds.field_of(err.value) == field, str(err.value)


def test_the_example_mining_config_can_be_submitted_as_it_is(data_env):
    from mining_jobs.config import read_toml

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    raw = read_toml(repo / "examples" / "mine.toml")  # holds output.overwrite = false
    assert kinds.resolve("mine", raw)["data"]["name"] == "scifact"
    with pytest.raises(ConfigError) as err:
        kinds.resolve("mine", {**raw, "output": {**raw["output"], "overwrite": True}})
    assert err.value.field == "output.overwrite"


def test_resolved_configs_hold_every_default(data_env):
    m = kinds.resolve("mine", {"data": {"name": "adi", "split": "test"}, "sampling": {"num_negatives": 2}})
    assert m["sampling"]["num_negatives"] == 2 and m["filter"]["relative_margin"] == 0.1 and m["engine"] == "local"
    assert m["output"]["overwrite"] is False
    ev = kinds.resolve("evaluate", {"data": "adi", "split": "test", "retrievers": "bm25,dense"})
    assert ev["retrievers"] == ["bm25", "dense"] and "out" not in ev
    it = kinds.resolve("iterate", {"loop": {"data": "scifact", "rounds": 1}})
    assert it["mine"]["data"]["split"] == "train:fit" and "out" not in it["loop"]
    rr = kinds.resolve("train-reranker", {"data": "adi", "split": "test", "eval_split": "", "epochs": 1})
    assert rr["eval_split"] is None and rr["epochs"] == 1 and rr["backbone"] == "default"
    with pytest.raises(ConfigError, match="unknown job kind"):
        kinds.resolve("dance", {})


def test_a_job_found_finished_or_unstarted_in_its_run_folder(data_env, tmp_path):
    """A worker may die after a job's files are complete but before the store records it (the next worker
    returns the same result without mining again), or after creating the run folder but before the job's
    state file (the next worker starts afresh instead of refusing a non-empty folder)."""
    conf = kinds.resolve("mine", {"data": {"name": "adi", "split": "test"}, "candidates": {"dense": False}})
    out = tmp_path / "run"
    first = kinds.run("mine", conf, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert kinds.run("mine", conf, out) == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing was mined again
    fresh = tmp_path / "fresh"
    (fresh / "shards").mkdir(parents=True)
    (fresh / "job.json.tmp").write_text("{")  # killed while writing its state file
    assert kinds.run("mine", conf, fresh)["triples"] == first["triples"]
    assert (fresh / "triples.parquet").read_bytes() == (out / "triples.parquet").read_bytes()


# ---------------------------------------------------------------------------------------------- worker


def test_a_worker_runs_a_queued_job_once_and_records_its_result(data_env, monkeypatch, tmp_path):
    """The fast variant of the live service's worker tests: one BM25-only mining job on adi, claimed, run into
    its run folder and finished by an in-process worker, which then stops (``max_jobs``); the next job waits."""
    from pathlib import Path

    import pyarrow.parquet as pq

    from mining_jobs.service.worker import Worker

    monkeypatch.setenv("HARDNEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    store = SQLiteJobStore(tmp_path / "home")
    conf = kinds.resolve("mine", {"data": {"name": "adi", "split": "test"}, "candidates": {"dense": False},
                                  "sampling": {"num_negatives": 2}, "output": {"shard_size": 10}})
    job = store.create("mine", conf)
    queued = store.create("mine", conf)
    assert Worker(store, name="w", lease_s=30, poll_s=0.01).serve(max_jobs=1) == 1
    done = store.get(job.id)
    assert (done.state, done.worker, done.attempts, done.stage) == ("succeeded", "w", 1, "done"), done.error
    assert done.finished_at >= done.started_at >= done.created_at
    run = Path(done.run_dir)
    assert {"triples.parquet", "candidates.parquet", "manifest.json", "report.md"} <= {p.name for p in run.iterdir()}
    rows = pq.read_table(run / "triples.parquet").to_pylist()
    assert done.metrics["queries"] == 35 and done.metrics["triples"] == len(rows)
    assert all(len(r["negative_ids"]) == 2 for r in rows)
    assert store.get(queued.id).state == "queued"  # max_jobs=1: the worker stopped after one job
