"""Ranking metrics with trec_eval semantics (verified against pytrec_eval in the tests), per-query values,
and a paired randomization test between two runs. Metrics only: nothing here retrieves or loads data.

Conventions (those of trec_eval):
- a run's results are ordered by score descending, ties by document id descending;
- a judged document is relevant when its grade is >= ``relevance_level`` (default 1);
- gains for nDCG are the grades themselves (linear gain), discount ``log2(rank + 1)``; the ideal ranking
  uses every judged document with a positive grade;
- every query of the qrels is evaluated; one missing from the run scores 0 (``trec_eval -c``);
  queries of the run that the qrels do not judge are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .data import Qrels
from .runs import Run, ranked

DEFAULT_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100", "map")


def _parse(name: str) -> tuple[str, int | None]:
    base, _, cut = name.lower().partition("@")
    if base not in {"ndcg", "mrr", "recall", "map", "precision", "p"}:
        raise ValueError(f"unknown metric {name!r}; expected ndcg@k, mrr@k, recall@k, precision@k or map")
    if cut:
        if not cut.isdigit() or int(cut) < 1:
            raise ValueError(f"metric {name!r}: cut-off must be a positive integer")
        return base, int(cut)
    return base, None


def ndcg(ranking: list[str], judged: dict[str, int], k: int | None) -> float:
    """nDCG@k = DCG@k / IDCG@k, DCG = sum_i rel_i / log2(i + 1) (Jarvelin & Kekalainen, 2002; trec_eval's
    ``ndcg_cut``: linear gains)."""
    top = ranking if k is None else ranking[:k]
    dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)
    ideal = ideal if k is None else ideal[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr(ranking: list[str], relevant: set[str], k: int | None) -> float:
    """Reciprocal rank of the first relevant document within the top ``k`` (0 if none)."""
    top = ranking if k is None else ranking[:k]
    for i, d in enumerate(top):
        if d in relevant:
            return 1.0 / (i + 1)
    return 0.0


def recall(ranking: list[str], relevant: set[str], k: int | None) -> float:
    """Share of the relevant documents found in the top ``k``."""
    if not relevant:
        return 0.0
    top = ranking if k is None else ranking[:k]
    return sum(1 for d in top if d in relevant) / len(relevant)


def precision(ranking: list[str], relevant: set[str], k: int | None) -> float:
    """Share of the top ``k`` that is relevant (trec_eval's ``P_k`` divides by ``k`` even when fewer are retrieved)."""
    top = ranking if k is None else ranking[:k]
    denom = k if k is not None else len(top)
    return sum(1 for d in top if d in relevant) / denom if denom else 0.0


def average_precision(ranking: list[str], relevant: set[str], k: int | None = None) -> float:
    """AP = (1/|R|) sum over relevant retrieved documents of precision at their rank (trec_eval ``map``)."""
    if not relevant:
        return 0.0
    top = ranking if k is None else ranking[:k]
    hits, total = 0, 0.0
    for i, d in enumerate(top):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


def per_query(qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS,
              relevance_level: int = 1) -> dict[str, dict[str, float]]:
    """Each metric for each query of ``qrels``: ``{metric: {query_id: value}}``."""
    parsed = [(m, *_parse(m)) for m in metrics]
    out: dict[str, dict[str, float]] = {m: {} for m, _, _ in parsed}
    for qid, judged in qrels.items():
        ranking = [d for d, _ in ranked(run.get(qid, {}))]
        relevant = {d for d, g in judged.items() if g >= relevance_level}
        for name, base, k in parsed:
            if base == "ndcg":
                v = ndcg(ranking, judged, k)
            elif base == "mrr":
                v = mrr(ranking, relevant, k)
            elif base == "recall":
                v = recall(ranking, relevant, k)
            elif base in ("precision", "p"):
                v = precision(ranking, relevant, k)
            else:
                v = average_precision(ranking, relevant, k)
            out[name][qid] = v
    return out


def aggregate(values: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over queries of each metric."""
    return {m: (float(np.mean(list(v.values()))) if v else 0.0) for m, v in values.items()}


def evaluate(qrels: Qrels, run: Run, metrics: Iterable[str] = DEFAULT_METRICS,
             relevance_level: int = 1) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels``.

    Example:
        >>> evaluate({"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}, ["mrr@10"])
        {'mrr@10': 0.5}
    """
    return aggregate(per_query(qrels, run, metrics, relevance_level))


def randomization_test(a: dict[str, float], b: dict[str, float], n_resamples: int = 10_000,
                       seed: int = 0) -> dict[str, float]:
    """Paired two-sided randomization (sign-flip permutation) test on per-query values of two runs.

    Under the null hypothesis the two systems are exchangeable per query, so each per-query difference
    keeps or flips its sign with probability 1/2 (Smucker, Allan & Carterette, CIKM 2007).

    Returns:
        ``mean_a``, ``mean_b``, ``delta`` (b - a), ``p_value`` (with the +1 correction), ``n_queries``.
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no query")
    va = np.array([a[q] for q in common], dtype=np.float64)
    vb = np.array([b[q] for q in common], dtype=np.float64)
    diff = vb - va
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, n_resamples, 1000):
        m = min(1000, n_resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(m, len(diff)))
        count += int((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).sum())
    return {"mean_a": float(va.mean()), "mean_b": float(vb.mean()), "delta": float(diff.mean()),
            "p_value": (count + 1) / (n_resamples + 1), "n_queries": len(common)}
