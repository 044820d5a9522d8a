"""The mining job's configuration: documented dataclass sections (``settings``' convention: help in every
field, ``Literal`` choices), loaded from TOML, overridden by flags and ``--set section.key=value``, validated
with errors that name the field. No mining here."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .runfolder import fingerprint
from .settings import ConfigError, apply_set, build, example_toml, opt, parse_set, read_toml, section

__all__ = ["ConfigError", "MineConfig", "from_dict", "load_config", "parse_override", "read_toml", "set_override",
           "validate", "describe_fields"]

BF16 = Literal["auto", "on", "off"]


@dataclass
class DataSection:
    name: str = opt("scifact", "collection to mine: a name under $HARDNEG_DATA, a BEIR folder, or a hub id")
    split: str = opt("train", "qrels split whose queries and positives are mined")
    pairs: str = opt("", "instead of qrels: a datasets-loadable table (parquet/jsonl/csv path) of (query, positive) "
                        "pairs; columns 'query' and 'positive' (optional 'query_id', 'positive_id', 'score')")
    min_relevance: int = opt(1, "a judged document counts as positive when its grade is >= this")
    eval_splits: list = opt([], "leak guard: splits of the same collection used for evaluation (e.g. ['test']); "
                               "mining refuses when their queries or positives would enter the triples")


@dataclass
class CandidatesSection:
    bm25: bool = opt(True, "retrieve BM25 candidates")
    bm25_k: int = opt(30, "BM25 candidates per query")
    bm25_backend: Literal["bm25s", "rank_bm25"] = opt("bm25s", "BM25 backend")
    dense: bool = opt(True, "retrieve dense candidates with the bi-encoder")
    dense_k: int = opt(30, "dense candidates per query")
    model: str = opt("default", "bi-encoder: hub name or local path; 'default' = packaged all-MiniLM-L6-v2")
    index: Literal["flat", "hnsw", "ivf"] = opt("flat", "faiss index")
    ivf_nlist: int | None = opt(None, "ivf: number of cells (unset = 4 x sqrt(documents))")
    ivf_nprobe: int = opt(16, "ivf: cells visited per query")
    bf16: BF16 = opt("auto", "bf16 autocast for the bi-encoder (auto: on a CPU with AMX / AVX-512 BF16 or a GPU "
                             "with bf16; fp16 on other GPUs)")
    device: str = opt("auto", "where the bi-encoder runs: auto (a GPU when there is one, else the CPU), cpu, cuda, "
                              "cuda:N, or several comma-separated (cuda:0,cuda:1): the corpus is then encoded by "
                              "sentence-transformers' multi-process pool")
    batch_size: int = opt(64, "bi-encoder batch size")
    max_seq_length: int | None = opt(None, "bi-encoder token limit (unset = the model's own)")
    query_prompt: str = opt("", "text prepended to queries for the bi-encoder")
    doc_prompt: str = opt("", "text prepended to documents for the bi-encoder")


@dataclass
class ExclusionSection:
    drop_self: bool = opt(True, "drop a candidate whose id equals the query id")
    near_duplicate_cosine: float = opt(0.0, "also treat a candidate as a duplicate of a positive when their "
                                           "bi-encoder cosine is >= this (0 = off; e.g. 0.97)")


@dataclass
class CrossEncoderSection:
    model: str = opt("", "cross-encoder: hub name, local folder, or a fold set from `hardneg train-reranker`; "
                        "empty = no cross-encoder (no false-negative filter)")
    max_length: int = opt(256, "maximum tokens of a (query, document) pair")
    batch_size: int = opt(32, "pairs per forward pass (batches span queries, sorted by length)")
    bf16: BF16 = opt("auto", "bf16 autocast for the cross-encoder (auto: as for the bi-encoder)")
    device: str = opt("auto", "where the judge runs: auto (a GPU when there is one, else the CPU), cpu, cuda, "
                              "cuda:N, or several comma-separated (cuda:0,cuda:1): pairs are then scored by "
                              "sentence-transformers' multi-process pool")
    positive_reduce: Literal["min", "mean", "max"] = opt(
        "min", "with several positives, compare candidates with their min/mean/max score")


@dataclass
class FilterSection:
    absolute_margin: float | None = opt(None, "drop a candidate whose logit is > positive logit - margin")
    relative_margin: float | None = opt(0.1, "drop a candidate whose probability is > (1 - margin) x the "
                                            "positive's probability (sigmoid of the logits)")
    max_score: float | None = opt(None, "drop a candidate whose logit is above this")
    min_score: float | None = opt(None, "drop a candidate whose logit is below this")
    range_min: int = opt(0, "skip the best range_min candidates (in rank_by order)")
    range_max: int | None = opt(None, "consider only candidates ranked below range_max")
    rank_by: Literal["cross_encoder", "retrieval"] = opt("cross_encoder", "order of the candidates for the rank window and 'top' sampling: by "
                      "cross-encoder score (every candidate is scored), or by retrieval (fused) rank, where the "
                      "cross-encoder only judges: with 'top' or 'positive-aware' sampling, candidates are scored in "
                      "retrieval order until num_negatives pass the filter, the rest are never scored (much faster)")
    relabel_above: float | None = opt(None, "relabel instead of only dropping: a scored candidate whose judge probability "
                                           "(sigmoid of the logit) is >= this becomes an extra positive of its query "
                                           "(fate 'relabelled', a triples row of its own), never a negative (unset = off)")
    auto_margin: bool = opt(False, "choose relative_margin on the job's own queries with two or more positives: hide "
                                  "each positive in turn, take the margin that filters most hidden positives while "
                                  "filtering at most auto_margin_max_cost of the other candidates (in manifest.json)")
    auto_margin_max_cost: float = opt(0.25, "auto_margin / auto_threshold: the largest share of the other candidates "
                                            "it may filter")
    score_threshold: float | None = opt(None, "positive-aware rule: drop a candidate whose filter score, logit_weight x "
                                             "judge logit + positive_cosine_weight x its cosine to the nearest "
                                             "labelled positive (embedded by candidates.model), is above this "
                                             "(unset = off)")
    logit_weight: float = opt(1.0, "score_threshold: weight of the judge logit in the filter score")
    positive_cosine_weight: float = opt(0.0, "score_threshold: weight of the candidate's cosine to the query's nearest "
                                             "labelled positive in the filter score")
    auto_threshold: bool = opt(False, "fit the positive-aware rule on the job's own queries with two or more "
                                      "positives: hide each positive in turn, fit logit_weight and "
                                      "positive_cosine_weight by logistic regression (hidden positive vs other "
                                      "candidates), and take the score_threshold that filters at most "
                                      "auto_margin_max_cost of the other candidates; replaces the margin rules "
                                      "(in manifest.json)")
    auto_threshold_cost_on: Literal["all", "multi"] = opt(
        "all", "auto_threshold: the candidates its cost bound (auto_margin_max_cost) holds on: 'all' = those of a "
               "sample of all the job's queries, as the filter meets them; 'multi' = only those of the queries with "
               "two or more positives it is fitted on (the rule before 2026-12-06; their candidates score higher, so "
               "it filters well under the bound of the job's candidates)")
    recall_target: float | None = opt(None, "choose score_threshold from the labelled positives alone (one per query "
                                           "is enough): the judge score above which this share of them score. "
                                           "Labelled positives drawn at random from the relevant documents score as "
                                           "the unlabelled ones do, so about this share of those is filtered, on "
                                           "any collection's score scale; what it costs in negatives is measured "
                                           "and reported, not bounded. The judge must not have trained on these "
                                           "queries (transferred or cross-fitted). Replaces the margin rules "
                                           "(in manifest.json; unset = off)")
    judge_check_queries: int = opt(64, "before filtering, compare the judge's ranking with the fused retrieval's on "
                                      "this many of the job's own queries (nDCG@10 of their positives; 0 = skip)")
    require_better_judge: bool = opt(False, "refuse to filter (stop the job) when the judge ranks worse than the "
                                           "retrieval it judges")


@dataclass
class SamplingSection:
    strategy: Literal["top", "random", "positive-aware", "simans"] = opt(
        "top", "how negatives are chosen among the kept candidates")
    num_negatives: int = opt(5, "negatives per query")
    seed: int = opt(42, "seed of the random strategies")
    fill: Literal["none", "random"] = opt(
        "none", "a query left with fewer than num_negatives after the filter: 'none' = it keeps what it has (a "
                "query without any is dropped from training); 'random' = the rest are drawn at random from the "
                "corpus outside its candidates, excluded and judged like them (source 'random')")
    positive_aware_ratio: float = opt(0.95, "positive-aware: keep candidates scored below this x positive probability")
    simans_a: float = opt(1.0, "SimANS: weight exp(-a * (s_cand - s_pos - b)^2) on probabilities")
    simans_b: float = opt(0.0, "SimANS: offset b")


@dataclass
class OutputSection:
    shard_size: int = opt(128, "queries per shard; memory is bounded by the shard, a killed job resumes per shard")
    overwrite: bool = opt(False, "replace a finished or differently configured run in the output folder")
    score_cache: str = opt("", "cross-encoder score cache (SQLite file); empty = $HARDNEG_CACHE/scores.sqlite")


@dataclass
class RaySection:
    address: str = opt("", "Ray cluster to join: '' = $RAY_ADDRESS when set, else start a local instance; 'auto' = "
                          "the cluster this machine belongs to; 'ray://head:10001' = a remote cluster (Ray Client)")
    num_cpus: int | None = opt(None, "CPUs of a local instance (unset = all); ignored when joining a cluster")
    actors: int | None = opt(None, "mining actors (each holds the models once) (unset = the cluster's CPUs / "
                                  "cpus_per_actor)")
    cpus_per_actor: float = opt(1.0, "CPUs reserved by each actor (torch uses as many threads)")
    encode_block: int = opt(2048, "documents per corpus-encoding task")


ENGINE_FIELD = opt("local", "where the heavy stages run: 'local' (this process) or 'ray' "
                                          "(Ray tasks over corpus blocks and query shards; needs pip install "
                                          "'hardneg[ray]')")


@dataclass
class MineConfig:
    engine: Literal["local", "ray"] = ENGINE_FIELD
    data: DataSection = section(DataSection, "the collection and the queries to mine")
    candidates: CandidatesSection = section(CandidatesSection, "BM25 and dense candidate retrieval")
    exclusion: ExclusionSection = section(ExclusionSection, "candidates dropped before judging")
    cross_encoder: CrossEncoderSection = section(CrossEncoderSection, "the false-negative judge")
    filter: FilterSection = section(FilterSection, "which judged candidates are false negatives")
    sampling: SamplingSection = section(SamplingSection, "how negatives are chosen among the kept ones")
    output: OutputSection = section(OutputSection, "shards, overwrite and the score cache")
    ray: RaySection = section(RaySection, "the Ray engine (engine = \"ray\")")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> None:
        validate(self, source)

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (``output.overwrite``, the engine and its settings
        excluded: every engine writes the same triples, and a job may resume on another engine)."""
        d = self.to_dict()
        d.pop("engine")
        d.pop("ray")
        d["output"] = {k: v for k, v in d["output"].items() if k not in ("overwrite", "score_cache")}
        d["candidates"].pop("device")  # where a model runs does not change what it computes (precision does)
        d["cross_encoder"].pop("device")
        for k, default in NEW_FILTER_DEFAULTS.items():  # added later: at their default, the fingerprint stays
            if d["filter"][k] == default:
                d["filter"].pop(k)
        for k, default in NEW_SAMPLING_DEFAULTS.items():
            if d["sampling"][k] == default:
                d["sampling"].pop(k)
        # read only by auto_threshold, and 'multi' is how it fitted before the option: those keep their fingerprint,
        # while an auto_threshold job fitted the earlier way does not pass for one of the new rule
        if not self.filter.auto_threshold or self.filter.auto_threshold_cost_on == "multi":
            d["filter"].pop("auto_threshold_cost_on")
        return fingerprint(d)


