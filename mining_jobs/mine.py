"""The mining job: for each shard of training queries, retrieve candidates (BM25 + dense), exclude positives
and their duplicates, score with the cross-encoder (cached), filter false negatives, sample negatives, and
write the shard; finally merge shards into triples, candidates, manifest and report. Resumable per shard."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from retriever.bm25 import BM25Index
from retriever.data import column
from retriever.dense_index import DenseIndex
from retriever.encoder import EmbeddingCache, Encoder
from retriever.errors import HardnegError
from retriever.judge import Corpus, EnsembleJudge
from retriever.progress import report, show_progress, stage
from retriever.rerank import ScoreCache, load_reranker, score_with_cache
from retriever.text import TokenizerConfig

from .candidates import Candidate, mark_exclusions, normalized_hash, union_candidates
from .config import MineConfig
from .engine import LocalEngine
from .files import write_parquet, write_text
from .filtering import accepts, apply_filter, in_window, reduce_positive, relabel
from .inputs import MiningInput, leak_guard, load_input
from .judge_check import check_judge, choose_margin
from .planted import find_planted, load_planted
from .sampling import sample

logger = logging.getLogger(__name__)

STATE_FILE = "job.json"


class JobStateError(HardnegError):
    """The output folder holds a different or finished job and overwriting was not asked for."""


CANDIDATE_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("doc_id", pa.string()), ("sources", pa.list_(pa.string())),
    ("bm25_rank", pa.int32()), ("bm25_score", pa.float32()), ("dense_rank", pa.int32()),
    ("dense_score", pa.float32()), ("ce_score", pa.float32()), ("positive_score", pa.float32()),
    ("fate", pa.string()),
])
TRIPLE_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("query", pa.string()), ("positive_id", pa.string()), ("positive", pa.string()),
    ("positive_score", pa.float32()), ("positive_source", pa.string()), ("negative_ids", pa.list_(pa.string())), ("negatives", pa.list_(pa.string())),
    ("negative_scores", pa.list_(pa.float32())), ("negative_sources", pa.list_(pa.string())),
])


@dataclass
class Resources:
    """What every shard needs, built once per job."""

    inp: MiningInput
    qids: list[str]
    doc_ids: list[str]
    doc_pos: dict[str, int]
    texts: list[str]
    hashes: list[str]
    bm25: BM25Index | None
    encoder: Encoder | None
    dense: DenseIndex | None
    emb: np.ndarray | None
    reranker: object | None
    score_cache: ScoreCache | None
    banned: set[int]


def prepare_folder(out: Path, cfg: MineConfig) -> dict:
    """Create the run folder, or check that it holds the same job (resume); refuse otherwise."""
    state_path = out / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        same = state.get("config_fingerprint") == cfg.fingerprint()
        if not cfg.output.overwrite:
            if not same:
                raise JobStateError(f"{out} holds a job with a different config; pass --overwrite "
                                    "(or --set output.overwrite=true) to replace it, or choose another --out")
            if (out / "manifest.json").exists():
                raise JobStateError(f"{out} already holds this finished job; pass --overwrite to mine again")
            logger.info("resuming the job in %s", out)
            return state
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        # never delete a folder that is not a hardneg job, even with --overwrite
        raise JobStateError(f"{out} is not empty and holds no hardneg job (no {STATE_FILE}); choose an empty "
                            "or new folder")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    state = {"config_fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "created": time.time()}
    write_text(state_path, json.dumps(state, indent=2))
    return state


def build_resources(cfg: MineConfig, timings: dict[str, float], engine: LocalEngine | None = None) -> Resources:
    """What every shard needs; the corpus is encoded by ``engine`` (default: this process)."""
    engine = engine or LocalEngine()
    t0 = time.perf_counter()
    inp = load_input(cfg.data)
    banned_ids = leak_guard(inp, cfg.data)
    doc_ids = column(inp.corpus, "_id")
    doc_pos = {d: i for i, d in enumerate(doc_ids)}
    texts = inp.doc_texts()
    hashes = [normalized_hash(t) for t in texts]
    timings["load_s"] = time.perf_counter() - t0
    c = cfg.candidates
    bm25 = None
    if c.bm25:
        t0 = time.perf_counter()
        bm25 = BM25Index(c.bm25_backend, tokenizer=TokenizerConfig()).index(doc_ids, texts)
        timings["bm25_index_s"] = time.perf_counter() - t0
    encoder = dense = emb = None
    if c.dense or cfg.exclusion.near_duplicate_cosine > 0:
        t0 = time.perf_counter()
        encoder = Encoder(c.model, bf16=c.bf16, batch_size=c.batch_size, query_prompt=c.query_prompt,
                          doc_prompt=c.doc_prompt, max_seq_length=c.max_seq_length)
        emb, info = engine.encode_corpus(encoder, texts, inp.corpus_fingerprint(), EmbeddingCache())
        timings["corpus_encode_s"] = time.perf_counter() - t0
        timings["embedding_cache"] = info["cache"]  # type: ignore[assignment]
        if c.dense:
            t0 = time.perf_counter()
            dense = DenseIndex(c.index, nlist=c.ivf_nlist, nprobe=c.ivf_nprobe).add(doc_ids, emb)
            timings["dense_index_s"] = time.perf_counter() - t0
    reranker = cache = None
    if cfg.cross_encoder.model:
        x = cfg.cross_encoder
        reranker = load_reranker(x.model, x.max_length, x.batch_size, x.bf16)
        cache = ScoreCache(cfg.output.score_cache or None)
        bind_judge(reranker, doc_ids, texts, inp.corpus_fingerprint(), bm25, encoder, emb, cache)
    return Resources(inp, list(inp.queries), doc_ids, doc_pos, texts, hashes, bm25, encoder, dense, emb,
                     reranker, cache, {doc_pos[d] for d in banned_ids if d in doc_pos})


def bind_judge(reranker, doc_ids: list[str], texts: list[str], corpus_fingerprint: str, bm25: BM25Index | None,
               encoder: Encoder | None, emb: np.ndarray | None, cache: ScoreCache | None) -> None:
    """A learned judge (``hardneg train-judge``) reads the corpus it scores: bind it, reusing the job's BM25
    index and corpus embeddings where they are the judge's own. Cross-encoders need nothing."""
    if isinstance(reranker, EnsembleJudge):
        reranker.bind(Corpus(doc_ids, texts, corpus_fingerprint, bm25, encoder, emb), EmbeddingCache(), cache)


