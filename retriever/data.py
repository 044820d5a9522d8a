"""Load and validate BEIR-format collections (corpus, queries, qrels) into Arrow-backed datasets.

Validation errors name the file, the line and the id. This module reads data; it never retrieves or scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from datasets import Dataset

from .errors import DataError

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]

DATA_ENV = "HARDNEG_DATA"
_CHUNK = 50_000


def column(ds: Dataset, name: str) -> list:
    """A column of a ``datasets.Dataset`` as a Python list, read from Arrow in one call (iterating or
    indexing ``ds[name]`` formats one row at a time: minutes for a million documents)."""
    return ds.data.column(name).to_pylist()


def join_title_text(title: str | None, text: str | None) -> str:
    """Join a document's title and text the way BEIR and MTEB do: ``(title + " " + text).strip()``."""
    return (f"{title or ''} {text or ''}").strip()


@dataclass
class Collection:
    """A retrieval collection: corpus (Arrow ``Dataset`` with ``_id``, ``title``, ``text``), queries, qrels.

    ``queries`` holds only the queries of the loaded split (those named in its qrels).
    ``stats`` counts what loading found, including empty texts (kept, and reported here).
    """

    name: str
    split: str
    corpus: Dataset
    queries: dict[str, str]
    qrels: Qrels
    source: str = ""
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def doc_ids(self) -> list[str]:
        return column(self.corpus, "_id")

    def doc_texts(self) -> list[str]:
        """Title and text joined per document, in corpus order."""
        out: list[str] = []
        for batch in self.corpus.iter(batch_size=_CHUNK):
            out.extend(join_title_text(t, x) for t, x in zip(batch["title"], batch["text"], strict=True))
        return out

    def fingerprint(self) -> str:
        """Content hash of the corpus (ids, titles and texts): changes when any document changes."""
        h = hashlib.sha256()
        for batch in self.corpus.iter(batch_size=_CHUNK):
            for i, t, x in zip(batch["_id"], batch["title"], batch["text"], strict=True):
                h.update(i.encode())
                h.update(b"\x1f")
                h.update(t.encode())
                h.update(b"\x1f")
                h.update(x.encode())
                h.update(b"\x1e")
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- JSONL


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _get_id(obj: dict, path: Path, lineno: int) -> str:
    if "_id" not in obj or obj["_id"] is None:
        raise DataError(f"{path}:{lineno}: missing '_id' (each line needs '_id' and 'text')")
    value = str(obj["_id"])
    if not value.strip():
        raise DataError(f"{path}:{lineno}: empty '_id'")
    return value


