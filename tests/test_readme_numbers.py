"""Every result file the README names is a committed file (issue 13: the README's numbers come from result
files that scripts wrote). Pure text and ``git ls-files``; nothing is run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULT_REF = re.compile(r"benchmarks/results/[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.(?:md|json|png)")


def result_refs(text: str) -> list[str]:
    """The ``benchmarks/results/...`` files named in ``text``, in order, without repeats."""
    return list(dict.fromkeys(RESULT_REF.findall(text)))


def missing(refs: list[str], tracked: set[str]) -> list[str]:
    """The named files that are not tracked by git or not on disk."""
    return [r for r in refs if r not in tracked or not (ROOT / r).is_file()]


def tracked_results() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", "benchmarks/results"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return set(filter(None, out.split("\0")))


def test_refs_are_found_and_checked():
    text = ("see `benchmarks/results/judge.md` and benchmarks/results/reranker.json; "
            "(benchmarks/results/judge.md). Also benchmarks/results/nope.md.")
    refs = result_refs(text)
    assert refs == ["benchmarks/results/judge.md", "benchmarks/results/reranker.json", "benchmarks/results/nope.md"]
    tracked = {"benchmarks/results/judge.md", "benchmarks/results/reranker.json"}
    assert missing(refs, tracked) == ["benchmarks/results/nope.md"]


def test_readme_result_files_are_committed():
    refs = result_refs((ROOT / "README.md").read_text())
    assert len(refs) >= 5, refs  # the README quotes many result files; none found means the pattern broke
    assert missing(refs, tracked_results()) == [], "README names result files that are not committed"
