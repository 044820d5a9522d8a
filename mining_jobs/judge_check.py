"""The judge guard of a mining job: before filtering, rank the candidates and positives of a sample of the
job's own (held-in) queries by the judge and by the fused retrieval order it judges, and compare nDCG@10.
A judge that ranks worse than retrieval is reported loudly, or refused with ``filter.require_better_judge``."""

from __future__ import annotations

import logging
import zlib

import numpy as np

from retriever.encoder import resolve_model_name
from retriever.errors import HardnegError
from retriever.judge import mean_ndcg10, roc_auc
from retriever.rerank import score_lists

from .config import MineConfig
from .shard import candidates_of

logger = logging.getLogger(__name__)


class JudgeCheckError(HardnegError):
    """The judge ranks worse than the retrieval it judges and ``filter.require_better_judge`` is set."""


def by_crc(qids) -> list[str]:
    """Query ids in the order of the CRC32 of their ids: every sample of a job's queries takes a prefix of it,
    the same on a rerun."""
    return sorted(qids, key=lambda q: (zlib.crc32(q.encode()), q))


def judged_pools(res, cfg: MineConfig, qids: list[str]) -> tuple[list[list[int]], list[list[int]], list[np.ndarray]]:
    """For each of ``qids``: its labelled positives, its pool (the positives first, then the retrieved
    candidates that are not excluded) and the judge's scores of that pool (from the score cache where it has
    them)."""
    qtexts = [res.inp.queries[q] for q in qids]
    cands, positives = candidates_of(res, cfg, qids, qtexts)
    pools = [pos + [c.doc for c in cl if c.fate == "pending"] for cl, pos in zip(cands, positives, strict=True)]
    scores, _ = score_lists(res.reranker, qids, qtexts, pools, res.doc_ids, res.texts, res.score_cache)
    return positives, pools, scores


def check_judge(res, cfg: MineConfig) -> dict | None:
    """nDCG@10 and ROC-AUC of the judge's order and of the fused (RRF) retrieval order over each sampled
    query's pool (retrieved candidates that are not excluded, plus its labelled positives). The sample is
    the ``filter.judge_check_queries`` queries with the smallest CRC32 of their ids: the same on a rerun."""

    n = cfg.filter.judge_check_queries
    if res.reranker is None or n <= 0:
        return None
    qids = by_crc(res.qids)[:n]
    qtexts = [res.inp.queries[q] for q in qids]
    cands, positives = candidates_of(res, cfg, qids, qtexts)
    pools, labels, fused = [], [], []
    for cl, pos in zip(cands, positives, strict=True):
        by_doc = {c.doc: c for c in cl}
        pools.append([c.doc for c in cl if c.fate == "pending"] + pos)
        labels += [1.0 if d in pos else 0.0 for d in pools[-1]]
        fused += [by_doc[d].fused() if d in by_doc else 0.0 for d in pools[-1]]
    scores, n_new = score_lists(res.reranker, qids, qtexts, pools, res.doc_ids, res.texts, res.score_cache)
    y, f = np.array(labels), np.array(fused)
    g = np.concatenate([np.full(len(p), i) for i, p in enumerate(pools)])
    s = np.concatenate(scores).astype(np.float64)
    out = {"queries": len(qids), "pairs": len(y), "pairs_scored": n_new, "judge_ndcg@10": mean_ndcg10(y, s, g),
           "fused_retrieval_ndcg@10": mean_ndcg10(y, f, g), "judge_auc": roc_auc(y, s),
           "fused_retrieval_auc": roc_auc(y, f)}
    out["judge_better"] = out["judge_ndcg@10"] > out["fused_retrieval_ndcg@10"]
    msg = (f"judge check on {len(qids)} held-in queries: the judge ranks to nDCG@10 {out['judge_ndcg@10']:.4f}, "
           f"the fused BM25 + dense retrieval it judges to {out['fused_retrieval_ndcg@10']:.4f}")
    if out["judge_better"]:
        logger.info(msg)
    else:
        logger.warning("!" * 80)
        logger.warning("%s: THE JUDGE IS WORSE THAN THE RETRIEVAL IT JUDGES; its filter removes candidates "
                       "on weaker evidence than the retrieval ranks. Train a better judge (hardneg train-judge, "
                       "hardneg judge-report) before training on these negatives.", msg)
        logger.warning("!" * 80)
        if cfg.filter.require_better_judge:
            raise JudgeCheckError(f"{msg}: the judge is worse than the retrieval and filter.require_better_judge is "
                                  "set, so it will not filter; use a better judge or unset the option")
    return out