# Filter settings added after jobs were run with this format: they enter a fingerprint only when set, so a
# finished job (or ANCE loop) with the same settings resumes instead of starting over.
NEW_FILTER_DEFAULTS = {"score_threshold": None, "logit_weight": 1.0, "positive_cosine_weight": 0.0,
                       "auto_threshold": False, "recall_target": None}
NEW_SAMPLING_DEFAULTS = {"fill": "none"}


def needs_positive_cosine(cfg: MineConfig) -> bool:
    """Whether the filter reads each candidate's cosine to its query's nearest labelled positive."""
    fl = cfg.filter
    return fl.auto_threshold or (fl.score_threshold is not None and fl.positive_cosine_weight != 0)


def needs_corpus_embeddings(cfg: MineConfig) -> bool:
    """Whether the job encodes the corpus with the bi-encoder (dense candidates, near-duplicates, the
    positive-aware filter)."""
    return cfg.candidates.dense or cfg.exclusion.near_duplicate_cosine > 0 or needs_positive_cosine(cfg)


def from_dict(raw: dict[str, Any], source: str = "config") -> MineConfig:
    """Build a config from nested dicts; unknown sections or keys and wrong types raise ``ConfigError``."""
    cfg = build(MineConfig, raw, source, validate=False)
    validate(cfg, source)
    return cfg


