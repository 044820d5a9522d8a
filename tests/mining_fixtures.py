"""Fixtures shared by the mining tests: a tiny random-initialised cross-encoder and helpers to run the job.

Test modules load the fixtures with ``pytest_plugins = ("mining_fixtures",)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mining_jobs.cli import main
from retriever.small_models import build_small_bi_encoder, build_small_cross_encoder

OUTPUT_FILES = ("triples.parquet", "ntuple.parquet", "triplets.parquet", "candidates.parquet", "manifest.json",
                "report.md", "scores.png")


def build_tiny_cross_encoder(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT cross-encoder with random weights (seed 0): see ``build_small_cross_encoder``."""
    return build_small_cross_encoder(folder, hidden=32, layers=2, seed=0)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Torch on one thread for the module, restored afterwards.

    On a small, busy CPU, torch's intra-op thread pool costs milliseconds per operator in synchronisation
    (a 32-wide BERT batch took 0.3 s on 2 threads, 1 ms on 1), which would make these tests minutes long.
    Results do not depend on it: every comparison in these tests is between runs with the same setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    folder = build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny_ce") / "model")
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(folder))  # must load as a plain CrossEncoder
    scores = ce.predict([("what is retrieval", "retrieval of documents"), ("a", "b")])
    assert len(scores) == 2
    return folder


def mining_env(mp: pytest.MonkeyPatch, data_root: Path, cache: Path) -> None:
    """Point the job at the real collections and a private cache; offline; no progress bars."""
    mp.setenv("HARDNEG_DATA", str(data_root))
    mp.setenv("HARDNEG_CACHE", str(cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TQDM_DISABLE", "1")


def subprocess_env(data_root: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HARDNEG_DATA": str(data_root), "HARDNEG_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    return env


def mine(out: Path, *args: str) -> int:
    """``hardneg -q mine --out OUT ARGS...`` in-process; returns the exit code."""
    return main(["-q", "mine", "--out", str(out), *args])


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def pairs_scored_now(m: dict) -> int:
    """Pairs this run scored with the model: in the judge check (which runs before the shards, through the
    same score cache) and in the shards."""
    return m["counts"]["ce_pairs_scored"] + ((m.get("judge_check") or {}).get("pairs_scored") or 0)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def build_tiny_bi_encoder(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT bi-encoder with random weights (seed 0), max_seq_length 64."""
    return build_small_bi_encoder(folder, hidden=32, layers=2, max_seq_length=64, seed=0)


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory) -> Path:
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("tiny_bi") / "model")
