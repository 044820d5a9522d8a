"""Fault injection for the tests, kept out of the production code.

- ``kill_after(point)`` makes this process SIGKILL itself right after a stage of an ANCE loop has finished:
  ``"round2:mine"`` once round 2's mining has returned (its run folder complete, round 2's training not
  started), ``"round2:train"`` once round 2's training has returned. It wraps the stage function
  (``mining_jobs.mine.run_mining`` or ``mining_jobs.train.run_training``) in its module, so a loop that calls it
  afterwards runs the wrapper.
- Run as a script, it is ``hardneg`` with such a fault, for a test's subprocess:
  ``python tests/faults.py --kill-after round2:mine -- -q iterate --config ...``.
- ``keep_checkpoints``: a pytest fixture under which a finished ``hardneg train`` keeps its trainer
  checkpoints (normally removed), so a test can compare them with the kept model."""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

logger = logging.getLogger(__name__)

# stage name -> (module, function, where the call writes: its run folder, from its arguments)
STAGES: dict[str, tuple[str, str, Callable[..., Any]]] = {
    "mine": ("mining_jobs.mine", "run_mining", lambda cfg, out, *a, **kw: out),
    "train": ("mining_jobs.train", "run_training", lambda cfg, *a, **kw: cfg.out),
}


def kill_after(point: str) -> None:
    """Install the fault ``point`` (``round<R>:<stage>``, stage one of ``STAGES``) in this process."""
    m = re.fullmatch(r"round(\d+):(\w+)", point)
    if m is None or m.group(2) not in STAGES:
        raise ValueError(f"fault point {point!r}: expected round<R>:<{'|'.join(STAGES)}>")
    folder = f"round_{int(m.group(1))}"
    module, name, out_of = STAGES[m.group(2)]
    mod = importlib.import_module(module)
    real = getattr(mod, name)

    def stage_then_die(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if Path(out_of(*args, **kwargs)).parent.name == folder:
            logger.warning("fault %s: killing this process (SIGKILL)", point)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(mod, name, stage_then_die)


@pytest.fixture
def keep_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished training run keeps its ``checkpoints/`` folder."""
    import mining_jobs.train

    monkeypatch.setattr(mining_jobs.train, "drop_checkpoints", lambda out: None)


def command(point: str, *hardneg_args: str) -> list[str]:
    """The command line of a ``hardneg`` subprocess that dies at ``point`` (see ``kill_after``)."""
    return [sys.executable, str(Path(__file__).resolve()), "--kill-after", point, "--", *hardneg_args]


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "--kill-after" or argv[2] != "--":
        print("usage: python tests/faults.py --kill-after round<R>:<stage> -- HARDNEG_ARGS...", file=sys.stderr)
        return 2
    kill_after(argv[1])  # before the command line imports the loop, so that it sees the wrapped stage
    from mining_jobs.cli import main

    return main(argv[3:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