def render_check(check: dict | None) -> list[str]:
    """Lines at the top of report.md."""
    if check is None:
        return []
    verdict = ("better than" if check["judge_better"] else "**WORSE than**")
    line = (f"the judge ranks {verdict} the retrieval it judges, on {check['queries']} held-in queries: nDCG@10 "
            f"{check['judge_ndcg@10']:.4f} against {check['fused_retrieval_ndcg@10']:.4f} (fused BM25 + dense), "
            f"ROC-AUC positives vs candidates {check['judge_auc']:.4f} against {check['fused_retrieval_auc']:.4f}")
    if check["judge_better"]:
        return [f"- judge check: {line}", ""]
    return [f"> **Warning: {line}.** Its filter removes candidates on weaker evidence than the retrieval "
            "ranks: train a better judge before training on these negatives.", ""]


AUTO_MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def choose_margin(res, cfg: MineConfig) -> dict | None:
    """``filter.auto_margin``: the relative margin chosen on the job's own queries with two or more positives.
    Each positive in turn is hidden (a stand-in for an unlabelled positive) and judged against the others;
    for each margin, recall = share of hidden positives the filter removes, cost = share of the other
    candidates it removes. The chosen margin has the best recall among those costing at most
    ``filter.auto_margin_max_cost`` (ties: the lower cost, then the smaller margin); with no such queries the
    configured margin stays. Deterministic: the same inputs choose the same margin."""
    from dataclasses import replace

    from .filtering import filter_reason, reduce_positive

    if res.reranker is None or not cfg.filter.auto_margin:
        return None
    multi = [q for q in by_crc(res.qids) if len(res.inp.positives[q]) >= 2][:cfg.filter.judge_check_queries or 64]
    if not multi:
        logger.warning("filter.auto_margin: no query has two positives to hide one of; the configured margin stays")
        return {"chosen": cfg.filter.relative_margin, "why": "no query with two or more positives", "queries": 0}
    positives, _, scores = judged_pools(res, cfg, multi)
    sweep = []
    for m in AUTO_MARGINS:
        fcfg = replace(cfg.filter, relative_margin=m, absolute_margin=None)
        hit = hidden = cost = others = 0
        for s, pos in zip(scores, positives, strict=True):
            s = s.astype(np.float64)
            n_pos = len(pos)
            for h in range(n_pos):
                ref = reduce_positive([float(x) for j, x in enumerate(s[:n_pos]) if j != h],
                                      cfg.cross_encoder.positive_reduce)
                hidden += 1
                hit += filter_reason(float(s[h]), ref, fcfg) is not None
                for x in s[n_pos:]:
                    others += 1
                    cost += filter_reason(float(x), ref, fcfg) is not None
        sweep.append({"relative_margin": m, "recall": hit / hidden, "cost": cost / max(others, 1)})
    ok = [x for x in sweep if x["cost"] <= cfg.filter.auto_margin_max_cost]
    if not ok:
        best = min(sweep, key=lambda x: (x["cost"], x["relative_margin"]))
        why = f"no margin costs <= {cfg.filter.auto_margin_max_cost:.0%} of the other candidates: the cheapest"
    else:
        best = max(ok, key=lambda x: (x["recall"], -x["cost"], -x["relative_margin"]))
        why = (f"the best recall of hidden positives ({best['recall']:.1%}) among the margins that filter at most "
               f"{cfg.filter.auto_margin_max_cost:.0%} of the other candidates (this one: {best['cost']:.1%})")
    logger.info("filter.auto_margin: relative margin %s chosen on %d queries: %s", best["relative_margin"],
                len(multi), why)
    return {"chosen": best["relative_margin"], "why": why, "queries": len(multi),
            "hidden_positives": sum(len(p) for p in positives), "sweep": sweep}


AUTO_THRESHOLD_QUERIES = 256  # queries with two or more positives the positive-aware rule is fitted on, at most
MIN_FIT_HIDDEN = 10  # fewer hidden positives than this: the judge's stored rule, when it has one, is preferred


