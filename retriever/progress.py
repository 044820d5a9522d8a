"""Progress bars that follow the logger level (shown at INFO or DEBUG, hidden at WARNING), as
sentence-transformers does, and progress reports that a caller (the job service) can listen to.
Never prints itself; a listener may raise to stop the work at the next report (cancellation)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, int, "int | None"], None]
_listeners: list[Listener] = []
_stages: list[str] = []


def show_progress(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether the ``retriever`` logger is enabled for INFO."""
    if explicit is not None:
        return explicit
    return logging.getLogger("retriever").isEnabledFor(logging.INFO)


def current_stage() -> str:
    """The nested stage names, joined by ``/`` (e.g. ``round_1/mine``); empty outside any stage."""
    return "/".join(_stages)


def report(done: int, total: int | None = None) -> None:
    """Tell the listeners that ``done`` of ``total`` units of the current stage are finished. A listener's
    exception propagates: this is a checkpoint where the work may be stopped."""
    name = current_stage()
    for fn in list(_listeners):
        fn(name, done, total)


@contextmanager
def stage(name: str, total: int | None = None) -> Iterator[None]:
    """Enter a named stage (nested in the current one) and report its start."""
    _stages.append(name)
    try:
        report(0, total)
        yield
    finally:
        _stages.pop()


@contextmanager
def listen(fn: Listener) -> Iterator[None]:
    """Call ``fn(stage, done, total)`` on every report inside the block."""
    _listeners.append(fn)
    try:
        yield
    finally:
        _listeners.remove(fn)
