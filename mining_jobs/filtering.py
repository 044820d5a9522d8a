"""Positive-aware false-negative filter: rank window, score bounds, absolute and relative margins against
the query's positive score. Decides fates only; scores come from the cross-encoder stage."""

from __future__ import annotations

import numpy as np

from retriever.rerank import sigmoid

from .candidates import Candidate
from .config import FilterSection


def reduce_positive(scores: list[float], how: str) -> float:
    """The positive score candidates are compared with: min (default: the strictest), mean or max."""
    if not scores:
        raise ValueError("no positive score to compare with")
    return float({"min": np.min, "mean": np.mean, "max": np.max}[how](scores))


def filter_score(score: float, cosine: float | None, cfg: FilterSection) -> float:
    """The positive-aware rule's score: ``logit_weight`` x judge logit + ``positive_cosine_weight`` x the
    candidate's cosine to its query's nearest labelled positive (0 when unknown)."""
    return cfg.logit_weight * score + cfg.positive_cosine_weight * (cosine if cosine is not None else 0.0)


def filter_reason(score: float, pos: float, cfg: FilterSection, positive_aware_ratio: float | None = None,
                  cosine: float | None = None) -> str | None:
    """The first rule that rejects a candidate with logit ``score`` against positive logit ``pos``, or None.
    The one rule function: the filter, lazy scoring, the what-if table, the judge check and the judge report
    all call it.

    The relative margin compares probabilities (sigmoid of the logits), so negative logits behave:
    a candidate is dropped when ``p(cand) > (1 - relative_margin) * p(pos)``. With ``positive_aware_ratio``
    (sampling strategy ``positive-aware``), a candidate whose probability is not below that ratio of the
    positive's is dropped last (``filtered:positive_aware``). ``cosine`` (the candidate's cosine to the
    nearest labelled positive) feeds the positive-aware rule ``score_threshold`` (``filter_score``).
    """
    if cfg.max_score is not None and score > cfg.max_score:
        return "filtered:max_score"
    if cfg.min_score is not None and score < cfg.min_score:
        return "filtered:min_score"
    if cfg.score_threshold is not None and filter_score(score, cosine, cfg) > cfg.score_threshold:
        return "filtered:score_threshold"
    if cfg.absolute_margin is not None and score > pos - cfg.absolute_margin:
        return "filtered:absolute_margin"
    if cfg.relative_margin is not None and float(sigmoid(score)) > (1.0 - cfg.relative_margin) * float(sigmoid(pos)):
        return "filtered:relative_margin"
    if positive_aware_ratio is not None and not float(sigmoid(score)) < positive_aware_ratio * float(sigmoid(pos)):
        return "filtered:positive_aware"
    return None


def relabel(cands: list[Candidate], cfg: FilterSection) -> list[Candidate]:
    """Mark as ``relabelled`` (an extra positive) every pending, scored candidate whose probability is at least
    ``cfg.relabel_above``; returns them in candidate order. Nothing happens when the option is unset."""
    if cfg.relabel_above is None:
        return []
    out = [c for c in cands if c.fate == "pending" and c.ce_score is not None
           and float(sigmoid(c.ce_score)) >= cfg.relabel_above]
    for c in out:
        c.fate = "relabelled"
    return out


def apply_filter(cands: list[Candidate], pos_score: float | None, cfg: FilterSection,
                 positive_aware_ratio: float | None = None) -> list[Candidate]:
    """Mark filtered candidates and return the survivors, best first.

    Candidates still pending are ordered by cross-encoder score (else, or with ``rank_by = "retrieval"``, by
    fused rank); those outside ``[range_min, range_max)`` get ``filtered:rank_window``; with a positive score,
    the score rules apply (and ``positive_aware_ratio``, see ``filter_reason``). With a positive score, a candidate left unscored (lazy scoring in retrieval order)
    gets ``not_scored`` and is never a negative.
    """
    pending = [c for c in cands if c.fate == "pending"]
    if pos_score is not None and cfg.rank_by == "cross_encoder":
        pending.sort(key=lambda c: (-(c.ce_score if c.ce_score is not None else -np.inf), -c.fused(), c.doc))
    kept = []
    for rank, c in enumerate(pending):
        if rank < cfg.range_min or (cfg.range_max is not None and rank >= cfg.range_max):
            c.fate = "filtered:rank_window"
            continue
        if pos_score is not None and c.ce_score is None:
            c.fate = "not_scored"
            continue
        if pos_score is not None:
            reason = filter_reason(c.ce_score, pos_score, cfg, positive_aware_ratio, c.pos_cosine)
            if reason:
                c.fate = reason
                continue
        kept.append(c)
    return kept


def in_window(cands: list[Candidate], cfg: FilterSection) -> list[Candidate]:
    """The pending candidates inside ``[range_min, range_max)`` of retrieval (fused) order."""
    pending = [c for c in cands if c.fate == "pending"]
    return pending[cfg.range_min:cfg.range_max]


def accepts(score: float, pos: float, cfg: FilterSection, positive_aware_ratio: float | None,
            cosine: float | None = None) -> bool:
    """Whether a candidate with logit ``score`` passes the filter (and the positive-aware ratio, if given)."""
    return filter_reason(score, pos, cfg, positive_aware_ratio, cosine) is None
