"""Runs (ranked results per query): the ``{query_id: {doc_id: score}}`` type, TREC run files, and
trec_eval's ordering. No retrieval and no metrics here."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

Run = dict[str, dict[str, float]]


def ranked(docs: dict[str, float]) -> list[tuple[str, float]]:
    """Order one query's results as trec_eval does: score descending, ties by doc id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def drop_self(run: Run) -> Run:
    """Remove each query's own id from its results (BEIR's ``ignore_identical_ids``)."""
    return {qid: {d: s for d, s in docs.items() if d != qid} for qid, docs in run.items()}


def truncate(run: Run, k: int) -> Run:
    """Keep the top ``k`` results of each query (trec_eval order)."""
    return {qid: dict(ranked(docs)[:k]) for qid, docs in run.items()}


def write_trec(run: Run, path: str | os.PathLike, tag: str = "hardneg") -> Path:
    """Write ``qid Q0 docid rank score tag`` lines, ranks from 1 in trec_eval order; written to a temporary
    name and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for qid, docs in run.items():
        for did in docs:
            if not qid or not did or any(c.isspace() for c in qid + did):
                raise ValueError(f"ids that are empty or hold whitespace cannot be written to a TREC run: "
                                 f"{qid!r} {did!r}")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for qid in sorted(run):
            for rank, (did, score) in enumerate(ranked(run[qid]), start=1):
                fh.write(f"{qid} Q0 {did} {rank} {float(score)!r} {tag}\n")  # repr: exact round trip
    os.replace(tmp, path)
    return path


def read_trec(path: str | os.PathLike) -> Run:
    """Read a TREC run file (6 whitespace-separated columns) into a ``Run``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: run file not found")
    run: Run = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            qid, _, did, _, score, _ = parts
            try:
                value = float(score)
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {score!r} is not a number") from None
            docs = run.setdefault(qid, {})
            if did in docs:
                raise DataError(f"{path}:{lineno}: document {did!r} listed twice for query {qid!r}")
            docs[did] = value
    return run
