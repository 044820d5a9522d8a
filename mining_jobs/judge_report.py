"""The judge report: how good a false-negative judge is on held-out queries, next to the retrievers whose
candidates it judges. Ranking (BM25 top-k reranked, every query of the split), ROC-AUC of positives against
mined candidates, and, on a collection with hidden positives, the filter's recall and cost across margins.
Any judge: a hub cross-encoder, a fold set, a `hardneg train-judge` folder, or a retriever (bm25, dense,
hybrid) as the baseline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retriever import metrics as M
from retriever.bm25 import BM25Index
from retriever.data import Collection, load_collection
from retriever.dense_index import DenseIndex
from retriever.encoder import EmbeddingCache, Encoder, encode_corpus
from retriever.judge import Corpus, EnsembleJudge, is_judge, roc_auc
from retriever.text import TokenizerConfig

from .config import FilterSection
from .filtering import filter_reason

logger = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "dense", "hybrid")
REL_MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
ABS_MARGINS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)


class Setting:
    """One collection split with its BM25 index and base bi-encoder embeddings, shared by every judge."""

    def __init__(self, data: str, split: str, dense_model: str = "default") -> None:
        self.col: Collection = load_collection(data, split)
        self.qids = sorted(q for q in self.col.qrels if any(g >= 1 for g in self.col.qrels[q].values()))
        self.qtexts = [self.col.queries[q] for q in self.qids]
        texts = self.col.doc_texts()
        self.encoder = Encoder(dense_model)
        emb = encode_corpus(self.encoder, texts, self.col.fingerprint(), EmbeddingCache())[0]
        self.corpus = Corpus(self.col.doc_ids, texts, self.col.fingerprint(),
                             BM25Index(tokenizer=TokenizerConfig()).index(self.col.doc_ids, texts, show_progress=False),
                             self.encoder, emb)
        self.dense = DenseIndex().add(self.col.doc_ids, emb)
        self._q_emb = self.encoder.encode_queries(self.qtexts, show_progress=False)

    def bm25_top(self, k: int) -> np.ndarray:
        return self.corpus.bm25.search_arrays(self.qtexts, k=k, show_progress=False)[0]

    def dense_top(self, k: int) -> np.ndarray:
        return self.dense.search_arrays(self._q_emb, k=k)[0]

    def positives(self, q: str) -> set[int]:
        return {self.corpus.positions[d] for d, g in self.col.qrels[q].items() if g >= 1}


class Scorer:
    """Scores candidate lists with one judge (or retriever) on a ``Setting``."""

    def __init__(self, spec: str, setting: Setting, max_length: int = 128) -> None:
        self.spec, self.s = spec, setting
        self.judge = None
        if spec in RETRIEVERS:
            self.kind = spec
        elif is_judge(spec):
            self.kind = "ensemble"
            self.judge = EnsembleJudge(spec, ce_max_length=max_length).bind(setting.corpus, EmbeddingCache(),
                                                                             _score_cache())
        else:
            from retriever.judge import load_judge

            self.kind = "cross-encoder"
            self.judge = load_judge(spec, max_length)

    def score(self, docs: Sequence[np.ndarray]) -> list[np.ndarray]:
        s = self.s
        if self.kind == "bm25":
            return [x.astype(np.float64) for x in s.corpus.bm25.score_docs(s.qtexts, docs)]
        if self.kind == "dense":
            return [s.corpus.emb[d] @ s._q_emb[i] for i, d in enumerate(docs)]
        if self.kind == "hybrid":
            n = len(s.corpus.doc_ids)
            bm, dn = s.bm25_top(min(1000, n)), s.dense_top(min(1000, n))
            return [rrf_scores(bm[i], dn[i], d) for i, d in enumerate(docs)]
        if self.kind == "ensemble":
            return [x.astype(np.float64) for x in self.judge.score_docs(s.qids, s.qtexts, docs)]
        from retriever.rerank import score_lists

        scores, _ = score_lists(self.judge, s.qids, s.qtexts, docs, s.corpus.doc_ids, s.corpus.texts, _score_cache())
        return [x.astype(np.float64) for x in scores]


def rrf_scores(bm25_top: np.ndarray, dense_top: np.ndarray, docs: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion of ``docs`` by their ranks in two top lists (corpus positions, -1 = empty slot);
    a document absent from a list gets nothing from it."""
    ranks = [{int(x): r for r, x in enumerate(top, start=1) if x >= 0} for top in (bm25_top, dense_top)]
    return np.array([sum(1.0 / (k + r[x]) for r in ranks if x in r) for x in np.asarray(docs).tolist()])


