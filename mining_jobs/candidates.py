"""Candidate generation and exclusion for one shard of queries: BM25 and dense top-k unioned, each candidate
tagged with every source that found it (rank and score there); positives, their duplicates and the query's
own document marked. No scoring or sampling here."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalized_hash(text: str) -> str:
    """Hash of a text after NFKC, lowercasing, dropping punctuation and collapsing whitespace: exact
    duplicates up to case, spacing and punctuation get the same hash."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _WS.sub(" ", _PUNCT.sub(" ", t)).strip()
    return hashlib.blake2b(t.encode(), digest_size=12).hexdigest()


@dataclass
class Candidate:
    doc: int  # position in the corpus
    sources: list[str] = field(default_factory=list)
    bm25_rank: int | None = None
    bm25_score: float | None = None
    dense_rank: int | None = None
    dense_score: float | None = None
    fate: str = "pending"  # pending | positive | duplicate | self | eval_positive, later filtered:* / kept / not_sampled
    ce_score: float | None = None
    pos_cosine: float | None = None  # cosine to the query's nearest labelled positive (positive-aware filter only)

    def fused(self, k: int = 60) -> float:
        """Reciprocal-rank fusion over the sources that found it (ranks from 1)."""
        return sum(1.0 / (k + r) for r in (self.bm25_rank, self.dense_rank) if r is not None)


def union_candidates(bm25: tuple[np.ndarray, np.ndarray] | None, dense: tuple[np.ndarray, np.ndarray] | None,
                     n_queries: int) -> list[list[Candidate]]:
    """Union per query of BM25 and dense top-k (arrays of positions and scores; position -1 = empty slot),
    ordered by fused rank, ties by corpus position."""
    out: list[list[Candidate]] = []
    for i in range(n_queries):
        by_doc: dict[int, Candidate] = {}
        for name, res in (("bm25", bm25), ("dense", dense)):
            if res is None:
                continue
            docs, scores = res
            for rank, (d, s) in enumerate(zip(docs[i], scores[i], strict=True), start=1):
                if d < 0:
                    continue
                c = by_doc.setdefault(int(d), Candidate(int(d)))
                c.sources.append(name)
                setattr(c, f"{name}_rank", rank)
                setattr(c, f"{name}_score", float(s))
        out.append(sorted(by_doc.values(), key=lambda c: (-c.fused(), c.doc)))
    return out


def mark_exclusions(cands: list[Candidate], positives: set[int], qid: str, doc_ids: Sequence[str],
                    doc_hashes: Sequence[str], drop_self: bool, emb: np.ndarray | None = None,
                    near_dup_cosine: float = 0.0, banned: set[int] | None = None) -> None:
    """Set ``fate`` of the candidates that must never be negatives: labelled positives, exact or
    normalized-text duplicates of a positive, near duplicates by embedding cosine (when ``emb`` and a
    threshold are given), the query's own document, and ``banned`` documents (e.g. evaluation positives)."""
    pos_hashes = {doc_hashes[p] for p in positives}
    pos_list = sorted(positives)
    pos_emb = emb[pos_list] if emb is not None and near_dup_cosine > 0 and pos_list else None
    for c in cands:
        if c.doc in positives:
            c.fate = "positive"
        elif doc_hashes[c.doc] in pos_hashes:
            c.fate = "duplicate"
        elif pos_emb is not None and float(np.max(pos_emb @ emb[c.doc])) >= near_dup_cosine:
            c.fate = "duplicate"
        elif drop_self and doc_ids[c.doc] == qid:
            c.fate = "self"
        elif banned and c.doc in banned:
            c.fate = "eval_positive"
