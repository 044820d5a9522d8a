"""faiss inner-product index over embeddings: exact (flat) by default, HNSW or IVF for large corpora;
save/load as a faiss file plus ``params.json`` and the document ids. No encoding here."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import DataError
from .runs import Run

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
FORMAT_VERSION = 1


class DenseIndex:
    """Inner-product search over float32 embeddings.

    Args:
        kind: ``flat`` (exact), ``hnsw`` (graph, ``hnsw_m`` links, ``ef_search``) or ``ivf`` (``nlist`` cells,
            ``nprobe`` visited at search time; trained on the corpus itself).

    Example:
        >>> idx = DenseIndex().add(["a", "b"], np.eye(2, dtype=np.float32))
        >>> idx.search(np.array([[0.0, 1.0]], dtype=np.float32), k=1, query_ids=["q"])
        {'q': {'b': 1.0}}
    """

    def __init__(self, kind: IndexKind = "flat", hnsw_m: int = 32, ef_search: int = 128,
                 ef_construction: int = 200, nlist: int | None = None, nprobe: int = 16) -> None:
        if kind not in ("flat", "hnsw", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}; expected flat, hnsw or ivf")
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.nlist = nlist
        self.nprobe = nprobe
        self.doc_ids: list[str] = []
        self.index = None

    def _build(self, dim: int, train: np.ndarray):
        import faiss

        if self.kind == "flat":
            return faiss.IndexFlatIP(dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
            return index
        n = train.shape[0]
        nlist = self.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
        self.nlist = nlist
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = train if n <= 256 * nlist else train[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = min(self.nprobe, nlist)
        return index

    def add(self, doc_ids: Sequence[str], embeddings: np.ndarray) -> DenseIndex:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(doc_ids):
            raise ValueError(f"embeddings of shape {emb.shape} do not match {len(doc_ids)} document ids")
        if emb.shape[0] == 0:
            raise DataError("cannot index an empty corpus")
        import faiss

        if self.index is None:
            self.index = self._build(emb.shape[1], emb)
        # HNSW insertion with several threads builds a different graph each time: build on one thread so that
        # the same embeddings always give the same index (and a resumed job the same candidates)
        threads = faiss.omp_get_max_threads()
        if self.kind == "hnsw":
            faiss.omp_set_num_threads(1)
        try:
            self.index.add(emb)
        finally:
            faiss.omp_set_num_threads(threads)
        self.doc_ids.extend(doc_ids)
        return self

    def search_arrays(self, query_emb: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            raise RuntimeError("DenseIndex is empty: call add() or load() first")
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        scores, docs = self.index.search(q, min(k, len(self.doc_ids)))
        return docs.astype(np.int64), scores

    def search(self, query_emb: np.ndarray, k: int = 100, query_ids: Sequence[str] | None = None) -> Run:
        qids = list(query_ids) if query_ids is not None else [f"q{i}" for i in range(len(query_emb))]
        docs, scores = self.search_arrays(query_emb, k)
        return {qid: {self.doc_ids[d]: float(s) for d, s in zip(drow, srow, strict=True) if d >= 0}
                for qid, drow, srow in zip(qids, docs, scores, strict=True)}

    def params(self) -> dict[str, object]:
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search, "ef_construction": self.ef_construction, "nlist": self.nlist,
                "nprobe": self.nprobe, "num_docs": len(self.doc_ids),
                "dim": int(self.index.d) if self.index is not None else None}

    def save(self, folder: str | os.PathLike) -> Path:
        import faiss

        if self.index is None:
            raise RuntimeError("nothing to save: the index is empty")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        (folder / "doc_ids.json").write_text(json.dumps(self.doc_ids))
        (folder / "params.json").write_text(json.dumps(self.params(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DenseIndex:
        import faiss

        folder = Path(folder)
        pfile = folder / "params.json"
        if not pfile.is_file():
            raise DataError(f"{pfile}: not a saved dense index (params.json missing)")
        p = json.loads(pfile.read_text())
        if p.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{pfile}: unsupported format_version {p.get('format_version')!r}")
        idx = cls(kind=p["kind"], hnsw_m=p["hnsw_m"], ef_search=p["ef_search"],
                  ef_construction=p["ef_construction"], nlist=p["nlist"], nprobe=p["nprobe"])
        idx.index = faiss.read_index(str(folder / "index.faiss"))
        idx.doc_ids = json.loads((folder / "doc_ids.json").read_text())
        if idx.kind == "hnsw":
            idx.index.hnsw.efSearch = idx.ef_search
        return idx