def _score_cache():
    from retriever.rerank import ScoreCache

    return ScoreCache()


def rerank_quality(scorer: Scorer, depth: int = 100) -> dict:
    """nDCG@10 and MRR@10 of BM25 top-``depth`` reordered by the judge, over every query of the split (a
    query BM25 misses entirely scores 0), with per-query values for paired tests."""
    s = scorer.s
    top = s.bm25_top(depth)
    docs = [row[row >= 0] for row in top]
    scores = scorer.score(docs)
    run = {q: {s.corpus.doc_ids[d]: float(v) for d, v in zip(dd.tolist(), sc, strict=True)}
           for q, dd, sc in zip(s.qids, docs, scores, strict=True)}
    qrels = {q: s.col.qrels[q] for q in s.qids}
    per_q = M.per_query(qrels, run, ["ndcg@10", "mrr@10"])
    return {"queries": len(s.qids), "depth": depth, **{m: float(np.mean(list(v.values()))) for m, v in per_q.items()},
            "per_query_ndcg@10": per_q["ndcg@10"]}


def mined_pools(s: Setting, depth: int) -> list[np.ndarray]:
    """What a mining job would judge: BM25 + dense top-``depth``, labelled positives removed."""
    bm, dn = s.bm25_top(depth), s.dense_top(depth)
    out = []
    for i, q in enumerate(s.qids):
        pos = s.positives(q)
        seen = dict.fromkeys(int(d) for d in (*bm[i].tolist(), *dn[i].tolist()) if d >= 0 and d not in pos)
        out.append(np.fromiter(seen, dtype=np.int64, count=len(seen)))
    return out


def separation(scorer: Scorer, pools: list[np.ndarray]) -> dict:
    """ROC-AUC of the labelled positives against the mined candidates: per query (mean) and pooled."""
    s = scorer.s
    pos = [np.array(sorted(s.positives(q)), dtype=np.int64) for q in s.qids]
    both = [np.concatenate([p, c]) for p, c in zip(pos, pools, strict=True)]
    scores = scorer.score(both)
    per_q, all_s, all_y = [], [], []
    for p, sc in zip(pos, scores, strict=True):
        y = np.r_[np.ones(len(p)), np.zeros(len(sc) - len(p))]
        a = roc_auc(y, sc)
        if not np.isnan(a):
            per_q.append(a)
        all_s.append(sc)
        all_y.append(y)
    return {"auc_per_query_mean": float(np.mean(per_q)) if per_q else float("nan"),
            "auc_pooled": roc_auc(np.concatenate(all_y), np.concatenate(all_s)),
            "positive_scores": [sc[:len(p)] for p, sc in zip(pos, scores, strict=True)],
            "candidate_scores": [sc[len(p):] for p, sc in zip(pos, scores, strict=True)]}