def fit_positive_rule(hidden: np.ndarray, others: np.ndarray, max_cost: float, use_cosine: bool = True,
                      population: np.ndarray | None = None) -> dict:
    """The positive-aware rule from (judge logit, cosine to the nearest other positive) rows: ``hidden`` are
    positives hidden in turn (stand-ins for unlabelled positives), ``others`` the other candidates of the same
    queries. A logistic regression (almost unregularized, deterministic) weighs the two; the threshold is the
    lowest that filters at most ``max_cost`` of the others (so the most hidden positives), then raised
    half-way to the next score while the same hidden positives stay filtered (no cost paid for nothing).
    Weights are scaled so that the logit's weight is 1 when the judge helps at all. ``use_cosine=False``: the
    judge's logit alone, only the threshold is fitted (a calibrated judge's probability bound).
    ``population``: the rows the filter will be applied to (every sampled query's candidates, with the cosine to
    its nearest labelled positive); the cost bound and the reported cost are measured on them instead of on
    ``others`` (the candidates of the multi-positive queries only, which score higher than a job's average
    candidate, so a bound measured there filters far less than ``max_cost`` of the job's candidates)."""
    from sklearn.linear_model import LogisticRegression

    hidden, others = np.asarray(hidden, dtype=np.float64), np.asarray(others, dtype=np.float64)
    if not len(hidden) or not len(others):
        raise ValueError("the positive-aware rule needs hidden positives and other candidates")
    x = np.vstack([hidden, others])
    y = np.r_[np.ones(len(hidden)), np.zeros(len(others))]
    if use_cosine:
        lr = LogisticRegression(C=1e4, max_iter=5000).fit(x, y)
        a, b = (float(v) for v in lr.coef_[0])
        if a > 0:
            a, b = 1.0, b / a
    else:
        a, b = 1.0, 0.0
    if population is not None:
        population = np.asarray(population, dtype=np.float64).reshape(-1, 2)
        if not len(population):
            raise ValueError("the population the cost bound is measured on is empty")
    zh = hidden @ np.array([a, b])
    zo = (others if population is None else population) @ np.array([a, b])
    k = int(np.floor(max_cost * len(zo) + 1e-9))  # at most k of them may score above the threshold
    srt = np.sort(zo)[::-1]
    t = float(srt[k]) if k < len(srt) else float(srt[-1]) - 1.0
    caught = zh[zh > t]
    if len(caught):  # the same hidden positives stay filtered up to just below the lowest of them
        m = float(caught.min())
        below = np.concatenate([zo[zo < m], zh[zh < m]])
        t = (max(t, float(below.max())) + m) / 2 if len(below) else t
    return {"logit_weight": a, "positive_cosine_weight": b, "score_threshold": t,
            "recall": float((zh > t).mean()), "cost": float((zo > t).mean())}


