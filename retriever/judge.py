"""Relevance judges for the false-negative filter beyond a single cross-encoder: a cross-fitted bi-encoder
fold set, and a learned ensemble (a calibrated logistic combination of BM25, bi-encoder and cross-encoder
scores) bound to one corpus. Scores only: no filtering, no job logic.

A judge scores (query, document) pairs with a logit whose sigmoid is a probability of relevance, so the
filter's absolute and relative margins mean the same for every judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bm25 import BM25Index
from .encoder import BF16Mode, EmbeddingCache, Encoder, encode_corpus
from .errors import HardnegError
from .rerank import CrossEncoderScorer, FoldSet, load_reranker, score_lists
from .text import TokenizerConfig

logger = logging.getLogger(__name__)

JUDGE_FILE = "judge.json"
FOLDS_FILE = "folds.json"
FORMAT_VERSION = 1
# Every feature a judge can combine; each is a number per (query, document) pair.
FEATURES: dict[str, str] = {
    "bm25": "BM25 score / the query's best BM25 score in the corpus",
    "bm25_log": "log(1 + BM25 score)",
    "dense": "cosine of the base bi-encoder",
    "dense_gap": "cosine of the base bi-encoder minus the query's best cosine in the corpus",
    "bi": "cosine of the judge's own (cross-fitted) bi-encoder",
    "ce": "cross-encoder logit (cross-fitted fold set or any CrossEncoder)",
}


class JudgeError(HardnegError, ValueError):
    """A judge folder is malformed, or a judge is used before it is bound to a corpus."""


def is_judge(path: str | os.PathLike) -> bool:
    return (Path(path) / JUDGE_FILE).is_file()


def is_bi_fold_set(path: str | os.PathLike) -> bool:
    p = Path(path) / FOLDS_FILE
    return p.is_file() and json.loads(p.read_text()).get("kind") == "bi-encoder"


def _ndcg10(labels: np.ndarray, scores: np.ndarray) -> float:
    """nDCG@10 of one candidate list with binary labels (ties broken by position, as a stable sort)."""
    if labels.sum() == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:10]
    gains = labels[order] / np.log2(np.arange(2, len(order) + 2))
    ideal = np.sort(labels)[::-1][:10] / np.log2(np.arange(2, min(10, len(labels)) + 2))
    return float(gains.sum() / ideal.sum())


def mean_ndcg10(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Mean nDCG@10 over the groups (queries) of flat arrays."""
    out = []
    for g in np.unique(groups):
        m = groups == g
        out.append(_ndcg10(labels[m], scores[m]))
    return float(np.mean(out)) if out else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC (Mann-Whitney U with average ranks for ties); NaN when one class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    r = rankdata(scores)
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fit_ranker(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, c: float, seed: int = 0,
               pairs_per_positive: int = 20) -> np.ndarray:
    """Weights of a pairwise logistic ranker (RankNet-style, no intercept) on standardized features: for
    each positive, up to ``pairs_per_positive`` candidates of its query, seeded. ``c`` is the inverse L2
    strength, as in scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    diffs = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        pos, neg = idx[labels[idx] == 1], idx[labels[idx] == 0]
        if not len(pos) or not len(neg):
            continue
        for p in pos:
            pick = rng.choice(neg, size=min(pairs_per_positive, len(neg)), replace=False)
            diffs.append(x[p] - x[pick])
    if not diffs:
        raise JudgeError("no query has both a positive and a candidate: nothing to fit the judge on")
    d = np.vstack(diffs)
    xy = np.vstack([d, -d])
    y = np.r_[np.ones(len(d)), np.zeros(len(d))]
    return LogisticRegression(C=c, fit_intercept=False, max_iter=2000).fit(xy, y).coef_[0]


def fit_platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` such that ``sigmoid(a * score + b)`` estimates P(relevant) on these candidates."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=2000).fit(scores[:, None], labels)
    return float(lr.coef_[0][0]), float(lr.intercept_[0])


class BiEncoderFolds:
    """Cross-fitted bi-encoders (``folds.json`` with ``"kind": "bi-encoder"``): a query of fold ``k`` is
    scored by model ``k``, trained without it; a query in no fold by the mean cosine of all models."""

    def __init__(self, folder: str | os.PathLike, bf16: BF16Mode | bool = "auto", batch_size: int = 64,
                 device: str = "cpu") -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / FOLDS_FILE).read_text())
        self.assignment: dict[str, int] = {str(k): int(v) for k, v in meta["assignment"].items()}
        self.encoders = [Encoder(str(self.folder / m), bf16=bf16, batch_size=batch_size, device=device)
                         for m in meta["models"]]
        self._emb: list[np.ndarray] | None = None

    def fingerprint(self) -> str:
        h = hashlib.sha256("|".join(e.fingerprint() for e in self.encoders).encode())
        h.update(json.dumps(self.assignment, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def bind(self, texts: Sequence[str], corpus_fingerprint: str, cache: EmbeddingCache | None) -> None:
        self._emb = [encode_corpus(e, texts, corpus_fingerprint, cache)[0] for e in self.encoders]

    def cosine(self, qids: Sequence[str], qtexts: Sequence[str], docs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._emb is None:
            raise JudgeError("bi-encoder fold set used before bind()")
        fold = np.array([self.assignment.get(q, -1) for q in qids])
        out = [np.zeros(len(d), dtype=np.float64) for d in docs]
        for k, (enc, emb) in enumerate(zip(self.encoders, self._emb, strict=True)):
            idx = np.flatnonzero((fold == k) | (fold == -1))
            if not len(idx):
                continue
            q = enc.encode_queries([qtexts[i] for i in idx], show_progress=False)
            for row, i in enumerate(idx):
                w = 1.0 if fold[i] == k else 1.0 / len(self.encoders)
                out[i] += w * (emb[docs[i]] @ q[row])
        return out


@dataclass
class Corpus:
    """What a judge reads of the corpus it scores: ids, texts and a content fingerprint; optionally a BM25
    index and base bi-encoder embeddings already built by the caller (reused when they match the judge's)."""

    doc_ids: list[str]
    texts: list[str]
    fingerprint: str
    bm25: BM25Index | None = None
    encoder: Encoder | None = None
    emb: np.ndarray | None = None
    positions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.positions:
            self.positions = {d: i for i, d in enumerate(self.doc_ids)}


@dataclass
class FeatureSource:
    """Computes the judge features of (query, document) pairs on one corpus."""

    corpus: Corpus
    features: list[str]
    dense_model: str = "default"
    bi: BiEncoderFolds | None = None
    ce: object | None = None  # a CrossEncoderScorer or FoldSet (retriever.rerank)
    ce_max_length: int = 256
    score_cache: object | None = None
    bf16: BF16Mode | bool = "auto"
    _bm25: BM25Index | None = None
    _enc: Encoder | None = None
    _emb: np.ndarray | None = None

    def prepare(self, cache: EmbeddingCache | None = None) -> FeatureSource:
        c = self.corpus
        if {"bm25", "bm25_log"} & set(self.features):
            same = c.bm25 is not None and c.bm25.backend == "bm25s" and c.bm25.k1 == 1.5 and c.bm25.b == 0.75 \
                and c.bm25.tokenizer_config == TokenizerConfig()
            self._bm25 = c.bm25 if same else BM25Index(tokenizer=TokenizerConfig()).index(c.doc_ids, c.texts,
                                                                                          show_progress=False)
        if {"dense", "dense_gap"} & set(self.features):
            enc = Encoder(self.dense_model, bf16=self.bf16)
            if c.encoder is not None and c.emb is not None and c.encoder.fingerprint() == enc.fingerprint() \
                    and c.encoder.max_seq_length == enc.max_seq_length and not c.encoder.query_prompt:
                self._enc, self._emb = c.encoder, c.emb
            else:
                self._enc = enc
                self._emb = encode_corpus(enc, c.texts, c.fingerprint, cache)[0]
        if "bi" in self.features:
            if self.bi is None:
                raise JudgeError("feature 'bi' needs a bi-encoder fold set")
            self.bi.bind(c.texts, c.fingerprint, cache)
        if "ce" in self.features and self.ce is None:
            raise JudgeError("feature 'ce' needs a cross-encoder")
        return self

    def matrix(self, qids: Sequence[str], qtexts: Sequence[str], docs: Sequence[Sequence[int]],
               show_progress: bool | None = None) -> list[np.ndarray]:
        """Per query, a (documents x features) float64 matrix, columns in ``self.features`` order.
        ``show_progress``: the cross-encoder's bar (None: shown at INFO, ``progress.show_progress``)."""
        docs = [np.asarray(d, dtype=np.int64) for d in docs]
        cols: dict[str, list[np.ndarray]] = {}
        if self._bm25 is not None:
            raw = self._bm25.score_docs(qtexts, docs)
            _, top = self._bm25.search_arrays(qtexts, k=1, show_progress=False)
            cols["bm25"] = [r.astype(np.float64) / max(float(t[0]), 1e-9) for r, t in zip(raw, top, strict=True)]
            cols["bm25_log"] = [np.log1p(r.astype(np.float64)) for r in raw]
        if self._enc is not None:
            q = self._enc.encode_queries(qtexts, show_progress=False)
            sims = [self._emb[d] @ q[i] for i, d in enumerate(docs)]
            best = _best_cosine(self._emb, q)
            cols["dense"] = [s.astype(np.float64) for s in sims]
            cols["dense_gap"] = [s.astype(np.float64) - best[i] for i, s in enumerate(sims)]
        if "bi" in self.features:
            cols["bi"] = self.bi.cosine(qids, qtexts, docs)
        if "ce" in self.features:
            c = self.corpus
            s, _ = score_lists(self.ce, qids, qtexts, docs, c.doc_ids, c.texts, self.score_cache, show_progress)
            cols["ce"] = [x.astype(np.float64) for x in s]
        return [np.column_stack([cols[f][i] for f in self.features]) if len(docs[i])
                else np.zeros((0, len(self.features))) for i in range(len(docs))]


def _best_cosine(emb: np.ndarray, q: np.ndarray, block: int = 65536) -> np.ndarray:
    """The best cosine of each query over the whole corpus, in blocks of documents (bounded memory)."""
    best = np.full(len(q), -np.inf)
    for start in range(0, len(emb), block):
        best = np.maximum(best, (q @ emb[start:start + block].T).max(axis=1))
    return best


class EnsembleJudge:
    """A learned judge from ``hardneg train-judge``: standardized features, pairwise-logistic weights and a
    Platt calibration, read from ``judge.json``. ``bind`` it to a corpus before scoring."""

    def __init__(self, folder: str | os.PathLike, ce_max_length: int | None = None, batch_size: int = 32,
                 bf16: BF16Mode | bool = "auto", device: str = "cpu") -> None:
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / JUDGE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise JudgeError(f"{self.folder / JUDGE_FILE}: not a readable judge ({exc})") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise JudgeError(f"{self.folder / JUDGE_FILE}: unsupported format_version "
                             f"{self.meta.get('format_version')!r}")
        unknown = [f for f in self.meta["features"] if f not in FEATURES]
        if unknown:
            raise JudgeError(f"{self.folder / JUDGE_FILE}: unknown feature(s) {unknown}; known: {', '.join(FEATURES)}")
        self.features: list[str] = list(self.meta["features"])
        self.mean = np.asarray(self.meta["mean"], dtype=np.float64)
        self.std = np.asarray(self.meta["std"], dtype=np.float64)
        self.weights = np.asarray(self.meta["weights"], dtype=np.float64)
        self.platt = tuple(self.meta["platt"])
        # the positive-aware filter rule fitted at training time (None: judges without multi-positive queries)
        self.positive_rule: dict | None = self.meta.get("positive_rule")
        self.max_length = int(ce_max_length or self.meta.get("ce_max_length", 256))
        self.bf16 = bf16
        self.batch_size = batch_size
        comp = self.meta.get("components", {})
        self.bi = BiEncoderFolds(self._path(comp["bi"]), bf16=bf16, device=device) if comp.get("bi") else None
        self.ce = None
        if comp.get("ce"):
            self.ce = load_reranker(str(self._path(comp["ce"])), self.max_length, batch_size, bf16, device)
        self.source: FeatureSource | None = None

    def _path(self, p: str) -> Path:
        """Component paths are stored relative to the judge folder when inside it."""
        q = Path(p)
        return q if q.is_absolute() or not (self.folder / q).exists() else self.folder / q

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({k: self.meta[k] for k in ("features", "mean", "std", "weights", "platt",
                                                                  "dense_model")}, sort_keys=True).encode())
        for comp in (self.bi, self.ce):
            h.update((comp.fingerprint() if comp is not None else "-").encode())
        return h.hexdigest()[:16]

    def cache_prefix(self) -> str:
        corpus = self.source.corpus.fingerprint if self.source is not None else "unbound"
        return f"judge:{self.fingerprint()}:{self.max_length}:{corpus}"

    def bind(self, corpus: Corpus, cache: EmbeddingCache | None = None, score_cache=None) -> EnsembleJudge:
        self.source = FeatureSource(corpus, self.features, self.meta.get("dense_model", "default"), self.bi,
                                    self.ce, self.max_length, score_cache, self.bf16).prepare(cache)
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return a * (((x - self.mean) / self.std) @ self.weights) + b

    def score_docs(self, qids: Sequence[str], qtexts: Sequence[str], docs: Sequence[Sequence[int]],
                   show_progress: bool | None = None) -> list[np.ndarray]:
        if self.source is None:
            raise JudgeError(f"judge {self.folder} used before bind(): it needs the corpus it scores")
        return [self.logits(m).astype(np.float32) for m in self.source.matrix(qids, qtexts, docs, show_progress)]

    def score_pairs(self, qids: Sequence[str], dids: Sequence[str], pairs: Sequence[tuple[str, str]],
                    show_progress: bool | None = None) -> np.ndarray:
        """Logits of flat (query id, doc id) pairs, grouped by query internally."""
        if self.source is None:
            raise JudgeError(f"judge {self.folder} used before bind(): it needs the corpus it scores")
        pos = self.source.corpus.positions
        missing = [d for d in dids if d not in pos]
        if missing:
            raise JudgeError(f"judge {self.folder}: document {missing[0]!r} is not in the corpus it is bound to")
        order: dict[str, list[int]] = {}
        text: dict[str, str] = {}
        for i, (q, p) in enumerate(zip(qids, pairs, strict=True)):
            order.setdefault(q, []).append(i)
            text[q] = p[0]
        out = np.empty(len(pairs), dtype=np.float32)
        qs = list(order)
        scores = self.score_docs(qs, [text[q] for q in qs], [[pos[dids[i]] for i in order[q]] for q in qs],
                                 show_progress)
        for q, s in zip(qs, scores, strict=True):
            out[order[q]] = s
        return out


def save_judge(folder: str | os.PathLike, features: list[str], mean: np.ndarray, std: np.ndarray,
               weights: np.ndarray, platt: tuple[float, float], components: dict[str, str], extra: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "kind": "ensemble", "features": features,
            "feature_help": {f: FEATURES[f] for f in features}, "mean": mean.tolist(), "std": std.tolist(),
            "weights": weights.tolist(), "platt": list(platt), "components": components, **extra}
    path = folder / JUDGE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path)
    return path


def load_judge(model: str, max_length: int = 256, batch_size: int = 32, bf16: BF16Mode | bool = "auto",
               device: str = "cpu") -> EnsembleJudge | CrossEncoderScorer | FoldSet:
    """Any judge by name or path: a ``hardneg train-judge`` folder (has ``judge.json``; it scores with the
    cross-encoder token limit it was fitted with and must be bound to a corpus), a cross-encoder fold set
    (has ``folds.json``) or any CrossEncoder name / path."""
    if is_judge(model):
        return EnsembleJudge(model, batch_size=batch_size, bf16=bf16, device=device)
    return load_reranker(model, max_length, batch_size, bf16, device)
