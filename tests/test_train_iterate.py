"""Fine-tuning (`hardneg train`) and the ANCE loop (`hardneg iterate`) on small real data with tiny models:
mine -> train -> evaluate -> iterate end to end, resume of a SIGKILLed training and of a loop killed mid-round,
carved dev splits, and the errors on bad input. The loop runs and the SIGKILLs are slow (``make test-all``);
training with tiny models, the splits and the config errors are in the fast tier."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.register_assert_rewrite("mining_fixtures", "faults")
from faults import command as faulty_hardneg  # noqa: E402
from mining_fixtures import mine, mining_env, subprocess_env  # noqa: E402

from mining_jobs.cli import main  # noqa: E402
from mining_jobs.config import ConfigError  # noqa: E402
from mining_jobs.iterate import load_loop_config  # noqa: E402
from retriever.data import load_collection  # noqa: E402
from retriever.errors import DataError  # noqa: E402

pytest_plugins = ("mining_fixtures", "faults")  # tiny_cross_encoder, tiny_bi_encoder, torch_one_thread; keep_checkpoints
REPO = Path(__file__).resolve().parents[1]
DEV = "test:dev:0.3"  # adi has only a test split: 35 queries, 82 documents
FIT = "test:fit:0.3"


@pytest.fixture
def env(monkeypatch, data_root, tmp_path, torch_one_thread):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    return tmp_path


def _mined(out: Path, bi: Path, ce: Path) -> Path:
    assert mine(out, "--data", "adi", "--split", FIT, "--cross-encoder", str(ce), "--set", f"candidates.model={json.dumps(str(bi))}",
                "--set", "candidates.bm25_k=8", "--set", "candidates.dense_k=8", "--set", "cross_encoder.max_length=64",
                "--set", "sampling.num_negatives=2") == 0
    return out


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------------------------- carved splits


def test_carved_dev_and_fit_partition_the_split(data_root):
    whole = load_collection(str(data_root / "adi"), "test")
    dev = load_collection(str(data_root / "adi"), DEV)
    fit = load_collection(str(data_root / "adi"), FIT)
    assert set(dev.queries).isdisjoint(fit.queries)
    assert set(dev.queries) | set(fit.queries) == set(whole.queries)
    assert 0 < len(dev.queries) < len(fit.queries)
    assert dev.qrels == {q: whole.qrels[q] for q in dev.queries}
    # deterministic: the same ids every time, whatever the order of the file
    assert set(load_collection(str(data_root / "adi"), DEV).queries) == set(dev.queries)


@pytest.mark.parametrize(("split", "msg"), [("test:valid", "expected SPLIT, SPLIT:dev"),
                                            ("test:dev:1.5", "between 0 and 1"),
                                            ("test:dev:abc", "between 0 and 1")])
def test_bad_carved_split_is_named(data_root, split, msg):
    with pytest.raises(DataError, match=msg) as e:
        load_collection(str(data_root / "adi"), split)
    assert split in str(e.value)


# ---------------------------------------------------------------------------------------------- train


def test_mine_train_evaluate_end_to_end(env, tiny_bi_encoder, tiny_cross_encoder, capsys, keep_checkpoints):
    mined = _mined(env / "mine", tiny_bi_encoder, tiny_cross_encoder)
    out = env / "train"
    rc = main(["-q", "train", "--triples", str(mined), "--base-model", str(tiny_bi_encoder), "--out", str(out),
               "--batch-size", "4", "--max-steps", "6", "--eval-steps", "2", "--max-seq-length", "32", "--lr", "1e-3",
               "--dev-data", "adi", "--dev-split", DEV, "--dev-corpus", "full"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "metrics.json").read_text())
    assert s["steps"] == 6
    assert [h["step"] for h in s["dev_history"]] == [2, 4, 6]
    best = max(s["dev_history"], key=lambda h: h["ndcg@10"])
    assert s["best_dev"]["ndcg@10"] == best["ndcg@10"]
    assert s["best_checkpoint"] == f"checkpoint-{best['step']}"
    assert s["final_dev"]["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-4)
    # the saved model holds the best checkpoint's weights (not the last step's), and differs from the base model
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out / "model"), device="cpu")
    assert model.max_seq_length == 64  # the base model's encoding limit, not the training limit (32)
    before, after = _weights(tiny_bi_encoder), _weights(out / "model")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    kept = _weights(out / "checkpoints" / s["best_checkpoint"])
    assert all(np.array_equal(kept[k], after[k]) for k in after)
    if s["best_checkpoint"] != "checkpoint-6":
        last = _weights(out / "checkpoints" / "checkpoint-6")
        assert any(not np.array_equal(last[k], after[k]) for k in after)
    # evaluating the saved model reproduces the best dev metrics (full corpus, exact search)
    from mining_jobs.evaluate import evaluate_model

    ev = evaluate_model(str(out / "model"), "adi", [DEV, "test"], cache_dir=str(env / "evcache"))
    assert ev[DEV]["metrics"]["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-4)
    assert ev["test"]["metrics"]["num_queries"] == 35 and ev["test"]["embedding_cache"] == "miss"
    card = (out / "model" / "README.md").read_text()
    for needle in (str(tiny_bi_encoder), "triples.parquet", "relative_margin", "Dev metrics", "adi", "ndcg@10"):
        assert needle in card
    # `hardneg evaluate` takes the model folder like any other model
    assert main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "dense", "--model",
                 str(out / "model"), "--out", str(env / "eval")]) == 0
    assert json.loads((env / "eval" / "metrics.json").read_text())["num_queries"] == 35


def test_in_batch_only_and_cached_loss(env, tiny_bi_encoder, tiny_cross_encoder):
    mined = _mined(env / "mine", tiny_bi_encoder, tiny_cross_encoder)
    rc = main(["-q", "train", "--triples", str(mined), "--base-model", str(tiny_bi_encoder), "--out",
               str(env / "t"), "--negatives", "0", "--loss", "cached-mnrl", "--mini-batch-size", "2",
               "--batch-size", "4", "--max-steps", "2", "--max-seq-length", "32"])
    assert rc == 0
    s = json.loads((env / "t" / "metrics.json").read_text())
    n_triples = pq.read_table(mined / "triples.parquet").num_rows
    assert s["data"]["rows"] == n_triples and s["data"]["rows_dropped_few_negatives"] == 0
    assert s["config"]["loss"] == "cached-mnrl" and s["steps"] == 2


def test_train_errors_name_the_problem(env, tiny_bi_encoder, tiny_cross_encoder, capsys):
    mined = _mined(env / "mine", tiny_bi_encoder, tiny_cross_encoder)
    base = ["-q", "train", "--base-model", str(tiny_bi_encoder), "--max-steps", "1"]
    # the dev split overlaps the mined queries: refused before anything is written
    assert main([*base, "--triples", str(mined), "--out", str(env / "a"), "--dev-data", "adi",
                 "--dev-split", "test"]) == 2
    assert "are in the training triples" in capsys.readouterr().err
    assert not (env / "a").exists()
    assert main([*base, "--triples", str(env / "nowhere"), "--out", str(env / "b")]) == 2
    assert "no such folder or file" in capsys.readouterr().err
    assert main([*base, "--triples", str(mined), "--out", str(env / "c"), "--negatives", "9"]) == 2
    assert "no row has 9 negatives" in capsys.readouterr().err
    assert main([*base, "--triples", str(mined), "--out", str(env / "d"), "--loss", "triplet"]) == 2
    assert "--loss 'triplet'" in capsys.readouterr().err
    # a finished job is not overwritten silently
    assert main([*base, "--triples", str(mined), "--out", str(env / "e"), "--batch-size", "4"]) == 0
    assert main([*base, "--triples", str(mined), "--out", str(env / "e"), "--batch-size", "4"]) == 2
    assert "already holds this finished model" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_checkpoint(env, tiny_bi_encoder, tiny_cross_encoder, data_root):
    mined = _mined(env / "mine", tiny_bi_encoder, tiny_cross_encoder)
    senv = subprocess_env(data_root, env / "cache")

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "mining_jobs.cli", "-q", "train", "--triples", str(mined), "--base-model",
                str(tiny_bi_encoder), "--out", str(out), "--batch-size", "4", "--max-steps", "8", "--eval-steps", "2",
                "--max-seq-length", "32", "--save-total-limit", "10", "--dev-data", "adi", "--dev-split", DEV,
                "--dev-corpus", "full"]

    ref = subprocess.run(cmd(env / "ref"), env=senv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = env / "out"
    proc = subprocess.Popen(cmd(out), env=senv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before checkpoint-4: {proc.stderr.read()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "metrics.json").exists()
    again = subprocess.run(cmd(out), env=senv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    s = json.loads((out / "metrics.json").read_text())
    r = json.loads((env / "ref" / "metrics.json").read_text())
    assert s["resumed_from"] is not None and int(s["resumed_from"].split("-")[1]) >= 4 and s["steps"] == 8
    assert r["resumed_from"] is None
    # the evaluations from before the kill are part of the record, as in the uninterrupted run
    assert [h["step"] for h in s["dev_history"]] == [h["step"] for h in r["dev_history"]] == [2, 4, 6, 8]
    for hs, hr in zip(s["dev_history"], r["dev_history"], strict=True):
        assert hs["ndcg@10"] == pytest.approx(hr["ndcg@10"], abs=1e-4)
    assert s["best_checkpoint"] == r["best_checkpoint"]
    a, b = _weights(env / "ref" / "model"), _weights(out / "model")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------------------------- iterate


def _loop_toml(path: Path, bi: Path, ce: Path, scores: Path, rounds: int = 3, **extra: str) -> Path:
    loop_extra = "".join(f"{k} = {v}\n" for k, v in extra.items())
    path.write_text(f"""
