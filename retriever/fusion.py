"""Reciprocal-rank fusion of several runs (Cormack, Clarke & Buettcher, SIGIR 2009).

Pure function over runs; no retrieval here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .runs import Run, ranked


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, weights: Sequence[float] | None = None,
                           top_k: int | None = None) -> Run:
    """Fuse runs: ``score(d) = sum_r w_r / (k + rank_r(d))`` with ranks from 1 in trec_eval order.

    Args:
        runs: runs to fuse; a document missing from a run gets nothing from it.
        k: the RRF constant (60 in the paper).
        weights: one weight per run (default 1 each).
        top_k: keep only the best ``top_k`` fused results per query.

    Example:
        >>> reciprocal_rank_fusion([{"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 5.0}}], k=1)
        {'q': {'b': 0.8333333333333333, 'a': 0.5}}
    """
    if not runs:
        raise ValueError("nothing to fuse: no runs given")
    if k <= 0:
        raise ValueError(f"RRF constant k must be positive, got {k}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    fused: Run = {}
    for qid in sorted(set().union(*runs)):
        scores: dict[str, float] = {}
        for run, w in zip(runs, weights, strict=True):
            for rank, (did, _) in enumerate(ranked(run.get(qid, {})), start=1):
                scores[did] = scores.get(did, 0.0) + w / (k + rank)
        order = ranked(scores)
        fused[qid] = dict(order if top_k is None else order[:top_k])
    return fused