def margin_sweep(sep: dict, pools: list[np.ndarray], s: Setting, planted: dict[str, set[tuple[str, str]]],
                 n_keep: int = 3, reduce: str = "min") -> list[dict]:
    """For each margin rule and value: share of each kind of planted false negative the judge filters, share
    of the other candidates it filters, and queries keeping >= ``n_keep`` negatives. Uses the mining
    filter's own rule (``filtering.filter_reason``)."""
    from .filtering import reduce_positive

    kinds = [[next((k for k, v in planted.items() if (q, s.corpus.doc_ids[d]) in v), None) for d in pool.tolist()]
             for q, pool in zip(s.qids, pools, strict=True)]  # the kind of planted false negative, or None
    refs = [reduce_positive(list(p), reduce) for p in sep["positive_scores"]]
    rows = []
    for rule, margins in (("relative", REL_MARGINS), ("absolute", ABS_MARGINS)):
        for m in margins:
            cfg = FilterSection(relative_margin=m if rule == "relative" else None,
                                absolute_margin=m if rule == "absolute" else None)
            hit = {k: 0 for k in planted}
            total = {k: 0 for k in planted}
            other_f = other_n = keep_ok = 0
            for i in range(len(s.qids)):
                left = 0
                for kind, sc in zip(kinds[i], sep["candidate_scores"][i], strict=True):
                    filtered = filter_reason(float(sc), refs[i], cfg) is not None
                    if kind is None:
                        other_n += 1
                        other_f += filtered
                        left += not filtered
                    else:
                        total[kind] += 1
                        hit[kind] += filtered
                keep_ok += left >= n_keep
            rows.append({"rule": rule, "margin": m,
                         **{f"{k}_recall": hit[k] / total[k] if total[k] else float("nan") for k in planted},
                         **{f"{k}_in_pool": total[k] for k in planted},
                         "other_candidates_filtered": other_f / max(other_n, 1),
                         f"queries_keeping_{n_keep}": keep_ok / max(len(s.qids), 1)})
    return rows


def positive_aware_point(sep: dict, pools: list[np.ndarray], s: Setting, planted: dict[str, set[tuple[str, str]]],
                         max_cost: float = 0.25, n_keep: int = 3, use_cosine: bool = True) -> dict:
    """The positive-aware rule as ``filter.auto_threshold`` fits it (``judge_check.fit_positive_rule``): on the
    split's own queries with two or more labelled positives, each hidden in turn; then applied to every
    query's candidates with the cosine to its labelled positives, and measured on the planted false
    negatives, which the fit treats as it would in a real job: unlabelled, among the other candidates.
    ``use_cosine=False``: the judge's score alone, threshold fitted the same way."""
    from .judge_check import fit_positive_rule, loo_rows, population_rows

    pos = [sorted(s.positives(q)) for q in s.qids]
    scores = [np.r_[p, c] for p, c in zip(sep["positive_scores"], sep["candidate_scores"], strict=True)]
    pool_lists = [p + c.tolist() for p, c in zip(pos, pools, strict=True)]
    hidden, others = loo_rows(scores, pos, pool_lists, s.corpus.emb)
    if not len(hidden) or not len(others):
        return {"fitted": False, "why": "no query with two or more labelled positives"}
    rule = fit_positive_rule(hidden, others, max_cost, use_cosine,
                             population=population_rows(scores, pos, pool_lists, s.corpus.emb))
    w = np.array([rule["logit_weight"], rule["positive_cosine_weight"]])
    hit = {k: 0 for k in planted}
    total = {k: 0 for k in planted}
    other_f = other_n = keep_ok = 0
    for i, q in enumerate(s.qids):
        cand = pools[i]
        cos = ((s.corpus.emb[cand] @ s.corpus.emb[pos[i]].T).max(axis=1) if len(cand) and pos[i]
               else np.zeros(len(cand)))
        z = np.c_[sep["candidate_scores"][i], cos] @ w
        left = 0
        for d, zz in zip(cand.tolist(), z.tolist(), strict=True):
            filtered = zz > rule["score_threshold"]
            kind = next((k for k, v in planted.items() if (q, s.corpus.doc_ids[d]) in v), None)
            if kind is None:
                other_n += 1
                other_f += filtered
                left += not filtered
            else:
                total[kind] += 1
                hit[kind] += filtered
        keep_ok += left >= n_keep
    fit = {"fit_recall": rule.pop("recall"), "fit_cost": rule.pop("cost")}
    return {"fitted": True, **rule, "fit_queries": sum(len(p) >= 2 for p in pos), "fit_hidden": len(hidden), **fit,
            **{f"{k}_recall": hit[k] / total[k] if total[k] else float("nan") for k in planted},
            **{f"{k}_in_pool": total[k] for k in planted},
            "other_candidates_filtered": other_f / max(other_n, 1),
            f"queries_keeping_{n_keep}": keep_ok / max(len(s.qids), 1)}


