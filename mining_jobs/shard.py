"""One shard of a mining job, stage by stage: retrieve (BM25 + dense, fused) -> exclude (positives, duplicates,
the leak guard) -> score (cross-encoder, cached; lazily where the sampler allows) -> filter -> sample -> fill (random
documents for the queries left short, when asked) -> rows
of the triples and candidates tables. ``Resources`` is what every shard reads, built once per job
(``mine.build_resources``, or on a Ray actor). Engines (``engine``, ``ray_engine``) call ``mine_shard``; the job
(``mine.run_mining``) writes each shard at ``shard_paths`` and ``triples.finalize`` merges them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from retriever.bm25 import BM25Index
from retriever.dense_index import DenseIndex
from retriever.encoder import EmbeddingCache, Encoder
from retriever.judge import Corpus, EnsembleJudge
from retriever.rerank import ScoreCache, score_with_cache

from .candidates import Candidate, mark_exclusions, union_candidates
from .config import MineConfig, needs_positive_cosine
from .filtering import accepts, apply_filter, filter_reason, in_window, reduce_positive, relabel
from .inputs import MiningInput
from .sampling import fill_rng, sample

CANDIDATE_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("doc_id", pa.string()), ("sources", pa.list_(pa.string())),
    ("bm25_rank", pa.int32()), ("bm25_score", pa.float32()), ("dense_rank", pa.int32()),
    ("dense_score", pa.float32()), ("ce_score", pa.float32()), ("positive_score", pa.float32()),
    ("fate", pa.string()), ("positive_cosine", pa.float32()),
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


def shard_paths(out: Path, k: int) -> tuple[Path, Path]:
    """Shard ``k``'s candidates and triples files in the job folder ``out``."""
    return out / "shards" / f"{k:05d}.candidates.parquet", out / "shards" / f"{k:05d}.triples.parquet"


def bind_judge(reranker, doc_ids: list[str], texts: list[str], corpus_fingerprint: str, bm25: BM25Index | None,
               encoder: Encoder | None, emb: np.ndarray | None, cache: ScoreCache | None) -> None:
    """A learned judge (``hardneg train-judge``) reads the corpus it scores: bind it, reusing the job's BM25
    index and corpus embeddings where they are the judge's own. Cross-encoders need nothing."""
    if isinstance(reranker, EnsembleJudge):
        reranker.bind(Corpus(doc_ids, texts, corpus_fingerprint, bm25, encoder, emb), EmbeddingCache(), cache)


@dataclass
class Shard:
    """One shard's work, filled in stage by stage (``mine_shard``): its queries; after ``retrieve``, the
    candidates (fused order); after ``exclude``, the positives (corpus positions) and exclusion fates; after
    ``score``, judge scores on candidates and positives (``pos_lists``, reduced to ``pos_scores``); after
    ``filter_stage``, the relabelled extra positives and the survivors; after ``sample_stage``, the negatives."""

    qids: list[str]
    qtexts: list[str]
    cands: list[list[Candidate]] = field(default_factory=list)
    positives: list[list[int]] = field(default_factory=list)
    pos_lists: list[list[float]] = field(default_factory=list)
    pos_scores: list[float | None] = field(default_factory=list)
    extra: list[list[Candidate]] = field(default_factory=list)
    kept: list[list[Candidate]] = field(default_factory=list)
    chosen: list[list[Candidate]] = field(default_factory=list)


def retrieve(res: Resources, cfg: MineConfig, sh: Shard) -> None:
    """Stage 1: BM25 top-k and dense top-k of every query, fused into one candidate list per query."""
    c = cfg.candidates
    bm25 = res.bm25.search_arrays(sh.qtexts, k=c.bm25_k, show_progress=False) if res.bm25 else None
    dense = None
    if res.dense is not None:
        q_emb = res.encoder.encode_queries(sh.qtexts, show_progress=False)
        dense = res.dense.search_arrays(q_emb, k=c.dense_k)
    sh.cands = union_candidates(bm25, dense, len(sh.qids))


def exclude(res: Resources, cfg: MineConfig, sh: Shard) -> None:
    """Stage 2: each query's positives; its candidates that are positives, duplicates of one, the query
    itself or banned by the leak guard get their exclusion fate."""
    sh.positives = []
    for qid, cl in zip(sh.qids, sh.cands, strict=True):
        pos = sorted(res.doc_pos[d] for d in res.inp.positives[qid])
        sh.positives.append(pos)
        mark_exclusions(cl, set(pos), qid, res.doc_ids, res.hashes, cfg.exclusion.drop_self, res.emb,
                        cfg.exclusion.near_duplicate_cosine, res.banned)
        if needs_positive_cosine(cfg):
            set_positive_cosines(cl, pos, res.emb)


