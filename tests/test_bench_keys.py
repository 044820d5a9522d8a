"""The ablation benchmark's row keys: a committed row is reused only when it was made with the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_readme_commands import benchmark_parser

from benchmarks import bench_ablation as B

ROWS = Path(B.__file__).parent / "results" / "ablation_rows"


@pytest.fixture
def parser(monkeypatch):
    return benchmark_parser("benchmarks.bench_ablation", monkeypatch)


def test_positive_aware_rows_of_the_earlier_fit_keep_their_key_and_the_new_fit_gets_another(parser, monkeypatch):
    monkeypatch.setattr(B, "judge_fingerprint", lambda folder: "fp")
    stored = json.loads((ROWS / "dense-pa__s1.json").read_text())["key"]
    for row in B.PA_ROWS:
        multi = B.settings_key(parser.parse_args(["--pa-cost-on", "multi"]), row, 1)
        new = B.settings_key(parser.parse_args([]), row, 1)
        assert "cost_on" not in multi and set(multi) == set(stored)  # the committed rows' key, field for field
        assert new == {**multi, "cost_on": "all"}  # the default fit is another setting: its rows are recomputed
    # rows without the positive-aware rule do not depend on it
    for row in ("hardneg", "dense", "st"):
        assert B.settings_key(parser.parse_args(["--pa-cost-on", "multi"]), row, 1) == \
            B.settings_key(parser.parse_args([]), row, 1)