def judge_metrics(scorer: Scorer, rerank_depth: int = 100, pool_depth: int = 30) -> dict:
    t0 = time.perf_counter()
    rr = rerank_quality(scorer, rerank_depth)
    sep = separation(scorer, mined_pools(scorer.s, pool_depth))
    return {"rerank": rr, "auc_per_query_mean": sep["auc_per_query_mean"], "auc_pooled": sep["auc_pooled"],
            "seconds": time.perf_counter() - t0}


def paired_p(a: dict[str, float], b: dict[str, float]) -> float:
    return float(M.randomization_test(a, b)["p_value"])


def load_planted(path: str | Path) -> dict[str, set[tuple[str, str]]]:
    """``{"hidden_positives": [[qid, did], ...], "near_duplicates": [...]}`` as sets of pairs."""
    raw = json.loads(Path(path).read_text())
    return {k: {(str(q), str(d)) for q, d in v} for k, v in raw.items()}


def run_judge_report(judges: Sequence[str], data: str = "scifact", split: str = "test", rerank_depth: int = 100,
                     pool_depth: int = 30, max_length: int = 128, planted_data: str = "", planted_split: str = "",
                     planted_file: str = "", margin: tuple[str, float] = ("relative", 0.1)) -> dict:
    """Every judge on ``data/split`` (ranking, separation) and, with a planted collection, its filter's
    recall and cost across margins there. Per-query nDCG@10 feed paired tests against BM25 and hybrid."""
    setting = Setting(data, split)
    out: dict = {"data": data, "split": split, "rerank_depth": rerank_depth, "pool_depth": pool_depth,
                 "max_length": max_length, "judges": {}}
    planted = None
    if planted_data:
        p_setting = Setting(planted_data, planted_split)
        planted = load_planted(planted_file)
        p_pools = mined_pools(p_setting, pool_depth)
        out["planted"] = {"data": planted_data, "split": planted_split, "file": planted_file,
                          **{k: len([1 for q, _ in v if q in set(p_setting.qids)]) for k, v in planted.items()}}
    for spec in judges:
        logger.info("judge %s", spec)
        r = judge_metrics(Scorer(spec, setting, max_length), rerank_depth, pool_depth)
        if planted is not None:
            sc = Scorer(spec, p_setting, max_length)
            sep = separation(sc, p_pools)
            sweep = margin_sweep(sep, p_pools, p_setting, planted)
            r["planted_sweep"] = sweep
            r["planted_at_margin"] = next(x for x in sweep if x["rule"] == margin[0] and x["margin"] == margin[1])
            r["planted_positive_aware"] = positive_aware_point(sep, p_pools, p_setting, planted)
            r["planted_score_threshold"] = positive_aware_point(sep, p_pools, p_setting, planted, use_cosine=False)
        out["judges"][spec] = r
    base = out["judges"].get("bm25") or judge_metrics(Scorer("bm25", setting), rerank_depth, pool_depth)
    hyb = out["judges"].get("hybrid") or judge_metrics(Scorer("hybrid", setting), rerank_depth, pool_depth)
    for r in out["judges"].values():
        pq_ = r["rerank"]["per_query_ndcg@10"]
        r["p_vs_bm25"] = paired_p(base["rerank"]["per_query_ndcg@10"], pq_)
        r["p_vs_hybrid"] = paired_p(hyb["rerank"]["per_query_ndcg@10"], pq_)
    out["margin"] = {"rule": margin[0], "value": margin[1]}
    return out