def loo_rows(scores: list[np.ndarray], positives: list[list[int]], pools: list[list[int]], emb: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(logit, cosine to the nearest remaining positive) of each positive hidden in turn, and of every other
    candidate of its query against the remaining positives. ``scores[i]`` holds the positives' scores first,
    then the candidates' (``pools[i]`` = positives + candidates)."""
    hidden, others = [], []
    for s, pos, pool in zip(scores, positives, pools, strict=True):
        n_pos = len(pos)
        if n_pos < 2:
            continue
        s = np.asarray(s, dtype=np.float64)
        v = emb[pool]
        cos = v @ v[:n_pos].T  # every pool member against every positive
        for h in range(n_pos):
            rest = [j for j in range(n_pos) if j != h]
            hidden.append((s[h], cos[h, rest].max()))
            others += list(zip(s[n_pos:], cos[n_pos:][:, rest].max(axis=1), strict=True))
    return np.array(hidden).reshape(-1, 2), np.array(others).reshape(-1, 2)


def population_rows(scores: list[np.ndarray], positives: list[list[int]], pools: list[list[int]], emb: np.ndarray
                    ) -> np.ndarray:
    """(logit, cosine to the nearest labelled positive) of every candidate of every query with a positive, as
    the filter sees them in the job (all positives labelled). Same layout as ``loo_rows``' arguments."""
    rows = []
    for s, pos, pool in zip(scores, positives, pools, strict=True):
        n_pos = len(pos)
        if not n_pos or len(pool) <= n_pos:
            continue
        v = emb[pool]
        cos = (v[n_pos:] @ v[:n_pos].T).max(axis=1)
        rows += list(zip(np.asarray(s, dtype=np.float64)[n_pos:], cos, strict=True))
    return np.array(rows, dtype=np.float64).reshape(-1, 2)


def choose_threshold(res, cfg: MineConfig) -> dict | None:
    """``filter.auto_threshold``: fit the positive-aware rule (``fit_positive_rule``) on the job's own queries
    with two or more positives, each positive hidden in turn and judged with the cosine to the others; its cost
    bound holds on the candidates of a sample of all the job's queries. With no such query the configured
    rules stay. Deterministic: the same inputs fit the same rule. With ``filter.recall_target`` the threshold
    is placed on the labelled positives instead (``choose_recall_threshold``), and recorded in the same place."""
    if cfg.filter.recall_target is not None:
        return choose_recall_threshold(res, cfg)
    if res.reranker is None or not cfg.filter.auto_threshold:
        return None
    ordered = by_crc(res.qids)
    multi = [q for q in ordered if len(res.inp.positives[q]) >= 2][:AUTO_THRESHOLD_QUERIES]
    # the cost bound is measured on the candidates of a sample of all the job's queries, as the filter meets them
    sample = list(dict.fromkeys(multi + (ordered[:AUTO_THRESHOLD_QUERIES]
                                         if cfg.filter.auto_threshold_cost_on == "all" else [])))
    hidden = others = population = np.zeros((0, 2))
    if multi:
        positives, pools, scores = judged_pools(res, cfg, sample)
        hidden, others = loo_rows(scores, positives, pools, res.emb)
        population = population_rows(scores, positives, pools, res.emb)
    stored = getattr(res.reranker, "positive_rule", None)
    if stored and (len(hidden) < MIN_FIT_HIDDEN or not len(others)):  # too little of its own to fit on
        rule = {k: stored[k] for k in ("logit_weight", "positive_cosine_weight", "score_threshold", "recall", "cost")}
        short = (f"{len(hidden)} to hide, fewer than {MIN_FIT_HIDDEN}" if len(hidden) < MIN_FIT_HIDDEN
                 else "but no other candidate to weigh them against")
        why = (f"{len(multi)} queries of this job have two or more positives ({short}): the judge's own rule, "
               f"fitted by train-judge on {stored['fit_queries']} of its training queries ({stored['recall']:.1%} "
               f"of their hidden positives and {stored['cost']:.1%} of the other candidates filtered there)")
        if stored.get("dense_model") is not None and (resolve_model_name(stored["dense_model"])
                                                      != resolve_model_name(cfg.candidates.model)):
            why += (f"; its cosines came from {stored['dense_model']}, this job's from {cfg.candidates.model}, so "
                    "its threshold may not carry over")
        logger.info("filter.auto_threshold: %s", why)
        return {"chosen": rule, "why": why, "queries": len(multi), "source": "judge"}
    if not len(hidden) or not len(others):
        why = ("no query with two or more positives" if not multi else "no candidate besides the positives")
        logger.warning("filter.auto_threshold: %s, and the judge carries no rule; the configured rules stay", why)
        return {"chosen": None, "why": f"{why}, and no rule stored with the judge", "queries": len(multi)}
    if len(hidden) < MIN_FIT_HIDDEN:  # a threshold from a handful of positives would filter every query blindly
        why = (f"only {len(hidden)} positives to hide (at least {MIN_FIT_HIDDEN} are needed to fit the rule), and "
               "no rule stored with the judge")
        logger.warning("filter.auto_threshold: %s; the configured rules stay", why)
        return {"chosen": None, "why": why, "queries": len(multi), "hidden_positives": len(hidden)}
    max_cost = cfg.filter.auto_margin_max_cost
    on_all = cfg.filter.auto_threshold_cost_on == "all"
    rule = fit_positive_rule(hidden, others, max_cost, population=population if on_all else None)
    why = (f"fitted on {len(hidden)} hidden positives and {len(others)} other candidates of {len(multi)} queries: it "
           f"filters {rule['recall']:.1%} of the hidden positives and {rule['cost']:.1%} of the candidates of "
           + (f"{len(sample)} sampled queries" if on_all else "those queries") + f" (bound {max_cost:.0%})")
    logger.info("filter.auto_threshold: filter score = %.3f x logit + %.3f x cosine to the nearest positive, "
                "threshold %.3f; %s", rule["logit_weight"], rule["positive_cosine_weight"], rule["score_threshold"],
                why)
    return {"chosen": rule, "why": why, "queries": len(multi), "hidden_positives": len(hidden),
            "candidates": len(others), "cost_sample_queries": len(sample), "cost_sample_candidates": len(population)}


def recall_threshold(positive_scores: np.ndarray, target: float) -> float:
    """The threshold that filters (score > threshold) at least ``target`` of ``positive_scores``, and no more
    than that needs: at most the lowest ``floor((1 - target) * n)`` positives stay at or below it. It lies
    half-way between the ``k+1``-th lowest score and the highest score below it (just below the lowest
    positive when none is below), so ties never let a positive slip under it."""
    s = np.sort(np.asarray(positive_scores, dtype=np.float64))
    if not len(s) or not np.isfinite(s).all():
        raise ValueError("a recall threshold needs labelled positives' scores, all finite")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), not {target}")
    k = int(np.floor((1 - target) * len(s) + 1e-9))  # < n, as target > 0
    below = s[s < s[k]]
    if not len(below):
        return float(s[k]) - max(1e-6, 1e-6 * abs(float(s[k])))
    return float((below[-1] + s[k]) / 2)


