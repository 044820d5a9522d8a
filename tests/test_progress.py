"""``retriever.progress``: stages and checkpoints reach the callback that the caller installs around the work
(``checkpoints``), and nothing else; the callback stops the work by raising; no registry outlives the block."""

from __future__ import annotations

import threading

import pytest

from retriever import progress
from retriever.progress import checkpoints, current_stage, report, stage


def test_checkpoints_see_nested_stages_and_reports():
    seen = []
    with checkpoints(lambda s, done, total: seen.append((s, done, total))):
        report(0)
        with stage("round_1", 3):
            with stage("shards", 2):
                report(1, 2)
                assert current_stage() == "round_1/shards"
            report(2, 3)
    assert seen == [("", 0, None), ("round_1", 0, 3), ("round_1/shards", 0, 2), ("round_1/shards", 1, 2),
                    ("round_1", 2, 3)]
    assert current_stage() == ""
    report(5, 5)  # outside the block: no callback, nothing happens
    assert len(seen) == 5


def test_the_callback_stops_the_work_by_raising():
    class Stop(Exception):
        pass

    def cancel(s, done, total):
        if done >= 2:
            raise Stop(s)

    finished = []
    with checkpoints(cancel), pytest.raises(Stop, match="shards"), stage("shards", 5):
        for i in range(1, 6):
            report(i, 5)
            finished.append(i)
    assert finished == [1]
    assert current_stage() == ""  # the stage was left on the way out


def test_a_callback_belongs_to_its_block_and_thread():
    outer, inner, other = [], [], []
    with checkpoints(lambda *a: outer.append(a)):
        with checkpoints(lambda *a: inner.append(a)):
            report(1)
        report(2)

        def elsewhere():  # another thread (another job) does not report to this caller
            with stage("x"):
                report(3)
            with checkpoints(lambda *a: other.append(a)), stage("y"):
                report(4)

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
    assert inner == [("", 1, None)] and outer == [("", 2, None)] and other == [("y", 0, None), ("y", 4, None)]


def test_no_module_level_registry():
    """The state is in context variables: no list or dict of listeners at module level."""
    assert not hasattr(progress, "listen") and not hasattr(progress, "_listeners")
    assert not [k for k, v in vars(progress).items() if not k.startswith("__") and isinstance(v, list | dict | set)]
