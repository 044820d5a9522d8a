"""Where a mining job's heavy stages run: corpus encoding and per-shard mining (candidate search, exclusion,
cross-encoder scoring, filtering, sampling). ``LocalEngine`` runs them in this process; ``RayEngine`` (the
``ray`` extra, imported only when asked for) runs them as Ray tasks. Every engine returns the same results;
the job (``mine.run_mining``) writes the files, so resuming works the same on any engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from retriever.encoder import EmbeddingCache, Encoder, encode_corpus

from . import shard
from .shard import Resources

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import MineConfig


class LocalEngine:
    """Everything in this process, shard after shard (the default)."""

    name = "local"

    def encode_corpus(self, encoder: Encoder, texts: Sequence[str], corpus_fingerprint: str,
                      cache: EmbeddingCache | None) -> tuple[np.ndarray, dict]:
        return encode_corpus(encoder, texts, corpus_fingerprint, cache)

    def mine_shards(self, res: Resources, cfg: MineConfig, shards: list[tuple[int, list[str]]],
                    counters: dict[str, float]) -> Iterator[tuple[int, pa.Table, pa.Table]]:
        """Yield ``(shard number, triples, candidates)`` for each pending shard, in any order."""
        for k, qids in shards:
            # looked up at call time: benchmarks/bench_scale.py wraps shard.mine_shard to sample memory per shard
            triples, cands = shard.mine_shard(res, cfg, qids, counters)
            yield k, triples, cands

    def close(self) -> None:
        pass


def make_engine(cfg: MineConfig):
    """The engine a mining config names."""
    if cfg.engine == "local":
        return LocalEngine()
    if cfg.engine == "ray":
        from .ray_engine import RayEngine

        return RayEngine(cfg.ray)
    raise ValueError(f"engine {cfg.engine!r}: expected local or ray")