def retrieve(res: Resources, cfg: MineConfig, qids: list[str], qtexts: list[str]
             ) -> tuple[list[list[Candidate]], list[list[int]]]:
    """Candidates of each query (BM25 + dense top-k, fused order) with exclusions marked, and its positives
    (corpus positions)."""
    c = cfg.candidates
    bm25 = res.bm25.search_arrays(qtexts, k=c.bm25_k, show_progress=False) if res.bm25 else None
    dense = None
    if res.dense is not None:
        q_emb = res.encoder.encode_queries(qtexts, show_progress=False)
        dense = res.dense.search_arrays(q_emb, k=c.dense_k)
    cands = union_candidates(bm25, dense, len(qids))
    positives: list[list[int]] = []
    for qid, cl in zip(qids, cands, strict=True):
        pos = sorted(res.doc_pos[d] for d in res.inp.positives[qid])
        positives.append(pos)
        mark_exclusions(cl, set(pos), qid, res.doc_ids, res.hashes, cfg.exclusion.drop_self, res.emb,
                        cfg.exclusion.near_duplicate_cosine, res.banned)
    return cands, positives


def mine_shard(res: Resources, cfg: MineConfig, qids: list[str], counters: dict[str, float]
               ) -> tuple[pa.Table, pa.Table]:
    """Mine one shard of queries; returns its triples and candidates tables."""
    qtexts = [res.inp.queries[q] for q in qids]
    t0 = time.perf_counter()
    cands, positives = retrieve(res, cfg, qids, qtexts)
    counters["retrieve_s"] += time.perf_counter() - t0
    pos_scores: list[float | None] = [None] * len(qids)
    pos_lists: list[list[float]] = [[] for _ in qids]
    if res.reranker is not None:
        t0 = time.perf_counter()
        pos_lists = score_shard(res, cfg, qids, qtexts, cands, positives, counters)
        pos_scores = [reduce_positive(p, cfg.cross_encoder.positive_reduce) for p in pos_lists]
        counters["score_s"] += time.perf_counter() - t0
    triples, rows = [], []
    for i, (qid, cl) in enumerate(zip(qids, cands, strict=True)):
        extra = relabel(cl, cfg.filter)
        kept = apply_filter(cl, pos_scores[i], cfg.filter)
        chosen = sample(kept, pos_scores[i], cfg.sampling, qid)
        rows_pos = [(p, pos_lists[i][j] if pos_lists[i] else None, "qrels") for j, p in enumerate(positives[i])]
        rows_pos += [(c.doc, c.ce_score, "relabelled") for c in extra]
        for p, p_score, origin in rows_pos:
            triples.append({
                "query_id": qid, "query": qtexts[i], "positive_id": res.doc_ids[p], "positive": res.texts[p],
                "positive_score": p_score, "positive_source": origin,
                "negative_ids": [res.doc_ids[x.doc] for x in chosen],
                "negatives": [res.texts[x.doc] for x in chosen],
                "negative_scores": [x.ce_score for x in chosen] if res.reranker is not None else [],
                "negative_sources": ["+".join(x.sources) for x in chosen]})
        for cand in cl:
            rows.append({"query_id": qid, "doc_id": res.doc_ids[cand.doc], "sources": cand.sources,
                         "bm25_rank": cand.bm25_rank, "bm25_score": cand.bm25_score, "dense_rank": cand.dense_rank,
                         "dense_score": cand.dense_score, "ce_score": cand.ce_score,
                         "positive_score": pos_scores[i], "fate": cand.fate})
    return (pa.Table.from_pylist(triples, schema=TRIPLE_SCHEMA),
            pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA))


