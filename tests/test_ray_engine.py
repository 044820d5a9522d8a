"""The Ray engine (a local 2-CPU instance, two actors) mines the same files as the local engine, and the local
engine needs no Ray: without it, only ``engine = "ray"`` fails, naming the pip command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mine, mining_env, read_manifest, subprocess_env  # noqa: E402

import mining_jobs.engine as engine_mod  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, tiny_bi_encoder, torch_one_thread
REPO = Path(__file__).resolve().parents[1]
COMPARED = ("triples.parquet", "candidates.parquet", "ntuple.parquet", "triplets.parquet")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance (2 CPUs) for the module; the engine joins it and leaves it running."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:  # the workers inherit the environment at start
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("TQDM_DISABLE", "1")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
        try:
            yield ray
        finally:
            ray.shutdown()


def _args(ce: Path, bi: Path, score_cache: Path) -> list[str]:
    return ["--data", "adi", "--split", "test", "--cross-encoder", str(ce),
            "--set", f"candidates.model={json.dumps(str(bi))}", "--set", "output.shard_size=3",
            "--set", f"output.score_cache={json.dumps(str(score_cache))}"]


def test_ray_engine_mines_the_local_files(tmp_path, monkeypatch, data_root, tiny_cross_encoder, tiny_bi_encoder,
                                          torch_one_thread, ray_instance):
    # the same job twice, each with its own embedding and score caches: both compute everything
    mining_env(monkeypatch, data_root, tmp_path / "cache_local")
    local = tmp_path / "local"
    assert mine(local, *_args(tiny_cross_encoder, tiny_bi_encoder, tmp_path / "local.sqlite")) == 0

    monkeypatch.setenv("HARDNEG_CACHE", str(tmp_path / "cache_ray"))
    toml = tmp_path / "ray.toml"
    toml.write_text('engine = "ray"\n\n[ray]\ncpus_per_actor = 1.0\nencode_block = 32\n')
    engines, make_engine = [], engine_mod.make_engine

    def spy(cfg):  # keeps the engine, to look at what it did
        engines.append(make_engine(cfg))
        return engines[-1]

    monkeypatch.setattr(engine_mod, "make_engine", spy)
    remote = tmp_path / "ray"
    assert mine(remote, "--config", str(toml), *_args(tiny_cross_encoder, tiny_bi_encoder,
                                                      tmp_path / "ray.sqlite")) == 0

    # it really ran on Ray: 3 corpus blocks (82 documents / 32), 12 shards over two actor processes
    [eng] = engines
    assert eng.name == "ray"
    assert eng.stats["encode_blocks"] == 3
    assert eng.stats["actors"] == 2 and eng.stats["shards"] == 12
    assert len(eng.stats["workers"]) == 2 and os.getpid() not in eng.stats["workers"]
    assert ray_instance.is_initialized()  # joined, not started: left running by close()

    m_local, m_ray = read_manifest(local), read_manifest(remote)
    assert m_ray["config"]["engine"] == "ray" and m_local["config"]["engine"] == "local"
    assert m_ray["timings"]["embedding_cache"] == m_local["timings"]["embedding_cache"] == "miss"
    for key in ("shards", "queries", "triples", "ce_pairs", "ce_pairs_scored", "fates"):
        assert m_ray["counts"][key] == m_local["counts"][key], key
    assert m_ray["counts"]["shards"] == 12
    assert m_ray["counts"]["ce_pairs_scored"] == m_ray["counts"]["ce_pairs"] > 0  # scored on the actors

    # the corpus embeddings (same cache key, so the same file name) and the mined files, byte for byte
    [emb_local] = (tmp_path / "cache_local" / "embeddings").glob("*.npy")
    [emb_ray] = (tmp_path / "cache_ray" / "embeddings").glob("*.npy")
    assert emb_ray.name == emb_local.name
    np.testing.assert_array_equal(np.load(emb_ray), np.load(emb_local))
    for name in COMPARED:
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name


NO_RAY = "import sys; sys.modules['ray'] = None; from mining_jobs.cli import main; sys.exit(main(sys.argv[1:]))"


def test_local_engine_needs_no_ray(tmp_path, data_root, tiny_cross_encoder):
    env = subprocess_env(data_root, tmp_path / "cache")
    args = ["-q", "mine", "--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
            "--set", "candidates.dense=false", "--set", f"output.score_cache={json.dumps(str(tmp_path / 's.db'))}"]

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", NO_RAY, *args, *extra], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    ok = run("--out", str(tmp_path / "local"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "local" / "triples.parquet").is_file()

    toml = tmp_path / "ray.toml"
    toml.write_text('engine = "ray"\n')
    bad = run("--config", str(toml), "--out", str(tmp_path / "ray"))
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "pip install 'hardneg[ray]'" in bad.stderr
    assert "Traceback" not in bad.stderr
