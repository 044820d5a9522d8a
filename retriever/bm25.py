"""BM25 retrieval behind one interface, two backends: bm25s (default, fast sparse matrix) and rank-bm25
(reference implementation). Both use the same tokenizer; save/load write plain files, never pickles."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from .errors import DataError
from .progress import show_progress as _show
from .runs import Run
from .text import Tokenizer, TokenizerConfig

logger = logging.getLogger(__name__)

Backend = Literal["bm25s", "rank_bm25"]
BACKENDS: tuple[str, ...] = ("bm25s", "rank_bm25")
FORMAT_VERSION = 1


def top_k(docs: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (document, score) pairs, by score descending, ties by document position ascending, also
    at the cut: the result does not depend on the order of the input (which, for the sparse product, follows
    bm25s's per-process term numbering)."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th largest score
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        tied = tied[np.argsort(docs[tied], kind="stable")[:k - len(above)]]
        sel = np.concatenate([above, tied])
        docs, scores = docs[sel], scores[sel]
    order = np.lexsort((docs, -scores))
    return docs[order], scores[order]


class BM25Index:
    """A BM25 index over a corpus.

    Args:
        backend: ``"bm25s"`` (Lucene-style idf, sparse matrix, fast) or ``"rank_bm25"`` (``BM25Okapi``).
        k1, b: the usual BM25 parameters, used by both backends.
        tokenizer: lowercase / stopwords / stemming options shared by both backends.

    Example:
        >>> idx = BM25Index().index(["d1", "d2"], ["cats purr", "dogs bark"])
        >>> idx.search(["cat"], k=1)
        {'q0': {'d1': ...}}
    """

    def __init__(self, backend: Backend = "bm25s", k1: float = 1.5, b: float = 0.75,
                 tokenizer: TokenizerConfig | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown BM25 backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.k1 = float(k1)
        self.b = float(b)
        self.tokenizer_config = tokenizer or TokenizerConfig()
        self.tokenizer = Tokenizer(self.tokenizer_config)
        self.doc_ids: list[str] = []
        self._model = None
        self._tokenized: list[list[str]] | None = None  # kept for rank_bm25 save
        self._term_docs = None  # bm25s: (vocabulary x documents) CSR matrix of per-term BM25 scores
        self.chunk_cells = 50_000_000  # bm25s: queries per sparse product x documents stays below this

    # ------------------------------------------------------------------------------------------ build
    def index(self, doc_ids: Sequence[str], texts: Sequence[str], show_progress: bool | None = None) -> BM25Index:
        if len(doc_ids) != len(texts):
            raise ValueError(f"{len(doc_ids)} ids but {len(texts)} texts")
        if not doc_ids:
            raise DataError("cannot index an empty corpus")
        self.doc_ids = list(doc_ids)
        show_progress = _show(show_progress)
        tokens = [self.tokenizer(t) for t in tqdm(texts, desc="BM25 tokenize", disable=not show_progress,
                                                   unit="doc", mininterval=1.0)]
        self._build(tokens, show_progress)
        return self

    def _build(self, tokens: list[list[str]], show_progress: bool | None = False) -> None:
        if not any(tokens):
            raise DataError("every document is empty after tokenization: nothing to index")
        if self.backend == "bm25s":
            import bm25s

            self._model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            self._model.index(tokens, show_progress=show_progress)
            self._tokenized = None
            self._term_docs = None
        else:
            self._model = _rank_bm25_model(tokens, self.k1, self.b)
            self._tokenized = tokens

    # ----------------------------------------------------------------------------------------- search
    def search_arrays(self, queries: Sequence[str], k: int = 100, show_progress: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` document positions and scores per query, shape ``(n_queries, k)``; position -1 marks
        an empty slot (fewer than ``k`` documents share a term with the query)."""
        if self._model is None:
            raise RuntimeError("BM25Index is empty: call index() or load() first")
        k = min(k, len(self.doc_ids))
        show_progress = _show(show_progress)
        q_tokens = [self.tokenizer(q) for q in queries]
        n = len(q_tokens)
        if self.backend == "bm25s":
            docs, scores = self._search_sparse(q_tokens, k)
        else:
            docs = np.empty((n, k), dtype=np.int64)
            scores = np.empty((n, k), dtype=np.float32)
            for i, toks in enumerate(tqdm(q_tokens, desc="rank_bm25 search", disable=not show_progress,
                                          unit="q", mininterval=1.0)):
                s = self._model.get_scores(toks) if toks else np.zeros(len(self.doc_ids))
                top, _ = top_k(np.arange(len(s)), s, k)
                docs[i], scores[i] = top, s[top]
        docs[scores <= 0] = -1  # a document sharing no term with the query is not a result
        return docs, scores

    def _search_sparse(self, q_tokens: list[list[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """bm25s scores for a batch of queries as one sparse product: (queries x vocabulary) counts times the
        index's (vocabulary x documents) BM25 scores; then a top-k per row over the documents that share a term
        with the query. The same scores as ``bm25s.BM25.retrieve`` (a sum over query tokens, repeats counted),
        without its per-query Python loop. Ties are broken by document position."""
        import scipy.sparse as sp

        if self._term_docs is None:
            sc = self._model.scores
            n_terms = len(sc["indptr"]) - 1
            # bm25s stores one column per term (CSC over documents x terms): its transpose is term-major CSR
            # float64: bm25s numbers its terms in a per-process order (set iteration), and the product sums a
            # query's terms in that order; in float64 the sum of a few float32 scores is exact, so the float32
            # result does not depend on the order (a resumed job gets the bytes of an uninterrupted one)
            self._term_docs = sp.csc_matrix((sc["data"].astype(np.float64), sc["indices"], sc["indptr"]),
                                            shape=(sc["num_docs"], n_terms)).T.tocsr()
        vocab = self._model.vocab_dict
        n_docs = self._term_docs.shape[1]
        n = len(q_tokens)
        docs = np.full((n, k), -1, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        chunk = int(max(1, min(1024, self.chunk_cells // max(n_docs, 1))))  # bounds the sparse product's size
        for start in range(0, n, chunk):
            rows, cols = [], []
            for i, toks in enumerate(q_tokens[start:start + chunk]):
                ids = [vocab[t] for t in toks if t in vocab]
                rows.extend([i] * len(ids))
                cols.extend(ids)
            q = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)),
                              shape=(min(chunk, n - start), self._term_docs.shape[0]))  # duplicates are summed
            prod = (q @ self._term_docs).tocsr()
            for i in range(prod.shape[0]):
                lo, hi = prod.indptr[i], prod.indptr[i + 1]
                d, s = prod.indices[lo:hi], prod.data[lo:hi].astype(np.float32)
                keep = s > 0
                d, s = top_k(d[keep], s[keep], k)
                docs[start + i, :len(d)] = d
                scores[start + i, :len(d)] = s
        return docs, scores

    def score_docs(self, queries: Sequence[str], docs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """BM25 scores of given documents (corpus positions) for each query: ``docs[i]`` are scored against
        ``queries[i]``; a document sharing no term with the query scores 0. The same scores as ``search``."""
        if self._model is None:
            raise RuntimeError("BM25Index is empty: call index() or load() first")
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} document lists")
        q_tokens = [self.tokenizer(q) for q in queries]
        if self.backend != "bm25s":
            return [np.asarray(self._model.get_batch_scores(t, list(d)), dtype=np.float32) if t and len(d)
                    else np.zeros(len(d), dtype=np.float32) for t, d in zip(q_tokens, docs, strict=True)]
        if self._term_docs is None:
            self._search_sparse(q_tokens[:1], 1)  # builds the term-major matrix
        vocab = self._model.vocab_dict
        out = []
        for toks, d in zip(q_tokens, docs, strict=True):
            terms = [vocab[t] for t in toks if t in vocab]
            d = np.asarray(d, dtype=np.int64)
            if not terms or not len(d):
                out.append(np.zeros(len(d), dtype=np.float32))
                continue
            sub = self._term_docs[terms][:, d]  # (query terms x docs); a repeated term counts twice, as in search
            out.append(np.asarray(sub.sum(axis=0), dtype=np.float64).ravel().astype(np.float32))
        return out

    def search(self, queries: Sequence[str], k: int = 100, query_ids: Sequence[str] | None = None,
               show_progress: bool | None = None) -> Run:
        """Search ``queries`` and return a run ``{query_id: {doc_id: score}}`` (ids ``q0..`` if not given)."""
        qids = list(query_ids) if query_ids is not None else [f"q{i}" for i in range(len(queries))]
        docs, scores = self.search_arrays(queries, k, show_progress)
        run: Run = {}
        for qid, drow, srow in zip(qids, docs, scores, strict=True):
            run[qid] = {self.doc_ids[d]: float(s) for d, s in zip(drow, srow, strict=True) if d >= 0}
        return run

    # -------------------------------------------------------------------------------------- save/load
    def params(self) -> dict[str, object]:
        return {"format_version": FORMAT_VERSION, "backend": self.backend, "k1": self.k1, "b": self.b,
                "tokenizer": self.tokenizer_config.to_dict(), "num_docs": len(self.doc_ids)}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder``: ``params.json``, ``doc_ids.json`` and the backend's arrays."""
        if self._model is None:
            raise RuntimeError("nothing to save: the index is empty")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.backend == "bm25s":
            self._model.save(str(folder / "bm25s"), show_progress=False)
        else:
            with (folder / "tokens.jsonl").open("w", encoding="utf-8") as fh:
                for toks in self._tokenized or []:
                    fh.write(json.dumps(toks) + "\n")
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))
        (folder / "params.json").write_text(json.dumps(self.params(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> BM25Index:
        folder = Path(folder)
        pfile = folder / "params.json"
        if not pfile.is_file():
            raise DataError(f"{pfile}: not a saved BM25 index (params.json missing)")
        params = json.loads(pfile.read_text())
        if params.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{pfile}: unsupported format_version {params.get('format_version')!r}")
        idx = cls(backend=params["backend"], k1=params["k1"], b=params["b"],
                  tokenizer=TokenizerConfig(**params["tokenizer"]))
        idx.doc_ids = json.loads((folder / "doc_ids.json").read_text())
        if idx.backend == "bm25s":
            import bm25s

            idx._model = bm25s.BM25.load(str(folder / "bm25s"), show_progress=False)
            idx._term_docs = None
        else:
            with (folder / "tokens.jsonl").open(encoding="utf-8") as fh:
                tokens = [json.loads(line) for line in fh]
            idx._build(tokens)
        return idx


def _rank_bm25_model(tokens: list[list[str]], k1: float, b: float):
    try:
        from rank_bm25 import BM25Okapi
    except ImportError as exc:  # pragma: no cover - rank-bm25 is a dependency
        raise ImportError("the rank_bm25 backend needs rank-bm25: pip install rank-bm25") from exc
    return BM25Okapi(tokens, k1=k1, b=b)