def lazy_scoring(cfg: MineConfig) -> bool:
    """Candidates are scored in retrieval order only until ``num_negatives`` pass the filter."""
    return cfg.filter.rank_by == "retrieval" and cfg.sampling.strategy in ("top", "positive-aware")


def score_shard(res: Resources, cfg: MineConfig, qids: list[str], qtexts: list[str], cands: list[list[Candidate]],
                positives: list[list[int]], counters: dict[str, float]) -> list[list[float]]:
    """Cross-encoder scores for a shard: every (query, positive) pair, and the pending candidates (all of
    them; or, with lazy scoring, in retrieval order and only as many as still needed). Each round is one
    call whose batches span the shard's queries. Sets ``ce_score`` on candidates; returns positive scores."""
    pos_lists: list[list[float]] = [[] for _ in qids]
    lazy = lazy_scoring(cfg)
    n = cfg.sampling.num_negatives
    ratio = cfg.sampling.positive_aware_ratio if cfg.sampling.strategy == "positive-aware" else None
    windows = [in_window(cl, cfg.filter) for cl in cands] if lazy else None
    ref: list[float] = []  # per query: the positive score candidates are compared with (after round one)
    first = True
    while True:
        slots: list[tuple[int, Candidate | None]] = []
        if first:
            slots += [(i, None) for i in range(len(qids)) for _ in positives[i]]
        for i, cl in enumerate(cands):
            if not lazy:
                if first:
                    slots += [(i, c) for c in cl if c.fate == "pending"]
                continue
            need = n if first else n - sum(
                1 for c in windows[i] if c.ce_score is not None and accepts(c.ce_score, ref[i], cfg.filter, ratio))
            if need > 0:
                slots += [(i, c) for c in [c for c in windows[i] if c.ce_score is None][:need]]
        if not slots:
            break
        pos_iter = {i: iter(positives[i]) for i in range(len(qids))}
        docs = [c.doc if c is not None else next(pos_iter[i]) for i, c in slots]
        scores, n_new = score_with_cache(
            res.reranker, [qids[i] for i, _ in slots], [res.doc_ids[d] for d in docs],
            [(qtexts[i], res.texts[d]) for (i, _), d in zip(slots, docs, strict=True)], res.score_cache,
            show_progress=False)
        for (i, cand), s in zip(slots, scores, strict=True):
            if cand is None:
                pos_lists[i].append(float(s))
            else:
                cand.ce_score = float(s)
        counters["ce_pairs"] += len(slots)
        counters["ce_pairs_scored"] += n_new
        if first and lazy:  # every positive is scored in the first round: its reference score is final
            ref = [reduce_positive(p, cfg.cross_encoder.positive_reduce) for p in pos_lists]
        first = False
        if not lazy:
            break
    return pos_lists


