"""bf16 autocast vs fp32 for corpus encoding: throughput ratio and embedding agreement.

Run: python -m benchmarks.bench_bf16 [--docs 512] [--repeats 3]
Writes benchmarks/results/bf16.json and bf16.md. Runs both precisions in one process, alternating, on
the same SciFact documents, and reports the median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe, markdown, write_result
from retriever.data import load_collection
from retriever.encoder import Encoder, cpu_bf16_flags, cpu_supports_bf16

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    col = load_collection(args.data, "test")
    texts = col.doc_texts()[: args.docs]
    fp32 = Encoder("default", bf16="off", batch_size=args.batch_size)
    bf16 = Encoder(fp32.model, bf16="on", batch_size=args.batch_size)
    fp32.encode(texts[:64], show_progress=False)  # warm-up both paths
    bf16.encode(texts[:64], show_progress=False)
    t32, t16 = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        e32 = fp32.encode(texts, show_progress=False)
        t32.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        e16 = bf16.encode(texts, show_progress=False)
        t16.append(time.perf_counter() - t0)
    cos = np.sum(e32 * e16, axis=1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e16, axis=1))
    m32, m16 = statistics.median(t32), statistics.median(t16)
    result = {
        "docs": len(texts), "repeats": args.repeats, "batch_size": args.batch_size,
        "fp32_seconds": t32, "bf16_seconds": t16,
        "fp32_docs_per_s": len(texts) / m32, "bf16_docs_per_s": len(texts) / m16,
        "speedup_bf16_over_fp32": m32 / m16,
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
        "cpu_bf16_flags": list(cpu_bf16_flags()), "auto_mode_uses_bf16": cpu_supports_bf16(),
        "command": f"python -m benchmarks.bench_bf16 --docs {args.docs} --repeats {args.repeats}",
    }
    verdict = ("bf16 is faster here and `--bf16 auto` turns it on" if result["auto_mode_uses_bf16"] else
               "this CPU has no AMX / AVX-512 BF16, so `--bf16 auto` keeps fp32")
    md = (f"# bf16 autocast vs fp32 encoding (all-MiniLM-L6-v2, {len(texts)} SciFact documents)\n\n"
          f"| precision | median seconds | docs/s |\n|---|---|---|\n"
          f"| fp32 | {m32:.2f} | {result['fp32_docs_per_s']:.1f} |\n"
          f"| bf16 autocast | {m16:.2f} | {result['bf16_docs_per_s']:.1f} |\n\n"
          f"- speed-up bf16 / fp32: **{result['speedup_bf16_over_fp32']:.2f}x** (median of {args.repeats})\n"
          f"- embedding agreement (cosine bf16 vs fp32): min {result['cosine_min']:.5f}, "
          f"mean {result['cosine_mean']:.5f}\n- CPU bf16 flags: {result['cpu_bf16_flags'] or 'none'}; {verdict}\n\n"
          f"## Machine\n{markdown(describe())}\n## Command\n`{result['command']}`\n")
    write_result("bf16", result, md.split("\n"))


if __name__ == "__main__":
    main()
