"""The mined n-tuples train a sentence-transformers bi-encoder: a few steps of MultipleNegativesRankingLoss
on ``ntuple.parquet`` change the packaged MiniLM's weights."""

from __future__ import annotations

import json

import pytest
import torch

from retriever.encoder import default_model_path

pytest.register_assert_rewrite("mining_fixtures")  # assertions in the helpers stay rewritten
from mining_fixtures import mine, mining_env, read_manifest  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, torch_one_thread
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_ntuples_train_a_sentence_transformer(tmp_path, monkeypatch, data_root, tiny_cross_encoder):
    try:
        import accelerate  # noqa: F401
    except ImportError:
        pytest.fail("SentenceTransformerTrainer needs accelerate>=1.1.0 (sentence-transformers[train]): "
                    "pip install 'accelerate>=1.1.0'; the project's test extra should list it", pytrace=False)
    from datasets import load_dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    mining_env(monkeypatch, data_root, tmp_path / "cache")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    out = tmp_path / "mined"
    assert mine(out, "--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
                "--set", "candidates.dense=false", "--set", "sampling.num_negatives=2",
                "--set", f"output.score_cache={json.dumps(str(tmp_path / 'scores.sqlite'))}") == 0
    n_rows = read_manifest(out)["counts"]["ntuple_rows"]
    assert n_rows >= 8, "too few full n-tuples to train on"

    train = load_dataset("parquet", data_files=str(out / "ntuple.parquet"))["train"]
    assert train.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert train.num_rows == n_rows
    assert all(isinstance(v, str) and v for row in train.select(range(4)) for v in row.values())

    model = SentenceTransformer(default_model_path(), device="cpu")
    model.max_seq_length = 64  # keep the steps cheap
    param = next(p for name, p in model.named_parameters() if "attention.self.query.weight" in name)
    before = param.detach().clone()

    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "train"), max_steps=2,
                                                per_device_train_batch_size=4, report_to=[], save_strategy="no",
                                                use_cpu=True, learning_rate=1e-3, logging_strategy="no",
                                                disable_tqdm=True, seed=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model))
    result = trainer.train()
    assert result.global_step == 2
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = next(p for name, p in model.named_parameters() if "attention.self.query.weight" in name)
    assert not torch.equal(before, after.detach()), "training did not change the weights"
