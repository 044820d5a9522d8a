"""The mined n-tuples train a bi-encoder through the project's own path: `hardneg mine` on adi, then
`hardneg train` (mining_jobs.train.run_training) for ten MultipleNegativesRankingLoss steps on its
triples changes the packaged MiniLM's weights and saves a model that loads and encodes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mining_jobs.cli import main
from retriever.encoder import default_model_path

pytest.register_assert_rewrite("mining_fixtures")  # assertions in the helpers stay rewritten
from mining_fixtures import mine, mining_env, read_manifest  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, torch_one_thread
pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.slow]


def test_mined_triples_train_the_packaged_model_with_hardneg_train(tmp_path, monkeypatch, data_root,
                                                                   tiny_cross_encoder, capsys):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    mining_env(monkeypatch, data_root, tmp_path / "cache")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    mined = tmp_path / "mined"
    assert mine(mined, "--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
                "--set", "candidates.dense=false", "--set", "sampling.num_negatives=2",
                "--set", f"output.score_cache={json.dumps(str(tmp_path / 'scores.sqlite'))}") == 0
    counts = read_manifest(mined)["counts"]
    n_rows = counts["ntuple_rows"]
    assert n_rows >= 8, "too few full n-tuples to train on"

    out = tmp_path / "train"
    rc = main(["-q", "train", "--triples", str(mined), "--base-model", "default", "--negatives", "2",
               "--batch-size", "4", "--max-steps", "10", "--max-seq-length", "64", "--lr", "1e-3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "metrics.json").read_text())
    assert s["steps"] == 10  # the loss is logged every min(10, steps per epoch) steps: 10 here
    # the trainer reads the mining run's triples: exactly the rows with both negatives, i.e. the n-tuples
    assert s["data"]["path"] == str(mined / "triples.parquet")
    assert s["data"]["rows"] == n_rows
    assert s["data"]["rows_in"] == counts["triples"]
    assert s["data"]["rows_dropped_few_negatives"] == s["data"]["rows_in"] - n_rows
    assert s["data"]["mining"]["collection"]["name"] == "adi"
    assert math.isfinite(s["train_loss"]) and s["train_loss"] > 0
    before = load_file(str(Path(default_model_path()) / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert after.keys() and after.keys() <= before.keys()  # the packaged file also holds a position_ids buffer
    assert any(not np.array_equal(before[k], after[k]) for k in after), "training did not change the weights"
    model = SentenceTransformer(str(out / "model"), device="cpu")
    emb = model.encode(["geothermal electricity"], normalize_embeddings=True)
    assert emb.shape == (1, 384) and np.isfinite(emb).all()
