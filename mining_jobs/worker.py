"""``hardneg worker``: claim queued jobs from the job store and run them through the same code as the
command line, one at a time, reporting stage and progress and honouring cancellation at every checkpoint.
A worker that dies (even by SIGKILL) leaves its job to the next worker once its lease expires; the job then
resumes from its run folder (finished shards, stages and rounds are kept). No HTTP here."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retriever import progress

from . import kinds
from .jobstore import Job, JobStore

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled through the service; raised at the job's next checkpoint."""


class JobReleased(Exception):
    """The worker is shutting down (or lost its lease); the job goes back to the queue and resumes later."""


class Worker:
    """Runs jobs from ``store`` until stopped. ``lease_s``: how long a job stays this worker's without a
    heartbeat (heartbeats come every ``lease_s / 4`` from a thread, also during long computations)."""

    def __init__(self, store: JobStore, name: str | None = None, lease_s: float = 60.0, poll_s: float = 1.0) -> None:
        self.store = store
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: give the current job back at its next checkpoint, then exit."""
        def handler(signum, frame):  # noqa: ARG001
            logger.warning("worker %s: signal %d, giving the job back at its next checkpoint", self.name, signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve(self, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Claim and run jobs; returns how many were run."""
        n = 0
        logger.info("worker %s: polling %s", self.name, self.store.home)
        while not self.stopping.is_set() and (max_jobs is None or n < max_jobs):
            job = self.store.claim(self.name, self.lease_s)
            if job is None:
                if exit_when_idle:
                    break
                self.stopping.wait(self.poll_s)
                continue
            self.run(job)
            n += 1
        return n

    def run(self, job: Job) -> str:
        """Run one claimed job to a terminal state (or give it back); returns the state it was left in."""
        out = Path(job.run_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        flags = {"cancel": job.cancel_requested, "lost": False}
        try:
            with self._heartbeat(job, flags), _job_log(self.store.log_path(job.id)), \
                    progress.listen(self._listener(job, flags)):
                logger.info("worker %s: job %s (%s), attempt %d, run folder %s", self.name, job.id, job.kind,
                            job.attempts, out)
                progress.report(0)
                metrics = kinds.run(job.kind, job.config, out)
        except JobCancelled:
            logger.info("job %s cancelled", job.id)
            self.store.finish(job.id, self.name, "cancelled", error="cancelled on request")
            return "cancelled"
        except JobReleased:
            if flags["lost"]:
                logger.warning("job %s: lease lost to another worker; leaving it", job.id)
                return "lost"
            self.store.requeue(job.id, self.name)
            logger.info("job %s given back to the queue; it resumes from %s", job.id, out)
            return "queued"
        except Exception as exc:  # noqa: BLE001 - any failure of the job is recorded, the worker goes on
            text = f"{type(exc).__name__}: {exc}"
            logger.error("job %s failed: %s", job.id, text)
            tb = traceback.format_exc(limit=20)
            self.store.finish(job.id, self.name, "failed", error=f"{text}\n\n{tb}"[-8000:])
            return "failed"
        if not self.store.finish(job.id, self.name, "succeeded", metrics=metrics):
            logger.warning("job %s finished, but its lease had passed to another worker", job.id)
            return "lost"
        logger.info("job %s succeeded", job.id)
        return "succeeded"

    def _listener(self, job: Job, flags: dict[str, bool]) -> progress.Listener:
        """Records progress (at most twice a second, and at every stage change and end) and raises at the
        checkpoint when the job was cancelled, its lease was lost, or the worker is shutting down."""
        last = [0.0, ""]

        def listener(stage: str, n_done: int, total: int | None) -> None:
            now = time.monotonic()
            if stage != last[1] or now - last[0] >= 0.5 or (total and n_done >= total):
                last[:] = [now, stage]
                j = self.store.progress(job.id, self.name, stage or "start", n_done, total)
                if j is None:
                    flags["lost"] = True
                else:
                    flags["cancel"] = flags["cancel"] or j.cancel_requested
            if flags["cancel"]:
                raise JobCancelled(job.id)
            if flags["lost"] or self.stopping.is_set():
                raise JobReleased(job.id)

        return listener

    @contextmanager
    def _heartbeat(self, job: Job, flags: dict[str, bool]) -> Iterator[None]:
        """Renew the lease every ``lease_s / 4`` from a thread (also while torch computes); note a cancel
        request or a lost lease in ``flags`` for the next checkpoint."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.lease_s / 4):
                try:
                    j = self.store.heartbeat(job.id, self.name, self.lease_s)
                except Exception as exc:  # noqa: BLE001 - a busy store must not end the heartbeats
                    logger.warning("job %s: heartbeat failed (%s); retrying", job.id, exc)
                    continue
                if j is None:
                    flags["lost"] = True
                    return
                flags["cancel"] = j.cancel_requested

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


@contextmanager
def _job_log(path: Path) -> Iterator[None]:
    """Copy the ``retriever`` and ``mining_jobs`` logs (INFO and up) into the job's log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.INFO)
    watched = [logging.getLogger(n) for n in ("retriever", "mining_jobs")]
    levels = [lg.level for lg in watched]
    for lg in watched:
        lg.addHandler(handler)
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(watched, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