def set_positive_cosines(cands: list[Candidate], positives: list[int], emb: np.ndarray) -> None:
    """``pos_cosine`` of each pending candidate: its cosine to the nearest labelled positive (none without
    positives)."""
    pending = [c for c in cands if c.fate == "pending"]
    if not positives or not pending:
        return
    cos = emb[[c.doc for c in pending]] @ emb[positives].T
    for c, x in zip(pending, cos.max(axis=1).tolist(), strict=True):
        c.pos_cosine = float(x)


def candidates_of(res: Resources, cfg: MineConfig, qids: list[str], qtexts: list[str]
                  ) -> tuple[list[list[Candidate]], list[list[int]]]:
    """Stages 1 and 2 for a list of queries (the judge check and the automatic margin use them too)."""
    sh = Shard(qids, qtexts)
    retrieve(res, cfg, sh)
    exclude(res, cfg, sh)
    return sh.cands, sh.positives


def score(res: Resources, cfg: MineConfig, sh: Shard, counters: dict[str, float]) -> None:
    """Stage 3: the judge's scores (nothing without a judge)."""
    sh.pos_lists = [[] for _ in sh.qids]
    sh.pos_scores = [None] * len(sh.qids)
    if res.reranker is None:
        return
    sh.pos_lists = score_shard(res, cfg, sh.qids, sh.qtexts, sh.cands, sh.positives, counters)
    sh.pos_scores = [reduce_positive(p, cfg.cross_encoder.positive_reduce) for p in sh.pos_lists]


def filter_stage(cfg: MineConfig, sh: Shard) -> None:
    """Stage 4: relabel the confidently relevant, then the false-negative filter (rank window, score rules,
    positive-aware ratio); ``kept`` holds each query's survivors, best first."""
    ratio = cfg.sampling.positive_aware_ratio if cfg.sampling.strategy == "positive-aware" else None
    sh.extra = [relabel(cl, cfg.filter) for cl in sh.cands]
    sh.kept = [apply_filter(cl, ps, cfg.filter, ratio) for cl, ps in zip(sh.cands, sh.pos_scores, strict=True)]


def sample_stage(cfg: MineConfig, sh: Shard) -> None:
    """Stage 5: the negatives of each query among its survivors."""
    sh.chosen = [sample(k, ps, cfg.sampling, q) for k, ps, q in zip(sh.kept, sh.pos_scores, sh.qids, strict=True)]


FILL_ROUNDS = 3  # draws per short query (sampling.fill = "random"), each of twice the negatives still missing
FILL_SOURCE = "random"  # the source of a document the fill drew (its candidate's ``sources`` is [FILL_SOURCE])