def render_fitted_rules(r: dict, kinds: list[str]) -> list[str]:
    """The rules ``filter.auto_threshold`` fits (on the split's own multi-positive queries, each positive hidden
    in turn, at most 25% of all the split's candidates), measured on the planted false negatives."""
    lines = ["### Fitted rules (as `filter.auto_threshold` fits them on the labelled positives)", "",
             "Fitted on the split's own queries with two or more labelled positives, each hidden in turn, filtering "
             "at most 25% of the candidates of all the split's queries; then measured on the planted false negatives, which the fit "
             "never has as positives (unlabelled, they sit among the other candidates, as in a real job). "
             "`positive-aware`: judge score + w x cosine to the nearest labelled positive; `score "
             "alone`: the judge's score with a fitted threshold.", "",
             "| judge | rule | filter score | threshold | fit recall / cost | "
             + " | ".join(f"{k.replace('_', ' ')} recall" for k in kinds) + " | other candidates filtered | "
             "queries keeping >= 3 |", "|---|---|---|---|---|" + "---|" * len(kinds) + "---|---|"]
    for name, j in r["judges"].items():
        for label, key in (("positive-aware", "planted_positive_aware"), ("score alone", "planted_score_threshold")):
            x = j.get(key)
            if not x or not x.get("fitted"):
                continue
            lines.append(f"| {name} | {label} | {x['logit_weight']:.3g} x score + {x['positive_cosine_weight']:.3g} x "
                         f"cosine | {x['score_threshold']:.4g} | {x['fit_recall']:.1%} / {x['fit_cost']:.1%} | "
                         + " | ".join(f"{x[f'{k}_recall']:.1%}" for k in kinds)
                         + f" | {x['other_candidates_filtered']:.1%} | {x['queries_keeping_3']:.1%} |")
    return [*lines, ""]


def render_report(r: dict) -> str:
    lines = [f"# Judges on {r['data']}/{r['split']}", "",
             f"Ranking: BM25 top-{r['rerank_depth']} reordered by each judge, every query of the split. "
             f"Separation: ROC-AUC of the labelled positives against the mined candidates (BM25 + dense "
             f"top-{r['pool_depth']}, positives removed).", "",
             "| judge | nDCG@10 | MRR@10 | p vs bm25 | p vs hybrid | AUC (per query) | AUC (pooled) |",
             "|---|---|---|---|---|---|---|"]
    for name, j in r["judges"].items():
        lines.append(f"| {name} | {j['rerank']['ndcg@10']:.4f} | {j['rerank']['mrr@10']:.4f} | {j['p_vs_bm25']:.4f} "
                     f"| {j['p_vs_hybrid']:.4f} | {j['auc_per_query_mean']:.4f} | {j['auc_pooled']:.4f} |")
    if "planted" in r:
        p = r["planted"]
        kinds = [k for k in ("hidden_positives", "near_duplicates") if k in p]
        lines += ["", f"## Planted false negatives ({p['data']}/{p['split']}: "
                  + ", ".join(f"{p[k]} {k.replace('_', ' ')}" for k in kinds) + ")", "",
                  "Each judge alone (no cosine rule), mining's own filter rule against the query's lowest positive "
                  "score. Recall: share of the planted false negatives among the candidates that the judge "
                  "filters. Cost: share of the other candidates it filters.", ""]
        lines += render_fitted_rules(r, kinds)
        for name, j in r["judges"].items():
            lines += [f"### {name}", "", "| rule | margin | " + " | ".join(f"{k.replace('_', ' ')} recall" for k in kinds)
                      + " | other candidates filtered | queries keeping >= 3 |",
                      "|---|---|" + "---|" * len(kinds) + "---|---|"]
            for x in j["planted_sweep"]:
                lines.append(f"| {x['rule']} | {x['margin']} | " + " | ".join(f"{x[f'{k}_recall']:.1%}" for k in kinds)
                             + f" | {x['other_candidates_filtered']:.1%} | {x['queries_keeping_3']:.1%} |")
            lines.append("")
    return "\n".join(lines) + "\n"
