"""The job kinds the service runs (mine, train-reranker, train, evaluate, iterate): each turns a submitted
config (nested dicts, as in the TOML files) into a resolved, validated config, and runs it into a run folder
through the same functions as the command line; and the service's path policy over their configs (every path
a job reads or writes lies inside an allowed root). Knows nothing about HTTP or the job store."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from retriever.data import DATA_ENV
from retriever.encoder import DEFAULT_MODEL
from retriever.errors import HardnegError

from ..config import ConfigError, from_dict
from ..runfolder import Layout, clear_unstarted, read_done
from ..settings import build, to_raw


@dataclass(frozen=True)
class Kind:
    name: str
    resolve: Callable[[dict[str, Any]], dict[str, Any]]  # submitted -> resolved config; raises ConfigError
    run: Callable[[dict[str, Any], Path], dict[str, Any]]  # resolved config, run folder -> summary metrics
    doc: str
    settings: Callable[[], type]  # the settings dataclass (``mining_jobs.settings`` convention)
    service_sets: tuple[str, ...] = ()  # its keys the service sets itself (refused in a submitted config)


def field_of(exc: Exception) -> str | None:
    """The config field an error is about (every settings error carries it)."""
    return getattr(exc, "field", None)


def _table(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of keys, got {type(raw).__name__}", where or None)
    return raw


def _forbid(raw: dict[str, Any], keys: tuple[str, ...], prefix: str = "") -> None:
    for k in keys:
        if k in raw and not (k == "overwrite" and raw[k] is False):  # overwrite = false says nothing
            raise ConfigError(f"{prefix}{k}: set by the service (each job writes into its own run folder); "
                              "remove it", prefix + k)


def _check_data(name: str, split: str | None, field: str, split_field: str | None) -> None:
    """The collection (and split) exist where the workers read them; hub ids are not checked here."""
    from retriever.data import available_splits, parse_split, resolve_data

    try:
        where = resolve_data(name)
    except HardnegError as exc:
        raise ConfigError(str(exc).replace("--data", field), field) from None
    if split is None or not isinstance(where, Path):
        return
    try:
        base = parse_split(split)[0]
    except HardnegError as exc:
        raise ConfigError(f"{split_field}: {exc}", split_field) from None
    splits = available_splits(where)
    if base not in splits:
        raise ConfigError(f"{split_field} = {split!r}: {name} has the splits {', '.join(splits) or 'none'}",
                          split_field)


def _settings(d: dict[str, Any]) -> dict[str, Any]:
    """A resolved flat config without the fields the service sets itself (output folder, overwrite)."""
    return {k: v for k, v in d.items() if k not in ("out", "overwrite")}


def _finished_or_run(out: Path, layout: Layout, run: Callable[[], dict]) -> dict:
    """The job's result: read from its completion marker when the job's files are complete (its worker died
    before the store recorded it), else ``run()`` it, resuming from the run folder (emptied first if left
    unstarted: the run folder belongs to the job)."""
    done = read_done(out, layout)
    if done is not None:
        return done
    clear_unstarted(out, layout)
    return run()


def _wrap(fn: Callable[[], Any]) -> Any:
    """Run a check and turn another project error (a missing triples file, say) into a ConfigError."""
    try:
        return fn()
    except ConfigError:
        raise
    except (HardnegError, ValueError) as exc:
        raise ConfigError(str(exc), getattr(exc, "field", None)) from None


# ---------------------------------------------------------------------------------------------- mine


def _resolve_mine(raw: dict[str, Any]) -> dict[str, Any]:
    if "output" in raw and isinstance(raw["output"], dict):
        _forbid(raw["output"], ("overwrite",), "output.")
    cfg = from_dict(_table(raw, ""), "config")
    _check_mine_data(cfg.data, "")
    return cfg.to_dict()


def _check_mine_data(data: Any, prefix: str) -> None:
    """The mined collection and split, and the leak guard's evaluation splits, exist (qrels mode only)."""
    for s in data.eval_splits:
        if not isinstance(s, str):
            raise ConfigError(f"{prefix}data.eval_splits: expected split names, got {s!r}", f"{prefix}data.eval_splits")
    if data.pairs:
        return
    _check_data(data.name, data.split, f"{prefix}data.name", f"{prefix}data.split")
    for s in data.eval_splits:
        _check_data(data.name, s, f"{prefix}data.name", f"{prefix}data.eval_splits")


