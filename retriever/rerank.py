"""Cross-encoder scoring of (query, document) pairs: any sentence-transformers CrossEncoder or a cross-fitted
fold set, batches that span queries sorted by length, bf16 where the CPU supports it, and a persistent
score cache keyed by (weights fingerprint, max_length, query id, doc id). Scores only; no filtering."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from .encoder import BF16Mode, default_cache_dir, resolve_bf16, weights_fingerprint
from .errors import HardnegError
from .progress import show_progress as _show

logger = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"


class ScoreError(HardnegError, ValueError):
    """The cross-encoder returned something unusable (NaN or infinite scores)."""


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class CrossEncoderScorer:
    """Score pairs with one sentence-transformers ``CrossEncoder`` (raw logits, one per pair).

    Args:
        model: hub name, local folder, or a loaded ``CrossEncoder``.
        max_length: tokens per pair (longer pairs are truncated).
        batch_size: pairs per forward pass.
        bf16: ``auto`` (on with AMX / AVX-512 BF16), ``on`` or ``off``.
    """

    def __init__(self, model, max_length: int = 256, batch_size: int = 32, bf16: BF16Mode | bool = "auto",
                 device: str = "cpu") -> None:
        if isinstance(model, str | os.PathLike):
            from sentence_transformers import CrossEncoder

            try:
                model = CrossEncoder(str(model), max_length=max_length, device=device)
            except Exception as exc:  # noqa: BLE001
                raise OSError(f"could not load cross-encoder {str(model)!r}: {exc}") from exc
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.bf16 = resolve_bf16(bf16, device)
        self.bf16_mode = bf16
        self.pool_devices: list[str] = []  # several devices: pairs are scored by a multi-process pool

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def cache_prefix(self) -> str:
        return f"{self.fingerprint()}:{self.max_length}:{self.precision}"

    @property
    def precision(self) -> str:
        """What the scores are computed in: bf16, fp16 or fp32 (a multi-process pool: fp32)."""
        from .devices import precision_name

        return "fp32" if len(self.pool_devices) > 1 else precision_name(self.device, self.bf16, self.bf16_mode)

    def _lengths(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        # Character length is a cheap, monotone-enough proxy for token length; no tokenization twice.
        return np.fromiter((len(q) + len(d) for q, d in pairs), dtype=np.int64, count=len(pairs))

    def score(self, pairs: Sequence[tuple[str, str]], show_progress: bool | None = None) -> np.ndarray:
        """Logits for ``pairs``, scored longest-first in batches that mix queries, returned in input order.

        Raises:
            ScoreError: if any score is NaN or infinite (names the first offending pair).
        """
        import torch

        if not pairs:
            return np.zeros(0, dtype=np.float32)
        order = np.argsort(-self._lengths(pairs), kind="stable")
        sorted_pairs = [pairs[i] for i in order]
        from .devices import autocast_dtype

        dtype = autocast_dtype(self.device, self.bf16, self.bf16_mode)
        ctx = torch.autocast(self.device.split(":")[0], dtype=dtype) if dtype is not None else nullcontext()
        if len(self.pool_devices) > 1:  # sentence-transformers' multi-process pool, one process per device
            if getattr(self, "_mp_pool", None) is None:
                self._mp_pool = self.model.start_multi_process_pool(self.pool_devices)
            out = self.model.predict(sorted_pairs, batch_size=self.batch_size, show_progress_bar=_show(show_progress),
                                     activation_fn=torch.nn.Identity(), convert_to_numpy=True, pool=self._mp_pool)
        else:
            with torch.inference_mode(), ctx:
                out = self.model.predict(sorted_pairs, batch_size=self.batch_size,
                                         show_progress_bar=_show(show_progress), activation_fn=torch.nn.Identity(),
                                         convert_to_numpy=True)
        out = np.asarray(out, dtype=np.float32).reshape(len(pairs), -1)[:, 0]
        scores = np.empty(len(pairs), dtype=np.float32)
        scores[order] = out
        bad = ~np.isfinite(scores)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScoreError(f"cross-encoder returned {scores[i]} for {int(bad.sum())} pair(s), first: "
                             f"query {pairs[i][0][:60]!r} / document {pairs[i][1][:60]!r}")
        return scores


def _scorers(judge) -> list:
    """The cross-encoder scorers inside a judge (itself, a fold set's folds, an ensemble's cross-encoder)."""
    if isinstance(judge, CrossEncoderScorer):
        return [judge]
    if hasattr(judge, "scorers"):
        return list(judge.scorers)
    inner = getattr(judge, "ce", None)
    return _scorers(inner) if inner is not None else []


def use_devices(judge, devices: list[str]) -> None:
    """Score with sentence-transformers' multi-process pool over ``devices`` (when there are several)."""
    for s in _scorers(judge):
        s.pool_devices = list(devices) if len(devices) > 1 else []


def close_pools(judge) -> None:
    """Stop the multi-process pools a judge's scorers started."""
    for s in _scorers(judge):
        pool = getattr(s, "_mp_pool", None)
        if pool is not None:
            s.model.stop_multi_process_pool(pool)
            s._mp_pool = None


