"""Reranking quality of a trained cross-encoder fold set: nDCG@10 of BM25 top-k reranked on a held-out split.

Run: python -m benchmarks.bench_reranker --cross-encoder runs/ce_scifact [--split test --depth 100
     --max-length 128 --max-queries N]
Writes benchmarks/results/reranker.{md,json}. Test queries belong to no fold, so each pair is scored by
every fold model and the logits are averaged (what the mining job does for a query in no fold).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.machine import describe, markdown, write_result
from mining_jobs.train_reranker import rerank_eval

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cross-encoder", required=True)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-queries", type=int, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    t0 = time.perf_counter()
    ev = rerank_eval(Path(args.cross_encoder), args.data, args.split, args.depth, args.max_length, args.max_queries)
    seconds = time.perf_counter() - t0
    meta = json.loads((Path(args.cross_encoder) / "folds.json").read_text())
    cmd = (f"python -m benchmarks.bench_reranker --cross-encoder {args.cross_encoder} --split {args.split} "
           f"--depth {args.depth} --max-length {args.max_length}"
           + (f" --max-queries {args.max_queries}" if args.max_queries else ""))
    lines = [f"# Cross-encoder reranking: {args.data}/{args.split}, BM25 top-{args.depth}, {ev['queries']} queries\n",
             f"Fold set `{args.cross_encoder}`: {meta['folds']} folds trained on {meta['data']}/{meta['split']} "
             f"(backbone {meta['backbone']}, {meta['train_args']['epochs']} epochs, lr {meta['train_args']['lr']}, "
             f"{meta['negatives']} BM25 negatives per positive, max_length {meta['train_args']['max_length']}).\n",
             "| system | nDCG@10 | MRR@10 | Recall@100 | MAP |", "|---|---|---|---|---|"]
    for name in ("bm25", "reranked"):
        m = ev[name]
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | {m['map']:.4f} |")
    lines += ["", f"Paired randomization test on nDCG@10: p = {ev['p_value_ndcg@10']:.4f}. Took {seconds:.0f} s.", "",
              "## Machine", markdown(describe()), "## Command", f"`{cmd}`", ""]
    write_result("reranker", {"eval": ev, "fold_set": meta | {"assignment": None}, "seconds": seconds,
                              "command": cmd}, lines)


if __name__ == "__main__":
    main()
