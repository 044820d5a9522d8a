"""The train-judge job: fit a learned false-negative judge on a split's qrels. Optionally trains a
cross-fitted bi-encoder fold set first (each fold's model never sees that fold's queries), then fits a
pairwise-logistic combination of BM25, bi-encoder and cross-encoder features on the split's candidates
(BM25 + dense top-k and the positives), calibrates it (Platt), and reports it against the retrievers."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from retriever.data import Collection, load_collection
from retriever.dense_index import DenseIndex
from retriever.encoder import EmbeddingCache
from retriever.judge import (
    FEATURES,
    FOLDS_FILE,
    JUDGE_FILE,
    BiEncoderFolds,
    Corpus,
    FeatureSource,
    fit_platt,
    fit_ranker,
    mean_ndcg10,
    roc_auc,
    save_judge,
)
from retriever.progress import stage

from .files import write_json, write_parquet, write_text
from .judge_report import rrf_scores
from .runfolder import Layout, fingerprint, prepare
from .settings import ConfigError
from .train_reranker import fold_assignment

logger = logging.getLogger(__name__)


class JudgeJobError(ConfigError):
    """Bad train-judge settings or an output folder that must not be touched."""


@dataclass
class JudgeJob:
    """Settings of ``hardneg train-judge``; each field is a command-line option."""

    data: str = field(default="scifact", metadata={"help": "collection whose qrels train the judge"})
    split: str = field(default="train:fit", metadata={"help": "split of held-in queries (never dev or test)"})
    out: str = field(default="runs/judge", metadata={"help": "output folder"})
    features: str = field(default="bm25,bm25_log,dense,dense_gap", metadata={
        "help": "comma-separated features: " + ", ".join(FEATURES)})
    dense_model: str = field(default="default", metadata={"help": "base bi-encoder of the dense features"})
    cross_encoder: str = field(default="", metadata={"help": "cross-encoder or fold set for the 'ce' feature"})
    ce_max_length: int = field(default=128, metadata={"help": "token limit of the cross-encoder"})
    folds: int = field(default=2, metadata={"help": "folds of the cross-fitted bi-encoder (feature 'bi')"})
    bi_steps: int = field(default=40, metadata={"help": "training steps of each bi-encoder fold model"})
    bi_lr: float = field(default=3e-5, metadata={"help": "learning rate of the bi-encoder fold models"})
    bi_batch_size: int = field(default=32, metadata={"help": "batch size (in-batch negatives) of the fold models"})
    depth: int = field(default=30, metadata={"help": "BM25 and dense candidates per query to fit on"})
    c_grid: str = field(default="0.01,0.1,1", metadata={"help": "inverse L2 strengths tried (grouped 2-fold CV)"})
    seed: int = field(default=42, metadata={"help": "seed of the folds, training and pair sampling"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished judge in the output folder"})

    def feature_list(self) -> list[str]:
        feats = [f.strip() for f in self.features.split(",") if f.strip()]
        bad = [f for f in feats if f not in FEATURES]
        if bad or not feats:
            raise JudgeJobError(f"--features: unknown {bad or 'empty list'}; expected some of {', '.join(FEATURES)}", field="features")
        if "ce" in feats and not self.cross_encoder:
            raise JudgeJobError("--features: 'ce' needs --cross-encoder", field="features")
        if "bi" in feats and (self.folds < 2 or self.bi_steps < 1):
            raise JudgeJobError("--features: 'bi' needs --folds >= 2 and --bi-steps >= 1", field="features")
        return feats

    def validate(self) -> None:
        self.feature_list()
        for name in ("depth", "bi_batch_size", "ce_max_length"):
            if getattr(self, name) < 1:
                raise JudgeJobError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", field=name)
        if not self.bi_lr > 0:
            raise JudgeJobError(f"--bi-lr must be > 0, got {self.bi_lr}", field="bi_lr")
        try:
            grid = [float(c) for c in self.c_grid.split(",")]
        except ValueError:
            raise JudgeJobError(f"--c-grid {self.c_grid!r}: expected comma-separated numbers", field="c_grid") from None
        if not grid or min(grid) <= 0:
            raise JudgeJobError(f"--c-grid {self.c_grid!r}: every value must be > 0", field="c_grid")
        if self.split.split(":")[0] == "test" or self.split.endswith(":dev"):
            raise JudgeJobError(f"--split {self.split!r}: a judge is trained on held-in queries, never on dev or "
                                "test queries (use train or train:fit)", field="split")


def train_bi_folds(job: JudgeJob, col: Collection, qids: list[str], out: Path) -> Path:
    """A bi-encoder fold set in ``out``: model ``k`` fine-tunes the dense model on the (query, positive)
    pairs of every fold but ``k`` with in-batch negatives only (mined negatives would teach the judge that
    unlabelled positives are irrelevant). Finished fold models are kept."""
    from .train import TrainConfig, run_training

    assignment = fold_assignment(qids, job.folds, job.seed)
    texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
    models, stats = [], []
    for k in range(job.folds):
        name = f"fold_{k}"
        fold_dir = out / name
        rows = [(q, texts[d]) for q in qids if assignment[q] != k for d, g in sorted(col.qrels[q].items()) if g >= 1]
        data = out / f"{name}.pairs.parquet"
        write_parquet(pa.table({"query": [r[0] for r in rows], "positive": [r[1] for r in rows]}), data)
        cfg = TrainConfig(triples=str(data), out=str(fold_dir / "train"), base_model=job.dense_model, negatives=0,
                          batch_size=job.bi_batch_size, max_steps=job.bi_steps, lr=job.bi_lr, seed=job.seed + k)
        metrics = fold_dir / "train" / "metrics.json"
        if metrics.is_file() and json.loads((fold_dir / "train" / "train.json").read_text())["fingerprint"] \
                == cfg.fingerprint():
            summary = json.loads(metrics.read_text())
        else:
            cfg.overwrite = (fold_dir / "train").exists() and not (fold_dir / "train" / "checkpoints").exists()
            with stage(f"bi-encoder {name}"):
                summary = run_training(cfg)
        models.append(f"{name}/train/model")
        stats.append({"model": name, "pairs": len(rows), "steps": summary["steps"],
                      "seconds": summary["seconds"]["train"]})
    write_json(out / FOLDS_FILE, {"kind": "bi-encoder", "models": models, "assignment": assignment,
                                  "data": job.data, "split": job.split, "base_model": job.dense_model,
                                  "steps": job.bi_steps, "lr": job.bi_lr, "training": stats})
    return out


def candidate_pool(col: Collection, corpus: Corpus, qids: list[str], depth: int, with_positives: bool,
                   dense_index: DenseIndex | None = None, encoder=None) -> list[np.ndarray]:
    """Per query: BM25 top-``depth`` and (with an index) dense top-``depth`` corpus positions, unioned, plus
    the positives when asked; in first-seen order."""
    bm, _ = corpus.bm25.search_arrays([col.queries[q] for q in qids], k=depth, show_progress=False)
    dn = None
    if dense_index is not None:
        dn, _ = dense_index.search_arrays(encoder.encode_queries([col.queries[q] for q in qids], show_progress=False),
                                          k=depth)
    out = []
    for i, q in enumerate(qids):
        seen = dict.fromkeys(int(d) for d in bm[i] if d >= 0)
        if dn is not None:
            seen.update(dict.fromkeys(int(d) for d in dn[i] if d >= 0))
        if with_positives:
            seen.update(dict.fromkeys(corpus.positions[d] for d, g in col.qrels[q].items() if g >= 1))
        out.append(np.fromiter(seen, dtype=np.int64, count=len(seen)))
    return out


def labels_of(col: Collection, corpus: Corpus, qids: list[str], pools: list[np.ndarray]) -> list[np.ndarray]:
    return [np.array([1.0 if col.qrels[q].get(corpus.doc_ids[d], 0) >= 1 else 0.0 for d in pool])
            for q, pool in zip(qids, pools, strict=True)]


def positive_rule_of(logit: np.ndarray, y: np.ndarray, g: np.ndarray, pools: list[np.ndarray], emb: np.ndarray,
                     max_cost: float = 0.25) -> dict | None:
    """The positive-aware filter rule (``judge_check.fit_positive_rule``) on the training queries with two or
    more positives, each hidden in turn: stored with the judge, so a mining job whose own queries have one
    positive each (``filter.auto_threshold``) can use it. None without such queries."""
    from .judge_check import fit_positive_rule, loo_rows, population_rows

    scores, positives, pool_lists = [], [], []
    for i, pool in enumerate(pools):
        m = g == i
        s, lab = logit[m], y[m]
        pos, oth = np.flatnonzero(lab == 1), np.flatnonzero(lab == 0)
        if not len(pos) or not len(oth):
            continue
        order = np.r_[pos, oth]
        scores.append(s[order])
        pool_lists.append(np.asarray(pool)[order].tolist())
        positives.append(np.asarray(pool)[pos].tolist())
    hidden, others = loo_rows(scores, positives, pool_lists, emb)  # only queries with two or more positives
    if not len(hidden):
        return None
    population = population_rows(scores, positives, pool_lists, emb)  # the cost bound: every training query
    rule = fit_positive_rule(hidden, others, max_cost, population=population)
    return {**rule, "max_cost": max_cost, "fit_queries": sum(len(p) >= 2 for p in positives),
            "hidden_positives": len(hidden), "candidates": len(others), "cost_queries": len(scores),
            "cost_candidates": len(population)}


def _legacy(out: Path) -> bool:
    """A judge folder from before job.json: its judge.json."""
    return (out / JUDGE_FILE).is_file()


# job.json first, judge.json (save_judge) last; --overwrite keeps the fold models of a judge with the same settings
FOLDER = Layout("train-judge", state_file="job.json", done_file=JUDGE_FILE, key_field="key", noun="judge",
                redo="train it again", legacy=_legacy)


def _key(job: JudgeJob) -> str:
    return fingerprint({k: v for k, v in asdict(job).items() if k not in ("overwrite", "out")})


def run_train_judge(job: JudgeJob) -> dict:
    job.validate()
    feats = job.feature_list()
    out = prepare(job.out, FOLDER, _key(job), overwrite=job.overwrite, resume_same=True,
                  extra={"job": asdict(job)}).out
    t0 = time.perf_counter()
    col = load_collection(job.data, job.split)
    qids = sorted(q for q in col.qrels if any(g >= 1 for g in col.qrels[q].values()))
    if len(qids) < 4:
        raise JudgeJobError(f"{job.data}/{job.split}: {len(qids)} queries with a positive; a judge needs at least 4")
    timings: dict[str, float] = {}
    bi = None
    if "bi" in feats:
        t = time.perf_counter()
        bi = BiEncoderFolds(train_bi_folds(job, col, qids, out / "bi"))
        timings["bi_encoder_folds_s"] = time.perf_counter() - t
    ce = None
    if "ce" in feats:
        from retriever.rerank import ScoreCache, load_reranker

        ce = load_reranker(job.cross_encoder, job.ce_max_length)
    from retriever.bm25 import BM25Index
    from retriever.encoder import Encoder, encode_corpus
    from retriever.text import TokenizerConfig

    t = time.perf_counter()
    texts = col.doc_texts()
    encoder = Encoder(job.dense_model)
    cache = EmbeddingCache()
    emb = encode_corpus(encoder, texts, col.fingerprint(), cache)[0]
    corpus = Corpus(col.doc_ids, texts, col.fingerprint(),
                    BM25Index(tokenizer=TokenizerConfig()).index(col.doc_ids, texts, show_progress=False), encoder, emb)
    dense = DenseIndex().add(col.doc_ids, emb)
    pools = candidate_pool(col, corpus, qids, job.depth, True, dense, encoder)
    labels = labels_of(col, corpus, qids, pools)
    with stage("features"):
        src = FeatureSource(corpus, feats, job.dense_model, bi, ce, job.ce_max_length,
                            ScoreCache() if ce is not None else None).prepare(cache)
        mats = src.matrix(qids, [col.queries[q] for q in qids], pools)
    timings["features_s"] = time.perf_counter() - t
    x = np.vstack(mats)
    y = np.concatenate(labels)
    g = np.concatenate([np.full(len(p), i) for i, p in enumerate(pools)])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    # C by grouped 2-fold cross-validation on nDCG@10 of the candidate pools
    half = np.array([fold_assignment(qids, 2, job.seed + 1)[q] for q in qids])[g]
    cv, oof = {}, {}
    for c in (float(v) for v in job.c_grid.split(",")):
        s = np.empty(len(y))
        for h in (0, 1):
            w = fit_ranker(z[half != h], y[half != h], g[half != h], c, job.seed)
            s[half == h] = z[half == h] @ w
        cv[c], oof[c] = mean_ndcg10(y, s, g), s
    best_c = max(cv, key=lambda c: (cv[c], -c))
    w = fit_ranker(z, y, g, best_c, job.seed)
    raw = z @ w
    platt = fit_platt(raw, y)
    # the stored rule is fitted on out-of-fold scores: a positive it hides was never a label of its own scorer
    rule = positive_rule_of(platt[0] * oof[best_c] + platt[1], y, g, pools, emb)
    if rule is not None:
        rule["dense_model"] = job.dense_model  # the cosines' model: a job with another one is warned
    # held-in quality: the judge against each retriever's order on the same pools
    n_top = min(max(job.depth, 1000), len(corpus.doc_ids))
    bm_top, _ = corpus.bm25.search_arrays([col.queries[q] for q in qids], k=n_top, show_progress=False)
    dn_top, _ = dense.search_arrays(encoder.encode_queries([col.queries[q] for q in qids], show_progress=False), k=n_top)
    rrf = np.concatenate([rrf_scores(bm_top[i], dn_top[i], p) for i, p in enumerate(pools)])
    quality = {"judge_cv_ndcg@10": cv[best_c], "judge_in_sample_ndcg@10": mean_ndcg10(y, raw, g),
               "fused_retrieval_ndcg@10": mean_ndcg10(y, rrf, g),
               "judge_auc": roc_auc(y, raw), "fused_retrieval_auc": roc_auc(y, rrf)}
    for f in ("bm25", "dense", "bi", "ce"):
        if f in feats:
            quality[f"{f}_ndcg@10"] = mean_ndcg10(y, x[:, feats.index(f)], g)
    components = {"bi": "bi" if bi is not None else "", "ce": str(Path(job.cross_encoder).resolve()) if ce else ""}
    meta = {"key": _key(job), "job": asdict(job), "dense_model": job.dense_model, "ce_max_length": job.ce_max_length,
            "c": best_c, "cv_ndcg@10": {str(k): v for k, v in cv.items()}, "queries": len(qids),
            "candidates": int(len(y)), "positives": int(y.sum()), "held_in_quality": quality, "timings": timings,
            "positive_rule": rule,
            "seconds": time.perf_counter() - t0, "collection": {"name": col.name, "fingerprint": col.fingerprint()}}
    save_judge(out, feats, mean, std, w, platt, components, meta)
    write_text(out / "report.md", render(meta, feats, w))
    return meta


def render(meta: dict, feats: list[str], w: np.ndarray) -> str:
    q = meta["held_in_quality"]
    lines = [f"# Judge: {meta['collection']['name']}/{meta['job']['split']}", "",
             f"A calibrated pairwise-logistic combination of {', '.join(feats)}, fitted on {meta['queries']} "
             f"held-in queries ({meta['candidates']} candidates, {meta['positives']} positives; BM25 + dense top-"
             f"{meta['job']['depth']} plus the positives). L2 C = {meta['c']} chosen by grouped 2-fold CV.", "",
             "| feature | what | weight (standardized) |", "|---|---|---|"]
    lines += [f"| {f} | {FEATURES[f]} | {v:+.3f} |" for f, v in zip(feats, w, strict=True)]
    lines += ["", "## Held-in quality (candidate pools of the training queries)", "",
              "| order | nDCG@10 | ROC-AUC positives vs candidates |", "|---|---|---|",
              f"| judge (2-fold CV) | {q['judge_cv_ndcg@10']:.4f} | {q['judge_auc']:.4f} (in sample) |",
              f"| fused retrieval (RRF of BM25 and dense) | {q['fused_retrieval_ndcg@10']:.4f} | "
              f"{q['fused_retrieval_auc']:.4f} |"]
    for f in ("bm25", "dense", "bi", "ce"):
        if f"{f}_ndcg@10" in q:
            lines.append(f"| {f} alone | {q[f'{f}_ndcg@10']:.4f} | |")
    r = meta.get("positive_rule")
    lines += ["", "## Positive-aware filter rule (used by `filter.auto_threshold` where a job has nothing to fit it on)",
              ""]
    lines += ([f"Filter score = {r['logit_weight']:.3f} x logit + {r['positive_cosine_weight']:.3f} x cosine to the "
               f"nearest positive, threshold {r['score_threshold']:.3f}; fitted on {r['fit_queries']} training "
               f"queries with two or more positives, each hidden in turn: it filters {r['recall']:.1%} of the "
               f"{r['hidden_positives']} hidden positives and {r['cost']:.1%} of the candidates of "
               f"{r.get('cost_queries', r['fit_queries'])} training queries (bound {r['max_cost']:.0%})."] if r else
              ["None: no training query has two or more positives."])
    verdict = ("better than" if q["judge_cv_ndcg@10"] > q["fused_retrieval_ndcg@10"] else "**NOT better than**")
    lines += ["", f"The judge ranks {verdict} the fused retrieval it will judge. Measure it on held-out queries "
              "with `hardneg judge-report`."]
    return "\n".join(lines) + "\n"
