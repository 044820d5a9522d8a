"""What does `make demo`'s cheaper judge fit cost in quality?

`make demo` fits its judge (ensemble+ce: BM25 and MiniLM features plus the logit of the cross-fitted
cross-encoder in runs/demo_ce, the best judge of benchmarks/results/judge.md) on the candidates its round
will judge, BM25 and dense top-10 (examples/demo.toml's depth), instead of top-30 as `hardneg train-judge`
does by default: a third of the cross-encoder pairs, every one of them reused by the mining round. This
script fits both with the same cross-encoder and measures them on ``train:dev`` (never test; no fit saw
those queries): BM25 top-100 reranked on every dev query, ROC-AUC of positives against mined candidates,
a paired randomization test between the two fits, and the cross-encoder pairs each fit scores.

Run after `make demo` (it needs runs/demo_ce): python -m benchmarks.bench_demo_judge [--work runs/bench_demo_judge]
Writes benchmarks/results/demo_judge_dev.{md,json}. Finished fits in --work are reused.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.machine import describe, markdown, write_result
from mining_jobs.judge_report import paired_p, run_judge_report
from mining_jobs.judge_train import FOLDER, JudgeJob, _key, run_train_judge
from mining_jobs.runfolder import is_finished, read_done, read_state

HERE = Path(__file__).parent
FEATURES = "bm25,bm25_log,dense,dense_gap,ce"


def fit(out: Path, cross_encoder: str, depth: int) -> dict:
    """The judge in ``out`` (fitted here unless a finished one with these settings is there)."""
    job = JudgeJob(data="scifact", split="train:fit", out=str(out), features=FEATURES,
                   cross_encoder=cross_encoder, depth=depth)
    if (read_state(out, FOLDER) or {}).get("key") == _key(job) and is_finished(out, FOLDER):
        return read_done(out, FOLDER)
    return run_train_judge(job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench_demo_judge")
    ap.add_argument("--cross-encoder", default="runs/demo_ce", help="the demo's cross-fitted cross-encoder")
    ap.add_argument("--depths", default="10,30", help="fit depths compared (the first is the demo's)")
    args = ap.parse_args()
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    if not (Path(args.cross_encoder) / "folds.json").is_file():
        raise SystemExit(f"--cross-encoder {args.cross_encoder}: no fold set there (run `make demo` first)")
    t0 = time.perf_counter()
    depths = [int(d) for d in args.depths.split(",")]
    work = Path(args.work).resolve()
    fits = {d: fit(work / f"depth_{d}", str(Path(args.cross_encoder).resolve()), d) for d in depths}
    paths = {d: str(work / f"depth_{d}") for d in depths}
    report = run_judge_report(["bm25", "hybrid", *paths.values()], "scifact", "train:dev")
    demo, ref = depths[0], depths[-1]
    rows = {}
    for d in depths:
        r = report["judges"][paths[d]]
        rows[f"depth_{d}"] = {
            "depth": d, "cross_encoder_pairs": fits[d]["candidates"], "queries": fits[d]["queries"],
            "dev_rerank_ndcg10": r["rerank"]["ndcg@10"], "dev_rerank_mrr10": r["rerank"]["mrr@10"],
            "p_vs_hybrid": r["p_vs_hybrid"], "p_vs_bm25": r["p_vs_bm25"],
            "auc_per_query": r["auc_per_query_mean"], "auc_pooled": r["auc_pooled"],
            "held_in_cv_ndcg10": fits[d]["held_in_quality"]["judge_cv_ndcg@10"]}
    for name in ("bm25", "hybrid"):
        r = report["judges"][name]
        rows[name] = {"dev_rerank_ndcg10": r["rerank"]["ndcg@10"], "dev_rerank_mrr10": r["rerank"]["mrr@10"],
                      "auc_per_query": r["auc_per_query_mean"], "auc_pooled": r["auc_pooled"]}
    p_fits = paired_p(report["judges"][paths[ref]]["rerank"]["per_query_ndcg@10"],
                      report["judges"][paths[demo]]["rerank"]["per_query_ndcg@10"])
    cmd = "python -m benchmarks.bench_demo_judge" + (f" --depths {args.depths}" if args.depths != "10,30" else "")
    doc = {"demo_depth": demo, "reference_depth": ref, "split": "train:dev",
           "queries": report["judges"]["hybrid"]["rerank"]["queries"], "rows": rows,
           f"p_depth_{demo}_vs_depth_{ref}": p_fits, "seconds": time.perf_counter() - t0, "command": cmd,
           "per_query_ndcg10": {k: report["judges"][v]["rerank"]["per_query_ndcg@10"]
                                for k, v in {**{f"depth_{d}": paths[d] for d in depths},
                                             "bm25": "bm25", "hybrid": "hybrid"}.items()}}
    write_result("demo_judge_dev", doc, render(doc))


def render(doc: dict) -> list[str]:
    rows, demo, ref = doc["rows"], doc["demo_depth"], doc["reference_depth"]
    a, b = rows[f"depth_{demo}"], rows[f"depth_{ref}"]
    lines = ["# make demo's judge: fitted on top-10 candidates or on top-30", "",
             f"ensemble+ce over the demo's cross-encoder (runs/demo_ce), fitted on SciFact `train:fit` on BM25 + "
             f"dense top-k candidates plus the positives; measured on every `{doc['split']}` query "
             f"({doc['queries']}; BM25 top-100 reranked, ROC-AUC of positives against BM25 + dense top-30 "
             "candidates).", "",
             "| judge | fit depth | cross-encoder pairs in the fit | dev nDCG@10 | dev MRR@10 | p vs hybrid | "
             "AUC (per query) | AUC (pooled) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "depth" in r:
            lines.append(f"| ensemble+ce | {r['depth']} | {r['cross_encoder_pairs']} | {r['dev_rerank_ndcg10']:.4f} | "
                         f"{r['dev_rerank_mrr10']:.4f} | {r['p_vs_hybrid']:.4f} | {r['auc_per_query']:.4f} | "
                         f"{r['auc_pooled']:.4f} |")
        else:
            lines.append(f"| {name} | - | - | {r['dev_rerank_ndcg10']:.4f} | {r['dev_rerank_mrr10']:.4f} | - | "
                         f"{r['auc_per_query']:.4f} | {r['auc_pooled']:.4f} |")
    p = doc[f"p_depth_{demo}_vs_depth_{ref}"]
    diff = a["dev_rerank_ndcg10"] - b["dev_rerank_ndcg10"]
    lines += ["", f"The top-{demo} fit scores {a['cross_encoder_pairs'] / b['cross_encoder_pairs']:.0%} of the "
              f"top-{ref} fit's cross-encoder pairs; its dev nDCG@10 differs by {diff:+.4f} (paired randomization "
              f"test, p = {p:.4f}), and it stays above the hybrid retriever (p = {a['p_vs_hybrid']:.4f}).", "",
              "## Machine", markdown(doc.get("machine") or describe()), "## Command",
              f"`{doc['command']}` ({doc['seconds']:.0f} s; cross-encoder scores an earlier run computed come from "
              "the score cache)", ""]
    return lines


if __name__ == "__main__":
    main()
