"""The mining job: for each shard of training queries, retrieve candidates (BM25 + dense), exclude positives
and their duplicates, score with the cross-encoder (cached), filter false negatives, sample negatives (the
stages of one shard: ``shard``), and write the shard; finally merge shards into triples, candidates, manifest
and report (``triples.finalize``). Resumable per shard."""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from retriever.bm25 import BM25Index
from retriever.data import column
from retriever.dense_index import DenseIndex
from retriever.devices import resolve_devices
from retriever.encoder import EmbeddingCache, Encoder
from retriever.judge import load_judge
from retriever.progress import report, show_progress, stage
from retriever.rerank import ScoreCache, close_pools, use_devices
from retriever.text import TokenizerConfig

from . import engine as engines  # engines.make_engine is looked up at call time: tests may wrap it
from .candidates import normalized_hash
from .config import MineConfig, needs_corpus_embeddings
from .engine import LocalEngine
from .inputs import leak_guard, load_input
from .judge_check import check_judge, choose_margin, choose_threshold
from .planted import find_planted, load_planted
from .runfolder import Layout, RunFolderError, State, changed_inputs, prepare, write_parquet
from .shard import Resources, bind_judge, shard_paths
from .triples import finalize

logger = logging.getLogger(__name__)

STATE_FILE = "job.json"
FOLDER = Layout("mine", state_file=STATE_FILE, done_file="manifest.json", key_field="config_fingerprint",
                noun="job", redo="mine again", hint="pass --overwrite (or --set output.overwrite=true)")

JobStateError = RunFolderError  # the run folder holds another or a finished job, or the inputs changed


def prepare_folder(out: Path, cfg: MineConfig) -> State:
    """Create the run folder, or check that it holds the same job (resume); refuse otherwise (``runfolder``)."""
    state = prepare(out, FOLDER, cfg.fingerprint(), overwrite=cfg.output.overwrite, config=cfg.to_dict())
    (out / "shards").mkdir(exist_ok=True)
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
    if needs_corpus_embeddings(cfg):
        t0 = time.perf_counter()
        devices = resolve_devices(c.device, "candidates.device")
        encoder = Encoder(c.model, bf16=c.bf16, batch_size=c.batch_size, query_prompt=c.query_prompt,
                          doc_prompt=c.doc_prompt, max_seq_length=c.max_seq_length, device=devices[0])
        encoder.pool_devices = devices if len(devices) > 1 else []
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
        judge_devices = resolve_devices(x.device, "cross_encoder.device")
        reranker = load_judge(x.model, x.max_length, x.batch_size, x.bf16, judge_devices[0])
        use_devices(reranker, judge_devices)
        cache = ScoreCache(cfg.output.score_cache or None)
        bind_judge(reranker, doc_ids, texts, inp.corpus_fingerprint(), bm25, encoder, emb, cache)
    return Resources(inp, list(inp.queries), doc_ids, doc_pos, texts, hashes, bm25, encoder, dense, emb,
                     reranker, cache, {doc_pos[d] for d in banned_ids if d in doc_pos})


def input_fingerprints(res: Resources) -> dict[str, str | None]:
    """What the shards depend on besides the config: input content and model weights."""
    return {"input": res.inp.fingerprint(),
            "bi_encoder": res.encoder.fingerprint() if res.encoder is not None else None,
            "cross_encoder": res.reranker.fingerprint() if res.reranker is not None else None}


def check_inputs(out: Path, state: State, fps: dict[str, str | None]) -> None:
    """Record the input fingerprints in ``job.json``; on resume, refuse when any of them changed, since
    finished shards would mix old and new inputs (``--overwrite`` has already emptied the folder)."""
    changed = changed_inputs(state, fps)
    if changed:
        raise JobStateError(f"{out} holds a partly finished job whose {', '.join(changed)} changed since it "
                            "started; pass --overwrite to start again")
    state.record["inputs"] = fps
    state.save()


def run_mining(cfg: MineConfig, out: str | os.PathLike) -> dict:
    """Run (or resume) a mining job into ``out``; returns the manifest."""
    out = Path(out)
    planted_path = find_planted(cfg.data.name)  # read first: a malformed file stops the job before any work
    planted = (planted_path, load_planted(planted_path)) if planted_path else None
    if needs_corpus_embeddings(cfg):  # a device this machine lacks: before work
        resolve_devices(cfg.candidates.device, "candidates.device")
    if cfg.cross_encoder.model:
        resolve_devices(cfg.cross_encoder.device, "cross_encoder.device")
    state = prepare_folder(out, cfg)
    t_job = time.perf_counter()
    timings: dict[str, float] = {}
    engine = engines.make_engine(cfg)
    try:
        with stage("prepare"):
            res = build_resources(cfg, timings, engine)
        check_inputs(out, state, input_fingerprints(res))
        with stage("judge check"):
            judge_check = check_judge(res, cfg)
            chosen = state.record.get("auto_choices")
            if chosen is None:  # chosen once: a resumed job filters its last shards like its first
                chosen = {"auto_margin": choose_margin(res, cfg), "auto_threshold": choose_threshold(res, cfg)}
                state.record["auto_choices"] = chosen
                state.save()
            elif cfg.filter.auto_margin or cfg.filter.auto_threshold or cfg.filter.recall_target is not None:
                logger.info("resumed: the filter rule chosen when this job started is kept (job.json)")
            auto, auto_t = chosen["auto_margin"], chosen["auto_threshold"]
        shard_cfg = cfg
        if auto is not None:  # the shards filter with the chosen margin; the job's config stays the user's
            shard_cfg = copy.deepcopy(cfg)
            shard_cfg.filter.relative_margin, shard_cfg.filter.absolute_margin = auto["chosen"], None
        if auto_t is not None and auto_t["chosen"] is not None:  # the fitted rule replaces the margins
            shard_cfg = copy.deepcopy(cfg)
            fl = shard_cfg.filter
            fl.relative_margin = fl.absolute_margin = None
            fl.logit_weight, fl.positive_cosine_weight, fl.score_threshold = (
                auto_t["chosen"][k] for k in ("logit_weight", "positive_cosine_weight", "score_threshold"))
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
            if res.encoder is not None:
                res.encoder.close()  # stops a multi-device encoding pool
            if res.reranker is not None:
                close_pools(res.reranker)
    finally:
        engine.close()
    timings.update({k: v for k, v in counters.items() if k.endswith("_s")})
    with stage("finalize"):
        return finalize(out, cfg, res, len(shards), counters, timings, time.perf_counter() - t_job, judge_check, auto,
                        planted, auto_t)