def _get_str(obj: dict, key: str, path: Path, lineno: int, doc_id: str, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(f"{path}:{lineno}: id {doc_id!r} has no '{key}' field")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: id {doc_id!r} field '{key}' must be a string, got {type(value).__name__}")
    return value


def read_corpus(path: str | os.PathLike) -> tuple[Dataset, dict[str, object]]:
    """Read ``corpus.jsonl`` into a ``Dataset`` with string columns ``_id``, ``title``, ``text``.

    Raises:
        DataError: missing file, malformed line, missing ``_id``/``text``, duplicate id, empty corpus.
    Returns:
        The dataset and counts: ``documents``, ``empty_texts`` and ``empty_text_ids`` (first 10).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: corpus file not found")
    seen: dict[str, int] = {}
    batches: list[pa.RecordBatch] = []
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    empty: list[str] = []
    n_empty = 0

    def flush() -> None:
        if ids:
            batches.append(pa.record_batch([pa.array(ids, pa.string()), pa.array(titles, pa.string()),
                                            pa.array(texts, pa.string())], names=["_id", "title", "text"]))
            ids.clear()
            titles.clear()
            texts.clear()

    for lineno, obj in _iter_jsonl(path):
        doc_id = _get_id(obj, path, lineno)
        if doc_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate document id {doc_id!r} (first seen on line {seen[doc_id]})")
        seen[doc_id] = lineno
        text = _get_str(obj, "text", path, lineno, doc_id, required=True)
        title = _get_str(obj, "title", path, lineno, doc_id, required=False)
        if not join_title_text(title, text):
            n_empty += 1
            if len(empty) < 10:
                empty.append(doc_id)
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
        if len(ids) >= _CHUNK:
            flush()
    flush()
    if not seen:
        raise DataError(f"{path}: empty corpus (no documents)")
    if n_empty:
        logger.warning("%s: %d document(s) have empty title and text (kept; first ids: %s)",
                       path, n_empty, ", ".join(empty))
    table = pa.Table.from_batches(batches)
    return Dataset(table), {"documents": len(seen), "empty_texts": n_empty, "empty_text_ids": empty}


def read_queries(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, object]]:
    """Read ``queries.jsonl`` into ``{query_id: text}`` (other fields such as ``metadata`` are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: queries file not found")
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    empty: list[str] = []
    for lineno, obj in _iter_jsonl(path):
        qid = _get_id(obj, path, lineno)
        if qid in queries:
            raise DataError(f"{path}:{lineno}: duplicate query id {qid!r} (first seen on line {lines[qid]})")
        text = _get_str(obj, "text", path, lineno, qid, required=True)
        if not text.strip():
            empty.append(qid)
        queries[qid] = text
        lines[qid] = lineno
    if not queries:
        raise DataError(f"{path}: no queries")
    if empty:
        logger.warning("%s: %d quer(y/ies) have empty text (kept; first ids: %s)", path, len(empty),
                       ", ".join(empty[:10]))
    return queries, {"queries": len(queries), "empty_queries": len(empty), "empty_query_ids": empty[:10]}


def read_qrels(path: str | os.PathLike) -> Qrels:
    """Read a BEIR qrels TSV (``query-id  corpus-id  score``, header optional) into ``{qid: {docid: grade}}``.

    Also accepts the 4-column TREC layout ``qid 0 docid grade`` separated by whitespace. Grades are integers.
    """
    return _read_qrels_lines(path)[0]


def _read_qrels_lines(path: str | os.PathLike) -> tuple[Qrels, dict[tuple[str, str], int]]:
    """Qrels plus the line of each judgment, for error messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: qrels file not found")
    qrels: Qrels = {}
    lines: dict[tuple[str, str], int] = {}
    first = True
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            raw = line.rstrip("\r\n")
            parts = [p.strip() for p in (raw.split("\t") if "\t" in raw else raw.split())]
            if first and parts[0].lower() in {"query-id", "query_id", "qid", "query"}:
                first = False
                continue
            first = False
            if len(parts) == 4 and "\t" not in raw:
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3 or not all(parts):
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                                f"got {len(parts)}: {line.strip()!r}")
            qid, did, score = parts
            try:
                value = float(score)
            except ValueError:
                value = float("nan")
            if not math.isfinite(value) or value != int(value):
                raise DataError(f"{path}:{lineno}: score {score!r} is not an integer grade "
                                f"(query {qid!r}, doc {did!r})")
            if (qid, did) in lines:
                raise DataError(f"{path}:{lineno}: duplicate judgment for query {qid!r} and document {did!r} "
                                f"(first on line {lines[(qid, did)]})")
            lines[(qid, did)] = lineno
            qrels.setdefault(qid, {})[did] = int(value)
    return qrels, lines


def available_splits(folder: Path) -> list[str]:
    qdir = folder / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_beir(folder: str | os.PathLike, split: str = "test", name: str | None = None) -> Collection:
    """Load a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) and cross-check it.

    Raises:
        DataError: any file missing or malformed, qrels naming an unknown query or document.

    Example:
        >>> col = load_beir("../shared/data/scifact", "test")  # doctest: +SKIP
        >>> len(col.queries), col.corpus.num_rows
        (300, 5183)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: collection folder not found")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        raise DataError(f"{qrels_path}: split {split!r} not found; available splits: {', '.join(splits) or 'none'}")
    corpus, cstats = read_corpus(folder / "corpus.jsonl")
    all_queries, qstats = read_queries(folder / "queries.jsonl")
    qrels, qlines = _read_qrels_lines(qrels_path)
    doc_set = set(column(corpus, "_id"))
    _check_qrels(qrels, all_queries, doc_set, str(qrels_path), qlines)
    queries = {qid: all_queries[qid] for qid in qrels}
    stats: dict[str, object] = {**cstats, **qstats, "split_queries": len(queries),
                                "qrels": sum(len(v) for v in qrels.values())}
    stats["empty_split_queries"] = sum(1 for q in queries.values() if not q.strip())
    return Collection(name=name or folder.name, split=split, corpus=corpus, queries=queries, qrels=qrels,
                      source=str(folder.resolve()), stats=stats)


def _check_qrels(qrels: Qrels, queries: dict[str, str], doc_set: set[str], where: str,
                 lines: dict[tuple[str, str], int] | None = None) -> None:
    if not qrels:
        raise DataError(f"{where}: qrels file has no judgments")

    def at(qid: str, did: str) -> str:
        return f"{where}:{lines[(qid, did)]}" if lines else where

    for qid, docs in qrels.items():
        if qid not in queries:
            did = next(iter(docs))
            raise DataError(f"{at(qid, did)}: qrels name query id {qid!r}, which is not in the queries file")
        for did in docs:
            if did not in doc_set:
                raise DataError(f"{at(qid, did)}: qrels of query {qid!r} name document id {did!r}, "
                                "which is not in the corpus")


def load_hf_beir(name: str, split: str = "test") -> Collection:
    """Load a Hugging Face dataset in the BeIR layout (``name`` with configs ``corpus`` and ``queries``,
    qrels in ``name + "-qrels"``), e.g. ``BeIR/scifact``. Needs network access (or a warm HF cache)."""
    from datasets import load_dataset

    def load(*args, **kw):
        try:
            return load_dataset(*args, **kw)
        except Exception as first:  # noqa: BLE001
            # script-based hub datasets (BeIR/* ship a loading script, which datasets >= 4 no longer runs) are
            # also served as parquet under this revision
            try:
                return load_dataset(*args, revision="refs/convert/parquet", **kw)
            except Exception:  # noqa: BLE001
                raise first from None

    try:
        corpus_ds = load(name, "corpus")
        queries_ds = load(name, "queries")
        qrels_ds = load(f"{name}-qrels", split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same readable message
        raise DataError(f"Hugging Face dataset {name!r} (split {split!r}) could not be loaded: {exc}") from exc
    corpus_ds = corpus_ds[next(iter(corpus_ds))] if hasattr(corpus_ds, "keys") else corpus_ds
    queries_ds = queries_ds[next(iter(queries_ds))] if hasattr(queries_ds, "keys") else queries_ds
    return collection_from_datasets(corpus_ds, queries_ds, qrels_ds, name=name, split=split, source=f"hf:{name}")


def collection_from_datasets(corpus_ds: Dataset, queries_ds: Dataset, qrels_ds: Dataset, name: str,
                             split: str, source: str) -> Collection:
    """Build a validated ``Collection`` from three datasets in the BeIR layout."""
    for col in ("_id", "text"):
        if col not in corpus_ds.column_names:
            raise DataError(f"{source} corpus: missing column {col!r} (has {corpus_ds.column_names})")
        if col not in queries_ds.column_names:
            raise DataError(f"{source} queries: missing column {col!r} (has {queries_ds.column_names})")
    ids = [str(x) for x in corpus_ds["_id"]]
    titles = corpus_ds["title"] if "title" in corpus_ds.column_names else [""] * len(ids)
    texts = corpus_ds["text"]
    seen: set[str] = set()
    for i, did in enumerate(ids):
        if did in seen:
            raise DataError(f"{source} corpus: duplicate document id {did!r} (row {i})")
        seen.add(did)
    if not ids:
        raise DataError(f"{source} corpus: empty corpus")
    titles = [t or "" for t in titles]
    texts = [t or "" for t in texts]
    empty_ids = [i for i, t, x in zip(ids, titles, texts, strict=True) if not join_title_text(t, x)]
    if empty_ids:
        logger.warning("%s corpus: %d document(s) have empty title and text (kept; first ids: %s)", source,
                       len(empty_ids), ", ".join(empty_ids[:10]))
    corpus = Dataset(pa.table({"_id": ids, "title": titles, "text": texts}))
    queries_all: dict[str, str] = {}
    for i, (q, t) in enumerate(zip(queries_ds["_id"], queries_ds["text"], strict=True)):
        if str(q) in queries_all:
            raise DataError(f"{source} queries: duplicate query id {str(q)!r} (row {i})")
        queries_all[str(q)] = t or ""
    qcols = qrels_ds.column_names
    qkey = "query-id" if "query-id" in qcols else "query_id"
    dkey = "corpus-id" if "corpus-id" in qcols else "corpus_id"
    qrels: Qrels = {}
    for q, d, s in zip(qrels_ds[qkey], qrels_ds[dkey], qrels_ds["score"], strict=True):
        qrels.setdefault(str(q), {})[str(d)] = int(s)
    _check_qrels(qrels, queries_all, seen, f"{source} qrels[{split}]")
    queries = {q: queries_all[q] for q in qrels}
    stats = {"documents": len(ids), "empty_texts": len(empty_ids), "empty_text_ids": empty_ids[:10],
             "queries": len(queries_all),
             "split_queries": len(queries), "qrels": sum(len(v) for v in qrels.values())}
    return Collection(name=name, split=split, corpus=corpus, queries=queries, qrels=qrels, source=source,
                      stats=stats)


# The BEIR collections the hub holds in the BeIR layout (BeIR/<name> + BeIR/<name>-qrels): a bare name that is
# not found locally falls back to that copy (needs network; then cached by datasets like any dataset).
BEIR_HUB = {n: f"BeIR/{n}" for n in (
    "scifact", "nfcorpus", "arguana", "fiqa", "trec-covid", "scidocs", "quora", "nq", "hotpotqa", "msmarco",
    "webis-touche2020", "dbpedia-entity", "fever", "climate-fever", "cqadupstack")}


def _local_places(name_or_path: str) -> str:
    root = os.environ.get(DATA_ENV)
    where = f"${DATA_ENV}={root}" if root else f"${DATA_ENV} is not set"
    known = ""
    if root and Path(root).is_dir():
        known = "; collections there: " + ", ".join(sorted(x.name for x in Path(root).iterdir() if x.is_dir()))
    return f"no such folder, and not found under {where}{known}"


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def resolve_data(name_or_path: str) -> Path | str:
    """Resolve ``--data``: an existing path, else a folder under ``$HARDNEG_DATA``, else an ``org/name``
    Hugging Face dataset id (returned as a string); a BEIR name found nowhere locally (``scifact``) falls back
    to its hub copy ``BeIR/<name>``."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    root = os.environ.get(DATA_ENV)
    if root and (Path(root) / name_or_path).is_dir():
        return Path(root) / name_or_path
    if "/" in name_or_path and not p.exists() and not name_or_path.startswith((".", "/", "~")):
        return name_or_path
    if name_or_path in BEIR_HUB:
        return BEIR_HUB[name_or_path]
    raise DataError(f"--data {name_or_path!r}: {_local_places(name_or_path)}")


DEV_FRACTION = 0.15
CARVED_PARTS = ("fit", "dev")


def parse_split(split: str) -> tuple[str, str | None, float]:
    """``"train"`` -> ``("train", None, 0)``; ``"train:dev"`` / ``"train:fit"`` (optionally ``"train:dev:0.2"``)
    -> the base split, the carved part and the dev fraction.

    Raises:
        DataError: an unknown part or a fraction outside (0, 1).
    """
    parts = split.split(":")
    if len(parts) == 1:
        return split, None, 0.0
    if len(parts) > 3 or parts[1] not in CARVED_PARTS:
        raise DataError(f"split {split!r}: expected SPLIT, SPLIT:dev, SPLIT:fit or SPLIT:dev:FRACTION "
                        f"(e.g. 'train:dev' holds out {DEV_FRACTION:.0%} of train's queries)")
    try:
        frac = float(parts[2]) if len(parts) == 3 else DEV_FRACTION
    except ValueError:
        frac = -1.0
    if not 0.0 < frac < 1.0:
        raise DataError(f"split {split!r}: the dev fraction must be a number between 0 and 1")
    return parts[0], parts[1], frac


def in_dev(query_id: str, fraction: float) -> bool:
    """Deterministic, order-free membership of a query in the carved dev part (a hash of its id)."""
    h = int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8, person=b"hardneg-dev").digest(), "big")
    return h / 2**64 < fraction


def carve(col: Collection, part: str, fraction: float, split: str) -> Collection:
    """Keep the queries (and their judgments) of one carved part of ``col``: ``dev`` holds about ``fraction``
    of the queries, ``fit`` the rest; the two never share a query and together make the whole split."""
    keep = {q for q in col.qrels if in_dev(q, fraction) == (part == "dev")}
    if not keep:
        raise DataError(f"split {split!r}: no query of {col.split!r} falls in the {part} part; "
                        "use a larger dev fraction or the whole split")
    qrels = {q: v for q, v in col.qrels.items() if q in keep}
    queries = {q: t for q, t in col.queries.items() if q in keep}
    stats = {**col.stats, "split_queries": len(queries), "qrels": sum(len(v) for v in qrels.values()),
             "carved_from": col.split, "dev_fraction": fraction}
    return Collection(col.name, split, col.corpus, queries, qrels, col.source, stats)


def load_collection(name_or_path: str, split: str = "test") -> Collection:
    """Load ``--data`` (a path, a name under ``$HARDNEG_DATA``, or a hub id) for one split.

    ``split`` may name a part carved from a split: ``train:dev`` (15% of train's queries, chosen by a hash
    of their ids) and ``train:fit`` (the other 85%), for tuning without touching the test split.
    """
    base, part, frac = parse_split(split)
    resolved = resolve_data(name_or_path)
    if isinstance(resolved, Path):
        col = load_beir(resolved, base, name=resolved.name)
    elif name_or_path in BEIR_HUB:  # the fallback: say where it looked first
        looked = f"--data {name_or_path!r}: {_local_places(name_or_path)}; then looked for the hub copy " \
                 f"{resolved} (+ {resolved}-qrels)"
        if hub_offline():
            raise DataError(f"{looked}: offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). Put the collection "
                            f"under ${DATA_ENV} or give its folder")
        try:
            col = load_hf_beir(resolved, base)
        except DataError as exc:
            raise DataError(f"{looked}: {exc}") from None
        col = dataclasses.replace(col, name=name_or_path)
    else:
        col = load_hf_beir(resolved, base)
    return carve(col, part, frac, split) if part else col