def validate(cfg: MineConfig, source: str = "config") -> None:
    from retriever.devices import DeviceError, parse_devices

    try:
        parse_devices(cfg.candidates.device, "candidates.device", several=True)
        parse_devices(cfg.cross_encoder.device, "cross_encoder.device", several=True)
    except DeviceError as exc:
        raise ConfigError(f"{source}: {exc}", exc.field) from None
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
        (not fl.auto_threshold or bool(cfg.cross_encoder.model), "filter.auto_threshold",
         "needs judge scores: set cross_encoder.model"),
        (not (fl.auto_threshold and fl.auto_margin), "filter.auto_threshold",
         "and filter.auto_margin choose different rules: set only one"),
        (fl.recall_target is None or 0 < fl.recall_target < 1, "filter.recall_target", "must be in (0, 1)"),
        (fl.recall_target is None or bool(cfg.cross_encoder.model), "filter.recall_target",
         "needs judge scores: set cross_encoder.model"),
        (fl.recall_target is None or not (fl.auto_threshold or fl.auto_margin or fl.score_threshold is not None),
         "filter.recall_target", "chooses score_threshold itself: leave filter.score_threshold, filter.auto_threshold "
         "and filter.auto_margin unset"),
        (fl.score_threshold is None or bool(cfg.cross_encoder.model), "filter.score_threshold",
         "needs judge scores: set cross_encoder.model"),
        (fl.score_threshold is None or math.isfinite(fl.score_threshold), "filter.score_threshold",
         "must be a finite number"),
        (math.isfinite(fl.logit_weight) and math.isfinite(fl.positive_cosine_weight), "filter.logit_weight",
         "and filter.positive_cosine_weight must be finite numbers"),
        (fl.logit_weight != 0 or fl.positive_cosine_weight != 0, "filter.logit_weight",
         "and filter.positive_cosine_weight are both 0: the filter score would be the same for every candidate"),
        (not (fl.auto_threshold and (fl.score_threshold is not None or fl.logit_weight != 1
                                     or fl.positive_cosine_weight != 0)), "filter.auto_threshold",
         "fits score_threshold, logit_weight and positive_cosine_weight itself: leave them unset"),
        (fl.score_threshold is not None or fl.auto_threshold or (fl.logit_weight == 1
                                                                  and fl.positive_cosine_weight == 0),
         "filter.positive_cosine_weight", "and filter.logit_weight only weigh filter.score_threshold's rule: set "
         "filter.score_threshold (or filter.auto_threshold)"),
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
    path, value = parse_set(text)
    return path[0], ".".join(path[1:]), value


def set_override(raw: dict[str, Any], text: str) -> None:
    """Apply one ``--set a.b[.c]=value`` to nested dicts, creating the tables on the way."""
    parse_override(text)
    apply_set(raw, text)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, dict[str, Any]] | None = None) -> MineConfig:
    """TOML file (optional) + ``base`` values + ``--set`` overrides, later ones winning; validated."""
    raw: dict[str, dict[str, Any]] = read_toml(path) if path else {}
    source = str(path) if path else "config"
    for sname, values in (base or {}).items():
        raw.setdefault(sname, {}).update(values)
    for text in overrides or []:
        set_override(raw, text)
    return from_dict(raw, source)


EXAMPLE_HEADER = (
    "hardneg mining job: every field, with its default and what it does.",
    "Run:   hardneg mine --config examples/mine.toml --out runs/mine",
    "Override any field on the command line:  --set filter.relative_margin=0.2 --set sampling.num_negatives=7",
    "Unknown sections or keys, and values of the wrong type, are refused with an error naming the field.",
)


def describe_fields() -> str:
    """Every field with its default and help, as commented TOML (examples/mine.toml is generated from it)."""
    return example_toml(MineConfig, EXAMPLE_HEADER)
