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


def _judge(folder: Path, key: str, cross_encoder: str, seconds: float) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "judge.json").write_text(json.dumps({"key": key, "job": {"cross_encoder": cross_encoder},
                                                   "seconds": seconds, "weights": [seconds, 1.0]}))
    return str(folder)


def test_the_judge_key_is_its_recipe_so_a_refit_in_a_later_session_reuses_the_committed_rows(tmp_path):
    ce = tmp_path / "ce"
    ce.mkdir()
    (ce / "run.json").write_text(json.dumps({"kind": "train-reranker", "fingerprint": "ce-settings-1"}))
    first = B.judge_fingerprint(_judge(tmp_path / "a", "judge-settings", str(ce), 12.5))
    # the same recipe fitted again: other timings, other last digits of the weights, another folder
    assert B.judge_fingerprint(_judge(tmp_path / "b", "judge-settings", str(ce), 99.0)) == first
    # other judge settings, or a cross-encoder trained with other settings: another key
    assert B.judge_fingerprint(_judge(tmp_path / "c", "other-settings", str(ce), 12.5)) != first
    (ce / "run.json").write_text(json.dumps({"kind": "train-reranker", "fingerprint": "ce-settings-2"}))
    assert B.judge_fingerprint(_judge(tmp_path / "a", "judge-settings", str(ce), 12.5)) != first
    # a hub cross-encoder is known by its name
    hub = B.judge_fingerprint(_judge(tmp_path / "d", "judge-settings", "org/some-cross-encoder", 1.0))
    assert hub != first and hub == B.judge_fingerprint(_judge(tmp_path / "e", "judge-settings",
                                                              "org/some-cross-encoder", 2.0))


def test_a_judge_without_a_settings_key_or_judge_file_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no judge.json"):
        B.judge_fingerprint(str(tmp_path))
    (tmp_path / "judge.json").write_text(json.dumps({"features": ["bm25"]}))
    with pytest.raises(SystemExit, match="no settings key"):
        B.judge_fingerprint(str(tmp_path))


def test_rows_of_the_two_positive_aware_fits_are_kept_in_separate_files(parser):
    multi, new = parser.parse_args(["--pa-cost-on", "multi"]), parser.parse_args([])
    for a in (multi, new):
        a.rows_dir = "rows"
    for row in B.PA_ROWS:
        assert B.row_path(multi, row, 1) == Path("rows") / f"{row}__s1.json"  # the committed rows
        assert B.row_path(new, row, 1) == Path("rows") / f"{row}-all__s1.json"
        assert (ROWS / f"{row}__s1.json").is_file()
    for row in ("hardneg", "dense", "st"):  # rows that do not depend on the fit share their file
        assert B.row_path(multi, row, 2) == B.row_path(new, row, 2) == Path("rows") / f"{row}__s2.json"
