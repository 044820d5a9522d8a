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


def _judge(folder: Path, cross_encoder: str, seconds: float, depth: int = 30) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    job = {"data": "scifact", "split": "train:fit", "out": str(folder), "depth": depth, "overwrite": True,
           "cross_encoder": cross_encoder}
    (folder / "judge.json").write_text(json.dumps({"key": f"bytes-of-{folder.name}", "job": job,
                                                   "seconds": seconds, "weights": [seconds, 1.0]}))
    return str(folder)


def test_the_judge_key_is_its_recipe_so_a_refit_in_a_later_session_reuses_the_committed_rows(tmp_path):
    ce = tmp_path / "ce"
    ce.mkdir()
    (ce / "run.json").write_text(json.dumps({"kind": "train-reranker", "fingerprint": "ce-settings-1"}))
    first = B.judge_fingerprint(_judge(tmp_path / "a", str(ce), 12.5))
    # the same recipe fitted again into another folder: other timings, other last digits of the weights
    assert B.judge_fingerprint(_judge(tmp_path / "b", str(ce), 99.0)) == first
    # other judge settings, or a cross-encoder trained with other settings: another key
    assert B.judge_fingerprint(_judge(tmp_path / "c", str(ce), 12.5, depth=10)) != first
    (ce / "run.json").write_text(json.dumps({"kind": "train-reranker", "fingerprint": "ce-settings-2"}))
    assert B.judge_fingerprint(_judge(tmp_path / "a", str(ce), 12.5)) != first
    # a hub cross-encoder is known by its name; a local model folder by its weights
    hub = B.judge_fingerprint(_judge(tmp_path / "d", "org/some-cross-encoder", 1.0))
    assert hub != first and hub == B.judge_fingerprint(_judge(tmp_path / "e", "org/some-cross-encoder", 2.0))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"weights-1")
    w1 = B.judge_fingerprint(_judge(tmp_path / "f", str(plain), 1.0))
    (plain / "model.safetensors").write_bytes(b"weights-2")
    assert B.judge_fingerprint(_judge(tmp_path / "f", str(plain), 1.0)) != w1


def test_a_judge_without_settings_a_judge_file_or_its_local_cross_encoder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no judge.json"):
        B.judge_fingerprint(str(tmp_path))
    (tmp_path / "judge.json").write_text(json.dumps({"features": ["bm25"]}))
    with pytest.raises(SystemExit, match="no settings"):
        B.judge_fingerprint(str(tmp_path))
    with pytest.raises(SystemExit, match="no such folder"):  # not silently another key
        B.judge_fingerprint(_judge(tmp_path / "g", str(tmp_path / "gone"), 1.0))


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


def test_report_only_renders_stored_rows_and_refuses_a_row_of_other_settings(tmp_path, monkeypatch):
    rows = tmp_path / "rows"
    rows.mkdir()
    stored = json.loads((ROWS / "in-batch__s1.json").read_text())
    (rows / "in-batch__s1.json").write_text(json.dumps(stored))
    argv = ["bench_ablation", "--report-only", "--rows", "in-batch", "--seeds", "1", "--rows-dir", str(rows),
            "--results-dir", str(tmp_path / "out")]
    monkeypatch.setattr("sys.argv", argv)
    B.main()
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert f"{stored['test']['ndcg@10']:.4f}" in table  # the stored row, rendered
    (rows / "in-batch__s1.json").write_text(json.dumps({**stored, "key": {**stored["key"], "steps": 61}}))
    (tmp_path / "out" / "ablation.md").unlink()
    with pytest.raises(SystemExit, match="other settings \\(steps differ\\)"):
        B.main()
    assert not (tmp_path / "out" / "ablation.md").exists()  # no partial table written over the committed one


def test_the_table_names_each_rows_arithmetic_and_warns_when_rows_mix_them(tmp_path, monkeypatch):
    from benchmarks.machine import arithmetic

    assert arithmetic({"simd_flags": ["avx2", "avx512f", "avx512_bf16"]}) == "bf16"
    assert arithmetic({"simd_flags": ["avx2", "amx_bf16"]}) == "bf16"
    assert arithmetic({"simd_flags": ["avx", "avx2"]}) == "fp32"
    assert arithmetic({"simd_flags": ["avx2"], "gpu": "NVIDIA H100"}) == "gpu"
    assert arithmetic(None) == "unknown"
    rows = tmp_path / "rows"
    rows.mkdir()
    for row, flags in (("in-batch", ["avx2", "avx512_bf16"]), ("random", ["avx2"])):
        stored = json.loads((ROWS / f"{row}__s1.json").read_text())
        (rows / f"{row}__s1.json").write_text(json.dumps({**stored, "machine": {**stored["machine"],
                                                                                "simd_flags": flags}}))

    def render(which: str) -> tuple[str, dict]:
        monkeypatch.setattr("sys.argv", ["bench_ablation", "--report-only", "--rows", which, "--seeds", "1",
                                         "--rows-dir", str(rows), "--results-dir", str(tmp_path / "out")])
        B.main()
        return (tmp_path / "out" / "ablation.md").read_text(), \
            json.loads((tmp_path / "out" / "ablation.json").read_text())

    table, data = render("in-batch,random")
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert lines["| " + B.label("in-batch")].endswith("| bf16 |")
    assert lines["| " + B.label("random")].endswith("| fp32 |")
    assert "not all trained in the same arithmetic** (bf16: in-batch; fp32: random)" in table
    assert data["mixed_arithmetic"] is True and [r["arithmetic"] for r in data["rows"]] == ["bf16", "fp32"]
    table, data = render("in-batch")
    assert "same arithmetic" not in table and data["mixed_arithmetic"] is False


def test_the_random_sampler_row_mines_one_draw_per_seed_and_keys_on_its_sampler(parser, monkeypatch, tmp_path):
    monkeypatch.setattr(B, "judge_fingerprint", lambda folder: "fp")
    args = parser.parse_args(["--out", str(tmp_path)])
    top, rnd = B.settings_key(args, "hardneg", 1), B.settings_key(args, "hardneg-random", 1)
    assert {k: v for k, v in rnd.items() if k not in ("row", "sampling")} == {k: v for k, v in top.items() if k != "row"}
    assert rnd["sampling"] == "random" and "sampling" not in top  # hardneg's committed rows keep their key
    assert "hardneg-random" in B.HARDNEG_ROWS and "hardneg-random" not in B.CONTROLS
    mined = []

    def fake_mining(cfg, out):
        mined.append((cfg.sampling.strategy, cfg.sampling.seed, cfg.filter.relative_margin, out.name))
        out.mkdir(parents=True)
        (out / "manifest.json").write_text("{}")

    monkeypatch.setattr(B, "run_mining", fake_mining)
    a, b = B.triples_for(args, "hardneg-random", 1), B.triples_for(args, "hardneg-random", 2)
    assert a != b and B.triples_for(args, "hardneg-random", 1) == a  # one folder per draw, reused
    assert [m[:3] for m in mined] == [("random", 1, args.relative_margin), ("random", 2, args.relative_margin)]
