"""Choosing negatives among the candidates that survived the filter: top, random, positive-aware and
SimANS-style (Zhou et al., EMNLP 2022). Seeded per query, so results do not depend on sharding."""

from __future__ import annotations

import zlib

import numpy as np

from retriever.rerank import sigmoid

from .candidates import Candidate
from .config import SamplingSection


def query_rng(seed: int, qid: str) -> np.random.Generator:
    """A generator that depends only on the job seed and the query id."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode())])


def fill_rng(seed: int, qid: str) -> np.random.Generator:
    """The generator of a query's random fill (``sampling.fill``): its own stream, apart from the sampler's."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode()), 1])


def sample(kept: list[Candidate], pos_score: float | None, cfg: SamplingSection, qid: str) -> list[Candidate]:
    """Pick up to ``num_negatives`` from ``kept`` (ordered best first); mark them ``kept`` and the rest
    ``not_sampled``. Returns the chosen ones, best first."""
    n = cfg.num_negatives
    pool = kept  # positive-aware: the filter has applied its ratio (filtering.filter_reason)
    if cfg.strategy in ("top", "positive-aware") or len(pool) <= n:
        chosen = pool[:n]
    elif cfg.strategy == "random":
        idx = np.sort(query_rng(cfg.seed, qid).choice(len(pool), size=n, replace=False))
        chosen = [pool[i] for i in idx]
    else:  # simans: favour candidates whose probability is near the positive's
        if pos_score is None:
            raise ValueError("SimANS sampling needs cross-encoder scores")
        p = sigmoid(np.array([c.ce_score for c in pool], dtype=np.float64))
        logw = -cfg.simans_a * (p - float(sigmoid(pos_score)) - cfg.simans_b) ** 2
        w = np.exp(logw - logw.max())  # the best weight is 1: never all zero
        if int((w > 0).sum()) < n:  # the rest underflowed: take the n heaviest
            idx = np.sort(np.argsort(-logw, kind="stable")[:n])
        else:
            idx = np.sort(query_rng(cfg.seed, qid).choice(len(pool), size=n, replace=False, p=w / w.sum()))
        chosen = [pool[i] for i in idx]
    chosen_ids = {id(c) for c in chosen}
    for c in kept:
        c.fate = "kept" if id(c) in chosen_ids else "not_sampled"
    return chosen
