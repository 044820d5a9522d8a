"""The train-reranker job: train a cross-encoder on a split's qrels with BM25-mined negatives, optionally
cross-fitted in K folds (each fold's model never sees that fold's queries), and report its reranking
quality (nDCG@10 of BM25 top-k reranked) on a held-out split. Writes a fold set the mining job accepts."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retriever import metrics as M
from retriever.bm25 import BM25Index
from retriever.data import Collection, load_collection
from retriever.progress import stage
from retriever.rerank import FOLDS_FILE
from retriever.rerank_train import Group, TrainArgs, train_cross_encoder

from .runfolder import Layout, fingerprint, finish, prepare, write_json, write_text
from .settings import ConfigError, check_choices, opt, section

logger = logging.getLogger(__name__)


@dataclass
class RerankerJob:
    """Settings of ``hardneg train-reranker``: the job's own fields and, flattened beside them, the training
    settings (``TrainArgs``); each is a command-line option and a key of a service ``train-reranker`` job."""

    data: str = opt("scifact", "collection whose qrels train the cross-encoder")
    split: str = opt("train", "qrels split of the training queries")
    out: str = opt("runs/reranker", "fold set folder to write")
    folds: int = opt(2, "cross-fitting folds (1 = one model on all queries)")
    negatives: int = opt(3, "BM25 negatives per positive")
    bm25_depth: int = opt(30, "negatives are drawn from BM25's top N")
    eval_split: str | None = opt("test", "held-out split for the reranking report ('' or unset = none)")
    eval_depth: int = opt(100, "BM25 candidates reranked in the report")
    max_eval_queries: int | None = opt(None, "limit the report to N queries (unset = all)")
    overwrite: bool = opt(False, "replace a finished or differently configured fold set")
    # keep folds finished by an earlier, interrupted run of this job (set by the job service, not a setting)
    resume: bool = field(default=False, metadata={"internal": True})
    train: TrainArgs = section(TrainArgs, "how each fold's cross-encoder is trained", flatten=True)

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = TrainArgs()
        self.validate()

    def validate(self) -> None:
        """Ranges of the job's and the training's settings; errors name the option."""
        self.eval_split = self.eval_split or None  # '' = no reranking report
        check_choices(self)
        t = self.train
        for name, v in (("folds", self.folds), ("negatives", self.negatives), ("bm25_depth", self.bm25_depth),
                        ("eval_depth", self.eval_depth), ("epochs", t.epochs), ("max_length", t.max_length),
                        ("groups_per_batch", t.groups_per_batch)):
            if v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}", field=name)
        if self.max_eval_queries is not None and self.max_eval_queries < 1:
            raise ConfigError(f"--max-eval-queries must be >= 1, got {self.max_eval_queries}", field="max_eval_queries")
        for name, v in (("lr", t.lr), ("head_lr", t.head_lr)):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {v}", field=name)
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {t.warmup_ratio}", field="warmup_ratio")
        if not (math.isfinite(t.listwise_weight) and t.listwise_weight >= 0):
            raise ConfigError(f"--listwise-weight must be >= 0, got {t.listwise_weight}", field="listwise_weight")


FOLD_DONE = "fold.json"


def _legacy(out: Path) -> bool:
    """A fold set from before run.json: its folds.json or a finished fold."""
    return (out / FOLDS_FILE).is_file() or (out / "report.json").is_file() or any(out.glob(f"*/{FOLD_DONE}"))


# report.json, written last, marks the job finished (the job service reads it as the result)
FOLDER = Layout("train-reranker", done_file="report.json", noun="fold set", redo="train it again", legacy=_legacy)


def _job_key(job: RerankerJob) -> str:
    """What the fold set depends on: every setting but the output folder and how to treat it."""
    return fingerprint({k: v for k, v in asdict(job).items() if k not in ("out", "overwrite", "resume")})


def _fold_key(job: RerankerJob, train_q: list[str]) -> str:
    """What a fold's model depends on: the training settings, the data and the fold's queries."""
    d = {"train": asdict(job.train), "data": job.data, "split": job.split, "negatives": job.negatives,
         "bm25_depth": job.bm25_depth, "queries": train_q}
    return fingerprint(d)


def fold_assignment(qids: list[str], k: int, seed: int) -> dict[str, int]:
    """Seeded, balanced assignment of queries to ``k`` folds."""
    order = np.random.default_rng(seed).permutation(len(qids))
    return {qids[i]: int(j % k) for j, i in enumerate(order)}


def bm25_groups(col: Collection, texts: list[str], bm25: BM25Index, qids: list[str], n_neg: int, depth: int,
                seed: int) -> list[Group]:
    """One group per (query, positive): ``n_neg`` negatives sampled from BM25's top ``depth`` non-positives."""
    res_docs, _ = bm25.search_arrays([col.queries[q] for q in qids], k=depth + 10, show_progress=False)
    groups: list[Group] = []
    rng = np.random.default_rng(seed)
    pos_of = {d: i for i, d in enumerate(col.doc_ids)}
    for q, row in zip(qids, res_docs, strict=True):
        positives = {d for d, g in col.qrels[q].items() if g >= 1}
        pool = [int(d) for d in row if d >= 0 and col.doc_ids[int(d)] not in positives][:depth]
        if not pool or not positives:
            continue
        for p in sorted(positives):
            pick = rng.choice(len(pool), size=min(n_neg, len(pool)), replace=False)
            groups.append(Group(col.queries[q], texts[pos_of[p]], [texts[pool[i]] for i in sorted(pick)]))
    return groups


