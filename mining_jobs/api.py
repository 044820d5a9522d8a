"""hardneg's Python API: ``mine``, ``train``, ``evaluate`` and ``iterate``, over the same code paths as the
command line (the job functions ``run_mining``, ``run_training``, ``run_evaluation``, ``run_loop`` with the same
settings dataclasses). Import it from the ``hardneg`` package::

    import hardneg
    result = hardneg.mine("scifact", split="train", out="runs/mine", sampling={"num_negatives": 3})
    result.ntuple          # a datasets.Dataset: query, positive, negative_1..negative_3
    model = hardneg.train(result, out="runs/train", max_steps=100).model

Settings come from ``config`` (the job's dataclass, a dict of TOML tables, or a TOML file), then keyword
overrides: a setting's name for the flat jobs (``lr=3e-5``), a section's name with a dict for the mining job
(``filter={"relative_margin": 0.2}``) or a dotted name in ``set=[...]``; errors name the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .settings import ConfigError, apply_set, build, merge, read_toml, to_raw

__all__ = ["mine", "train", "evaluate", "iterate", "MineResult", "TrainResult", "EvalResult", "LoopResult"]


def _raw_settings(cls: type, config: Any, overrides: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """``config`` (None, a ``cls`` instance, a dict or a TOML path) merged with keyword overrides and
    ``set=["a.b=value"]``, as the nested dicts ``settings.build`` takes. A keyword given as ``None`` unsets a
    nullable setting; leave a keyword out to keep the config's value."""
    if config is None:
        raw: dict[str, Any] = {}
    elif dataclasses.is_dataclass(cls) and isinstance(config, cls):
        raw = to_raw(config)
    elif isinstance(config, dict):
        raw = json.loads(json.dumps(config))  # a deep copy: the caller's dict is not changed
    elif isinstance(config, str | os.PathLike):
        raw = read_toml(config)
    else:
        raise ConfigError(f"config: expected a {cls.__name__}, a dict or a TOML file path, got "
                          f"{type(config).__name__}", "config")
    raw = merge(raw, overrides)
    for text in sets or []:
        apply_set(raw, text)
    return raw


def _out(out: str | os.PathLike | None, kind: str) -> Path:
    """``out``, or a new temporary folder."""
    return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"hardneg-{kind}-"))


# ---------------------------------------------------------------------------------------------- mine


@dataclass
class MineResult:
    """A finished mining run: its folder and what it holds, as ``datasets.Dataset`` views."""

    run_dir: Path
    manifest: dict[str, Any]

    def _load(self, name: str):
        from datasets import Dataset

        return Dataset.from_parquet(str(self.run_dir / name))

    @cached_property
    def triples(self):
        """One row per (query, positive): negatives (list), their ids, judge scores and sources."""
        return self._load("triples.parquet")

    @cached_property
    def ntuple(self):
        """query, positive, negative_1..negative_n (rows with all n negatives): the training view."""
        return self._load("ntuple.parquet")

    @cached_property
    def triplets(self):
        """query, positive, negative: one row per negative."""
        return self._load("triplets.parquet")

    @cached_property
    def candidates(self):
        """Every candidate with its sources, ranks, judge score and fate."""
        return self._load("candidates.parquet")

    @property
    def report(self) -> str:
        return (self.run_dir / "report.md").read_text()

    @property
    def counts(self) -> dict[str, Any]:
        return self.manifest["counts"]

    def __repr__(self) -> str:
        c = self.counts
        return (f"MineResult({str(self.run_dir)!r}: {c['queries']} queries, {c['triples']} triples, "
                f"{c.get('ntuple_rows', 0)} ntuple rows, fates {c['fates']})")


def _text_column(ds, names: tuple[str, ...], index: int, what: str) -> str:
    for n in names:
        if n in ds.column_names:
            return n
    if len(ds.column_names) > index:
        return ds.column_names[index]
    raise ConfigError(f"data: the dataset needs a {what} column ({' or '.join(names)}, or column {index + 1}); "
                      f"it has {ds.column_names}", "data")