def fill_stage(res: Resources, cfg: MineConfig, sh: Shard, counters: dict[str, float]) -> None:
    """Stage 5b (``sampling.fill = "random"``): a query left with fewer than ``num_negatives`` gets the rest drawn
    at random from the corpus outside its candidates. The drawn documents go through the same exclusions
    (positives, their duplicates, the query itself, the leak guard) and, with a judge, are scored, relabelled
    (``filter.relabel_above``) and filtered by the same rules as the retrieved candidates; they join the
    query's candidates with source ``FILL_SOURCE`` and come after its retrieved negatives. Up to
    ``FILL_ROUNDS`` draws per query, each of twice the negatives still missing; seeded per query (``sampling.fill_rng``), so the result does not depend on sharding."""
    if cfg.sampling.fill != "random":
        return
    n = cfg.sampling.num_negatives
    ratio = cfg.sampling.positive_aware_ratio if cfg.sampling.strategy == "positive-aware" else None
    n_docs = len(res.doc_ids)
    rngs = {i: fill_rng(cfg.sampling.seed, q) for i, q in enumerate(sh.qids) if len(sh.chosen[i]) < n}
    for _ in range(FILL_ROUNDS):
        drawn: list[tuple[int, Candidate]] = []
        any_drawn = False  # a query whose draws were all excluded draws again: rounds do not depend on the shard
        for i, rng in rngs.items():
            need = n - len(sh.chosen[i])
            if need <= 0:
                continue
            seen = {c.doc for c in sh.cands[i]}
            free = n_docs - len(seen)
            if free <= 0:
                continue
            picks: list[int] = []
            while len(picks) < min(2 * need, free):  # rejection sampling: no pass over a large corpus per query
                d = int(rng.integers(n_docs))
                if d not in seen:
                    seen.add(d)
                    picks.append(d)
            any_drawn |= bool(picks)
            new = [Candidate(d, sources=[FILL_SOURCE]) for d in picks]
            mark_exclusions(new, set(sh.positives[i]), sh.qids[i], res.doc_ids, res.hashes, cfg.exclusion.drop_self,
                            res.emb, cfg.exclusion.near_duplicate_cosine, res.banned)
            if needs_positive_cosine(cfg):
                set_positive_cosines(new, sh.positives[i], res.emb)
            sh.cands[i].extend(new)
            drawn += [(i, c) for c in new if c.fate == "pending"]
        if not any_drawn:
            break
        if res.reranker is not None and drawn:
            t0 = time.perf_counter()
            scores, n_new = score_with_cache(
                res.reranker, [sh.qids[i] for i, _ in drawn], [res.doc_ids[c.doc] for _, c in drawn],
                [(sh.qtexts[i], res.texts[c.doc]) for i, c in drawn], res.score_cache, show_progress=False)
            for (_, c), s in zip(drawn, scores, strict=True):
                c.ce_score = float(s)
            counters["ce_pairs"] += len(drawn)
            counters["ce_pairs_scored"] += n_new
            counters["score_s"] += time.perf_counter() - t0
        for i, c in drawn:
            if relabel([c], cfg.filter):  # judged relevant: an extra positive, as a retrieved candidate would be
                sh.extra[i].append(c)
                continue
            ps = sh.pos_scores[i]
            reason = filter_reason(c.ce_score, ps, cfg.filter, ratio, c.pos_cosine) if ps is not None else None
            if reason:
                c.fate = reason
            elif len(sh.chosen[i]) < n:
                c.fate = "kept"
                sh.chosen[i].append(c)
            else:
                c.fate = "not_sampled"


def rows(res: Resources, sh: Shard) -> tuple[pa.Table, pa.Table]:
    """Stage 6: the shard's triples (one row per positive, relabelled ones included) and candidates tables."""
    triples, cand_rows = [], []
    for i, (qid, cl) in enumerate(zip(sh.qids, sh.cands, strict=True)):
        chosen = sh.chosen[i]
        rows_pos = [(p, sh.pos_lists[i][j] if sh.pos_lists[i] else None, "qrels") for j, p in enumerate(sh.positives[i])]
        rows_pos += [(c.doc, c.ce_score, "relabelled") for c in sh.extra[i]]
        for p, p_score, origin in rows_pos:
            triples.append({
                "query_id": qid, "query": sh.qtexts[i], "positive_id": res.doc_ids[p], "positive": res.texts[p],
                "positive_score": p_score, "positive_source": origin,
                "negative_ids": [res.doc_ids[x.doc] for x in chosen],
                "negatives": [res.texts[x.doc] for x in chosen],
                "negative_scores": [x.ce_score for x in chosen] if res.reranker is not None else [],
                "negative_sources": ["+".join(x.sources) for x in chosen]})
        for cand in cl:
            cand_rows.append({"query_id": qid, "doc_id": res.doc_ids[cand.doc], "sources": cand.sources,
                              "bm25_rank": cand.bm25_rank, "bm25_score": cand.bm25_score,
                              "dense_rank": cand.dense_rank, "dense_score": cand.dense_score,
                              "ce_score": cand.ce_score, "positive_score": sh.pos_scores[i], "fate": cand.fate,
                              "positive_cosine": cand.pos_cosine})
    return (pa.Table.from_pylist(triples, schema=TRIPLE_SCHEMA),
            pa.Table.from_pylist(cand_rows, schema=CANDIDATE_SCHEMA))


def mine_shard(res: Resources, cfg: MineConfig, qids: list[str], counters: dict[str, float]
               ) -> tuple[pa.Table, pa.Table]:
    """Mine one shard of queries: retrieve -> exclude -> score -> filter -> sample -> rows."""
    sh = Shard(qids, [res.inp.queries[q] for q in qids])
    t0 = time.perf_counter()
    retrieve(res, cfg, sh)
    exclude(res, cfg, sh)
    counters["retrieve_s"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    score(res, cfg, sh, counters)
    if res.reranker is not None:
        counters["score_s"] += time.perf_counter() - t0
    filter_stage(cfg, sh)
    sample_stage(cfg, sh)
    fill_stage(res, cfg, sh, counters)
    return rows(res, sh)


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
                1 for c in windows[i]
                if c.ce_score is not None and accepts(c.ce_score, ref[i], cfg.filter, ratio, c.pos_cosine))
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
