"""Finishing a mining job: merge shard files into ``triples.parquet`` (with an n-tuple and a triplet view),
``candidates.parquet``, ``manifest.json`` and ``report.md`` (with a score histogram and a what-if table).
Every file is written under a temporary name and renamed."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .card import write_card
from .config import FilterSection, MineConfig
from .files import versions, write_json, write_parquet, write_text
from .filtering import filter_reason
from .judge_check import render_auto_margin, render_auto_threshold, render_check
from .planted import Planted, planted_stats, render_planted
from .shard import FILL_SOURCE, shard_paths

logger = logging.getLogger(__name__)

REL_MARGINS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
ABS_MARGINS = (0.0, 0.5, 1.0, 2.0, 3.0)


def _merge(paths: list[Path], dest: Path) -> None:
    """Concatenate shard files; a column that an older shard lacks (a job resumed across versions) is null
    there."""
    tmp = dest.with_name(dest.name + ".tmp")
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths]) if paths else None
    writer = None
    for p in paths:
        table = pq.read_table(p)
        for f in schema:
            if f.name not in table.column_names:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
        table = table.select(schema.names)
        if writer is None:
            writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        writer.write_table(table)
    if writer is not None:
        writer.close()
        os.replace(tmp, dest)


def _views(triples: pa.Table, n: int, out: Path) -> dict[str, int]:
    """``ntuple.parquet`` (query, positive, negative_1..n; rows with all n negatives) and ``triplets.parquet``
    (query, positive, negative), ordered round-robin over queries so that rows of one query sit far apart
    and a batch rarely holds the same positive twice. Text columns only: the sentence-transformers trainer
    reads columns by position."""
    rows = triples.select(["query_id", "query", "positive", "negatives"]).to_pylist()
    # order by (index of the positive within its query, query order): the rows of a query with several
    # positives land in different passes, so its other positives are not in-batch negatives of each other
    first_seen: dict[str, int] = {}
    nth: list[int] = []
    count: Counter[str] = Counter()
    for r in rows:
        first_seen.setdefault(r["query_id"], len(first_seen))
        nth.append(count[r["query_id"]])
        count[r["query_id"]] += 1
    order = sorted(range(len(rows)), key=lambda i: (nth[i], first_seen[rows[i]["query_id"]]))
    rows = [rows[i] for i in order]
    full = [r for r in rows if len(r["negatives"]) >= n]
    nt = {"query": [r["query"] for r in full], "positive": [r["positive"] for r in full]}
    for j in range(n):
        nt[f"negative_{j + 1}"] = [r["negatives"][j] for r in full]
    write_parquet(pa.table(nt), out / "ntuple.parquet")
    trip: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for j in range(max((len(r["negatives"]) for r in rows), default=0)):
        for r in rows:
            if j < len(r["negatives"]):
                trip["query"].append(r["query"])
                trip["positive"].append(r["positive"])
                trip["negative"].append(r["negatives"][j])
    write_parquet(pa.table(trip), out / "triplets.parquet")
    return {"ntuple_rows": len(full), "triplet_rows": len(trip["query"])}


def _stats(x: np.ndarray) -> dict[str, float] | None:
    if len(x) == 0:
        return None
    return {"n": int(len(x)), "min": float(x.min()), "p25": float(np.percentile(x, 25)),
            "median": float(np.median(x)), "p75": float(np.percentile(x, 75)), "max": float(x.max()),
            "mean": float(x.mean())}


def what_if(cands: pa.Table, n: int, queries: list[str], fcfg: FilterSection) -> list[dict[str, object]]:
    """How many negatives and queries would survive at other margins: exclusions, the rank window and the
    score bounds stay as configured; only the margin rule changes. Decided by the filter's own rule
    (``filtering.filter_reason``) with the margin replaced."""
    margin_rules = ("filtered:relative_margin", "filtered:absolute_margin", "filtered:positive_aware",
                    "filtered:score_threshold")
    eligible = [(q, float(c), float(p)) for q, c, p, f in zip(
        cands["query_id"].to_pylist(), cands["ce_score"].to_pylist(), cands["positive_score"].to_pylist(),
        cands["fate"].to_pylist(), strict=True)
        if (f in ("kept", "not_sampled") or f in margin_rules) and c is not None and p is not None]
    out = []
    for kind, margins in (("relative", REL_MARGINS), ("absolute", ABS_MARGINS)):
        for m in margins:
            rule = replace(fcfg, relative_margin=m if kind == "relative" else None,
                           absolute_margin=m if kind == "absolute" else None, score_threshold=None)
            per_q = Counter(q for q, c, p in eligible if filter_reason(c, p, rule) is None)
            out.append({"rule": kind, "margin": m, "negatives": sum(per_q.values()),
                        "queries_with_n": sum(1 for q in queries if per_q[q] >= n),
                        "queries_with_none": sum(1 for q in queries if per_q[q] == 0)})
    return out


def _histogram(cands: pa.Table, pos_scores: np.ndarray, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'hardneg[plot]'): report without histogram")
        return False
    fate = np.array(cands["fate"].to_pylist(), dtype=object)
    ce = cands["ce_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    kept = ce[(fate == "kept") & ~np.isnan(ce)]
    filt = ce[np.array([f.startswith("filtered:") for f in fate]) & ~np.isnan(ce)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    allv = np.concatenate([pos_scores, kept, filt]) if len(pos_scores) else np.concatenate([kept, filt])
    bins = np.linspace(allv.min(), allv.max(), 50) if len(allv) else 10
    for values, label, color in ((pos_scores, "positives", "tab:green"), (kept, "kept negatives", "tab:blue"),
                                 (filt, "filtered candidates", "tab:red")):
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label} (n={len(values)})", color=color)
    ax.set_xlabel("cross-encoder logit")
    ax.set_ylabel("count")
    ax.set_title("Cross-encoder scores: positives vs kept vs filtered")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def _filter_state(cfg: MineConfig, has_ce: bool, auto_threshold: dict | None = None,
                  auto_margin: dict | None = None) -> str:
    """The score rules the shards filtered with (a fitted positive-aware rule replaces the margins)."""
    if not has_ce:
        return "off (no cross-encoder configured)"
    f = cfg.filter
    fitted = auto_threshold is not None and auto_threshold.get("chosen") is not None
    margins = (("absolute_margin", f.absolute_margin), ("relative_margin", f.relative_margin))
    if fitted:
        how = {"judge": "positive-aware, the judge's stored rule",
               "labelled positives": f"filter.recall_target {f.recall_target}, placed on the labelled positives"
               }.get(auto_threshold.get("source"), "positive-aware, fitted on this job")
        margins = ((f"score_threshold ({how})", True),)
    elif auto_margin is not None:
        margins = (("relative_margin (chosen automatically)", auto_margin.get("chosen")),)
    elif f.score_threshold is not None:
        margins = (*margins, ("score_threshold (positive-aware)", True))
    rules = [name for name, v in (*margins, ("max_score", f.max_score), ("min_score", f.min_score)) if v is not None]
    return f"on ({', '.join(rules)})" if rules else "on, but no score rule is set (scores only rank candidates)"


def finalize(out: Path, cfg: MineConfig, res, n_shards: int, counters: dict, timings: dict,
             total_s: float, judge_check: dict | None = None, auto_margin: dict | None = None,
             planted: tuple[Path, Planted] | None = None, auto_threshold: dict | None = None) -> dict:
    """Merge the shards and write the views, ``manifest.json`` and ``report.md``; ``planted``: the
    collection's ``planted.json`` (path, pairs), measured on the merged tables."""
    cpaths = [shard_paths(out, k)[0] for k in range(n_shards)]
    tpaths = [shard_paths(out, k)[1] for k in range(n_shards)]
    _merge(tpaths, out / "triples.parquet")
    _merge(cpaths, out / "candidates.parquet")
    triples = pq.read_table(out / "triples.parquet")
    filled = cfg.sampling.fill != "none"
    cands = pq.read_table(out / "candidates.parquet", columns=["query_id", "doc_id", "ce_score", "positive_score",
                                                               "fate", *(["sources"] if filled else [])])
    fill, retrieved = None, cands  # the what-if table and the planted stats read the retrieved candidates
    if filled:
        drawn = np.array([s == [FILL_SOURCE] for s in cands["sources"].to_pylist()], dtype=bool)
        fill, retrieved = _fill_counts(cands, drawn), cands.filter(pa.array(~drawn))
    n = cfg.sampling.num_negatives
    views = _views(triples, n, out)
    fates = Counter(cands["fate"].to_pylist())
    neg_counts = {}
    for q, negs in zip(triples["query_id"].to_pylist(), triples["negative_ids"].to_pylist(), strict=True):
        neg_counts[q] = len(negs)
    no_neg = sorted(q for q, c in neg_counts.items() if c == 0)
    short = sorted(q for q, c in neg_counts.items() if 0 < c < n)
    pos_scores = np.array([s for s, o in zip(triples["positive_score"].to_pylist(),
                                             triples["positive_source"].to_pylist(), strict=True)
                           if s is not None and o == "qrels"], dtype=np.float64)
    ce = cands["ce_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    fate_arr = np.array(cands["fate"].to_pylist(), dtype=object)
    has_ce = res.reranker is not None
    manifest = {
        "config": cfg.to_dict(), "config_fingerprint": cfg.fingerprint(), "versions": versions(),
        "input": {"name": res.inp.name, "source": res.inp.source, "fingerprint": res.inp.fingerprint(),
                  **res.inp.stats},
        "models": {"bi_encoder": cfg.candidates.model if res.encoder else None,
                   "bi_encoder_fingerprint": res.encoder.fingerprint() if res.encoder else None,
                   "cross_encoder": cfg.cross_encoder.model or None,
                   "cross_encoder_fingerprint": res.reranker.fingerprint() if has_ce else None,
                   "false_negative_filter": _filter_state(cfg, has_ce, auto_threshold, auto_margin)},
        "counts": {"queries": len(neg_counts), "triples": triples.num_rows, "candidates": cands.num_rows,
                   "fates": dict(sorted(fates.items())), "queries_without_negatives": len(no_neg),
                   f"queries_with_fewer_than_{n}_negatives": len(short), "shards": n_shards,
                   "shards_resumed": counters["shards_resumed"], "ce_pairs": counters["ce_pairs"],
                   **({"random_fill": fill} if fill is not None else {}),
                   "ce_pairs_scored": counters["ce_pairs_scored"], **views},
        "queries_without_negatives": no_neg,
        "score_stats": {"positives": _stats(pos_scores),
                        "kept": _stats(ce[(fate_arr == "kept") & ~np.isnan(ce)]),
                        "filtered": _stats(ce[np.array([f.startswith("filtered:") for f in fate_arr])
                                              & ~np.isnan(ce)])} if has_ce else None,
        "what_if": what_if(retrieved, n, list(neg_counts), cfg.filter) if has_ce else None,
        "judge_check": judge_check, "auto_margin": auto_margin, "auto_threshold": auto_threshold,
        "planted": planted_stats(planted[1], planted[0], set(res.qids), retrieved, triples) if planted else None,
        "timings": {**timings, "total_s": total_s},
    }
    has_png = _histogram(cands, pos_scores, out / "scores.png") if has_ce else False
    write_text(out / "report.md", render_report(manifest, has_png))
    write_card(out, manifest)  # README.md: the folder loads with datasets.load_dataset and pushes to a hub as is
    write_json(out / "manifest.json", manifest)  # last: marks the job finished
    return manifest


def render_fill(fill: dict | None, n: int) -> list[str]:
    """The report's line on ``sampling.fill = "random"`` (nothing when it is off)."""
    if fill is None:
        return []
    return [f"- negatives drawn at random from the corpus (sampling.fill = random) for the {fill['queries']} "
            f"queries left with fewer than {n}: **{fill['negatives']}** of {fill['drawn']} drawn "
            f"({fill['filtered']} filtered by the judge, {fill['excluded']} excluded as positives or their "
            "duplicates; the rest passed but were not needed)"]


def _fill_counts(cands: pa.Table, drawn: np.ndarray) -> dict[str, int]:
    """What ``sampling.fill = "random"`` drew: documents, the queries they were drawn for, and their fates."""
    fates = Counter(f for f, d in zip(cands["fate"].to_pylist(), drawn, strict=True) if d)
    queries = {q for q, d in zip(cands["query_id"].to_pylist(), drawn, strict=True) if d}
    return {"queries": len(queries), "drawn": int(drawn.sum()), "negatives": fates.get("kept", 0),
            "filtered": sum(v for f, v in fates.items() if f.startswith("filtered:")),
            "excluded": sum(v for f, v in fates.items() if f in ("positive", "duplicate", "self", "eval_positive"))}


def render_report(m: dict, has_png: bool) -> str:
    c = m["counts"]
    cfg = m["config"]
    n = cfg["sampling"]["num_negatives"]
    lines = [f"# Mining report: {m['input']['name']} ({cfg['data']['split'] if not cfg['data']['pairs'] else 'pairs'})",
             "", *render_check(m.get("judge_check")), *render_auto_margin(m.get("auto_margin")),
             *render_auto_threshold(m.get("auto_threshold")),
             f"- {c['queries']} queries, {c['triples']} (query, positive) rows, {c['candidates']} candidates",
             f"- bi-encoder: `{m['models']['bi_encoder']}`; cross-encoder: `{m['models']['cross_encoder']}`; "
             f"false-negative filter: **{m['models']['false_negative_filter']}**",
             f"- queries left without any negative: **{c['queries_without_negatives']}**; with fewer than {n}: "
             f"{c[f'queries_with_fewer_than_{n}_negatives']}",
             *render_fill(c.get("random_fill"), n),
             f"- cross-encoder pairs in the shards mined by this run: {c['ce_pairs']}, of which "
             f"{c['ce_pairs_scored']} were scored now (the rest came from the score cache); "
             f"shards resumed from an earlier run: {c['shards_resumed']}",
             f"- total time {m['timings']['total_s']:.1f} s", ""]
    if c["queries"] and c["queries_without_negatives"] > 0.1 * c["queries"]:
        lines += [f"> **Warning:** {c['queries_without_negatives']} of {c['queries']} queries have no negative. "
                  "The filter may be too strict for this cross-encoder (see the what-if table) or the candidate "
                  "depth too small.", ""]
    lines += render_planted(m.get("planted"))
    lines += ["## What happened to the candidates", "",
             "| fate | candidates | meaning |", "|---|---|---|"]
    meaning = {"kept": "sampled as a negative", "not_sampled": "passed the filter, not sampled",
               "positive": "a labelled positive",
               "relabelled": "judged relevant (probability >= filter.relabel_above): an extra positive, its own triples row",
               "duplicate": "a duplicate of a positive (text hash or cosine)",
               "self": "the query's own document", "eval_positive": "a positive of an evaluation query",
               "filtered:relative_margin": "probability too close to the positive's",
               "filtered:absolute_margin": "logit too close to the positive's",
               "filtered:score_threshold": "judge logit + weighted cosine to the nearest positive above the threshold "
                                           "(positive-aware rule)",
               "filtered:max_score": "logit above filter.max_score", "filtered:min_score": "logit below filter.min_score",
               "filtered:rank_window": "outside [range_min, range_max)",
               "not_scored": "never scored: enough negatives passed the filter above it (filter.rank_by = retrieval)",
               "filtered:positive_aware": "above positive_aware_ratio x the positive's probability"}
    for fate, count in c["fates"].items():
        lines.append(f"| {fate} | {count} | {meaning.get(fate, '')} |")
    if m["score_stats"]:
        lines += ["", "## Cross-encoder scores (logits)", "", "| group | n | min | p25 | median | p75 | max |",
                  "|---|---|---|---|---|---|---|"]
        for g, s in m["score_stats"].items():
            if s:
                lines.append(f"| {g} | {s['n']} | {s['min']:.2f} | {s['p25']:.2f} | {s['median']:.2f} | "
                             f"{s['p75']:.2f} | {s['max']:.2f} |")
        if has_png:
            lines += ["", "![scores](scores.png)"]
        lines += ["", "## What if the margin were different?", "",
                  "Candidates that would survive the score rule alone (exclusions and the rank window kept), "
                  f"and queries that would keep at least {n} negatives.", "",
                  "| rule | margin | negatives left | queries with >= n | queries with none |", "|---|---|---|---|---|"]
        for r in m["what_if"]:
            lines.append(f"| {r['rule']} | {r['margin']} | {r['negatives']} | {r['queries_with_n']} | "
                         f"{r['queries_with_none']} |")
    lines += ["", "## Files", "",
              "- `triples.parquet`: one row per (query, positive) with negative ids, texts, scores and sources",
              f"- `ntuple.parquet`: query, positive, negative_1..negative_{n} (rows with all {n} negatives), for "
              "sentence-transformers' MultipleNegativesRankingLoss",
              "- `triplets.parquet`: query, positive, negative, one row per negative",
              "- `candidates.parquet`: every candidate with its sources, ranks, scores and fate",
              "- `manifest.json`: resolved config, versions, fingerprints, counts, timings", ""]
    return "\n".join(lines)