def _stable_id(prefix: str, text: str) -> str:
    return f"{prefix}{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def write_in_memory_input(pairs, corpus: list[str] | None, root: Path) -> tuple[Path, Path]:
    """Write in-memory data as the mining job reads it from files: ``root/<hash>/corpus.jsonl`` (the corpus,
    or the positives when there is none, as sentence-transformers' miner does) and ``pairs.parquet``
    (query, positive). Content-addressed, so the same data is the same job (and resumes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    qcol = _text_column(pairs, ("query", "anchor"), 0, "query")
    pcol = _text_column(pairs, ("positive",), 1, "positive")
    if qcol == pcol:
        raise ConfigError(f"data: the query and positive columns are the same ({qcol!r})", "data")
    queries, positives = list(pairs[qcol]), list(pairs[pcol])
    bad = next((i for i, (q, p) in enumerate(zip(queries, positives, strict=True))
                if not isinstance(q, str) or not isinstance(p, str)), None)
    if bad is not None:
        raise ConfigError(f"data: row {bad}: query and positive must be strings", "data")
    if corpus is not None and not all(isinstance(t, str) for t in corpus):
        raise ConfigError("corpus: expected a list of document texts", "corpus")
    docs = list(dict.fromkeys((corpus if corpus is not None else []) + ([] if corpus is not None else positives)))
    h = hashlib.sha256(json.dumps([queries, positives, docs]).encode()).hexdigest()[:16]
    folder = root / h
    corpus_path, pairs_path = folder / "corpus.jsonl", folder / "pairs.parquet"
    if not pairs_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = corpus_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for t in docs:
                f.write(json.dumps({"_id": _stable_id("d-", t), "title": "", "text": t}) + "\n")
        os.replace(tmp, corpus_path)
        pq.write_table(pa.table({"query": queries, "positive": positives}), folder / "pairs.tmp")
        os.replace(folder / "pairs.tmp", pairs_path)
    return folder, pairs_path


def mine(data: Any = None, *, split: str | None = None, corpus: list[str] | None = None,
         config: Any = None, out: str | os.PathLike | None = None, model: str | None = None,
         cross_encoder: str | None = None, overwrite: bool = False, set: list[str] | None = None,
         **sections: dict[str, Any]) -> MineResult:
    """Mine hard negatives; the same job as ``hardneg mine``.

    Args:
        data: a collection (a name under ``$HARDNEG_DATA``, a BEIR folder, a hub id; default: the config's
            ``data.name``, else scifact), or in-memory
            (query, positive) pairs: a ``datasets.Dataset`` (columns ``query``/``anchor`` and ``positive``, or
            the first two), like sentence-transformers' ``mine_hard_negatives``.
        split: the qrels split to mine (``data.split``).
        corpus: with in-memory pairs, the document texts to mine from (default: the positives).
        config: a ``MineConfig``, a dict of TOML tables, or a TOML file.
        out: the run folder (default: a new temporary folder); a killed job resumes there.
        model / cross_encoder: shortcuts for ``candidates.model`` / ``cross_encoder.model``.
        overwrite: replace what ``out`` holds (``output.overwrite``).
        set: ``["section.key=value", ...]`` overrides.
        **sections: a section's settings as a dict, e.g. ``sampling={"num_negatives": 3}``.
    """
    from .config import MineConfig, validate
    from .mine import run_mining

    top: dict[str, Any] = {k: v for k, v in sections.items()}
    if data is None:
        pass
    elif isinstance(data, str | os.PathLike):
        top = merge(top, {"data": {"name": str(data)}})
    else:
        if not hasattr(data, "column_names"):
            raise ConfigError(f"data: expected a collection name or folder, or a datasets.Dataset of (query, "
                              f"positive) pairs, got {type(data).__name__}", "data")
        from retriever.encoder import default_cache_dir as cache_dir

        folder, pairs = write_in_memory_input(data, corpus, Path(cache_dir()) / "inputs")
        top = merge(top, {"data": {"name": str(folder), "pairs": str(pairs)}})
    if corpus is not None and not hasattr(data, "column_names"):
        raise ConfigError("corpus: only with in-memory pairs (a collection brings its own corpus)", "corpus")
    if split is not None:
        top = merge(top, {"data": {"split": split}})
    if model is not None:
        top = merge(top, {"candidates": {"model": model}})
    if cross_encoder is not None:
        top = merge(top, {"cross_encoder": {"model": cross_encoder}})
    if overwrite:
        top = merge(top, {"output": {"overwrite": True}})
    cfg = build(MineConfig, _raw_settings(MineConfig, config, top, set), "mine()", validate=False)
    validate(cfg, "mine()")
    run_dir = _out(out, "mine")
    done = run_dir / "manifest.json"
    if done.is_file() and not cfg.output.overwrite:  # this job, finished before: its result (a notebook re-run)
        manifest = json.loads(done.read_text())
        if manifest.get("config_fingerprint") == cfg.fingerprint():
            return MineResult(run_dir, manifest)
    return MineResult(run_dir, run_mining(cfg, run_dir))


# ---------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return Path(self.summary["model"])

    @cached_property
    def model(self):
        """The trained bi-encoder (``SentenceTransformer``)."""
        from retriever.encoder import load_model

        return load_model(str(self.model_path))

    def __repr__(self) -> str:
        return f"TrainResult({str(self.model_path)!r}: {self.summary['steps']} steps)"


def train(triples: Any = None, *, config: Any = None, out: str | os.PathLike | None = None,
          set: list[str] | None = None, **settings: Any) -> TrainResult:
    """Fine-tune a bi-encoder on mined triples; the same job as ``hardneg train``.

    ``triples``: a ``MineResult``, a mining run folder, a parquet file, or a ``datasets.Dataset`` with query,
    positive and negative columns (written to the run folder first). ``**settings``: ``TrainConfig`` fields
    (``lr=3e-5``, ``max_steps=100``, ``loss="gist"``, ...).
    """
    from .train import TrainConfig, run_training

    if isinstance(triples, MineResult):
        triples = str(triples.run_dir)
    elif triples is not None and hasattr(triples, "to_parquet"):
        triples = str(_table_file(triples))
    top = dict(settings)
    if triples is not None:
        top["triples"] = str(triples)
    raw = _with_out(_raw_settings(TrainConfig, config, top, set), out, "train")
    cfg = build(TrainConfig, raw, "train()")
    return TrainResult(Path(cfg.out), run_training(cfg))


def _with_out(raw: dict[str, Any], out: str | os.PathLike | None, kind: str, table: str | None = None):
    """``out`` when given, else the config's own, else a new temporary folder."""
    target = raw.setdefault(table, {}) if table else raw
    if out is not None:
        target["out"] = str(out)
    elif not target.get("out"):
        target["out"] = str(_out(None, kind))
    return raw


