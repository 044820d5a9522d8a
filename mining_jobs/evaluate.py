"""The evaluate job: retrieve with BM25, dense or hybrid on one split of a collection, score the run and
write ``metrics.json``, ``per_query.json``, ``run.trec`` and ``manifest.json`` to a run folder."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from retriever import metrics as M
from retriever.bm25 import BM25Index
from retriever.data import Collection, load_collection
from retriever.dense_index import DenseIndex
from retriever.encoder import EmbeddingCache, Encoder, encode_corpus
from retriever.fusion import reciprocal_rank_fusion
from retriever.progress import stage
from retriever.runs import Run, drop_self, write_trec
from retriever.text import TokenizerConfig

from .files import versions
from .runfolder import Layout, fingerprint, finish, prepare, write_json
from .settings import ConfigError, check_choices, opt

logger = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "dense", "hybrid")


BF16 = Literal["auto", "on", "off"]


@dataclass
class EvalConfig:
    """Settings of one evaluation; every field is a command-line option of ``hardneg evaluate`` and a key of a
    service ``evaluate`` job."""

    data: str = opt("scifact", "collection name under $HARDNEG_DATA, a BEIR folder, or a Hugging Face id in the "
                               "BeIR layout")
    split: str = opt("test", "qrels split whose queries are evaluated")
    retrievers: list[str] = opt(["bm25"], f"one or several of {', '.join(RETRIEVERS)} (comma-separated on the "
                                          "command line)", aliases=("--retriever",))
    out: str = opt("runs/evaluate", "run folder to write")
    model: str = opt("default", "bi-encoder: hub name or local path (default: the packaged "
                                "sentence-transformers/all-MiniLM-L6-v2)")
    bm25_backend: Literal["bm25s", "rank_bm25"] = opt("bm25s", "BM25 backend")
    k1: float = opt(1.5, "BM25 k1")
    b: float = opt(0.75, "BM25 b")
    stopwords: Literal["en", "none"] = opt("en", "stopword list of the BM25 tokenizer")
    stemmer: str = opt("english", "Snowball stemmer language, or 'none'")
    top_k: int = opt(100, "results kept per query")
    index: Literal["flat", "hnsw", "ivf"] = opt("flat", "faiss index (flat = exact)")
    bf16: BF16 = opt("auto", "bf16 autocast for encoding; auto = on only with AMX / AVX-512 BF16 (or a GPU with "
                             "bf16; fp16 on other GPUs)")
    device: str = opt("auto", "where the bi-encoder runs: auto (a GPU when there is one, else the CPU), cpu, cuda "
                              "or cuda:N")
    batch_size: int = opt(64, "bi-encoder batch size")
    query_prompt: str = opt("", "text prepended to each query (e.g. 'query: ')")
    doc_prompt: str = opt("", "text prepended to each document (e.g. 'passage: ')")
    rrf_k: int = opt(60, "reciprocal-rank-fusion constant of the hybrid retriever")
    drop_self: bool = opt(False, "drop each query's own id from its results")
    cache_dir: str | None = opt(None, "embedding cache folder (unset = $HARDNEG_CACHE or ~/.cache/hardneg)")
    overwrite: bool = opt(False, "replace a finished run in the output folder")
    metrics: list[str] = opt(list(M.DEFAULT_METRICS), "metric names (comma-separated on the command line)")

    def validate(self) -> None:
        bad = [r for r in self.retrievers if r not in RETRIEVERS]
        if bad or not self.retrievers:
            raise ConfigError(f"--retriever: unknown {bad or 'empty'}; expected some of {', '.join(RETRIEVERS)}", field="retrievers")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}", field="top_k")
        check_choices(self)
        from retriever.devices import DeviceError, parse_devices

        try:
            parse_devices(self.device, "device")
        except DeviceError as exc:
            raise ConfigError(f"--{exc}", field="device") from None
        if self.stemmer != "none":
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise ConfigError(f"--stemmer {self.stemmer!r}: expected 'none' or a Snowball language "
                                 f"({', '.join(sorted(Stemmer.algorithms())[:8])}, ...)", field="stemmer")
        for name in ("batch_size", "rrf_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", field=name)
        for m in self.metrics:
            try:
                M._parse(m)
            except ValueError as exc:
                raise ConfigError(f"--metrics: {exc}", field="metrics") from None


def _legacy(out: Path) -> bool:
    """A run folder of an evaluation from before run.json: its metrics (one retriever) or its summary (many)."""
    return ((out / "metrics.json").is_file() and (out / "manifest.json").is_file()) or (out / "summary.md").is_file()


# one retriever: out/metrics.json marks the evaluation finished; several: out/<retriever>/ each, then summary.md
FOLDER = Layout("evaluate", done_file="metrics.json", noun="evaluation", redo="evaluate again", legacy=_legacy)
FOLDER_MANY = dataclasses.replace(FOLDER, done_file="summary.md")


def _prepare_out(cfg: EvalConfig) -> Path:
    """Create the run folder or refuse (``runfolder``): a finished evaluation, one with other settings, or a
    folder that holds no evaluation (never written into, also with --overwrite). Returns it."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite", "cache_dir", "device")}
    layout = FOLDER_MANY if len(cfg.retrievers) > 1 else FOLDER
    return prepare(cfg.out, layout, fingerprint(settings), overwrite=cfg.overwrite, config=asdict(cfg)).out


