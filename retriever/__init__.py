"""hardneg's retrieval library: data loading, BM25, bi-encoder + faiss, fusion, metrics.

It knows nothing about jobs; ``mining_jobs`` builds jobs from these parts.
"""

from __future__ import annotations

from .bm25 import BM25Index
from .data import Collection, load_beir, load_collection
from .dense_index import DenseIndex
from .errors import DataError, HardnegError
from .fusion import reciprocal_rank_fusion
from .metrics import evaluate, per_query, randomization_test
from .runs import Run, read_trec, write_trec

__version__ = "0.1.0"

__all__ = [
    "BM25Index",
    "Collection",
    "DataError",
    "DenseIndex",
    "HardnegError",
    "Run",
    "evaluate",
    "load_beir",
    "load_collection",
    "per_query",
    "randomization_test",
    "read_trec",
    "reciprocal_rank_fusion",
    "write_trec",
]
