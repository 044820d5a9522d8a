"""The job store of the mining service: jobs with their kind, resolved config, state, stage, progress,
timings and run folder. ``JobStore`` is the interface; ``SQLiteJobStore`` (one file under the service home)
is the default. No job is run here: workers claim jobs and report back through this interface. The store knows
no job kind itself: whoever opens it (server, worker, command line) passes the kind names it may hold."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retriever.data import DATA_ENV
from retriever.errors import HardnegError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
HOME_ENV = "HARDNEG_HOME"


class JobStoreError(HardnegError):
    """An operation the job's state does not allow (e.g. cancelling a finished job)."""


def default_home() -> Path:
    """``$HARDNEG_HOME``, else ``~/.hardneg``: the service's folder (job store, run folders, logs)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".hardneg").expanduser()


def default_data_roots() -> list[Path]:
    """The folders whose files a job config may name when ``--data-root`` is not given: ``$HARDNEG_DATA``
    (when set) and the service home (``$HARDNEG_HOME``, see ``default_home``)."""
    data = os.environ.get(DATA_ENV)
    return [*([Path(data).expanduser()] if data else []), default_home()]


def service_roots(store: JobStore, data_roots: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """The allowed roots of a server or worker over ``store`` (see ``kinds.check_paths``): ``data_roots``
    (``None``: ``default_data_roots()``), plus the store's run folders, where ``job:<id>`` references point."""
    roots = default_data_roots() if data_roots is None else [Path(r).expanduser() for r in data_roots]
    return [*roots, store.home / "runs"]


@dataclass
class Job:
    """One job as the store holds it. Times are Unix seconds; ``progress`` is ``{"done", "total"}`` of the
    current ``stage`` (e.g. ``round_1/mine/shards``)."""

    id: str
    kind: str
    config: dict[str, Any]
    state: str = "queued"
    stage: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_until: float | None = None
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    error: str | None = None
    metrics: dict[str, Any] | None = None
    name: str = ""
    claim: str | None = None  # secret of the current holder: heartbeats and updates must present it

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("claim")
        end = self.finished_at or time.time()
        d["timings"] = {"queued_s": ((self.started_at or end) - self.created_at),
                        "running_s": (end - self.started_at) if self.started_at else None}
        return d


