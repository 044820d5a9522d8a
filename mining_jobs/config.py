"""The mining job's configuration: documented dataclass sections, loaded from TOML, overridden by
``--set section.key=value``, validated with errors that name the field. No mining here."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .runfolder import fingerprint


class ConfigError(ValueError):
    """A job config is invalid; the message names the field (``section.key``), and so does ``field`` when
    the field is known (the job service returns it as the error's location)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _f(default: Any, help: str, choices: tuple | None = None):
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataSection:
    name: str = _f("scifact", "collection to mine: a name under $HARDNEG_DATA, a BEIR folder, or a hub id")
    split: str = _f("train", "qrels split whose queries and positives are mined")
    pairs: str = _f("", "instead of qrels: a datasets-loadable table (parquet/jsonl/csv path) of (query, positive) "
                        "pairs; columns 'query' and 'positive' (optional 'query_id', 'positive_id', 'score')")
    min_relevance: int = _f(1, "a judged document counts as positive when its grade is >= this")
    eval_splits: list = _f([], "leak guard: splits of the same collection used for evaluation (e.g. ['test']); "
                               "mining refuses when their queries or positives would enter the triples")


@dataclass
class CandidatesSection:
    bm25: bool = _f(True, "retrieve BM25 candidates")
    bm25_k: int = _f(30, "BM25 candidates per query")
    bm25_backend: str = _f("bm25s", "BM25 backend", ("bm25s", "rank_bm25"))
    dense: bool = _f(True, "retrieve dense candidates with the bi-encoder")
    dense_k: int = _f(30, "dense candidates per query")
    model: str = _f("default", "bi-encoder: hub name or local path; 'default' = packaged all-MiniLM-L6-v2")
    index: str = _f("flat", "faiss index", ("flat", "hnsw", "ivf"))
    ivf_nlist: int | None = _f(None, "ivf: number of cells (unset = 4 x sqrt(documents))")
    ivf_nprobe: int = _f(16, "ivf: cells visited per query")
    bf16: str = _f("auto", "bf16 autocast for the bi-encoder", ("auto", "on", "off"))
    batch_size: int = _f(64, "bi-encoder batch size")
    max_seq_length: int | None = _f(None, "bi-encoder token limit (unset = the model's own)")
    query_prompt: str = _f("", "text prepended to queries for the bi-encoder")
    doc_prompt: str = _f("", "text prepended to documents for the bi-encoder")


@dataclass
class ExclusionSection:
    drop_self: bool = _f(True, "drop a candidate whose id equals the query id")
    near_duplicate_cosine: float = _f(0.0, "also treat a candidate as a duplicate of a positive when their "
                                           "bi-encoder cosine is >= this (0 = off; e.g. 0.97)")


@dataclass
class CrossEncoderSection:
    model: str = _f("", "cross-encoder: hub name, local folder, or a fold set from `hardneg train-reranker`; "
                        "empty = no cross-encoder (no false-negative filter)")
    max_length: int = _f(256, "maximum tokens of a (query, document) pair")
    batch_size: int = _f(32, "pairs per forward pass (batches span queries, sorted by length)")
    bf16: str = _f("auto", "bf16 autocast for the cross-encoder", ("auto", "on", "off"))
    positive_reduce: str = _f("min", "with several positives, compare candidates with their min/mean/max score",
                              ("min", "mean", "max"))


@dataclass
class FilterSection:
    absolute_margin: float | None = _f(None, "drop a candidate whose logit is > positive logit - margin")
    relative_margin: float | None = _f(0.1, "drop a candidate whose probability is > (1 - margin) x the "
                                            "positive's probability (sigmoid of the logits)")
    max_score: float | None = _f(None, "drop a candidate whose logit is above this")
    min_score: float | None = _f(None, "drop a candidate whose logit is below this")
    range_min: int = _f(0, "skip the best range_min candidates (in rank_by order)")
    range_max: int | None = _f(None, "consider only candidates ranked below range_max")
    rank_by: str = _f("cross_encoder", "order of the candidates for the rank window and 'top' sampling: by "
                      "cross-encoder score (every candidate is scored), or by retrieval (fused) rank, where the "
                      "cross-encoder only judges: with 'top' or 'positive-aware' sampling, candidates are scored in "
                      "retrieval order until num_negatives pass the filter, the rest are never scored (much faster)",
                      ("cross_encoder", "retrieval"))
    relabel_above: float | None = _f(None, "relabel instead of only dropping: a scored candidate whose judge probability "
                                           "(sigmoid of the logit) is >= this becomes an extra positive of its query "
                                           "(fate 'relabelled', a triples row of its own), never a negative (unset = off)")
    auto_margin: bool = _f(False, "choose relative_margin on the job's own queries with two or more positives: hide "
                                  "each positive in turn, take the margin that filters most hidden positives while "
                                  "filtering at most auto_margin_max_cost of the other candidates (in manifest.json)")
    auto_margin_max_cost: float = _f(0.25, "auto_margin: the largest share of the other candidates it may filter")
    judge_check_queries: int = _f(64, "before filtering, compare the judge's ranking with the fused retrieval's on "
                                      "this many of the job's own queries (nDCG@10 of their positives; 0 = skip)")
    require_better_judge: bool = _f(False, "refuse to filter (stop the job) when the judge ranks worse than the "
                                           "retrieval it judges")


@dataclass
class SamplingSection:
    strategy: str = _f("top", "how negatives are chosen among the kept candidates",
                       ("top", "random", "positive-aware", "simans"))
    num_negatives: int = _f(5, "negatives per query")
    seed: int = _f(42, "seed of the random strategies")
    positive_aware_ratio: float = _f(0.95, "positive-aware: keep candidates scored below this x positive probability")
    simans_a: float = _f(1.0, "SimANS: weight exp(-a * (s_cand - s_pos - b)^2) on probabilities")
    simans_b: float = _f(0.0, "SimANS: offset b")


@dataclass
class OutputSection:
    shard_size: int = _f(128, "queries per shard; memory is bounded by the shard, a killed job resumes per shard")
    overwrite: bool = _f(False, "replace a finished or differently configured run in the output folder")
    score_cache: str = _f("", "cross-encoder score cache (SQLite file); empty = $HARDNEG_CACHE/scores.sqlite")


@dataclass
class RaySection:
    address: str = _f("", "Ray cluster to join: '' = $RAY_ADDRESS when set, else start a local instance; 'auto' = "
                          "the cluster this machine belongs to; 'ray://head:10001' = a remote cluster (Ray Client)")
    num_cpus: int | None = _f(None, "CPUs of a local instance (unset = all); ignored when joining a cluster")
    actors: int | None = _f(None, "mining actors (each holds the models once) (unset = the cluster's CPUs / "
                                  "cpus_per_actor)")
    cpus_per_actor: float = _f(1.0, "CPUs reserved by each actor (torch uses as many threads)")
    encode_block: int = _f(2048, "documents per corpus-encoding task")


@dataclass
class MineConfig:
    data: DataSection = field(default_factory=DataSection)
    candidates: CandidatesSection = field(default_factory=CandidatesSection)
    exclusion: ExclusionSection = field(default_factory=ExclusionSection)
    cross_encoder: CrossEncoderSection = field(default_factory=CrossEncoderSection)
    filter: FilterSection = field(default_factory=FilterSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    output: OutputSection = field(default_factory=OutputSection)
    engine: str = _f("local", "where the heavy stages run: 'local' (this process) or 'ray' (Ray tasks over "
                              "corpus blocks and query shards; needs pip install 'hardneg[ray]')", ("local", "ray"))
    ray: RaySection = field(default_factory=RaySection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (``output.overwrite``, the engine and its settings
        excluded: every engine writes the same triples, and a job may resume on another engine)."""
        d = self.to_dict()
        d.pop("engine")
        d.pop("ray")
        d["output"] = {k: v for k, v in d["output"].items() if k not in ("overwrite", "score_cache")}
        return fingerprint(d)


_SECTION_TYPES = {"data": DataSection, "candidates": CandidatesSection, "exclusion": ExclusionSection,
                  "cross_encoder": CrossEncoderSection, "filter": FilterSection, "sampling": SamplingSection,
                  "output": OutputSection, "ray": RaySection}
ENGINES = ("local", "ray")


def _coerce(value: Any, tp: Any, where: str, name: str | None = None) -> Any:
    hints = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if any(typing.get_origin(h) is typing.Literal for h in hints):
        allowed = [a for h in hints if typing.get_origin(h) is typing.Literal for a in typing.get_args(h)]
        if value in allowed:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, allowed))}, got {value!r}", name)
    hints = tuple(typing.get_origin(h) or h for h in hints)  # list[str] -> list
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in hints):
        if type(None) in hints:
            return None
        raise ConfigError(f"{where}: must not be empty", name)
    for h in hints:
        if h is type(None):
            continue
        if h is bool:
            if isinstance(value, bool):
                return value
            continue
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if h is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if h is str and isinstance(value, str):
            return value
        if h is list and isinstance(value, list):
            return value
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             type(None): "none"}
    names = " or ".join(words.get(h, getattr(h, "__name__", str(h))) for h in hints)
    raise ConfigError(f"{where}: expected {names}, got {value!r}", name)


def set_fields(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set the fields of a flat dataclass from a dict, checking names and types against its annotations;
    errors name the field (``where.key``, or ``key`` when ``where`` is empty)."""
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in fields(obj)}
    for k, v in values.items():
        name = f"{where}.{k}" if where else k
        if k not in known:
            raise ConfigError(f"{where or 'config'}: unknown key '{k}'; known keys: {', '.join(sorted(known))}",
                              name)
        setattr(obj, k, _coerce(v, hints[k], name, name))


def from_dict(raw: dict[str, Any], source: str = "config") -> MineConfig:
    """Build a config from nested dicts; unknown sections or keys and wrong types raise ``ConfigError``."""
    cfg = MineConfig()
    for sname, values in raw.items():
        if sname == "engine":
            if values not in ENGINES:
                raise ConfigError(f"{source}: 'engine' = {values!r}; expected one of {', '.join(ENGINES)}", "engine")
            cfg.engine = values
            continue
        if sname not in _SECTION_TYPES:
            raise ConfigError(f"{source}: unknown section [{sname}]; expected one of {', '.join(_SECTION_TYPES)}",
                              sname)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table of keys", sname)
        section = getattr(cfg, sname)
        hints = typing.get_type_hints(type(section))
        known = {f.name: f for f in fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key '{sname}.{key}'; known keys: {', '.join(known)}",
                                  f"{sname}.{key}")
            setattr(section, key, _coerce(value, hints[key], f"{source}: '{sname}.{key}'", f"{sname}.{key}"))
    validate(cfg, source)
    return cfg


def validate(cfg: MineConfig, source: str = "config") -> None:
    for sname, stype in _SECTION_TYPES.items():
        section = getattr(cfg, sname)
        for f in fields(stype):
            choices = f.metadata.get("choices")
            if choices and getattr(section, f.name) not in choices:
                raise ConfigError(f"{source}: '{sname}.{f.name}' = {getattr(section, f.name)!r}; "
                                  f"expected one of {', '.join(choices)}", f"{sname}.{f.name}")
    c, s, fl, o = cfg.candidates, cfg.sampling, cfg.filter, cfg.output
    checks = [
        (c.bm25 or c.dense, "candidates.bm25", "at least one of candidates.bm25 and candidates.dense must be true"),
        (c.bm25_k >= 1, "candidates.bm25_k", "must be >= 1"),
        (c.dense_k >= 1, "candidates.dense_k", "must be >= 1"),
        (c.ivf_nlist is None or c.ivf_nlist >= 1, "candidates.ivf_nlist", "must be >= 1"),
        (c.ivf_nprobe >= 1, "candidates.ivf_nprobe", "must be >= 1"),
        (c.max_seq_length is None or c.max_seq_length >= 8, "candidates.max_seq_length", "must be >= 8"),
        (s.num_negatives >= 1, "sampling.num_negatives", "must be >= 1"),
        (cfg.ray.num_cpus is None or cfg.ray.num_cpus >= 1, "ray.num_cpus", "must be >= 1"),
        (cfg.ray.actors is None or cfg.ray.actors >= 1, "ray.actors", "must be >= 1"),
        (cfg.ray.cpus_per_actor > 0, "ray.cpus_per_actor", "must be > 0"),
        (cfg.ray.encode_block >= 1, "ray.encode_block", "must be >= 1"),
        (o.shard_size >= 1, "output.shard_size", "must be >= 1"),
        (fl.range_min >= 0, "filter.range_min", "must be >= 0"),
        (fl.relabel_above is None or 0 < fl.relabel_above <= 1, "filter.relabel_above", "must be in (0, 1]"),
        (fl.relabel_above is None or bool(cfg.cross_encoder.model), "filter.relabel_above",
         "needs judge scores: set cross_encoder.model"),
        (0 < fl.auto_margin_max_cost <= 1, "filter.auto_margin_max_cost", "must be in (0, 1]"),
        (not fl.auto_margin or bool(cfg.cross_encoder.model), "filter.auto_margin",
         "needs judge scores: set cross_encoder.model"),
        (fl.judge_check_queries >= 0, "filter.judge_check_queries", "must be >= 0"),
        (fl.range_max is None or fl.range_max > fl.range_min, "filter.range_max", "must be > filter.range_min"),
        (fl.relative_margin is None or 0 <= fl.relative_margin < 1, "filter.relative_margin", "must be in [0, 1)"),
        (fl.absolute_margin is None or fl.absolute_margin >= 0, "filter.absolute_margin", "must be >= 0"),
        (0 <= cfg.exclusion.near_duplicate_cosine <= 1, "exclusion.near_duplicate_cosine", "must be in [0, 1]"),
        (cfg.data.min_relevance >= 1, "data.min_relevance", "must be >= 1"),
        (0 < s.positive_aware_ratio <= 1, "sampling.positive_aware_ratio", "must be in (0, 1]"),
        (s.simans_a >= 0, "sampling.simans_a", "must be >= 0"),
        (s.strategy not in ("positive-aware", "simans") or bool(cfg.cross_encoder.model), "sampling.strategy",
         f"{s.strategy!r} needs cross-encoder scores: set cross_encoder.model"),
    ]
    for ok, name, msg in checks:
        if not ok:
            raise ConfigError(f"{source}: '{name}' {msg}", name)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` with a TOML value (bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def set_override(raw: dict[str, Any], text: str) -> None:
    """Apply one ``--set a.b[.c]=value`` to nested dicts, creating the tables on the way."""
    section, key, value = parse_override(text)
    target = raw.setdefault(section, {})
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file as nested dicts; a missing file or invalid TOML raises ``ConfigError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, dict[str, Any]] | None = None) -> MineConfig:
    """TOML file (optional) + ``base`` values + ``--set`` overrides, later ones winning; validated."""
    raw: dict[str, dict[str, Any]] = read_toml(path) if path else {}
    source = str(path) if path else "config"
    for sname, values in (base or {}).items():
        raw.setdefault(sname, {}).update(values)
    for text in overrides or []:
        sname, key, value = parse_override(text)
        raw.setdefault(sname, {})[key] = value
    return from_dict(raw, source)


def describe_fields() -> str:
    """Every field with its default and help, as commented TOML (the example config is generated from it)."""
    out = ["# " + next(f for f in fields(MineConfig) if f.name == "engine").metadata["help"] + " (local | ray)",
           'engine = "local"', ""]
    default = MineConfig()
    for sname, stype in _SECTION_TYPES.items():
        out.append(f"[{sname}]")
        for f in fields(stype):
            val = getattr(getattr(default, sname), f.name)
            helptext = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                helptext += f" ({' | '.join(f.metadata['choices'])})"
            out.append(f"# {helptext}")
            line = f"{f.name} = {json.dumps(val)}" if val is not None else f"# {f.name} = (unset)"
            out.append(line)
        out.append("")
    return "\n".join(out)
