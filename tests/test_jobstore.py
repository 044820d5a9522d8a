"""The job store (SQLite): atomic claims, leases, cancellation, requeue; and the kinds' config resolution
with errors that name the field."""

from __future__ import annotations

import threading
import time

import pytest

from mining_jobs import kinds
from mining_jobs.config import ConfigError
from mining_jobs.jobstore import JobStoreError, SQLiteJobStore


@pytest.fixture
def store(tmp_path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "home")


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
    with pytest.raises(JobStoreError, match="unknown job kind"):
        store.create("dance", {})


def test_claims_are_exclusive_across_threads(store, tmp_path):
    ids = {store.create("mine", {"i": i}).id for i in range(40)}
    got: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        own = SQLiteJobStore(tmp_path / "home")  # one connection per claimer, as separate workers have
        while (job := own.claim(name, lease_s=60)) is not None:
            with lock:
                got.append((job.id, name))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [j for j, _ in got]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"
    assert {store.get(j).attempts for j in ids} == {1}
    assert all(store.get(j).worker == w for j, w in got)


def test_expired_lease_is_taken_over_and_old_holder_is_locked_out(store):
    job = store.create("mine", {})
    assert store.claim("w1", lease_s=0.2).id == job.id
    assert store.claim("w2", lease_s=5) is None  # the lease holds
    assert store.heartbeat(job.id, "w1", lease_s=0.2) is not None
    time.sleep(0.3)
    taken = store.claim("w2", lease_s=5)  # w1 stopped beating: its job is resumable by another worker
    assert taken.id == job.id and taken.worker == "w2" and taken.attempts == 2
    assert store.heartbeat(job.id, "w1", 5) is None
    assert store.progress(job.id, "w1", "shards", 1, 3) is None
    assert store.finish(job.id, "w1", "succeeded") is False
    assert store.progress(job.id, "w2", "shards", 2, 3).progress == {"done": 2, "total": 3}
    assert store.finish(job.id, "w2", "succeeded", metrics={"triples": 3})
    done = store.get(job.id)
    assert done.state == "succeeded" and done.metrics == {"triples": 3} and done.finished_at >= done.started_at
    assert done.stage == "done"


def test_cancel_queued_running_and_finished(store):
    queued, running = store.create("mine", {}), store.create("mine", {})
    c = store.cancel(queued.id)
    assert c.state == "cancelled" and c.finished_at is not None
    assert store.claim("w", 60).id == running.id  # the cancelled job is never claimed
    r = store.cancel(running.id)
    assert r.state == "running" and r.cancel_requested  # the worker stops at its next checkpoint
    assert store.heartbeat(running.id, "w", 60).cancel_requested
    assert store.finish(running.id, "w", "cancelled")
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
    store.claim("w1", 60)
    assert store.requeue(job.id, "w1")
    assert store.get(job.id).state == "queued"
    assert store.claim("w2", 60).attempts == 2


def test_finish_refuses_a_non_terminal_state(store):
    job = store.create("mine", {})
    store.claim("w", 60)
    with pytest.raises(JobStoreError, match="terminal"):
        store.finish(job.id, "w", "running")


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
])
def test_invalid_configs_name_their_field(data_env, kind, raw, field):
    with pytest.raises(ConfigError) as err:
        kinds.resolve(kind, raw)
    assert kinds.field_of(err.value) == field, str(err.value)


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