def input_fingerprints(res: Resources) -> dict[str, str | None]:
    """What the shards depend on besides the config: input content and model weights."""
    return {"input": res.inp.fingerprint(),
            "bi_encoder": res.encoder.fingerprint() if res.encoder is not None else None,
            "cross_encoder": res.reranker.fingerprint() if res.reranker is not None else None}


def check_inputs(out: Path, state: dict, fps: dict[str, str | None]) -> None:
    """Record the input fingerprints in ``job.json``; on resume, refuse when any of them changed, since
    finished shards would mix old and new inputs (``--overwrite`` has already emptied the folder)."""
    old = state.get("inputs")
    if old is not None and old != fps:
        changed = sorted(k for k in fps if old.get(k) != fps[k])
        raise JobStateError(f"{out} holds a partly finished job whose {', '.join(changed)} changed since it "
                            "started; pass --overwrite to start again")
    state["inputs"] = fps
    write_text(out / STATE_FILE, json.dumps(state, indent=2))


def shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    return out / "shards" / f"{k:05d}.candidates.parquet", out / "shards" / f"{k:05d}.triples.parquet"


def run_mining(cfg: MineConfig, out: str | os.PathLike) -> dict:
    """Run (or resume) a mining job into ``out``; returns the manifest."""
    out = Path(out)
    planted_path = find_planted(cfg.data.name)  # read first: a malformed file stops the job before any work
    planted = (planted_path, load_planted(planted_path)) if planted_path else None
    state = prepare_folder(out, cfg)
    t_job = time.perf_counter()
    timings: dict[str, float] = {}
    from . import engine as engines  # looked up at call time: tests may wrap make_engine

    engine = engines.make_engine(cfg)
    try:
        with stage("prepare"):
            res = build_resources(cfg, timings, engine)
        check_inputs(out, state, input_fingerprints(res))
        with stage("judge check"):
            judge_check = check_judge(res, cfg)
            auto = choose_margin(res, cfg)
        shard_cfg = cfg
        if auto is not None:  # the shards filter with the chosen margin; the job's config stays the user's
            shard_cfg = copy.deepcopy(cfg)
            shard_cfg.filter.relative_margin, shard_cfg.filter.absolute_margin = auto["chosen"], None
        size = cfg.output.shard_size
        shards = [res.qids[i:i + size] for i in range(0, len(res.qids), size)]
        counters = {"retrieve_s": 0.0, "score_s": 0.0, "ce_pairs": 0, "ce_pairs_scored": 0, "shards_resumed": 0}
        pending = []
        for k, qids in enumerate(shards):
            cpath, tpath = shard_paths(out, k)
            if tpath.exists() and cpath.exists():
                counters["shards_resumed"] += 1
            else:
                pending.append((k, qids))
        done = len(shards) - len(pending)
        bar = tqdm(total=len(shards), initial=done, desc=f"mine ({engine.name})", unit="shard",
                   disable=not show_progress())
        try:
            with stage("shards", len(shards)):
                report(done, len(shards))
                for k, triples, cands in engine.mine_shards(res, shard_cfg, pending, counters):
                    cpath, tpath = shard_paths(out, k)
                    write_parquet(cands, cpath)
                    write_parquet(triples, tpath)  # written last: its presence marks the shard finished
                    done += 1
                    bar.update(1)
                    report(done, len(shards))
        finally:
            bar.close()
            if res.score_cache is not None:
                res.score_cache.close()
    finally:
        engine.close()
    from .triples import finalize

    timings.update({k: v for k, v in counters.items() if k.endswith("_s")})
    with stage("finalize"):
        return finalize(out, cfg, res, len(shards), counters, timings, time.perf_counter() - t_job, judge_check, auto,
                        planted)
