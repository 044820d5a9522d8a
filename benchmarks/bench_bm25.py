"""bm25s vs rank-bm25 on one collection: query throughput ratio, indexing time and nDCG@10 of each,
same tokenizer and parameters, in one process.

Throughput is measured twice per backend: ``search_arrays`` (top-k positions and scores, what the mining job
calls) and ``search`` (the same plus a {query: {doc: score}} run of Python dicts). Both include query
tokenization. For reference, the bm25s row also times bm25s's own ``retrieve`` (a per-query loop) on the same
index and tokens, which hardneg replaced by one sparse product per batch of queries.

Run: python -m benchmarks.bench_bm25 [--data scifact --split test --repeats 3]
Writes benchmarks/results/bm25_backends.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.machine import describe, markdown, write_result
from retriever.bm25 import BM25Index
from retriever.data import load_collection
from retriever.metrics import evaluate

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    col = load_collection(args.data, args.split)
    texts = col.doc_texts()
    qids, qtexts = list(col.queries), list(col.queries.values())
    rows = {}
    for backend in ("bm25s", "rank_bm25"):
        t0 = time.perf_counter()
        idx = BM25Index(backend).index(col.doc_ids, texts, show_progress=False)
        t_index = time.perf_counter() - t0
        times, times_arrays = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            idx.search_arrays(qtexts, k=args.top_k, show_progress=False)
            times_arrays.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run = idx.search(qtexts, k=args.top_k, query_ids=qids, show_progress=False)
            times.append(time.perf_counter() - t0)
        rows[backend] = {"index_seconds": t_index, "search_seconds": times, "search_arrays_seconds": times_arrays,
                         "queries_per_s": len(qids) / statistics.median(times),
                         "queries_per_s_arrays": len(qids) / statistics.median(times_arrays), **evaluate(col.qrels, run)}
        if backend == "bm25s":
            native = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                idx._model.retrieve([idx.tokenizer(q) for q in qtexts], k=args.top_k, show_progress=False,
                                    n_threads=0)
                native.append(time.perf_counter() - t0)
            rows[backend]["bm25s_retrieve_queries_per_s"] = len(qids) / statistics.median(native)
    ratio = rows["bm25s"]["queries_per_s_arrays"] / rows["rank_bm25"]["queries_per_s_arrays"]
    ratio_run = rows["bm25s"]["queries_per_s"] / rows["rank_bm25"]["queries_per_s"]
    gap = rows["bm25s"]["ndcg@10"] - rows["rank_bm25"]["ndcg@10"]
    result = {"data": args.data, "split": args.split, "queries": len(qids), "documents": len(texts),
              "top_k": args.top_k, "backends": rows, "throughput_ratio_bm25s_over_rank_bm25": ratio,
              "throughput_ratio_with_run_dicts": ratio_run,
              "ndcg@10_gap": gap,
              "command": f"python -m benchmarks.bench_bm25 --data {args.data} --split {args.split} --repeats {args.repeats}"}
    lines = [f"# BM25 backends on {args.data}/{args.split} ({len(qids)} queries, {len(texts)} documents, top-{args.top_k})\n",
             "Same tokenizer (lowercase, English stopwords, Snowball stemmer), k1=1.5, b=0.75. "
             "Search time includes query tokenization; median of repeats.\n",
             "| backend | index s | queries/s (search_arrays) | queries/s (search, run dicts) | nDCG@10 | MRR@10 | "
             "Recall@100 | MAP |", "|---|---|---|---|---|---|---|---|"]
    for b, r in rows.items():
        lines.append(f"| {b} | {r['index_seconds']:.2f} | {r['queries_per_s_arrays']:.1f} | {r['queries_per_s']:.1f} | "
                     f"{r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {r['recall@100']:.4f} | {r['map']:.4f} |")
    lines += ["", f"- query throughput ratio bm25s / rank-bm25 (search_arrays): **{ratio:.1f}x** (target >= 100x: "
              f"{'met' if ratio >= 100 else 'NOT met'}); with run dicts: {ratio_run:.1f}x",
              f"- bm25s's own per-query `retrieve` on the same index: "
              f"{rows['bm25s']['bm25s_retrieve_queries_per_s']:.1f} queries/s",
              f"- nDCG@10 gap (bm25s - rank-bm25): {gap:+.4f} (target within 0.015: "
              f"{'met' if abs(gap) <= 0.015 else 'NOT met'})", "", "## Machine", markdown(describe()),
              "## Command", f"`{result['command']}`", ""]
    write_result("bm25_backends", result, lines)


if __name__ == "__main__":
    main()