class FoldSet:
    """Cross-fitted cross-encoders from ``hardneg train-reranker --folds K``: query ``q`` held out of fold
    ``k`` is scored by fold ``k``'s model, which never saw ``q`` in training. Queries in no fold are scored
    by the mean of all fold models."""

    def __init__(self, folder: str | os.PathLike, max_length: int = 256, batch_size: int = 32,
                 bf16: BF16Mode | bool = "auto", device: str = "cpu") -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / FOLDS_FILE).read_text())
        self.assignment: dict[str, int] = {str(k): int(v) for k, v in meta["assignment"].items()}
        self.scorers = [CrossEncoderScorer(str(self.folder / m), max_length, batch_size, bf16, device)
                        for m in meta["models"]]
        self.max_length = max_length

    @staticmethod
    def is_fold_set(path: str | os.PathLike) -> bool:
        return (Path(path) / FOLDS_FILE).is_file()

    def fingerprint(self) -> str:
        h = hashlib.sha256("|".join(s.fingerprint() for s in self.scorers).encode())
        h.update(json.dumps(self.assignment, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def cache_prefix(self) -> str:
        return f"folds:{self.fingerprint()}:{self.max_length}:{self.scorers[0].precision}"

    def score_queries(self, qids: Sequence[str], pairs: Sequence[tuple[str, str]],
                      show_progress: bool | None = None) -> np.ndarray:
        out = np.empty(len(pairs), dtype=np.float32)
        fold_of = np.array([self.assignment.get(q, -1) for q in qids])
        for k, scorer in enumerate(self.scorers):
            idx = np.flatnonzero(fold_of == k)
            if len(idx):
                out[idx] = scorer.score([pairs[i] for i in idx], show_progress)
        rest = np.flatnonzero(fold_of == -1)
        if len(rest):
            sub = [pairs[i] for i in rest]
            out[rest] = np.mean([s.score(sub, show_progress) for s in self.scorers], axis=0)
        return out


def load_reranker(model: str, max_length: int = 256, batch_size: int = 32, bf16: BF16Mode | bool = "auto",
                  device: str = "cpu") -> CrossEncoderScorer | FoldSet:
    """A cross-encoder fold set (has ``folds.json``) or any CrossEncoder name / path. Learned judges
    (``hardneg train-judge`` folders) load through ``retriever.judge.load_judge``."""
    if FoldSet.is_fold_set(model):
        return FoldSet(model, max_length, batch_size, bf16, device)
    return CrossEncoderScorer(model, max_length, batch_size, bf16, device)


class ScoreCache:
    """Persistent cross-encoder scores in SQLite: key (model prefix, query key, doc key) -> logit, where the
    model prefix is the weights fingerprint plus max_length and a key is an id plus a hash of its text."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else default_cache_dir() / "scores.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (model TEXT, qid TEXT, did TEXT, score REAL, "
                         "PRIMARY KEY (model, qid, did)) WITHOUT ROWID")
        self._db.commit()

    def get_many(self, model: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]:
        found: dict[tuple[str, str], float] = {}
        by_q: dict[str, list[str]] = {}
        for q, d in keys:
            by_q.setdefault(q, []).append(d)
        for q, dids in by_q.items():
            for start in range(0, len(dids), 500):
                chunk = dids[start:start + 500]
                rows = self._db.execute(
                    f"SELECT did, score FROM scores WHERE model=? AND qid=? AND did IN ({','.join('?' * len(chunk))})",
                    [model, q, *chunk]).fetchall()
                found.update({(q, d): s for d, s in rows})
        return found

    def put_many(self, model: str, items: dict[tuple[str, str], float]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                             [(model, q, d, float(s)) for (q, d), s in items.items()])
        self._db.commit()

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM scores WHERE model=?", (model,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def score_with_cache(reranker: CrossEncoderScorer | FoldSet | Any, qids: Sequence[str], dids: Sequence[str],
                     pairs: Sequence[tuple[str, str]], cache: ScoreCache | None,
                     show_progress: bool | None = None) -> tuple[np.ndarray, int]:
    """Scores of ``pairs`` (one per (qid, did)); only pairs missing from ``cache`` are computed.

    Returns the scores and the number of pairs actually scored by the model.
    """
    prefix = reranker.cache_prefix()
    # ids plus a hash of the texts: collections that reuse ids (1..n) or edit a text never share a score
    keys = [(f"{q}|{_text_hash(p[0])}", f"{d}|{_text_hash(p[1])}") for q, d, p in zip(qids, dids, pairs, strict=True)]
    known = cache.get_many(prefix, keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    scores = np.array([known.get(k, math.nan) for k in keys], dtype=np.float32)
    if todo:
        sub_pairs = [pairs[i] for i in todo]
        if hasattr(reranker, "score_pairs"):  # a learned judge (retriever.judge.EnsembleJudge)
            new = reranker.score_pairs([qids[i] for i in todo], [dids[i] for i in todo], sub_pairs,
                                       show_progress=show_progress)
        elif isinstance(reranker, FoldSet):
            new = reranker.score_queries([qids[i] for i in todo], sub_pairs, show_progress)
        else:
            new = reranker.score(sub_pairs, show_progress)
        scores[todo] = new
        if cache is not None:
            cache.put_many(prefix, {keys[i]: float(s) for i, s in zip(todo, new, strict=True)})
    return scores, len(todo)


def score_lists(reranker: CrossEncoderScorer | FoldSet | Any, qids: Sequence[str], qtexts: Sequence[str],
                docs: Sequence[Sequence[int]], doc_ids: Sequence[str], texts: Sequence[str],
                cache: ScoreCache | None, show_progress: bool | None = False) -> tuple[list[np.ndarray], int]:
    """``score_with_cache`` over one list of corpus positions per query: the pairs of every list are scored
    in one call (batches span queries). Returns one score array per list and the pairs scored by the model."""
    flat_q = [q for q, d in zip(qids, docs, strict=True) for _ in d]
    flat_d = [doc_ids[j] for d in docs for j in d]
    pairs = [(t, texts[j]) for t, d in zip(qtexts, docs, strict=True) for j in d]
    flat, n_new = score_with_cache(reranker, flat_q, flat_d, pairs, cache, show_progress)
    return np.split(flat, np.cumsum([len(d) for d in docs])[:-1]) if len(docs) else [], n_new
