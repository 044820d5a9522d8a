"""Runs a mining job's heavy stages on Ray: corpus blocks and query shards on actors, the read-only data shipped
once through the object store. It mines nothing itself (each shard is ``shard.mine_shard``) and writes no files."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retriever.bm25 import BM25Index
from retriever.dense_index import DenseIndex
from retriever.devices import resolve_devices
from retriever.encoder import EmbeddingCache, Encoder, resolve_bf16
from retriever.errors import HardnegError, MissingDependencyError
from retriever.text import Tokenizer

from .config import needs_positive_cosine
from .inputs import MiningInput
from .shard import Resources, bind_judge, mine_shard

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import MineConfig, RaySection

logger = logging.getLogger(__name__)

RAY_MISSING = "engine = 'ray' needs Ray: pip install 'hardneg[ray]'"


class RayEngineError(HardnegError):
    """A Ray actor of the job died, or a node loaded other model weights than the driver."""


class RayEngine:
    """Corpus blocks and query shards on Ray actors (``engine = "ray"``); the same results as ``LocalEngine``.

    Args:
        section: the ``[ray]`` config: cluster address (``""`` = ``$RAY_ADDRESS`` when set, else a local
            instance of ``num_cpus``), number of actors and CPUs per actor, documents per encoding block.
    """

    name = "ray"

    def __init__(self, section: RaySection) -> None:
        try:
            import ray
        except ImportError as exc:
            raise MissingDependencyError(RAY_MISSING) from exc  # an ImportError, reported by the CLI
        self._ray: Any = ray
        self.section = section
        self._owns = _connect(ray, section)
        self._worker_class = ray.remote(_Worker)
        self._actors: list[Any] = []
        self._running: dict[Any, Any] = {}  # object ref of a shard being mined -> the actor mining it
        self.stats: dict[str, Any] = {"encode_blocks": 0, "actors": 0, "shards": 0, "workers": set()}

    # ----------------------------------------------------------------------------------------- encoding
    def encode_corpus(self, encoder: Encoder, texts: Sequence[str], corpus_fingerprint: str,
                      cache: EmbeddingCache | None) -> tuple[np.ndarray, dict]:
        """Corpus embeddings through the cache, as ``retriever.encoder.encode_corpus``; a miss is encoded in
        blocks of ``encode_block`` documents by actors holding the driver's bi-encoder (its weights travel
        through the object store, so they match the cache key)."""
        key = encoder.cache_key(corpus_fingerprint)
        if cache is not None:
            hit = cache.get(key, len(texts))
            if hit is not None:
                logger.info("corpus embeddings loaded from cache %s", cache.path(key))
                return hit, {"cache": "hit", "path": str(cache.path(key)), "seconds": 0.0, "engine": self.name,
                             "blocks": 0}
        t0 = time.perf_counter()
        size = self.section.encode_block
        blocks = [list(texts[i:i + size]) for i in range(0, len(texts), size)]
        emb = self._encode_blocks(encoder, blocks) if blocks else encoder.encode_documents([])
        info: dict[str, object] = {"cache": "miss" if cache is not None else "off",
                                   "seconds": time.perf_counter() - t0, "engine": self.name, "blocks": len(blocks)}
        if cache is not None:
            info["path"] = str(cache.put(key, emb))
        return emb, info

    def _encode_blocks(self, encoder: Encoder, blocks: list[list[str]]) -> np.ndarray:
        from ray.util import ActorPool

        workers = self._workers(min(len(blocks), self._slots()))
        model = self._ray.put(encoder.model)
        spec = {"bf16": encoder.bf16, "batch_size": encoder.batch_size, "query_prompt": encoder.query_prompt,
                "doc_prompt": encoder.doc_prompt, "normalize": encoder.normalize,
                "max_seq_length": encoder.max_seq_length}
        with self._errors():
            self._ray.get([w.load_encoder.remote(model, spec) for w in workers])
            parts = list(ActorPool(workers).map(lambda w, block: w.encode.remote(block), blocks))
        self.stats["encode_blocks"] = len(blocks)
        logger.info("ray: %d corpus blocks encoded by %d actors", len(blocks), len(workers))
        return np.concatenate(parts)

    # ------------------------------------------------------------------------------------------- mining
    def mine_shards(self, res: Resources, cfg: MineConfig, shards: list[tuple[int, list[str]]],
                    counters: dict[str, float]) -> Iterator[tuple[int, pa.Table, pa.Table]]:
        """Yield ``(shard number, triples, candidates)`` as actors finish shards; each actor's counters are
        added to ``counters``. Closing the generator early cancels what is left and stops the actors."""
        if not shards:
            return
        ray = self._ray
        workers = self._workers(min(len(shards), self._slots()))
        shared = ray.put(shared_data(res, cfg))
        expected = {"bi_encoder": res.encoder.fingerprint() if res.dense is not None else None,
                    "cross_encoder": res.reranker.cache_prefix() if res.reranker is not None else None}
        zero = {k: type(v)() for k, v in counters.items()}
        actor_cfg = actor_config(cfg)
        with self._errors():
            ray.get([w.prepare.remote(shared, actor_cfg, expected, zero) for w in workers])
        todo = list(shards)
        running = self._running

        def submit(worker: Any) -> None:
            if todo:
                k, qids = todo.pop(0)
                running[worker.mine.remote(k, qids)] = worker

        for w in workers:
            submit(w)
        try:
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                submit(running.pop(ref))  # the actor starts its next shard while this one is written
                with self._errors():
                    k, triples, cands, delta, pid = ray.get(ref)
                for name, value in delta.items():
                    counters[name] += value
                self.stats["shards"] += 1
                self.stats["workers"].add(pid)
                yield k, triples, cands
        finally:
            self._stop()
        logger.info("ray: %d shards mined by %d actors", self.stats["shards"], len(workers))

    def close(self) -> None:
        """Stop the actors; disconnect from Ray (stopping a local instance) if this engine connected to it, but
        leave a connection that existed before alone."""
        self._stop()
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    # ------------------------------------------------------------------------------------------ actors
    def _slots(self) -> int:
        """Actors wanted: ``ray.actors``, else the cluster's CPUs / ``cpus_per_actor``."""
        fit = max(1, int(self._ray.cluster_resources().get("CPU", 1.0) // self.section.cpus_per_actor))
        if self.section.actors and self.section.actors > fit:
            logger.warning("ray.actors = %d, but the cluster has CPUs for %d now: the others start when CPUs free "
                           "up (or the autoscaler adds nodes)", self.section.actors, fit)
        return self.section.actors or fit

    def _workers(self, n: int) -> list[Any]:
        """The first ``n`` actors, started as needed (encoding and mining share them: one start each)."""
        cpus = self.section.cpus_per_actor
        remote = self._worker_class.options(num_cpus=cpus)
        while len(self._actors) < n:
            self._actors.append(remote.remote(max(1, int(cpus))))
        self.stats["actors"] = max(self.stats["actors"], len(self._actors))
        return self._actors[:n]

    def _stop(self) -> None:
        """Cancel the shards not yet mined and kill the actors (also when the consumer stopped early)."""
        if self._ray.is_initialized():
            for ref in self._running:
                self._ray.cancel(ref)
            for actor in self._actors:
                self._ray.kill(actor)
        self._running.clear()
        self._actors = []

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A dead actor becomes a ``RayEngineError``; an actor's own exception (e.g. ``ScoreError``) passes
        through, as Ray re-raises it as an instance of its class."""
        try:
            yield
        except self._ray.exceptions.RayActorError as exc:
            raise RayEngineError(f"a Ray actor of the mining job died: {exc}") from exc


def _connect(ray: Any, section: RaySection) -> bool:
    """Join or start Ray; returns whether this engine did (and so shuts it down in ``close``).

    No ``runtime_env``: nothing is uploaded; the nodes import ``hardneg`` from their own installation (a local
    instance's workers use this virtualenv)."""
    if ray.is_initialized():
        return False
    address = section.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        logger.info("ray: joining the cluster at %s", address)
        ray.init(address=address)
    else:
        ray.init(num_cpus=section.num_cpus, include_dashboard=False)
    return True


def actor_config(cfg: MineConfig) -> MineConfig:
    """The config as the actors use it: local model folders and the score cache as absolute paths (hub names
    stay names), bf16 pinned to what the driver resolved, so that every node computes in the same precision."""
    out = copy.deepcopy(cfg)
    c, x = out.candidates, out.cross_encoder
    c.model = _absolute(c.model)
    x.model = _absolute(x.model) if x.model else ""
    c_dev = resolve_devices(c.device, "candidates.device")[0]
    x_dev = resolve_devices(x.device, "cross_encoder.device")[0]
    c.bf16 = "on" if resolve_bf16(c.bf16, c_dev) else "off"  # type: ignore[arg-type]
    x.bf16 = "on" if resolve_bf16(x.bf16, x_dev) else "off"  # type: ignore[arg-type]
    if out.output.score_cache:
        out.output.score_cache = str(Path(out.output.score_cache).expanduser().resolve())
    return out


def _absolute(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def shared_data(res: Resources, cfg: MineConfig) -> dict[str, Any]:
    """What every shard reads, without the models and the corpus table: put once in the object store."""
    return {"name": res.inp.name, "queries": res.inp.queries, "positives": res.inp.positives,
            "corpus_fingerprint": res.inp.corpus_fingerprint(),
            "doc_ids": res.doc_ids, "texts": res.texts, "hashes": res.hashes, "banned": res.banned,
            "bm25": _pack_bm25(res.bm25) if res.bm25 is not None else None,
            "dense": _pack_dense(res.dense) if res.dense is not None else None,
            # only near-duplicates and the positive-aware filter read the corpus embeddings
            "emb": res.emb if cfg.exclusion.near_duplicate_cosine > 0 or needs_positive_cosine(cfg) else None}


def _pack_bm25(idx: BM25Index) -> dict[str, Any]:
    return {k: v for k, v in vars(idx).items() if k != "tokenizer"}  # its stemmer does not pickle


def _unpack_bm25(state: dict[str, Any]) -> BM25Index:
    idx = BM25Index.__new__(BM25Index)
    vars(idx).update(state)
    idx.tokenizer = Tokenizer(idx.tokenizer_config)
    return idx


def _pack_dense(idx: DenseIndex) -> dict[str, Any]:
    import faiss

    knobs = {"efSearch": idx.index.hnsw.efSearch} if idx.kind == "hnsw" else {}
    if idx.kind == "ivf":
        knobs["nprobe"] = idx.index.nprobe
    attrs = {k: v for k, v in vars(idx).items() if k not in ("index", "doc_ids")}
    return {"attrs": attrs, "faiss": faiss.serialize_index(idx.index), "knobs": knobs}


def _unpack_dense(state: dict[str, Any], doc_ids: list[str]) -> DenseIndex:
    import faiss

    idx = DenseIndex.__new__(DenseIndex)
    vars(idx).update(state["attrs"])
    idx.doc_ids = doc_ids
    idx.index = faiss.deserialize_index(state["faiss"])
    if "efSearch" in state["knobs"]:
        idx.index.hnsw.efSearch = state["knobs"]["efSearch"]
    if "nprobe" in state["knobs"]:
        idx.index.nprobe = state["knobs"]["nprobe"]
    return idx


def actor_resources(shared: dict[str, Any], cfg: MineConfig, expected: dict[str, str | None]) -> Resources:
    """A shard's ``Resources`` inside an actor: data from the object store, models loaded from the config and
    checked against the driver's fingerprints (another version of a model on a node must not mix in)."""
    from retriever.devices import resolve_devices
    from retriever.judge import load_judge
    from retriever.rerank import ScoreCache

    c, x = cfg.candidates, cfg.cross_encoder
    encoder = reranker = cache = None
    if shared["dense"] is not None:
        encoder = Encoder(c.model, bf16=c.bf16, batch_size=c.batch_size, query_prompt=c.query_prompt,
                          doc_prompt=c.doc_prompt, max_seq_length=c.max_seq_length,
                          device=resolve_devices(c.device, "candidates.device")[0])
        _check("bi-encoder", c.model, encoder.fingerprint(), expected["bi_encoder"])
    if x.model:
        reranker = load_judge(x.model, x.max_length, x.batch_size, x.bf16,
                              resolve_devices(x.device, "cross_encoder.device")[0])
        cache = ScoreCache(cfg.output.score_cache or None)  # SQLite in WAL mode: actors of a node share it
    # the corpus table stays on the driver: shards read ids, texts, queries and positives only
    inp = MiningInput(shared["name"], None, shared["queries"], shared["positives"], "ray")  # type: ignore[arg-type]
    doc_ids = shared["doc_ids"]
    dense = _unpack_dense(shared["dense"], doc_ids) if shared["dense"] is not None else None
    bm25 = _unpack_bm25(shared["bm25"]) if shared["bm25"] is not None else None
    if reranker is not None:
        bind_judge(reranker, doc_ids, shared["texts"], shared["corpus_fingerprint"], bm25, encoder, shared["emb"], cache)
        _check("cross-encoder", x.model, reranker.cache_prefix(), expected["cross_encoder"])
    return Resources(inp, list(shared["queries"]), doc_ids, {d: i for i, d in enumerate(doc_ids)}, shared["texts"],
                     shared["hashes"], bm25, encoder, dense, shared["emb"], reranker, cache, shared["banned"])


def _check(what: str, name: str, got: str, expected: str | None) -> None:
    if got != expected:
        raise RayEngineError(f"the {what} {name!r} loaded on node {os.uname().nodename} is not the driver's "
                             f"({got} != {expected}): install the same model on every node")


class _Worker:
    """A Ray actor: encodes corpus blocks with the driver's bi-encoder, then mines shards with its own
    ``Resources``. Torch uses as many threads as the actor reserves CPUs."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.doc_encoder: Encoder | None = None
        self.res: Resources | None = None
        self.cfg: MineConfig | None = None
        self.zero: dict[str, float] = {}

    def load_encoder(self, model: Any, spec: dict[str, Any]) -> None:
        self.doc_encoder = Encoder(model, **spec)

    def encode(self, texts: list[str]) -> np.ndarray:
        assert self.doc_encoder is not None, "load_encoder first"
        return self.doc_encoder.encode_documents(texts, show_progress=False)

    def prepare(self, shared: dict[str, Any], cfg: MineConfig, expected: dict[str, str | None],
                zero: dict[str, float]) -> None:
        self.doc_encoder = None
        self.res = actor_resources(shared, cfg, expected)
        self.cfg, self.zero = cfg, zero

    def mine(self, k: int, qids: list[str]) -> tuple[int, pa.Table, pa.Table, dict[str, float], int]:
        assert self.res is not None and self.cfg is not None, "prepare first"
        counters = dict(self.zero)
        triples, cands = mine_shard(self.res, self.cfg, qids, counters)
        return k, triples, cands, counters, os.getpid()
