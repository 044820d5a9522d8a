"""``hardneg worker``: claim queued jobs from the job store and run them through the same code as the
command line, one at a time, reporting stage and progress and honouring cancellation at every checkpoint (the
checkpoint callback it installs around each job with ``retriever.progress.checkpoints``).
A worker that dies (even by SIGKILL) leaves its job to the next worker once its lease expires; the job then
resumes from its run folder (finished shards, stages and rounds are kept). Before running a job, its config is
checked again against the worker's allowed roots (``--data-root``): a job that names a path outside them fails
with the reason as its error. No HTTP here."""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from retriever import progress

from ..config import ConfigError
from . import kinds
from .store import Job, JobStore, service_roots

logger = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The job was cancelled through the service; raised at the job's next checkpoint."""


class JobReleased(Exception):
    """The worker is shutting down (or lost its lease); the job goes back to the queue and resumes later."""


class Worker:
    """Runs jobs from ``store`` until stopped. ``lease_s``: how long a job stays this worker's without a
    heartbeat (heartbeats come every ``min(lease_s / 4, 2 s)`` from a thread, also during long computations).
    ``max_attempts``: a job whose workers died this many times is failed, not taken again. ``data_roots``: the
    folders a job's config may name paths in (``None``: ``$HARDNEG_DATA`` and ``$HARDNEG_HOME``; the store's run
    folders are always allowed); a job naming any other path is failed without running."""

    def __init__(self, store: JobStore, name: str | None = None, lease_s: float = 60.0, poll_s: float = 1.0,
                 max_attempts: int = 3, data_roots: Iterable[str | os.PathLike] | None = None) -> None:
        self.store = store
        self.roots = service_roots(store, data_roots)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.stopping = threading.Event()
        self._armed = False  # a job is running in the main thread and may be interrupted
        self._pending: Exception | None = None  # what the interrupt raises there
        self._interruptible = False  # signal handlers are installed (main thread of a `hardneg worker`)

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: give the current job back to the queue at once (it resumes from its run folder
        elsewhere), then exit. SIGUSR1 (sent by the heartbeat thread) stops a job that was cancelled or whose
        lease was lost at once, also in a stage without checkpoints (a corpus encoding, an evaluation)."""
        def stop(signum, frame):  # noqa: ARG001
            logger.warning("worker %s: signal %d, giving the job back and exiting", self.name, signum)
            self.stopping.set()
            if self._armed:
                self._armed = False
                raise JobReleased("worker shutting down")

        def interrupt(signum, frame):  # noqa: ARG001
            exc, self._pending = self._pending, None
            if exc is not None and self._armed:
                self._armed = False
                raise exc

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, interrupt)
        self._interruptible = True

    def _interrupt(self, exc: Exception) -> None:
        """From the heartbeat thread: raise ``exc`` in the main thread at its next Python instruction."""
        if self._interruptible and self._armed and self._pending is None:
            self._pending = exc
            _thread.interrupt_main(signal.SIGUSR1)

    def serve(self, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Claim and run jobs; returns how many were run."""
        n = 0
        logger.info("worker %s: polling %s; job configs may name paths under %s", self.name, self.store.home,
                    ", ".join(map(str, self.roots)))
        while not self.stopping.is_set() and (max_jobs is None or n < max_jobs):
            job = self.store.claim(self.name, self.lease_s, self.max_attempts)
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
        claim = job.claim or ""
        try:  # the policy may have changed since the job was queued: it is checked where the files are read
            kinds.check_paths(job.kind, job.config, self.roots)
        except ConfigError as exc:
            logger.error("job %s refused: %s", job.id, exc)
            self.store.finish(job.id, claim, "failed", error=f"refused by the worker's path policy: {exc}")
            return "failed"
        out.parent.mkdir(parents=True, exist_ok=True)
        flags = {"cancel": job.cancel_requested, "lost": False}
        try:
            with self._heartbeat(job, flags), _job_log(self.store.log_path(job.id)), \
                    progress.checkpoints(self._checkpoint(job, flags)):
                logger.info("worker %s: job %s (%s), attempt %d, run folder %s", self.name, job.id, job.kind,
                            job.attempts, out)
                self._armed = True
                progress.report(0)
                metrics = kinds.run(job.kind, job.config, out)
                self._armed = False
        except JobCancelled:
            self._armed = False
            logger.info("job %s cancelled", job.id)
            self.store.finish(job.id, claim, "cancelled", error="cancelled on request")
            return "cancelled"
        except JobReleased:
            self._armed = False
            if flags["lost"]:
                logger.warning("job %s: lease lost to another worker; leaving it", job.id)
                return "lost"
            self.store.requeue(job.id, claim)
            logger.info("job %s given back to the queue; it resumes from %s", job.id, out)
            return "queued"
        except Exception as exc:  # noqa: BLE001 - any failure of the job is recorded, the worker goes on
            self._armed = False
            text = f"{type(exc).__name__}: {exc}"
            logger.error("job %s failed: %s", job.id, text)
            tb = traceback.format_exc(limit=20)
            self.store.finish(job.id, claim, "failed", error=f"{text}\n\n{tb}"[-8000:])
            return "failed"
        finally:
            self._armed = False
            self._pending = None
        if flags["cancel"]:  # asked after the last checkpoint: the work is done, but the user said stop
            logger.info("job %s cancelled after its last stage", job.id)
            self.store.finish(job.id, claim, "cancelled", metrics=metrics,
                              error="cancelled on request (after its last stage; its files are complete)")
            return "cancelled"
        if not self.store.finish(job.id, claim, "succeeded", metrics=metrics):
            logger.warning("job %s finished, but its lease had passed to another worker", job.id)
            return "lost"
        logger.info("job %s succeeded", job.id)
        return "succeeded"

    def _checkpoint(self, job: Job, flags: dict[str, bool]) -> progress.Checkpoint:
        """The checkpoint callback this worker installs around a job (``progress.checkpoints``): records progress
        (at most twice a second, and at every stage change and end) and raises ``JobCancelled`` or
        ``JobReleased`` at the checkpoint when the job was cancelled, its lease was lost, or the worker is
        shutting down."""
        last = [0.0, ""]

        def checkpoint(stage: str, n_done: int, total: int | None) -> None:
            now = time.monotonic()
            if stage != last[1] or now - last[0] >= 0.5 or (total and n_done >= total):
                last[:] = [now, stage]
                j = self.store.progress(job.id, job.claim or "", stage or "start", n_done, total)
                if j is None:
                    flags["lost"] = True
                else:
                    flags["cancel"] = flags["cancel"] or j.cancel_requested
            if flags["cancel"]:
                raise JobCancelled(job.id)
            if flags["lost"] or self.stopping.is_set():
                raise JobReleased(job.id)

        return checkpoint

    @contextmanager
    def _heartbeat(self, job: Job, flags: dict[str, bool]) -> Iterator[None]:
        """Renew the lease every ``min(lease_s / 4, 2 s)`` from a thread (also while torch computes); on a
        cancel request or a lost lease, note it in ``flags`` and interrupt the main thread."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(min(self.lease_s / 4, 2.0)):
                try:
                    j = self.store.heartbeat(job.id, job.claim or "", self.lease_s)
                except Exception as exc:  # noqa: BLE001 - a busy store must not end the heartbeats
                    logger.warning("job %s: heartbeat failed (%s); retrying", job.id, exc)
                    continue
                if j is None:
                    flags["lost"] = True
                    self._interrupt(JobReleased(job.id))  # another worker owns it now: stop writing at once
                    return
                flags["cancel"] = j.cancel_requested
                if j.cancel_requested:
                    self._interrupt(JobCancelled(job.id))

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