def choose_recall_threshold(res, cfg: MineConfig) -> dict | None:
    """``filter.recall_target``: the score threshold (the judge's score alone) above which that share of the
    labelled positives of a sample of the job's queries score (``recall_threshold``). It needs no query with
    two positives: under the positive-unlabelled assumption that the labelled positives are a random draw from
    the relevant documents, the unlabelled ones score alike, so about that share of them is filtered; the share
    of the sample's candidates it filters is measured and reported. Deterministic: the same inputs, the same
    threshold."""
    if res.reranker is None or cfg.filter.recall_target is None:
        return None
    target = cfg.filter.recall_target
    sample = by_crc(res.qids)[:AUTO_THRESHOLD_QUERIES]
    positives, _, scores = judged_pools(res, cfg, sample)
    split = [(np.asarray(s[:len(p)], dtype=np.float64), np.asarray(s[len(p):], dtype=np.float64))
             for s, p in zip(scores, positives, strict=True)]  # each query's positives' and candidates' scores
    pos_s = np.concatenate([ps for ps, _ in split] + [np.zeros(0)])
    cand_s = np.concatenate([cs for _, cs in split] + [np.zeros(0)])
    if len(pos_s) < MIN_FIT_HIDDEN:
        why = (f"only {len(pos_s)} labelled positives in {len(sample)} sampled queries (at least {MIN_FIT_HIDDEN} are "
               "needed to place the threshold)")
        logger.warning("filter.recall_target: %s; the configured rules stay", why)
        return {"chosen": None, "why": why, "queries": len(sample), "positives": len(pos_s)}
    t = recall_threshold(pos_s, target)
    n_neg = cfg.sampling.num_negatives
    keeping = float(np.mean([(cs <= t).sum() >= n_neg for _, cs in split]))  # queries left with n_neg or more
    rule = {"logit_weight": 1.0, "positive_cosine_weight": 0.0, "score_threshold": t,
            "recall": float((pos_s > t).mean()), "cost": float((cand_s > t).mean()) if len(cand_s) else 0.0}
    why = (f"the judge score above which {rule['recall']:.1%} of {len(pos_s)} labelled positives of {len(sample)} "
           f"sampled queries score (target {target:.0%}): about that share of the unlabelled positives is filtered "
           f"if the labelled ones are a random draw of the relevant documents; it filters {rule['cost']:.1%} of "
           f"those queries' {len(cand_s)} candidates, and {keeping:.1%} of them keep "
           f"{n_neg} or more")
    logger.info("filter.recall_target: threshold %.4f on the judge score; %s", t, why)
    return {"chosen": rule, "why": why, "queries": len(sample), "positives": len(pos_s), "candidates": len(cand_s),
            "source": "labelled positives", "target": target,
            "queries_keeping_num_negatives": keeping}


def render_auto_threshold(auto: dict | None) -> list[str]:
    if auto is None:
        return []
    if auto["chosen"] is None:
        return [f"- positive-aware rule (filter.auto_threshold) not fitted: {auto['why']}; the configured rules "
                "filtered", ""]
    r = auto["chosen"]
    if auto.get("source") == "labelled positives":
        return [f"- threshold placed on the labelled positives (filter.recall_target {auto['target']}): a candidate "
                f"is filtered when **its judge score > {r['score_threshold']:.4f}**, {auto['why']}", ""]
    return [f"- positive-aware rule fitted automatically (filter.auto_threshold): a candidate is filtered when "
            f"**{r['logit_weight']:.3f} x judge logit + {r['positive_cosine_weight']:.3f} x cosine to the nearest "
            f"positive > {r['score_threshold']:.3f}**; {auto['why']}", ""]


def render_auto_margin(auto: dict | None) -> list[str]:
    if auto is None:
        return []
    return [f"- margin chosen automatically (filter.auto_margin): relative margin **{auto['chosen']}** on "
            f"{auto['queries']} queries with two or more positives: {auto['why']}", ""]
