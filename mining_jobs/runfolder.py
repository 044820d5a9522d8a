"""The run folder, one protocol for every job kind (mine, train, train-reranker, evaluate, iterate, and the job
service's recovery in ``service.kinds``).

- ``prepare``: a missing or empty folder is created and gets the kind's state file first (the kind, the
  fingerprint of the settings, the config); a folder whose state file holds the same kind and fingerprint is
  resumed; anything else is refused with ``RunFolderError`` unless overwriting was asked for, and then it is
  emptied and started afresh. A folder that holds no run of this kind is never deleted, not even with
  overwriting.
- ``finish`` writes the completion marker (the kind's done file) last; ``is_finished`` and ``read_done`` read it.
- ``fingerprint``: the one hash of settings (sha256 of their sorted-key JSON).
- atomic writes (``write_text``, ``write_json``, ``write_parquet``): a temporary name, then a rename.

Each kind describes its folder once, in a ``Layout``; the file names users see stay the kind's own
(``job.json`` and ``manifest.json`` for mining, ``train.json`` and ``metrics.json`` for training, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.errors import HardnegError

from .files import write_json, write_parquet, write_text

__all__ = ["Layout", "RunFolderError", "State", "changed_inputs", "clear_unstarted", "finish", "fingerprint",
           "is_finished",
           "prepare", "read_done", "write_json", "write_parquet", "write_text"]

logger = logging.getLogger(__name__)


class RunFolderError(HardnegError):
    """The output folder holds another run, another kind of run, a finished run, or files that are no run,
    and overwriting was not asked for (or cannot help); the message says what is there and what to do."""


def fingerprint(obj: Any, length: int = 16) -> str:
    """The hash of settings: sha256 of ``obj`` as JSON with sorted keys, the first ``length`` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Layout:
    """How one kind of job keeps its run folder, and the words its messages use.

    ``state_file`` is written first (by ``prepare``) and holds ``kind``, the fingerprint under ``key_field``
    and the config; ``done_file`` is written last (by ``finish``) and marks the run finished (``None``: a
    finished run is resumed like an unfinished one). ``legacy`` recognises a folder this kind wrote before
    it had a state file; such a folder is this kind's, with an unknown fingerprint."""

    kind: str
    state_file: str = "run.json"
    done_file: str | None = None
    key_field: str = "fingerprint"
    noun: str = "run"  # "holds a {noun} with a different config"
    done_noun: str = ""  # "already holds this finished {done_noun}" (default: noun)
    redo: str = "run it again"  # "{hint} to {redo}"
    hint: str = "pass --overwrite"  # how to ask for overwriting
    legacy: Callable[[Path], bool] | None = None


@dataclass
class State:
    """A prepared run folder: ``record`` is the state file's content, ``resumed`` whether it was there."""

    out: Path
    layout: Layout
    record: dict[str, Any]
    resumed: bool

    @property
    def key(self) -> str | None:
        return self.record.get(self.layout.key_field)

    def save(self) -> None:
        """Write ``record`` back to the state file (atomically)."""
        write_json(self.out / self.layout.state_file, self.record)


def read_state(out: Path, layout: Layout) -> dict[str, Any] | None:
    """The state file's content, or ``None`` when there is none."""
    path = Path(out) / layout.state_file
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path} cannot be read ({exc}); choose an empty or new folder") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path} is no hardneg state file; choose an empty or new folder")
    return record


def _kind_of(record: dict[str, Any], layout: Layout) -> str | None:
    """The kind a state file names; one written before states named their kind counts as ``layout``'s when it
    holds the kind's key field."""
    return record.get("kind") or (layout.kind if layout.key_field in record else None)


def is_finished(out: str | Path, layout: Layout) -> bool:
    """Whether the run folder holds its completion marker."""
    return layout.done_file is not None and (Path(out) / layout.done_file).is_file()


def read_done(out: str | Path, layout: Layout) -> Any | None:
    """The completion marker's JSON content, or ``None`` when the run is not finished."""
    return json.loads((Path(out) / layout.done_file).read_text()) if is_finished(out, layout) else None  # type: ignore[operator]