def _run_mine(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from ..mine import FOLDER, run_mining

    manifest = _finished_or_run(out, FOLDER, lambda: run_mining(from_dict(conf, "config"), out))
    c = manifest["counts"]
    return {"queries": c["queries"], "triples": c["triples"], "fates": c["fates"],
            "queries_without_negatives": c["queries_without_negatives"], "ce_pairs": c.get("ce_pairs"),
            "seconds": manifest["timings"]["total_s"]}


# ---------------------------------------------------------------------------------------------- train


def _resolve_train(raw: dict[str, Any]) -> dict[str, Any]:
    from ..train import TrainConfig, _triples_path

    _forbid(_table(raw, ""), ("out", "overwrite"))
    cfg = build(TrainConfig, raw)
    _wrap(lambda: _triples_path(cfg.triples))
    if cfg.dev_data:
        _check_data(cfg.dev_data, cfg.dev_split, "dev_data", "dev_split")
    return _settings(dataclasses.asdict(cfg))


def _run_train(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from ..train import FOLDER, TrainConfig, run_training

    s = _finished_or_run(out, FOLDER, lambda: run_training(TrainConfig(**conf, out=str(out))))
    return {"model": s["model"], "steps": s["steps"], "train_loss": s["train_loss"], "best_dev": s["best_dev"],
            "seconds": s["seconds"]["total"]}


# ---------------------------------------------------------------------------------------------- train-reranker


def _reranker_job(raw: dict[str, Any], out: str = "", overwrite: bool = False):
    from ..train_reranker import RerankerJob

    _forbid(raw, ("out", "overwrite"))
    job = build(RerankerJob, raw)
    job.out, job.overwrite, job.resume = out, overwrite, overwrite
    return job


def _resolve_reranker(raw: dict[str, Any]) -> dict[str, Any]:
    job = _reranker_job(_table(raw, ""))
    _check_data(job.data, job.split, "data", "split")
    if job.eval_split:
        _check_data(job.data, job.eval_split, "data", "eval_split")
    return _settings(to_raw(job))


def _run_reranker(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from ..train_reranker import FOLDER, run_train_reranker

    # after a worker died: the folds it finished are kept (resume), the rest trained; overwrite only ever replaces
    # this job's own files
    r = _finished_or_run(out, FOLDER, lambda: run_train_reranker(_reranker_job(conf, str(out), True)))
    return {"models": r["models"], "eval": r.get("eval"), "seconds": r["train_seconds"]}


# ---------------------------------------------------------------------------------------------- evaluate


def _resolve_evaluate(raw: dict[str, Any]) -> dict[str, Any]:
    from ..evaluate import EvalConfig

    _forbid(_table(raw, ""), ("out", "overwrite"))
    raw = dict(raw)
    if isinstance(raw.get("retrievers"), str):  # "bm25,dense", as on the command line
        raw["retrievers"] = [r.strip() for r in raw["retrievers"].split(",") if r.strip()]
    cfg = build(EvalConfig, raw)
    cfg.cache_dir = cfg.cache_dir or None
    _check_data(cfg.data, cfg.split, "data", "split")
    return _settings(dataclasses.asdict(cfg))


def _run_evaluate(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from ..evaluate import FOLDER, EvalConfig, run_evaluation

    # evaluation is recomputed when its worker died (no partial state worth keeping)
    clear_unstarted(out, FOLDER)
    return {"metrics": run_evaluation(EvalConfig(**conf, out=str(out), overwrite=True))}


# ---------------------------------------------------------------------------------------------- iterate


def _resolve_iterate(raw: dict[str, Any]) -> dict[str, Any]:
    from ..iterate import loop_config_from_dict

    raw = _table(raw, "")
    if isinstance(raw.get("loop"), dict):
        _forbid(raw["loop"], ("out", "overwrite"), "loop.")
    if isinstance(raw.get("mine"), dict) and isinstance(raw["mine"].get("output"), dict):
        _forbid(raw["mine"]["output"], ("overwrite",), "mine.output.")
    cfg = loop_config_from_dict(raw, "config")
    _check_data(cfg.loop.data, cfg.loop.dev_split, "loop.data", "loop.dev_split")
    if cfg.loop.test_split:
        _check_data(cfg.loop.data, cfg.loop.test_split, "loop.data", "loop.test_split")
    _check_mine_data(cfg.mine.data, "mine.")
    if cfg.train.dev_data:
        _check_data(cfg.train.dev_data, cfg.train.dev_split, "train.dev_data", "train.dev_split")
    d = cfg.to_dict()
    for k in ("out", "overwrite"):
        d["loop"].pop(k)
    for k in ("triples", "out", "base_model", "overwrite"):
        d["train"].pop(k)
    return d


def _run_iterate(conf: dict[str, Any], out: Path) -> dict[str, Any]:
    from ..iterate import FOLDER, loop_config_from_dict, run_loop

    cfg = loop_config_from_dict(json.loads(json.dumps(conf)), "config", out=str(out))
    clear_unstarted(out, FOLDER)
    result = run_loop(cfg)
    return {"best_round": result["best_round"], "best_model": result["best_model"], "stopped": result["stopped"],
            "rounds": [{"round": r["round"], "metrics": r["metrics"]} for r in result["rounds"]],
            "seconds": result["seconds"]}


def _settings_of(command: str) -> Callable[[], type]:
    """The settings dataclass of a kind, looked up when needed (``job_settings``: one registry)."""
    from ..job_settings import settings_class

    return lambda: settings_class(command)


KINDS: dict[str, Kind] = {
    "mine": Kind("mine", _resolve_mine, _run_mine, "mine hard negatives: the sections of examples/mine.toml",
                 _settings_of("mine"), ("output.overwrite",)),
    "train-reranker": Kind("train-reranker", _resolve_reranker, _run_reranker,
                           "train a (cross-fitted) cross-encoder: the keys of examples/train-reranker.toml",
                           _settings_of("train-reranker"), ("out", "overwrite")),
    "train": Kind("train", _resolve_train, _run_train, "fine-tune a bi-encoder: the keys of examples/train.toml",
                  _settings_of("train"), ("out", "overwrite")),
    "evaluate": Kind("evaluate", _resolve_evaluate, _run_evaluate,
                     "evaluate retrievers: the keys of examples/evaluate.toml", _settings_of("evaluate"),
                     ("out", "overwrite")),
    "iterate": Kind("iterate", _resolve_iterate, _run_iterate, "ANCE rounds: the [loop], [mine.*] and [train] "
                    "tables of examples/iterate.toml", _settings_of("iterate"),
                    ("loop.out", "loop.overwrite", "mine.output.overwrite")),
}

NAMES: tuple[str, ...] = tuple(KINDS)  # what the job store is opened with (it imports no kind)


def resolve(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate a submitted config of ``kind``; returns the resolved config (every default filled in)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}", "kind")
    return KINDS[kind].resolve(raw)


def run(kind: str, conf: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run (or resume) a resolved job into its run folder; returns a summary of its results."""
    return KINDS[kind].run(conf, out)


# ---------------------------------------------------------------------------------------------- path policy

# Every config field of every kind that names something on disk, with how its value is read:
#   "data":  a collection: a path, else a folder under $HARDNEG_DATA, else an org/name hub id (resolve_data)
#   "model": a model: "default" (the packaged one), a path, else a hub id (resolve_model_name)
#   "file":  always a path when set (read or written); "" / unset = the built-in default
_MINE_PATHS = {"data.name": "data", "data.pairs": "file", "candidates.model": "model",
               "cross_encoder.model": "model", "output.score_cache": "file"}
PATH_FIELDS: dict[str, dict[str, str]] = {
    "mine": _MINE_PATHS,
    "train": {"triples": "file", "base_model": "model", "dev_data": "data", "guide": "model"},
    "train-reranker": {"data": "data", "backbone": "model"},
    "evaluate": {"data": "data", "model": "model", "cache_dir": "file"},
    "iterate": {"loop.data": "data", "loop.base_model": "model", "train.dev_data": "data", "train.guide": "model",
                **{f"mine.{k}": v for k, v in _MINE_PATHS.items()}},
}


class PathPolicyError(ConfigError):
    """A config names a path outside the allowed roots (or climbs with '..'); ``field`` names the field."""


def allowed_roots(roots: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
    """The roots as absolute paths, symlinks resolved; empty entries and roots inside another one dropped."""
    out: list[Path] = []
    for r in roots:
        if r is None or str(r) == "":
            continue
        p = Path(r).expanduser().resolve()
        if p not in out:
            out.append(p)
    return tuple(p for p in out if not any(p != q and p.is_relative_to(q) for q in out))


def _target(value: str, role: str) -> Path | None:
    """Where a field's value points on disk, or None when it is a name: a collection name (or hub id) that is
    no folder under $HARDNEG_DATA, a hub id ``org/name`` that does not exist here, the model "default", or
    empty. A value is a path when it is absolute or starts with '.' or '~', when it exists here (relative to
    the working directory, as the loaders look first), and always for "file" fields."""
    if not value or (role == "model" and value == DEFAULT_MODEL):
        return None
    p = Path(value).expanduser()
    if role == "file" or value.startswith((".", "~")) or p.is_absolute():
        return p
    try:
        if p.exists():
            return p
        data = os.environ.get(DATA_ENV)
        if role == "data" and data and (Path(data).expanduser() / value).exists():
            return Path(data).expanduser() / value
    except OSError:  # e.g. a name too long for a path: not a path
        return None
    return None


def check_path(value: Any, field: str, role: str, roots: tuple[Path, ...]) -> None:
    """Raise ``PathPolicyError`` when ``value`` is a path (see ``_target``) that does not resolve, symlinks
    followed, inside one of ``roots``, or when it contains a '..' component at all."""
    if not isinstance(value, str):
        return  # a wrong type is the kind's validation's to report
    allowed = ", ".join(map(str, roots)) or "none"
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        raise PathPolicyError(f"{field} = {value!r}: '..' is not allowed in a path; give a path inside an "
                              f"allowed root ({allowed})", field)
    try:
        if "\x00" in value:
            raise ValueError("embedded null byte")
        where = _target(value, role)
        if where is None:
            return
        resolved = where.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an unknown ~user, a null byte
        raise PathPolicyError(f"{field} = {value!r}: not a usable path ({exc}); give a path inside an allowed "
                              f"root ({allowed})", field) from None
    if not any(resolved.is_relative_to(r) for r in roots):
        raise PathPolicyError(f"{field} = {value!r} resolves to {resolved}, outside the allowed roots "
                              f"({allowed}); the service reads and writes only there (--data-root)", field)


def _lookup(conf: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(conf, dict) or part not in conf:
            return None
        conf = conf[part]
    return conf


def check_paths(kind: str, conf: Any, roots: Iterable[str | os.PathLike]) -> None:
    """The path policy of the job service: every path-valued field of a ``kind`` config (submitted or
    resolved; missing fields are skipped) lies inside ``roots``. Raises ``PathPolicyError`` naming the field."""
    allowed = allowed_roots(roots)
    for dotted, role in PATH_FIELDS.get(kind, {}).items():
        check_path(_lookup(conf, dotted), dotted, role, allowed)