def rerank_eval(model_dir: Path, data: str, split: str, depth: int, max_length: int,
                max_queries: int | None = None) -> dict[str, float]:
    """nDCG@10 etc. of BM25 top-``depth`` reranked by the fold set (mean of fold logits), vs BM25 alone."""
    from retriever.rerank import load_reranker, score_with_cache

    col = load_collection(data, split)
    qids = sorted(col.queries)[:max_queries] if max_queries else sorted(col.queries)
    qrels = {q: col.qrels[q] for q in qids}
    texts = col.doc_texts()
    bm25 = BM25Index().index(col.doc_ids, texts, show_progress=False)
    run = bm25.search([col.queries[q] for q in qids], k=depth, query_ids=qids, show_progress=False)
    reranker = load_reranker(str(model_dir), max_length=max_length)
    pos_of = {d: i for i, d in enumerate(col.doc_ids)}
    kq, kd, pairs = [], [], []
    for q in qids:
        for d in run[q]:
            kq.append(q), kd.append(d), pairs.append((col.queries[q], texts[pos_of[d]]))
    scores, _ = score_with_cache(reranker, kq, kd, pairs, None)
    reranked: dict[str, dict[str, float]] = {}
    for q, d, s in zip(kq, kd, scores, strict=True):
        reranked.setdefault(q, {})[d] = float(s)
    base = M.evaluate(qrels, run)
    rr = M.evaluate(qrels, reranked)
    sig = M.randomization_test(M.per_query(qrels, run, ["ndcg@10"])["ndcg@10"],
                               M.per_query(qrels, reranked, ["ndcg@10"])["ndcg@10"])
    return {"split": split, "depth": depth, "queries": len(qids), "bm25": base, "reranked": rr,
            "p_value_ndcg@10": sig["p_value"]}


def run_train_reranker(job: RerankerJob) -> dict:
    """Train (or, with ``resume``, finish) the fold set in ``job.out``. The run folder (``runfolder``): a fold
    set with the same settings is resumed unless finished; ``overwrite`` replaces it, except that with ``resume``
    too (the job service) a fold set with the same settings is resumed, its finished folds kept."""
    out = prepare(job.out, FOLDER, _job_key(job), overwrite=job.overwrite, resume_same=job.resume,
                  config=asdict(job)).out
    (out / FOLDS_FILE).unlink(missing_ok=True)  # a half-retrained fold set must never look usable
    t0 = time.perf_counter()
    col = load_collection(job.data, job.split)
    texts = col.doc_texts()
    bm25 = BM25Index().index(col.doc_ids, texts)
    qids = sorted(col.qrels)
    assignment = fold_assignment(qids, job.folds, job.train.seed) if job.folds > 1 else {}
    models, stats = [], []
    for k in range(job.folds):
        train_q = [q for q in qids if assignment.get(q, -1) != k] if job.folds > 1 else qids
        name = f"fold_{k}" if job.folds > 1 else "model"
        done, key = out / name / FOLD_DONE, _fold_key(job, train_q)
        kept = json.loads(done.read_text()) if job.resume and done.is_file() else {}
        if kept.get("key") == key:
            logger.info("%s: finished by an earlier run of this job, kept", name)
            stats.append(kept["stats"])
        else:
            groups = bm25_groups(col, texts, bm25, train_q, job.negatives, job.bm25_depth, job.train.seed + k)
            logger.info("training %s on %d queries (%d groups)", name, len(train_q), len(groups))
            with stage(name):
                stats.append({"model": name, "train_queries": len(train_q),
                              **train_cross_encoder(groups, out / name, job.train)})
            write_json(done, {"key": key, "stats": stats[-1]})  # after the weights: marks the fold finished
        models.append(name)
    meta = {"folds": job.folds, "models": models, "assignment": assignment, "data": job.data, "split": job.split,
            "backbone": job.train.backbone, "train_args": asdict(job.train), "negatives": job.negatives,
            "bm25_depth": job.bm25_depth, "training": stats}
    write_json(out / FOLDS_FILE, meta)
    report = {**meta, "train_seconds": time.perf_counter() - t0}
    report.pop("assignment")
    if job.eval_split:
        with stage("evaluate"):
            report["eval"] = rerank_eval(out, job.data, job.eval_split, job.eval_depth, job.train.max_length,
                                         job.max_eval_queries)
    write_text(out / "report.md", render(report))
    finish(out, FOLDER, report)  # report.json, last: the service reads it as "finished"
    return report


def render(r: dict) -> str:
    lines = [f"# Cross-encoder fold set: {r['data']}/{r['split']}, {r['folds']} fold(s)", "",
             f"Backbone `{r['backbone']}` + new scoring head; BM25 negatives ({r['negatives']} per positive from "
             f"the top {r['bm25_depth']}); max_length {r['train_args']['max_length']}, epochs "
             f"{r['train_args']['epochs']}. " + ("Each fold's model was trained without that fold's queries."
                                                  if r["folds"] > 1 else "**One model trained on every query: "
                                                  "it will judge queries it was trained on (use --folds 2+).**"),
             "",
             "| model | train queries | groups | steps | seconds | last loss |", "|---|---|---|---|---|---|"]
    for s in r["training"]:
        lines.append(f"| {s['model']} | {s['train_queries']} | {s['groups']} | {s['steps']} | {s['seconds']:.0f} "
                     f"| {s['last_loss']:.3f} |")
    if "eval" in r:
        e = r["eval"]
        lines += ["", f"## Reranking BM25 top-{e['depth']} on held-out {e['split']} ({e['queries']} queries)", "",
                  "| system | nDCG@10 | MRR@10 | Recall@100 | MAP |", "|---|---|---|---|---|"]
        for name in ("bm25", "reranked"):
            m = e[name]
            lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | {m['map']:.4f} |")
        lines.append(f"\nPaired randomization test on nDCG@10: p = {e['p_value_ndcg@10']:.4f}")
    return "\n".join(lines) + "\n"