[loop]
rounds = {rounds}
base_model = {json.dumps(str(bi))}
data = "adi"
dev_split = "{DEV}"
test_split = ""
patience = 3
{loop_extra}
[mine.data]
split = "{FIT}"
[mine.candidates]
bm25_k = 8
dense_k = 8
[mine.cross_encoder]
model = {json.dumps(str(ce))}
max_length = 64
[mine.sampling]
num_negatives = 2
[mine.output]
shard_size = 5
score_cache = {json.dumps(str(scores))}
[train]
batch_size = 4
max_steps = 3
max_seq_length = 32
lr = 1e-3
""")
    return path


@pytest.mark.slow
def test_iterate_three_rounds_report(env, tiny_bi_encoder, tiny_cross_encoder, capsys):
    cfg = _loop_toml(env / "loop.toml", tiny_bi_encoder, tiny_cross_encoder, env / "scores.sqlite")
    out = env / "loop"
    assert main(["-q", "iterate", "--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2, 3]
    devs = [r["metrics"][DEV]["ndcg@10"] for r in summary["rounds"]]
    assert summary["best_round"] == int(np.argmax(devs))
    for r in (1, 2, 3):
        rj = json.loads((out / f"round_{r}" / "round.json").read_text())
        assert rj["started_from"] == (str(tiny_bi_encoder) if r == 1 else
                                      str(out / f"round_{r - 1}" / "train" / "model"))
        mine_manifest = json.loads((out / f"round_{r}" / "mine" / "manifest.json").read_text())
        assert mine_manifest["config"]["candidates"]["model"] == rj["started_from"]
        assert set(rj["metrics"]) == {DEV}
        assert rj["negatives"]["kept"] + rj["negatives"]["filtered"] > 0
        assert all(k in rj["timings"] for k in ("mine_s", "train_s", "eval_s"))
        if r > 1:
            prev = pq.read_table(out / f"round_{r - 1}" / "mine" / "triples.parquet")
            cur = pq.read_table(out / f"round_{r}" / "mine" / "triples.parquet")
            p = {(q, d) for q, ds in zip(prev["query_id"].to_pylist(), prev["negative_ids"].to_pylist(), strict=True)
                 for d in ds}
            c = {(q, d) for q, ds in zip(cur["query_id"].to_pylist(), cur["negative_ids"].to_pylist(), strict=True)
                 for d in ds}
            assert rj["churn"]["retained_share"] == pytest.approx(len(p & c) / len(p))
        # round r's dense candidates come from the corpus embeddings its predecessor's evaluation cached
        if r > 1:
            assert rj["negatives"]["embedding_cache"] == "hit"
    report = (out / "report.md").read_text()
    assert "| 3 |" in report and "churn (retained)" in report and "metrics.png" in report and "p vs base" in report
    for r in (1, 2, 3):  # each round's judge check next to the retrieval it judges
        chk = json.loads((out / f"round_{r}" / "mine" / "manifest.json").read_text())["judge_check"]
        line = next(x for x in report.splitlines() if x.startswith(f"- round {r}: the judge ranks"))
        assert f"{chk['judge_ndcg@10']:.4f}" in line and f"{chk['fused_retrieval_ndcg@10']:.4f}" in line
    # p vs base: each round's per-query dev nDCG@10 (as its evaluation stored it) against round 0's, paired
    from retriever.metrics import randomization_test

    per_q = [json.loads((out / f"round_{r}" / "eval.json").read_text())["splits"][DEV]["per_query"]["ndcg@10"]
             for r in range(4)]
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for r in summary["rounds"]:
        k = r["round"]
        assert r["metrics"][DEV]["ndcg@10"] == pytest.approx(np.mean(list(per_q[k].values())))
        if k == 0:
            assert "p_vs_base" not in r
            continue
        want = randomization_test(per_q[0], per_q[k])["p_value"]
        assert r["p_vs_base"] == {"split": DEV, "p": want}
        assert f"| {want:.4f} |" in rows[str(k)]
    assert (out / "metrics.png").stat().st_size > 1000
    assert "best round" in printed


@pytest.mark.slow
def test_loop_refuses_a_judge_whose_content_changed_under_its_path(env, tiny_bi_encoder, capsys):
    """A judge refitted (or a cross-encoder retrained) at the same path: the loop's finished rounds were mined
    with the old one, so a rerun refuses to reuse them, loses nothing, and with loop.overwrite starts afresh."""
    import shutil

    from retriever.small_models import build_small_cross_encoder

    ce = build_small_cross_encoder(env / "judge", hidden=32, layers=2, seed=0)
    cfg = _loop_toml(env / "loop.toml", tiny_bi_encoder, ce, env / "scores.sqlite", rounds=1)
    out = env / "loop"
    run = ["-q", "iterate", "--config", str(cfg), "--out", str(out)]
    assert main(run) == 0
    job = out / "round_1" / "mine" / "job.json"
    first = json.loads(job.read_text())["inputs"]["cross_encoder"]
    assert json.loads((out / "loop.json").read_text())["inputs"]["judge"] == first
    marker = out / "round_1" / "round.json"
    stamp = marker.read_bytes()
    assert main(run) == 0  # the same content: every finished stage is reused
    assert marker.read_bytes() == stamp
    capsys.readouterr()
    shutil.rmtree(ce)
    build_small_cross_encoder(ce, hidden=32, layers=2, seed=1)  # other weights, same path
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "judge" in err and str(ce) in err and "changed content" in err and "loop.overwrite=true" in err
    assert marker.read_bytes() == stamp  # refused before touching anything
    assert main([*run, "--set", "loop.overwrite=true"]) == 0
    second = json.loads(job.read_text())["inputs"]["cross_encoder"]
    assert second != first
    assert json.loads((out / "loop.json").read_text())["inputs"]["judge"] == second
    assert json.loads(marker.read_text())["finished"] > json.loads(stamp)["finished"]


def test_best_round_and_patience():
    from mining_jobs.iterate import best_round

    assert best_round([0.5, 0.6, 0.55]) == (1, 1)
    assert best_round([0.5, 0.6, 0.7]) == (2, 0)
    assert best_round([0.5, 0.5, 0.4]) == (0, 2)  # a tie is not an improvement


@pytest.mark.slow
def test_iterate_stops_when_dev_stops_improving(env, tiny_bi_encoder, tiny_cross_encoder, data_root, monkeypatch):
    """Mining and training run for real; the dev evaluation is scripted, so the stopping rule is checked against
    known values: nDCG@10 0.3 (base), 0.4 (round 1: better), 0.3 (round 2: not better) with patience 1 stops
    after round 2 of 3, best round 1. Every query moves by the same amount, so the paired randomization test
    is known too: p = 1 for a round equal to the base; for round 1, a difference no sign flip can reach unless
    all flip alike (probability 2 / 2^n over n dev queries)."""
    import mining_jobs.iterate as iterate

    out = env / "loop"
    dev_q = sorted(load_collection(str(data_root / "adi"), DEV).queries)
    assert len(dev_q) >= 10
    script = {str(tiny_bi_encoder): 0.3, str(out / "round_1" / "train" / "model"): 0.4,
              str(out / "round_2" / "train" / "model"): 0.3, str(out / "round_3" / "train" / "model"): 0.5}
    seen = []

    def scripted(model, data, splits, metrics, **kw):
        seen.append(str(model))
        v = script[str(model)]
        return {s: {"metrics": {**dict.fromkeys(metrics, v), "num_queries": len(dev_q)},
                    "per_query": {m: dict.fromkeys(dev_q, v) for m in metrics}, "embedding_cache": "miss"}
                for s in splits}

    monkeypatch.setattr(iterate, "evaluate_model", scripted)
    cfg = _loop_toml(env / "loop.toml", tiny_bi_encoder, tiny_cross_encoder, env / "scores.sqlite", rounds=3)
    res = iterate.run_loop(load_loop_config(cfg, ["loop.patience=1"], out=str(out)))
    assert seen == list(script)[:3]  # base, round 1, round 2: round 3 never ran
    assert [r["round"] for r in res["rounds"]] == [0, 1, 2]
    assert [r["metrics"][DEV]["ndcg@10"] for r in res["rounds"]] == [0.3, 0.4, 0.3]
    assert res["best_round"] == 1 and res["best_model"] == str(out / "round_1" / "train" / "model")
    assert res["stopped"] == "dev nDCG@10 did not improve for 1 round(s) after round 1"
    assert not (out / "round_3").exists()
    assert res["rounds"][2]["p_vs_base"] == {"split": DEV, "p": 1.0}
    assert res["rounds"][1]["p_vs_base"]["p"] < 0.01
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_round"] == 1 and summary["stopped"] == res["stopped"]
    report = (out / "report.md").read_text()
    assert "Best round by dev nDCG@10: **1**" in report
    assert f"Stopped early: {res['stopped']}." in report


@pytest.mark.slow
def test_restart_mode_trains_the_base_model_on_every_rounds_negatives(env, tiny_bi_encoder, tiny_cross_encoder):
    cfg = _loop_toml(env / "loop.toml", tiny_bi_encoder, tiny_cross_encoder, env / "scores.sqlite", rounds=2)
    out = env / "loop"
    from mining_jobs.iterate import run_loop

    run_loop(load_loop_config(cfg, ["loop.mode=restart"], out=str(out)))
    r2 = json.loads((out / "round_2" / "round.json").read_text())
    assert r2["started_from"] == str(tiny_bi_encoder)
    union = pq.read_table(out / "round_2" / "union.parquet")
    assert max(map(len, union["negative_ids"].to_pylist())) <= 1  # train.negatives = 1: one negative per row

    def pairs(t):
        return {(q, d) for q, ds in zip(t["query_id"].to_pylist(), t["negative_ids"].to_pylist(), strict=True)
                for d in ds}

    expected = pairs(pq.read_table(out / "round_1" / "mine" / "triples.parquet")) | \
        pairs(pq.read_table(out / "round_2" / "mine" / "triples.parquet"))
    assert pairs(union) == expected
    train = json.loads((out / "round_2" / "train" / "metrics.json").read_text())
    assert train["data"]["path"] == str(out / "round_2" / "union.parquet")
    assert train["data"]["rows"] == sum(1 for x in union["negative_ids"].to_pylist() if x)


@pytest.mark.slow
def test_iterate_killed_mid_round_resumes_to_the_same_result(env, tiny_bi_encoder, tiny_cross_encoder, data_root):
    senv = subprocess_env(data_root, env / "cache")

    def args(name: str) -> list[str]:
        cfg = _loop_toml(env / f"{name}.toml", tiny_bi_encoder, tiny_cross_encoder, env / f"{name}.sqlite", rounds=2)
        return ["-q", "iterate", "--config", str(cfg), "--out", str(env / name)]

    def cmd(name: str) -> list[str]:
        return [sys.executable, "-m", "mining_jobs.cli", *args(name)]

    ref = subprocess.run(cmd("ref"), env=senv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # killed (SIGKILL, by the fault of tests/faults.py) after round 2's mining stage, before its training
    killed = subprocess.run(faulty_hardneg("round2:mine", *args("out")), env=senv, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    out = env / "out"
    assert (out / "round_1" / "round.json").exists() and (out / "round_2" / "mine" / "manifest.json").exists()
    assert not (out / "round_2" / "round.json").exists() and not (out / "report.md").exists()
    done = {p: p.stat().st_mtime_ns for p in (out / "round_1" / "round.json", out / "round_2" / "mine" / "manifest.json",
                                              out / "round_1" / "train" / "model" / "model.safetensors")}
    again = subprocess.run(cmd("out"), env=senv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    # finished stages were reused, not redone
    assert {p: p.stat().st_mtime_ns for p in done} == done
    for r in (1, 2):
        for f in ("triples.parquet", "candidates.parquet"):
            assert (env / "ref" / f"round_{r}" / "mine" / f).read_bytes() == (out / f"round_{r}" / "mine" / f).read_bytes()
        a = json.loads((env / "ref" / f"round_{r}" / "round.json").read_text())
        b = json.loads((out / f"round_{r}" / "round.json").read_text())
        assert a["metrics"] == b["metrics"] and a["churn"] == b["churn"]
        wa, wb = _weights(env / "ref" / f"round_{r}" / "train" / "model"), _weights(out / f"round_{r}" / "train" / "model")
        assert all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(("override", "msg"), [
    ("loop.roundz=2", "loop: unknown key 'roundz'"),
    ("loop.mode=sideways", "loop.mode 'sideways'"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("mine.filter.relative_margin=2", "'filter.relative_margin' must be in"),
    ("train.out=x", "train.out: set by the loop"),
    ("mine.candidates.dense=false", "mine.candidates.dense"),
    ("train.max_steps=2.5", "train.max_steps: expected an integer"),
    ('mine.data.split="train"', "loop.dev_split = 'train:dev' shares queries with mine.data.split = 'train'"),
    ('mine.data.split="train:fit:0.1"', "shares queries"),
    ('loop.test_split="train:dev:0.3"', "loop.test_split = 'train:dev:0.3' shares queries"),
])
def test_loop_config_errors_name_the_field(tmp_path, override, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("'", "'")):
        load_loop_config(None, [override], out=str(tmp_path / "x"))