def bm25_run(col: Collection, cfg: EvalConfig, texts: list[str], timings: dict[str, float]) -> Run:
    tok = TokenizerConfig(lowercase=True, stopwords=cfg.stopwords, stemmer=cfg.stemmer)
    t0 = time.perf_counter()
    index = BM25Index(cfg.bm25_backend, k1=cfg.k1, b=cfg.b, tokenizer=tok).index(col.doc_ids, texts)
    timings["bm25_index_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = index.search(list(col.queries.values()), k=cfg.top_k, query_ids=list(col.queries))
    timings["bm25_search_s"] = time.perf_counter() - t0
    timings["bm25_queries_per_s"] = len(col.queries) / max(timings["bm25_search_s"], 1e-9)
    return run


def dense_run(col: Collection, cfg: EvalConfig, texts: list[str], timings: dict[str, float],
              info: dict[str, object]) -> Run:
    t0 = time.perf_counter()
    from retriever.devices import resolve_device

    enc = Encoder(cfg.model, bf16=cfg.bf16, batch_size=cfg.batch_size, query_prompt=cfg.query_prompt,
                  doc_prompt=cfg.doc_prompt, device=resolve_device(cfg.device, "device"))
    timings["model_load_s"] = time.perf_counter() - t0
    cache = EmbeddingCache(cfg.cache_dir)
    emb, cinfo = encode_corpus(enc, texts, col.fingerprint(), cache)
    timings["corpus_encode_s"] = float(cinfo.get("seconds", 0.0))
    info.update({"model_fingerprint": enc.fingerprint(), "bf16": enc.bf16, "max_seq_length": enc.max_seq_length,
                 "embedding_cache": cinfo})
    t0 = time.perf_counter()
    index = DenseIndex(cfg.index).add(col.doc_ids, emb)
    timings["dense_index_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_emb = enc.encode_queries(list(col.queries.values()))
    run = index.search(q_emb, k=cfg.top_k, query_ids=list(col.queries))
    timings["dense_search_s"] = time.perf_counter() - t0
    return run


def run_evaluation(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """Run every retriever of ``cfg`` and write its run folder; returns ``{retriever: metrics}``."""
    cfg.validate()
    out = _prepare_out(cfg)
    many = len(cfg.retrievers) > 1
    folders = {r: (out / r if many else out) for r in cfg.retrievers}
    t_start = time.perf_counter()
    col = load_collection(cfg.data, cfg.split)
    logger.info("loaded %s/%s: %d documents, %d queries, %d judgments", col.name, col.split,
                col.corpus.num_rows, len(col.queries), col.stats.get("qrels"))
    texts = col.doc_texts()
    timings: dict[str, float] = {"load_s": time.perf_counter() - t_start}
    info: dict[str, object] = {}
    runs: dict[str, Run] = {}
    need = set(cfg.retrievers)
    if need & {"bm25", "hybrid"}:
        with stage("bm25"):
            runs["bm25"] = bm25_run(col, cfg, texts, timings)
    if need & {"dense", "hybrid"}:
        with stage("dense"):
            runs["dense"] = dense_run(col, cfg, texts, timings, info)
    if "hybrid" in need:
        runs["hybrid"] = reciprocal_rank_fusion([runs["bm25"], runs["dense"]], k=cfg.rrf_k, top_k=cfg.top_k)
    if cfg.drop_self:
        runs = {k: drop_self(v) for k, v in runs.items()}
    results: dict[str, dict[str, float]] = {}
    per_q_all: dict[str, dict[str, dict[str, float]]] = {}
    for r in cfg.retrievers:
        folder = folders[r]
        per_q = M.per_query(col.qrels, runs[r], cfg.metrics)
        agg = M.aggregate(per_q)
        results[r], per_q_all[r] = agg, per_q
        write_trec(runs[r], folder / "run.trec", tag=f"hardneg-{r}")
        write_json(folder / "per_query.json", per_q)
        manifest = {"retriever": r, "config": asdict(cfg), "collection": {"name": col.name, "split": col.split,
                    "source": col.source, "fingerprint": col.fingerprint(), **col.stats},
                    "dense": info if r in ("dense", "hybrid") else None, "timings": timings,
                    "versions": versions(), "num_queries": len(col.qrels)}
        write_json(folder / "manifest.json", manifest)
        write_json(folder / "metrics.json", {**agg, "num_queries": len(col.qrels)})  # last: marks the run done
    if many:
        finish(out, FOLDER_MANY, format_table(results, col, per_q_all) + "\n")  # last: marks the evaluation done
    return results


def format_table(results: dict[str, dict[str, float]], col: Collection | None = None,
                 per_q: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """A Markdown table, one row per retriever; with per-query values, a p-value of nDCG@10 against row 1."""
    names = list(results)
    metrics = list(next(iter(results.values())))
    header = ["retriever", *metrics]
    base = names[0]
    sig = per_q is not None and len(names) > 1 and "ndcg@10" in metrics
    if sig:
        header.append(f"p (ndcg@10 vs {base})")
    lines = []
    if col is not None:
        lines.append(f"{col.name} / {col.split}: {len(col.qrels)} queries, {col.corpus.num_rows} documents\n")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for n in names:
        row = [n, *(f"{results[n][m]:.4f}" for m in metrics)]
        if sig:
            row.append("-" if n == base else
                       f"{M.randomization_test(per_q[base]['ndcg@10'], per_q[n]['ndcg@10'])['p_value']:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def evaluate_model(model, data: str, splits: list[str], metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100"),
                   bf16: str = "auto", batch_size: int = 64, query_prompt: str = "", doc_prompt: str = "",
                   cache_dir: str | None = None, top_k: int = 100) -> dict[str, dict]:
    """Dense retrieval with ``model`` (loaded or a name/path) on several splits of one collection, exact
    search, the corpus encoded once through the embedding cache. Returns ``{split: {"metrics", "per_query"}}``.
    """
    enc = Encoder(model, bf16=bf16, batch_size=batch_size, query_prompt=query_prompt, doc_prompt=doc_prompt)
    out: dict[str, dict] = {}
    index = None
    for split in splits:
        col = load_collection(data, split)
        if index is None:
            emb, info = encode_corpus(enc, col.doc_texts(), col.fingerprint(), EmbeddingCache(cache_dir))
            index = DenseIndex("flat").add(col.doc_ids, emb)
        run = index.search(enc.encode_queries(list(col.queries.values()), show_progress=False), k=top_k,
                           query_ids=list(col.queries))
        per_q = M.per_query(col.qrels, run, metrics)
        out[split] = {"metrics": {**M.aggregate(per_q), "num_queries": len(col.qrels)}, "per_query": per_q,
                      "embedding_cache": info["cache"]}
    return out