def finish(out: str | Path, layout: Layout, result: Any) -> None:
    """Write the completion marker, after every other file of the run: ``result`` as JSON, or as it is when
    it is text."""
    if layout.done_file is None:
        raise ValueError(f"a {layout.kind} run has no completion marker")
    path = Path(out) / layout.done_file
    if isinstance(result, str):
        write_text(path, result)
    else:
        write_json(path, result)


def _is_legacy(out: Path, layout: Layout) -> bool:
    return layout.legacy is not None and out.is_dir() and layout.legacy(out)


def prepare(out: str | Path, layout: Layout, key: str, *, overwrite: bool = False, resume_same: bool = False,
            config: Any = None, extra: dict[str, Any] | None = None) -> State:
    """Create the run folder ``out`` for a run of ``layout.kind`` whose settings hash to ``key``, or resume it.

    - missing or empty: created; its state file holds the kind, ``key``, ``config`` (when given), the time and
      ``extra``;
    - the same kind with ``key``: resumed (refused when finished, unless ``overwrite``);
    - the same kind with another key: refused, unless ``overwrite``;
    - with ``overwrite``: emptied and started afresh; with ``resume_same`` too, a run with ``key`` is resumed
      instead (its completion marker removed), so that only a run with other settings is emptied;
    - not empty and no run of this kind (no state file, or another kind's): refused, also with ``overwrite``.
    """
    out = Path(out)
    record = read_state(out, layout)
    if record is None and _is_legacy(out, layout):
        record = {"kind": layout.kind, layout.key_field: None}
    if record is not None:
        kind = _kind_of(record, layout)
        if kind != layout.kind:
            what = f"a hardneg {kind} run" if kind else f"a {layout.state_file} of another kind of run"
            raise RunFolderError(f"{out} holds {what}, not a {layout.kind} {layout.noun}; choose an empty or new "
                                 "folder")
        old = record.get(layout.key_field)
        if old == key and (not overwrite or resume_same):
            if not overwrite and is_finished(out, layout):
                raise RunFolderError(f"{out} already holds this finished {layout.done_noun or layout.noun}; "
                                     f"{layout.hint} to {layout.redo}")
            if overwrite and layout.done_file:  # redone in place: it must not look finished meanwhile
                (out / layout.done_file).unlink(missing_ok=True)
            logger.info("resuming the %s in %s", layout.noun, out)
            return State(out, layout, record, resumed=True)
        if not overwrite:
            if old is None:
                raise RunFolderError(f"{out} holds a {layout.noun} written by an earlier hardneg (no "
                                     f"{layout.state_file}); {layout.hint} to replace it, or choose another --out")
            raise RunFolderError(f"{out} holds a {layout.noun} with a different config; {layout.hint} to replace "
                                 "it, or choose another --out")
        logger.info("overwriting the %s in %s", layout.noun, out)
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out} is not empty and holds no hardneg {layout.noun} (no {layout.state_file}); "
                             "choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    record = {"kind": layout.kind, layout.key_field: key}
    if config is not None:
        record["config"] = config
    record["created"] = time.time()
    record.update(extra or {})
    state = State(out, layout, record, resumed=False)
    state.save()
    return state


def changed_inputs(state: State, fps: dict[str, str | None]) -> list[str]:
    """The names in ``fps`` whose content fingerprint differs from the one the run folder's state recorded
    under ``inputs`` when the run started (none when it recorded none: a new run, or one from before inputs
    were recorded). Runs whose files depend on model weights or input data named by path use it to refuse a
    resume whose inputs changed under the same names."""
    old = state.record.get("inputs")
    return [] if old is None else sorted(k for k in fps if old.get(k) != fps[k])


def clear_unstarted(out: str | Path, layout: Layout) -> bool:
    """Empty a run folder that a killed worker left unstarted: not empty, but without the state file (it died
    after creating the folder, before the state file was in place) and no earlier version's run of this kind.
    Only for the job service, whose run folders belong to their jobs. Returns whether it was emptied."""
    out = Path(out)
    if out.is_dir() and not (out / layout.state_file).is_file() and not _is_legacy(out, layout) \
            and any(out.iterdir()):
        logger.info("%s has no %s: nothing to resume, starting afresh", out, layout.state_file)
        shutil.rmtree(out)
        return True
    return False
