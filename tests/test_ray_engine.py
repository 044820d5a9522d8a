"""The Ray engine (a local 2-CPU instance, two actors) mines the same files as the local engine, and the local
engine needs no Ray: without it, only ``engine = "ray"`` fails, naming the pip command. The Ray runs are slow
(``make test-all``); the fast tier checks what the engine ships to its actors and the missing-Ray error
in-process."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mine, mining_env, read_manifest, subprocess_env  # noqa: E402

import mining_jobs.engine as engine_mod  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, tiny_bi_encoder, torch_one_thread
REPO = Path(__file__).resolve().parents[1]
TRIPLE_FILES = ("triples.parquet", "ntuple.parquet", "triplets.parquet")


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
            "--set", f"output.score_cache={json.dumps(str(score_cache))}",
            # no judge check: it scores a sample on the driver, and these tests count what the actors score
            "--set", "filter.judge_check_queries=0"]


@pytest.mark.slow
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

    # the corpus embeddings (same cache key, so the same file name): blocks of 32 documents are padded and
    # batched otherwise than one call over the corpus, so a few values differ in the last bit (1 block: equal)
    [emb_local] = (tmp_path / "cache_local" / "embeddings").glob("*.npy")
    [emb_ray] = (tmp_path / "cache_ray" / "embeddings").glob("*.npy")
    assert emb_ray.name == emb_local.name
    np.testing.assert_allclose(np.load(emb_ray), np.load(emb_local), rtol=0, atol=1e-6)
    # the triples, byte for byte; the candidates too, but for those last-bit differences in dense scores
    for name in TRIPLE_FILES:
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    cands_local, cands_ray = pq.read_table(local / "candidates.parquet"), pq.read_table(remote / "candidates.parquet")
    assert cands_ray.drop(["dense_score"]).equals(cands_local.drop(["dense_score"]))
    np.testing.assert_allclose(cands_ray["dense_score"].to_numpy(zero_copy_only=False),
                               cands_local["dense_score"].to_numpy(zero_copy_only=False), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_ray_engine_cache_hit_and_early_stop(tmp_path, monkeypatch, data_root, tiny_cross_encoder, tiny_bi_encoder,
                                             torch_one_thread, ray_instance):
    from mining_jobs.config import RaySection, load_config
    from mining_jobs.mine import build_resources
    from mining_jobs.ray_engine import RayEngine
    from retriever.encoder import EmbeddingCache, Encoder

    mining_env(monkeypatch, data_root, tmp_path / "cache")
    engine = RayEngine(RaySection(actors=2))
    res = None
    try:
        # a cached corpus is returned as is, without any actor
        encoder, cache = Encoder(str(tiny_bi_encoder)), EmbeddingCache()
        cached = np.random.default_rng(0).random((2, 32), dtype=np.float32)
        cache.put(encoder.cache_key("fp"), cached)
        emb, info = engine.encode_corpus(encoder, ["a", "b"], "fp", cache)
        assert info["cache"] == "hit" and info["engine"] == "ray" and info["blocks"] == 0
        np.testing.assert_array_equal(emb, cached)
        assert engine.stats["actors"] == 0

        # the consumer stops after its first shard (a job cancelled between shards): the rest is cancelled
        cfg = load_config(None, base={"data": {"name": "adi", "split": "test"}, "candidates": {"dense": False},
                                      "cross_encoder": {"model": str(tiny_cross_encoder)},
                                      "output": {"score_cache": str(tmp_path / "scores.sqlite")}})
        res = build_resources(cfg, {}, engine)
        counters = {"retrieve_s": 0.0, "score_s": 0.0, "ce_pairs": 0, "ce_pairs_scored": 0, "shards_resumed": 0}
        shards = [(k, res.qids[i:i + 3]) for k, i in enumerate(range(0, len(res.qids), 3))]
        gen = engine.mine_shards(res, cfg, shards, counters)
        k, triples, _ = next(gen)
        actors = list(engine._actors)
        gen.close()
        assert k in (0, 1) and triples.num_rows >= 3
        assert len(actors) == 2 and engine.stats["shards"] == 1 and not engine._actors
        assert isinstance(counters["ce_pairs"], int) and counters["ce_pairs"] > 0
        for actor in actors:  # killed
            with pytest.raises(ray_instance.exceptions.RayActorError):
                ray_instance.get(actor.mine.remote(0, []), timeout=60)
    finally:
        engine.close()
        if res is not None:
            res.score_cache.close()
    assert ray_instance.is_initialized()


NO_RAY = """import json, sys
sys.modules["ray"] = None  # import ray fails
from mining_jobs.cli import main
print(json.dumps([main(args) for args in json.loads(sys.argv[1])]))
"""


@pytest.mark.slow
def test_local_engine_needs_no_ray(tmp_path, data_root, tiny_cross_encoder):
    toml = tmp_path / "ray.toml"
    toml.write_text('engine = "ray"\n')
    args = ["-q", "mine", "--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
            "--set", "candidates.dense=false", "--set", f"output.score_cache={json.dumps(str(tmp_path / 's.db'))}"]
    runs = [[*args, "--out", str(tmp_path / "local")], [*args, "--config", str(toml), "--out", str(tmp_path / "ray")]]
    proc = subprocess.run([sys.executable, "-c", NO_RAY, json.dumps(runs)], env=subprocess_env(data_root, tmp_path),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, 2], proc.stderr[-3000:]  # local ran; ray refused
    assert (tmp_path / "local" / "triples.parquet").is_file()
    assert "hardneg mine: error: engine = 'ray' needs Ray: pip install 'hardneg[ray]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_make_engine_without_ray_names_the_pip_command(monkeypatch):
    """The fast, in-process variant of test_local_engine_needs_no_ray: with ``import ray`` failing, the local
    engine is still made, and ``engine = "ray"`` raises the ImportError that names the pip command."""
    from mining_jobs.config import MineConfig
    from retriever.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    cfg = MineConfig()
    assert engine_mod.make_engine(cfg).name == "local"
    cfg.engine = "ray"
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'hardneg[ray]'")) as err:
        engine_mod.make_engine(cfg)
    assert isinstance(err.value, ImportError)  # what the command line reports as an error, exit code 2


DOC_IDS = [f"d{i}" for i in range(300)]
WORDS = ["solar", "wind", "tidal", "geothermal", "coal", "nuclear", "hydro", "battery", "grid", "turbine"]


def test_indexes_shipped_to_the_actors_search_like_the_drivers():
    """What the Ray engine puts in the object store for its actors (BM25 and dense indexes packed by
    ``_pack_bm25`` / ``_pack_dense``, pickled as Ray does) unpacks into indexes that return the driver's
    results: ids and scores, for every BM25 backend and dense index kind, search knobs included. No Ray."""
    from mining_jobs.ray_engine import _pack_bm25, _pack_dense, _unpack_bm25, _unpack_dense
    from retriever.bm25 import BACKENDS, BM25Index
    from retriever.dense_index import DenseIndex
    from retriever.text import TokenizerConfig

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=6)) + f" plants report {i}" for i in range(len(DOC_IDS))]
    queries = ["tidal turbine grid", "solar battery", "coal plants"]
    for backend in BACKENDS:
        bm25 = BM25Index(backend, tokenizer=TokenizerConfig()).index(DOC_IDS, texts, show_progress=False)
        shipped = _unpack_bm25(pickle.loads(pickle.dumps(_pack_bm25(bm25))))
        for a, b in zip(bm25.search_arrays(queries, k=10, show_progress=False),
                        shipped.search_arrays(queries, k=10, show_progress=False), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=backend)
    emb = rng.standard_normal((len(DOC_IDS), 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:5] + 0.1 * rng.standard_normal((5, 16)).astype(np.float32)
    for kind, knobs in (("flat", {}), ("hnsw", {"ef_search": 7}), ("ivf", {"nlist": 4, "nprobe": 3})):
        dense = DenseIndex(kind, **knobs).add(DOC_IDS, emb)
        shipped = _unpack_dense(pickle.loads(pickle.dumps(_pack_dense(dense))), DOC_IDS)
        assert shipped.params() == dense.params(), kind
        if kind == "hnsw":
            assert shipped.index.hnsw.efSearch == 7
        if kind == "ivf":
            assert shipped.index.nprobe == 3
        for a, b in zip(dense.search_arrays(q, k=10), shipped.search_arrays(q, k=10), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=kind)
        assert shipped.search(q, k=3) == dense.search(q, k=3)


@pytest.mark.slow
def test_ray_engine_applies_the_positive_aware_rule_like_the_local_engine(
        tmp_path, monkeypatch, data_root, tiny_cross_encoder, tiny_bi_encoder, torch_one_thread, ray_instance):
    # the rule reads each candidate's cosine to its positives: the actors need the corpus embeddings
    rule = ["--set", "filter.score_threshold=0.5", "--set", "filter.positive_cosine_weight=2.0",
            "--set", "filter.relative_margin=0.0"]
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    local = tmp_path / "local"
    assert mine(local, *_args(tiny_cross_encoder, tiny_bi_encoder, tmp_path / "s.sqlite"), *rule) == 0
    toml = tmp_path / "ray.toml"
    toml.write_text('engine = "ray"\n\n[ray]\ncpus_per_actor = 1.0\n')
    remote = tmp_path / "ray"
    assert mine(remote, "--config", str(toml), *_args(tiny_cross_encoder, tiny_bi_encoder, tmp_path / "s.sqlite"),
                *rule) == 0
    fates = read_manifest(local)["counts"]["fates"]
    assert fates.get("filtered:score_threshold", 0) > 0
    assert read_manifest(remote)["counts"]["fates"] == fates
    cos_l = pq.read_table(local / "candidates.parquet")["positive_cosine"].to_numpy(zero_copy_only=False)
    cos_r = pq.read_table(remote / "candidates.parquet")["positive_cosine"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(cos_r, cos_l, rtol=1e-6, atol=1e-6)
    for name in TRIPLE_FILES:
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