def _table_file(table) -> Path:
    """A ``datasets.Dataset`` or pandas DataFrame of triples as a parquet file named by its content (written
    once, atomically), so the same data is the same training job."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retriever.encoder import default_cache_dir

    arrow = table.data.table if hasattr(table, "data") and hasattr(table.data, "table") else \
        pa.Table.from_pandas(table, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(arrow, sink)
    data = sink.getvalue().to_pybytes()
    path = Path(default_cache_dir()) / "inputs" / f"triples-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass
class EvalResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]  # retriever -> metric -> value

    @property
    def table(self) -> str:
        from .evaluate import format_table

        return format_table(self.metrics)

    @property
    def per_query(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "per_query.json").read_text())

    def __repr__(self) -> str:
        return self.table


def evaluate(data: str | None = None, *, split: str | None = None, retrievers: list[str] | str | None = None,
             model: str | None = None, config: Any = None, out: str | os.PathLike | None = None,
             set: list[str] | None = None, **settings: Any) -> EvalResult:
    """Retrieve for every query of a split and score the run; the same job as ``hardneg evaluate``."""
    from .evaluate import EvalConfig, run_evaluation

    if isinstance(retrievers, str):
        retrievers = [r.strip() for r in retrievers.split(",") if r.strip()]
    given = {"data": data, "split": split, "retrievers": retrievers, "model": model}
    top = {**settings, **{k: v for k, v in given.items() if v is not None}}  # left out: the config's (or default)
    raw = _with_out(_raw_settings(EvalConfig, config, top, set), out, "evaluate")
    cfg = build(EvalConfig, raw, "evaluate()")
    return EvalResult(Path(cfg.out), run_evaluation(cfg))


# ---------------------------------------------------------------------------------------------- iterate


@dataclass
class LoopResult:
    run_dir: Path
    result: dict[str, Any] = field(repr=False)

    @property
    def best_model(self) -> Path:
        return Path(self.result["best_model"])

    @property
    def report(self) -> str:
        return (self.run_dir / "report.md").read_text()

    def __repr__(self) -> str:
        return self.result["table"]


def iterate(config: Any = None, *, out: str | os.PathLike | None = None, set: list[str] | None = None,
            **tables: dict[str, Any]) -> LoopResult:
    """ANCE rounds (mine with model R-1, train model R, evaluate); the same job as ``hardneg iterate``.
    ``**tables``: ``loop={...}``, ``train={...}``, ``mine={"filter": {...}}``."""
    from .iterate import LOOP_SETS, LoopConfig, loop_config_from_dict, run_loop

    if isinstance(config, LoopConfig):
        config = config.to_dict()
        for k in LOOP_SETS:
            config["train"].pop(k, None)
    raw = _with_out(_raw_settings(dict, config, tables, set), out, "iterate", table="loop")
    cfg = loop_config_from_dict(raw, "iterate()")
    return LoopResult(Path(cfg.loop.out), run_loop(cfg))
