"""Progress bars that follow the logger level (shown at INFO or DEBUG, hidden at WARNING), as
sentence-transformers does, and progress checkpoints that a caller (the job service's worker) observes.

The work marks its stages and progress with ``stage()`` and ``report()``. Neither prints nor keeps a registry:
each calls the checkpoint callback that the caller installed around the work with ``checkpoints(fn)`` (held
in a ``ContextVar``, so it belongs to that caller's thread or task and ends with its block). Without one,
``report()`` does nothing. The callback may raise to stop the work at that checkpoint (cancellation); its
exception propagates out of ``report()`` through the work to the caller."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Checkpoint = Callable[[str, int, "int | None"], None]
"""``fn(stage, done, total)``: called at every checkpoint; may raise to stop the work there."""

_checkpoint: ContextVar[Checkpoint | None] = ContextVar("hardneg_checkpoint", default=None)
_stages: ContextVar[tuple[str, ...]] = ContextVar("hardneg_stages", default=())


def show_progress(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether the ``retriever`` logger is enabled for INFO."""
    if explicit is not None:
        return explicit
    return logging.getLogger("retriever").isEnabledFor(logging.INFO)


def current_stage() -> str:
    """The nested stage names, joined by ``/`` (e.g. ``round_1/mine``); empty outside any stage."""
    return "/".join(_stages.get())


def report(done: int, total: int | None = None) -> None:
    """A checkpoint: ``done`` of ``total`` units of the current stage are finished. Calls the callback installed
    by ``checkpoints`` (if any); its exception propagates: the work may be stopped here."""
    fn = _checkpoint.get()
    if fn is not None:
        fn(current_stage(), done, total)


@contextmanager
def stage(name: str, total: int | None = None) -> Iterator[None]:
    """Enter a named stage (nested in the current one) and report its start."""
    outer = _stages.get()
    _stages.set((*outer, name))
    try:
        report(0, total)
        yield
    finally:
        _stages.set(outer)


@contextmanager
def checkpoints(fn: Checkpoint) -> Iterator[None]:
    """Call ``fn(stage, done, total)`` at every checkpoint (``report``, and the start of every ``stage``) of the
    work done inside the block, in this thread; it replaces any callback installed further out."""
    outer = _checkpoint.get()
    _checkpoint.set(fn)
    try:
        yield
    finally:
        _checkpoint.set(outer)
