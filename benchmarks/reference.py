"""Reproduce published SciFact test numbers: BM25 (bm25s and rank-bm25) and all-MiniLM-L6-v2 with exact
search, through the same code as `hardneg evaluate`.

Run: python -m benchmarks.reference   (writes benchmarks/results/reference.md and .json; run folders in
runs/reference/). Published: BM25 0.665 (BEIR), 0.679 (Pyserini flat), 0.687 (bm25s); MiniLM 0.6451 (MTEB).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from benchmarks.machine import describe, markdown, write_result
from mining_jobs.evaluate import EvalConfig, run_evaluation

HERE = Path(__file__).parent

CHECKS = [
    # (row, retriever, bm25 backend, published, check text, check)
    ("BM25 (bm25s)", "bm25", "bm25s", "0.687 (bm25s), 0.665 (BEIR)", ">= 0.65", lambda v, rows: v >= 0.65),
    ("BM25 (rank-bm25)", "bm25", "rank_bm25", "-", "within 0.015 of bm25s",
     lambda v, rows: abs(v - rows["BM25 (bm25s)"]) <= 0.015),
    ("all-MiniLM-L6-v2, exact", "dense", "bm25s", "0.6451 (MTEB)", "0.645 +- 0.003",
     lambda v, rows: abs(v - 0.645) <= 0.003),
]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    rows: dict[str, float] = {}
    full: dict[str, dict[str, float]] = {}
    lines = ["# SciFact test: reproducing published nDCG@10\n",
             "| system | nDCG@10 | MRR@10 | Recall@100 | MAP | published nDCG@10 | check | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for name, retriever, backend, published, check_text, check in CHECKS:
        cfg = EvalConfig(data="scifact", split="test", retrievers=[retriever], bm25_backend=backend,
                         out=str(Path("runs/reference") / name.split()[0].lower() / backend), overwrite=True)
        m = run_evaluation(cfg)[retriever]
        rows[name], full[name] = m["ndcg@10"], m
        ok = check(m["ndcg@10"], rows)
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | {m['map']:.4f} "
                     f"| {published} | {check_text} | {'yes' if ok else 'NO'} |")
    info = describe()
    lines += ["", "BM25: k1=1.5, b=0.75, lowercase, English stopwords, Snowball stemmer. Dense: max_seq_length 256,",
              "normalized embeddings, faiss IndexFlatIP, title and text joined BEIR-style.", "",
              "## Machine", markdown(info), "## Command", "`python -m benchmarks.reference`", ""]
    write_result("reference", {"metrics": full}, lines)


if __name__ == "__main__":
    main()
