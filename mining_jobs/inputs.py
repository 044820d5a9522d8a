"""The mining job's input: a corpus plus training queries with their positives, from a BEIR split's qrels
or from a table of (query, positive) pairs; and the leak guard against evaluation splits."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, concatenate_datasets

from retriever.data import Collection, column, load_beir, load_collection, read_corpus, resolve_data
from retriever.errors import DataError

from .candidates import normalized_hash
from .config import DataSection

logger = logging.getLogger(__name__)


class LeakError(DataError):
    """Training queries or triples would overlap an evaluation split."""


@dataclass
class MiningInput:
    """Corpus plus, per training query, its text and positive documents (ids with grades)."""

    name: str
    corpus: Dataset
    queries: dict[str, str]
    positives: dict[str, dict[str, int]]
    source: str
    stats: dict[str, object] = field(default_factory=dict)

    def doc_texts(self) -> list[str]:
        return Collection(self.name, "", self.corpus, {}, {}).doc_texts()

    def corpus_fingerprint(self) -> str:
        """Content hash of the corpus alone (what corpus embeddings depend on)."""
        return Collection(self.name, "", self.corpus, {}, {}).fingerprint()

    def fingerprint(self) -> str:
        """Content hash of the corpus, the queries and their positives."""
        h = hashlib.sha256(self.corpus_fingerprint().encode())
        for q in sorted(self.queries):
            h.update(f"{q}\x1f{self.queries[q]}\x1f{sorted(self.positives[q].items())}\x1e".encode())
        return h.hexdigest()[:16]


def _stable_id(prefix: str, text: str) -> str:
    return f"{prefix}{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def load_input(cfg: DataSection) -> MiningInput:
    """Load the queries and positives to mine (qrels of ``cfg.split`` or the ``cfg.pairs`` table).

    Raises:
        DataError: a query without any positive at ``min_relevance``, a positive missing from the corpus,
            an empty pairs table, missing columns.
    """
    if cfg.pairs:
        return _load_pairs(cfg)
    col = load_collection(cfg.name, cfg.split)
    positives: dict[str, dict[str, int]] = {}
    for qid, judged in col.qrels.items():
        pos = {d: g for d, g in judged.items() if g >= cfg.min_relevance}
        if not pos:
            raise DataError(f"{col.source} qrels/{cfg.split}.tsv: query {qid!r} has no positive with grade >= "
                            f"{cfg.min_relevance} (data.min_relevance); drop it from the qrels or lower the threshold")
        positives[qid] = pos
    return MiningInput(col.name, col.corpus, col.queries, positives, col.source,
                       {**col.stats, "positives": sum(len(p) for p in positives.values())})


def _load_pairs(cfg: DataSection) -> MiningInput:
    from datasets import load_dataset

    resolved = resolve_data(cfg.name)
    if not isinstance(resolved, Path):
        raise DataError(f"data.pairs needs a local corpus folder for data.name, got hub id {resolved!r}")
    corpus, cstats = read_corpus(resolved / "corpus.jsonl")
    path = Path(cfg.pairs)
    if not path.exists():
        raise DataError(f"{path}: pairs table not found (data.pairs)")
    fmt = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}.get(path.suffix)
    if fmt is None:
        raise DataError(f"{path}: unsupported pairs table format; use parquet, jsonl or csv")
    kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    table = load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    for col in ("query", "positive"):
        if col not in table.column_names:
            raise DataError(f"{path}: pairs table needs columns 'query' and 'positive'; has {table.column_names}")
    if table.num_rows == 0:
        raise DataError(f"{path}: pairs table is empty")
    ids = column(corpus, "_id")
    id_set = set(ids)
    text_to_id: dict[str, str] = {}  # normalized hash of "title text" and of the text alone -> doc id
    for i, t, x in zip(ids, column(corpus, "title"), column(corpus, "text"), strict=True):
        text_to_id.setdefault(normalized_hash(f"{t} {x}"), i)
        text_to_id.setdefault(normalized_hash(x), i)
    added: dict[str, str] = {}
    queries: dict[str, str] = {}
    positives: dict[str, dict[str, int]] = {}
    cols = table.column_names
    for row_i, row in enumerate(table):
        q, ptext = row["query"], row["positive"]
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{path}: row {row_i}: empty query")
        qid = str(row["query_id"]) if "query_id" in cols and row["query_id"] is not None else _stable_id("q-", q)
        pid = str(row["positive_id"]) if "positive_id" in cols and row["positive_id"] is not None else None
        if pid is None:
            if not isinstance(ptext, str) or not ptext.strip():
                raise DataError(f"{path}: row {row_i}: empty positive and no positive_id")
            pid = text_to_id.get(normalized_hash(ptext)) or _stable_id("p-", ptext)
        raw = row["score"] if "score" in cols and row["score"] is not None else 1
        if isinstance(raw, bool) or not isinstance(raw, int | float) or float(raw) != int(raw):
            raise DataError(f"{path}: row {row_i}: score {raw!r} is not an integer grade")
        grade = int(raw)
        if grade < cfg.min_relevance:
            continue
        if pid not in id_set and pid not in added:
            if not isinstance(ptext, str) or not ptext.strip():
                raise DataError(f"{path}: row {row_i}: positive_id {pid!r} is not in the corpus and has no text")
            added[pid] = ptext
        queries.setdefault(qid, q)
        positives.setdefault(qid, {})[pid] = grade
    if not positives:
        raise DataError(f"{path}: no pair has a grade >= {cfg.min_relevance} (data.min_relevance)")
    if added:
        logger.info("%d positive(s) from %s were missing from the corpus and were added to it", len(added), path)
        extra = Dataset(pa.table({"_id": list(added), "title": [""] * len(added), "text": list(added.values())}))
        corpus = concatenate_datasets([corpus, extra])
    stats = {**cstats, "documents": corpus.num_rows, "added_positives": len(added), "split_queries": len(queries),
             "positives": sum(len(p) for p in positives.values())}
    return MiningInput(resolved.name, corpus, queries, positives, str(path.resolve()), stats)


def leak_guard(inp: MiningInput, cfg: DataSection) -> set[str]:
    """Refuse when training queries overlap an evaluation split (by id or text) or when a positive of an
    evaluation query is also a training positive. Returns the evaluation positives, which the job keeps
    out of the negatives (fate ``eval_positive``)."""
    if not cfg.eval_splits:
        return set()
    resolved = resolve_data(cfg.name)
    if not isinstance(resolved, Path):
        raise DataError("data.eval_splits needs a local collection folder")
    banned: set[str] = set()
    train_texts = {t.strip().lower(): q for q, t in inp.queries.items() if t.strip()}
    for split in cfg.eval_splits:
        ev = load_beir(resolved, split)
        same_id = sorted(set(ev.qrels) & set(inp.queries))
        same_text = sorted(q for q, t in ev.queries.items() if t.strip() and t.strip().lower() in train_texts)
        if same_id or same_text:
            raise LeakError(f"leak guard: {len(same_id)} training query id(s) and {len(same_text)} query text(s) are "
                            f"also evaluation queries of split {split!r} (first: {(same_id or same_text)[:5]}); "
                            "remove them from the training data")
        eval_pos = {d for judged in ev.qrels.values() for d, g in judged.items() if g >= 1}
        shared = sorted({d for p in inp.positives.values() for d in p} & eval_pos)
        if shared:
            raise LeakError(f"leak guard: {len(shared)} training positive(s) are positives of evaluation split "
                            f"{split!r} (first: {shared[:5]}); they would enter the triples")
        banned |= eval_pos
    return banned
