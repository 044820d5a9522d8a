"""Bi-encoder (packaged all-MiniLM-L6-v2), weights fingerprint, embedding cache, bf16, and the faiss index."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from retriever.data import load_beir
from retriever.dense_index import DenseIndex
from retriever.encoder import (
    EmbeddingCache,
    Encoder,
    cpu_supports_bf16,
    encode_corpus,
    load_model,
    resolve_bf16,
    weights_fingerprint,
)
from retriever.errors import DataError
from retriever.metrics import evaluate

SENTENCES = [
    "A cat sleeps on the warm sofa.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis turns sunlight into chemical energy.",
    "Quantum computers store information in qubits.",
    "Volcanoes erupt lava and ash.",
]
DIM = 384


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """The packaged model, loaded once for the module (offline)."""
    return Encoder("default", bf16="off", batch_size=16)


def _perturbed_copy(model, delta: float = 1e-3, whole_tensor: bool = False):
    """A deep copy of ``model`` with ``delta`` added to one parameter (one element, or the whole tensor)."""
    import torch

    m = copy.deepcopy(model)
    p = next(p for n, p in m.named_parameters() if n.endswith("output.dense.bias"))
    with torch.no_grad():
        if whole_tensor:
            p.add_(delta)
        else:
            p.view(-1)[0] += delta
    return m


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- encoder


def test_embeddings_shape_dtype_and_norm(encoder: Encoder):
    emb = encoder.encode(SENTENCES, show_progress=False)
    assert emb.shape == (len(SENTENCES), DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_embeddings_are_semantic(encoder: Encoder):
    docs = encoder.encode_documents(SENTENCES, show_progress=False)
    q = encoder.encode_queries(["what do plants do with light?", "kitten napping on a couch"], show_progress=False)
    best = (q @ docs.T).argmax(axis=1)
    assert best.tolist() == [2, 0]


def test_encode_is_deterministic_and_empty_input(encoder: Encoder):
    a = encoder.encode(SENTENCES[:2], show_progress=False)
    b = encoder.encode(SENTENCES[:2], show_progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    empty = encoder.encode([], show_progress=False)
    assert empty.shape == (0, DIM)


def test_chunked_encoding_equals_one_call(encoder: Encoder, monkeypatch):
    """Past ``chunk_size`` texts, encoding goes chunk by chunk into one array: same rows, same order."""
    texts = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 3)]
    whole = encoder.encode(texts, prompt="p: ", show_progress=False)
    monkeypatch.setattr(encoder, "chunk_size", 4)
    chunked = encoder.encode(texts, prompt="p: ", show_progress=False)
    assert chunked.shape == whole.shape and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_prompts_change_embeddings(encoder: Encoder):
    plain = encoder.encode(SENTENCES[:2], show_progress=False)
    prompted = encoder.encode(SENTENCES[:2], prompt="query: ", show_progress=False)
    assert not np.allclose(plain, prompted, atol=1e-4)
    enc = Encoder(encoder.model, bf16="off", query_prompt="query: ")
    np.testing.assert_allclose(enc.encode_queries(SENTENCES[:2], show_progress=False), prompted, atol=1e-5)


def test_weights_fingerprint_is_stable(encoder: Encoder):
    fp = weights_fingerprint(encoder.model)
    assert isinstance(fp, str) and len(fp) == 16
    int(fp, 16)
    assert weights_fingerprint(encoder.model) == fp
    assert encoder.fingerprint() == fp
    # an unmodified copy has the same weights, hence the same fingerprint
    assert weights_fingerprint(copy.deepcopy(encoder.model)) == fp


def test_weights_fingerprint_changes_for_perturbed_copy(encoder: Encoder):
    fp = encoder.fingerprint()  # computed first: the realistic order (evaluate, then fine-tune a copy)
    perturbed = _perturbed_copy(encoder.model)
    assert weights_fingerprint(perturbed) != fp
    assert encoder.fingerprint() == fp  # the original is untouched


def test_weights_fingerprint_changes_after_in_place_update(encoder: Encoder):
    import torch

    model = copy.deepcopy(encoder.model)
    before = weights_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3  # one optimizer step, in place
    assert weights_fingerprint(model) != before


def test_cache_key_depends_on_what_determines_embeddings(encoder: Encoder, monkeypatch):
    base = encoder.cache_key("corpusA")
    assert base == encoder.cache_key("corpusA")
    assert base["weights"] == encoder.fingerprint()
    assert base["precision"] == "fp32"
    assert encoder.cache_key("corpusB") != base
    assert encoder.cache_key("corpusB")["corpus"] == "corpusB"
    prompted = Encoder(encoder.model, bf16="off", doc_prompt="passage: ")
    assert prompted.cache_key("corpusA") != base
    bf16 = Encoder(encoder.model, bf16="on")
    assert bf16.cache_key("corpusA") != base
    # the Encoder sets max_seq_length on the (shared) model: restore it after this test
    monkeypatch.setattr(encoder.model, "max_seq_length", encoder.model.max_seq_length)
    short = Encoder(encoder.model, bf16="off", max_seq_length=64)
    assert short.max_seq_length == 64
    assert short.cache_key("corpusA")["max_seq_length"] == 64
    assert short.cache_key("corpusA") != base
    digests = {EmbeddingCache.digest(k) for k in (base, encoder.cache_key("corpusB"),
                                                   prompted.cache_key("corpusA"), short.cache_key("corpusA"))}
    assert len(digests) == 4


def test_encode_corpus_miss_then_hit(encoder: Encoder, tmp_path):
    cache = EmbeddingCache(tmp_path)
    emb1, info1 = encode_corpus(encoder, SENTENCES, "fp-tiny", cache, show_progress=False)
    assert info1["cache"] == "miss"
    assert (tmp_path / "embeddings").is_dir()
    npy = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(npy) == 1
    assert not list((tmp_path / "embeddings").glob("*.tmp*"))
    meta = json.loads(npy[0].with_suffix(".json").read_text())
    assert meta["rows"] == len(SENTENCES) and meta["dim"] == DIM and meta["corpus"] == "fp-tiny"
    emb2, info2 = encode_corpus(encoder, SENTENCES, "fp-tiny", cache, show_progress=False)
    assert info2["cache"] == "hit"
    np.testing.assert_array_equal(emb1, emb2)
    # no cache: encodes, reports "off"
    emb3, info3 = encode_corpus(encoder, SENTENCES, "fp-tiny", None, show_progress=False)
    assert info3["cache"] == "off"
    np.testing.assert_allclose(emb3, emb1, atol=1e-5)


def test_encode_corpus_other_corpus_fingerprint_misses(encoder: Encoder, tmp_path):
    cache = EmbeddingCache(tmp_path)
    encode_corpus(encoder, SENTENCES, "fp-1", cache, show_progress=False)
    _, info = encode_corpus(encoder, SENTENCES, "fp-2", cache, show_progress=False)
    assert info["cache"] == "miss"


def test_perturbed_model_does_not_hit_stale_cache(encoder: Encoder, tmp_path):
    cache = EmbeddingCache(tmp_path)
    emb_old, info = encode_corpus(encoder, SENTENCES, "fp-tiny", cache, show_progress=False)
    assert info["cache"] == "miss"
    tuned = Encoder(_perturbed_copy(encoder.model, whole_tensor=True), bf16="off")
    emb_new, info_new = encode_corpus(tuned, SENTENCES, "fp-tiny", cache, show_progress=False)
    assert info_new["cache"] == "miss", "a changed model must not reuse the old model's embeddings"
    assert not np.array_equal(emb_new, emb_old)
    np.testing.assert_allclose(emb_new, tuned.encode_documents(SENTENCES, show_progress=False), atol=1e-5)


def test_cache_entry_with_wrong_row_count_is_ignored(encoder: Encoder, tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = encoder.cache_key("fp-rows")
    cache.put(key, np.ones((2, DIM), dtype=np.float32))  # wrong: 2 rows for 5 texts
    assert cache.get(key, 2) is not None
    assert cache.get(key, len(SENTENCES)) is None
    emb, info = encode_corpus(encoder, SENTENCES, "fp-rows", cache, show_progress=False)
    assert info["cache"] == "miss"
    assert emb.shape == (len(SENTENCES), DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # the entry was replaced by the right one
    assert cache.get(key, len(SENTENCES)).shape == (len(SENTENCES), DIM)


def test_unreadable_cache_entry_is_ignored(encoder: Encoder, tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = encoder.cache_key("fp-bad")
    cache.dir.mkdir(parents=True)
    cache.path(key).write_bytes(b"not a numpy file")
    assert cache.get(key, len(SENTENCES)) is None
    _, info = encode_corpus(encoder, SENTENCES, "fp-bad", cache, show_progress=False)
    assert info["cache"] == "miss"


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARDNEG_CACHE", str(tmp_path / "c"))
    assert EmbeddingCache().dir == tmp_path / "c" / "embeddings"


# ---------------------------------------------------------------------------------------------- bf16


def test_resolve_bf16():
    assert resolve_bf16("off") is False
    assert resolve_bf16("on") is True
    assert resolve_bf16(True) is True
    assert resolve_bf16(False) is False
    assert resolve_bf16("auto") == cpu_supports_bf16()
    assert resolve_bf16(None) == cpu_supports_bf16()
    with pytest.raises(ValueError, match="bf16"):
        resolve_bf16("maybe")  # type: ignore[arg-type]


def test_bf16_embeddings_close_to_fp32(encoder: Encoder):
    fp32 = encoder.encode(SENTENCES, show_progress=False)
    bf16_enc = Encoder(encoder.model, bf16="on")
    assert bf16_enc.bf16 is True
    bf16 = bf16_enc.encode(SENTENCES, show_progress=False)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    cos = (fp32 * bf16).sum(axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cos.min() >= 0.99, cos
    assert not np.array_equal(fp32, bf16)  # autocast did take effect


# --------------------------------------------------------------------------------------- load_model


def test_load_model_unknown_name_raises_oserror(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import time: set the constant too, so that no request
    # (with its retries) is attempted
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(OSError, match="no/such-model-xyz"):
        load_model("no/such-model-xyz")


# ----------------------------------------------------------------------------------------- DenseIndex


def test_flat_search_equals_brute_force():
    rng = np.random.default_rng(1)
    docs, queries = _unit(rng, 300, 32), _unit(rng, 20, 32)
    ids = [f"d{i}" for i in range(300)]
    idx = DenseIndex("flat").add(ids, docs)
    got_docs, got_scores = idx.search_arrays(queries, k=10)
    sims = queries @ docs.T
    want_docs = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(got_docs, want_docs)
    np.testing.assert_allclose(got_scores, np.take_along_axis(sims, want_docs, axis=1), atol=1e-5)
    run = idx.search(queries, k=10, query_ids=[f"q{i}" for i in range(20)])
    assert list(run) == [f"q{i}" for i in range(20)]
    assert list(run["q3"]) == [ids[j] for j in want_docs[3]]
    assert run["q3"][ids[want_docs[3, 0]]] == pytest.approx(float(sims[3, want_docs[3, 0]]), abs=1e-5)


def test_flat_search_k_larger_than_corpus_and_incremental_add():
    rng = np.random.default_rng(2)
    a, b = _unit(rng, 3, 8), _unit(rng, 2, 8)
    idx = DenseIndex().add(["a0", "a1", "a2"], a).add(["b0", "b1"], b)
    assert idx.doc_ids == ["a0", "a1", "a2", "b0", "b1"]
    run = idx.search(b[:1], k=100, query_ids=["q"])
    assert len(run["q"]) == 5
    assert next(iter(run["q"])) == "b0"


def _clustered(seed: int = 0, n: int = 2000, nq: int = 100, dim: int = 64, centers: int = 40):
    """Unit vectors around ``centers`` random directions (embeddings are clustered; IVF relies on it)."""
    rng = np.random.default_rng(seed)
    c = _unit(rng, centers, dim)

    def sample(m: int) -> np.ndarray:
        x = c[rng.integers(0, centers, m)] + 1.5 * rng.standard_normal((m, dim)) / np.sqrt(dim)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return sample(n), sample(nq)


@pytest.fixture(scope="module")
def vectors():
    docs, queries = _clustered()
    ids = [f"d{i}" for i in range(len(docs))]
    flat_docs, _ = DenseIndex("flat").add(ids, docs).search_arrays(queries, k=10)
    return ids, docs, queries, flat_docs


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall(vectors, kind: str):
    ids, docs, queries, flat_docs = vectors
    got, _ = DenseIndex(kind).add(ids, docs).search_arrays(queries, k=10)
    recall = np.mean([len(set(g) & set(f)) / 10 for g, f in zip(got, flat_docs, strict=True)])
    assert recall >= 0.9, recall


def test_ivf_probing_every_cell_is_exact(vectors):
    ids, docs, queries, flat_docs = vectors
    idx = DenseIndex("ivf", nprobe=10_000).add(ids, docs)
    assert idx.nlist is not None and idx.nlist > 1
    got, _ = idx.search_arrays(queries, k=10)
    np.testing.assert_array_equal(got, flat_docs)


def test_ivf_on_uniform_random_vectors_still_finds_most():
    # structureless data is IVF's worst case; probing 16 of the cells still finds well over half
    rng = np.random.default_rng(3)
    docs, queries = _unit(rng, 2000, 16), _unit(rng, 50, 16)
    ids = [f"d{i}" for i in range(2000)]
    flat, _ = DenseIndex("flat").add(ids, docs).search_arrays(queries, k=10)
    got, _ = DenseIndex("ivf").add(ids, docs).search_arrays(queries, k=10)
    assert np.mean([len(set(g) & set(f)) / 10 for g, f in zip(got, flat, strict=True)]) >= 0.8


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(vectors, kind: str, tmp_path):
    ids, docs, queries, _ = vectors
    idx = DenseIndex(kind, ef_search=64, nprobe=8).add(ids, docs)
    before_docs, before_scores = idx.search_arrays(queries, k=10)
    folder = idx.save(tmp_path / kind)
    params = json.loads((folder / "params.json").read_text())
    assert params["kind"] == kind and params["num_docs"] == len(ids) and params["dim"] == docs.shape[1]
    loaded = DenseIndex.load(folder)
    assert loaded.kind == kind
    assert loaded.doc_ids == ids
    assert (loaded.ef_search, loaded.nprobe, loaded.nlist) == (idx.ef_search, idx.nprobe, idx.nlist)
    after_docs, after_scores = loaded.search_arrays(queries, k=10)
    np.testing.assert_array_equal(after_docs, before_docs)
    np.testing.assert_allclose(after_scores, before_scores, rtol=1e-6)
    qids = [f"q{i}" for i in range(len(queries))]
    assert loaded.search(queries, k=10, query_ids=qids) == idx.search(queries, k=10, query_ids=qids)


def test_mismatched_ids_and_embeddings_raise():
    emb = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="do not match"):
        DenseIndex().add(["a", "b"], emb)
    with pytest.raises(ValueError):
        DenseIndex().add(["a", "b", "c", "d"], emb)
    with pytest.raises(ValueError):
        DenseIndex().add(["a", "b", "c", "d"], np.zeros(4, dtype=np.float32))  # 1-d


def test_dense_index_errors(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        DenseIndex("lsh")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        DenseIndex().add([], np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(RuntimeError):
        DenseIndex().search_arrays(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(RuntimeError):
        DenseIndex().save(tmp_path / "x")
    with pytest.raises(DataError, match="params.json"):
        DenseIndex.load(tmp_path)


# --------------------------------------------------------------------------------- retrieval on adi


@pytest.mark.slow
def test_dense_retrieval_on_adi(encoder: Encoder, data_root, tmp_path):
    col = load_beir(data_root / "adi", "test")
    emb, info = encode_corpus(encoder, col.doc_texts(), col.fingerprint(), EmbeddingCache(tmp_path),
                              show_progress=False)
    assert info["cache"] == "miss"
    assert emb.shape == (col.corpus.num_rows, DIM)
    qids = list(col.queries)
    q_emb = encoder.encode_queries([col.queries[q] for q in qids], show_progress=False)
    run = DenseIndex("flat").add(col.doc_ids, emb).search(q_emb, k=100, query_ids=qids)
    scores = evaluate(col.qrels, run)
    assert scores["ndcg@10"] > 0.3, scores
    assert scores["recall@100"] >= 0.9, scores  # 82 documents: top 100 holds nearly everything


def test_weights_fingerprint_handles_scalar_parameters():
    """Models with a 0-dim parameter (e.g. a learned temperature) can be fingerprinted, and it counts."""
    import torch

    from retriever.encoder import weights_fingerprint

    m = torch.nn.Module()
    m.scale = torch.nn.Parameter(torch.tensor(1.0))
    before = weights_fingerprint(m)
    with torch.no_grad():
        m.scale.add_(0.5)
    assert weights_fingerprint(m) != before