class JobStore(ABC):
    """What the service needs from a job store. A server database can replace SQLite behind it."""

    home: Path
    kinds: tuple[str, ...] | None = None  # the job kinds ``create`` accepts; None: any

    def check_kind(self, kind: str) -> None:
        """Raise ``JobStoreError`` when ``kind`` is not one of the store's kinds (when it was given some)."""
        if self.kinds is not None and kind not in self.kinds:
            raise JobStoreError(f"unknown job kind {kind!r}; expected one of {', '.join(self.kinds)}")

    def run_dir(self, job_id: str) -> Path:
        return self.home / "runs" / job_id

    def log_path(self, job_id: str) -> Path:
        return self.home / "logs" / f"{job_id}.log"

    @abstractmethod
    def create(self, kind: str, config: dict[str, Any], name: str = "", job_id: str | None = None) -> Job:
        """Add a queued job; ``config`` is already resolved and validated. Raises ``JobStoreError`` for a kind
        the store was not given (``check_kind``)."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def list(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""

    @abstractmethod
    def claim(self, worker: str, lease_s: float, max_attempts: int = 3) -> Job | None:
        """Atomically take the oldest queued job, or a running job whose lease expired (its worker died),
        for ``worker``; no two callers ever get the same job for the same lease. The job's ``claim`` is a
        fresh secret that the holder presents in every later call. A job whose workers died
        ``max_attempts`` times is failed instead of being taken again."""

    @abstractmethod
    def heartbeat(self, job_id: str, claim: str, lease_s: float) -> Job | None:
        """Extend the lease; ``None`` when this claim no longer holds the job."""

    @abstractmethod
    def progress(self, job_id: str, claim: str, stage: str, done: int, total: int | None) -> Job | None:
        """Record the stage and progress; ``None`` when this claim no longer holds the job."""

    @abstractmethod
    def finish(self, job_id: str, claim: str, state: str, error: str | None = None,
               metrics: dict[str, Any] | None = None) -> bool:
        """Move a held job to a terminal state; False when this claim no longer holds it."""

    @abstractmethod
    def requeue(self, job_id: str, claim: str) -> bool:
        """Give a held job back (a worker shutting down); it resumes from its run folder. A job whose
        cancellation was asked for is cancelled instead."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; ask the worker of a running one to stop at its next checkpoint.
        Raises ``KeyError`` for an unknown id and ``JobStoreError`` for a finished job."""


_COLUMNS = ("id", "kind", "config", "state", "stage", "progress", "run_dir", "created_at", "started_at",
            "finished_at", "heartbeat_at", "lease_until", "worker", "attempts", "cancel_requested", "error",
            "metrics", "name", "claim")
_JSON = ("config", "progress", "metrics")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}',
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    lease_until REAL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    metrics TEXT,
    name TEXT NOT NULL DEFAULT '',
    claim TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
SCHEMA_VERSION = "2"


class SQLiteJobStore(JobStore):
    """The default store: ``<home>/jobs.sqlite`` in WAL mode, one short connection per operation (safe
    across threads and processes). Claims run in ``BEGIN IMMEDIATE`` transactions, so two workers never
    take the same job. ``kinds``: the job kind names it accepts (``None``: any), e.g. ``kinds.NAMES``."""

    def __init__(self, home: str | os.PathLike | None = None, kinds: Iterable[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home else default_home()
        self.kinds = tuple(kinds) if kinds is not None else None
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "jobs.sqlite"
        db = sqlite3.connect(str(self.path), timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()
        with self._tx(immediate=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] == "1":  # version 1 had no claim secrets
                db.execute("ALTER TABLE jobs ADD COLUMN claim TEXT")
                db.execute("UPDATE meta SET value=? WHERE key='schema'", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise JobStoreError(f"{self.path}: job store schema {row[0]}, this hardneg reads {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def _job(row: sqlite3.Row | tuple) -> Job:
        d = dict(zip(_COLUMNS, row, strict=True))
        for k in _JSON:
            d[k] = json.loads(d[k]) if d[k] is not None else None
        d["progress"] = d["progress"] or {}
        d["cancel_requested"] = bool(d["cancel_requested"])
        return Job(**d)

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job | None:
        row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def create(self, kind: str, config: dict[str, Any], name: str = "", job_id: str | None = None) -> Job:
        self.check_kind(kind)
        job_id = job_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        now = time.time()
        with self._tx(immediate=True) as db:
            db.execute("INSERT INTO jobs (id, kind, config, state, run_dir, created_at, name) "
                       "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
                       (job_id, kind, json.dumps(config), str(self.run_dir(job_id)), now, name))
            return self._get(db, job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> Job | None:
        with self._tx() as db:
            return self._get(db, job_id)

    def list(self, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[Job]:
        where, args = [], []
        if state:
            where.append("state=?")
            args.append(state)
        if kind:
            where.append("kind=?")
            args.append(kind)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._tx() as db:
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, int(limit))).fetchall()
        return [self._job(r) for r in rows]

    def claim(self, worker: str, lease_s: float, max_attempts: int = 3) -> Job | None:
        now = time.time()
        with self._tx(immediate=True) as db:
            while True:
                row = db.execute("SELECT id, state, cancel_requested, attempts FROM jobs WHERE state='queued' OR "
                                 "(state='running' AND lease_until < ?) ORDER BY seq LIMIT 1", (now,)).fetchone()
                if row is None:
                    return None
                job_id, state, cancel, attempts = row
                if state == "running" and cancel:  # its worker died after a cancel request: nothing to resume
                    db.execute("UPDATE jobs SET state='cancelled', finished_at=?, lease_until=NULL, claim=NULL "
                               "WHERE id=?", (now, job_id))
                    continue
                if state == "running" and attempts >= max_attempts:  # it keeps killing its workers
                    db.execute("UPDATE jobs SET state='failed', finished_at=?, lease_until=NULL, claim=NULL, "
                               "error=? WHERE id=?", (now, f"its worker died {attempts} times while running it "
                                                           "(out of memory? killed?); not retried again", job_id))
                    continue
                db.execute("UPDATE jobs SET state='running', worker=?, claim=?, heartbeat_at=?, lease_until=?, "
                           "started_at=COALESCE(started_at, ?), attempts=attempts+1 WHERE id=?",
                           (worker, secrets.token_hex(16), now, now + lease_s, now, job_id))
                return self._get(db, job_id)

    def _held(self, db: sqlite3.Connection, job_id: str, claim: str, sets: str, args: tuple) -> Job | None:
        cur = db.execute(f"UPDATE jobs SET {sets} WHERE id=? AND claim=? AND state='running'",
                         (*args, job_id, claim))
        return self._get(db, job_id) if cur.rowcount else None

    def heartbeat(self, job_id: str, claim: str, lease_s: float) -> Job | None:
        now = time.time()
        with self._tx(immediate=True) as db:
            return self._held(db, job_id, claim, "heartbeat_at=?, lease_until=?", (now, now + lease_s))

    def progress(self, job_id: str, claim: str, stage: str, done: int, total: int | None) -> Job | None:
        with self._tx(immediate=True) as db:
            return self._held(db, job_id, claim, "stage=?, progress=?",
                              (stage, json.dumps({"done": done, "total": total})))

    def finish(self, job_id: str, claim: str, state: str, error: str | None = None,
               metrics: dict[str, Any] | None = None) -> bool:
        if state not in TERMINAL:
            raise JobStoreError(f"finish: {state!r} is not a terminal state ({', '.join(TERMINAL)})")
        with self._tx(immediate=True) as db:
            # a succeeded job's stage reads 'done'; a failed or cancelled one keeps the stage where it stopped
            return self._held(db, job_id, claim, "state=?, finished_at=?, error=?, metrics=?, lease_until=NULL, "
                              "claim=NULL, stage=CASE WHEN ?='succeeded' THEN 'done' ELSE stage END",
                              (state, time.time(), error, json.dumps(metrics) if metrics is not None else None,
                               state)) is not None

    def requeue(self, job_id: str, claim: str) -> bool:
        with self._tx(immediate=True) as db:
            return self._held(db, job_id, claim, "state=CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' "
                              "END, finished_at=CASE WHEN cancel_requested THEN ? ELSE NULL END, worker=CASE WHEN "
                              "cancel_requested THEN worker ELSE NULL END, lease_until=NULL, claim=NULL",
                              (time.time(),)) is not None

    def cancel(self, job_id: str) -> Job:
        with self._tx(immediate=True) as db:
            job = self._get(db, job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state in TERMINAL:
                raise JobStoreError(f"job {job_id} is already {job.state}")
            if job.state == "queued":
                db.execute("UPDATE jobs SET state='cancelled', cancel_requested=1, finished_at=? WHERE id=?",
                           (time.time(), job_id))
            else:
                db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=?", (job_id,))
            return self._get(db, job_id)  # type: ignore[return-value]


def open_store(home: str | os.PathLike | None = None, kinds: Iterable[str] | None = None) -> JobStore:
    """The job store of a service home (SQLite, the only backend so far), holding jobs of ``kinds`` (names)."""
    return SQLiteJobStore(home, kinds)
