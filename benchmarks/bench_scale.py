"""Scale: `hardneg mine` on generated corpora of 10k, 100k and 1M short documents with 10,000 queries.

A memory and throughput test, so the text is synthetic: each document is 10-20 pseudo-words, mostly from its
topic's 50 words plus a few common words (Zipf); each query is 4-6 words of its one positive document. The
models are small and random (a 1-layer, 32-wide BERT bi-encoder (32 tokens) and cross-encoder (64 tokens) with
the MiniLM tokenizer, `retriever.small_models`): they cost what a small model costs and judge nothing.

Every run is the full job in a fresh process with a cold cache: BM25 (bm25s) top-30 + dense top-30 from a
faiss IVF index (sqrt(documents) cells, 16 probed), with --cross-encoder the small cross-encoder filter,
3 negatives per query, shards of 256 queries. Reported: time per stage, peak resident memory (ru_maxrss),
and the resident memory after every shard (memory must not grow with the queries mined). With --few-queries N,
one more run on the largest corpus mines only N queries, to compare its peak.

Run: python -m benchmarks.bench_scale [--sizes 10000 100000 1000000] [--queries 10000]
Writes benchmarks/results/scale.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULT = "scale"
CONSONANTS = list("bcdfghjklmnprstvwxz")
VOWELS = list("aeiou")


def _words(ids: np.ndarray) -> list[str]:
    """Pseudo-words of three syllables, one per id (95^3 > 850k distinct)."""
    syl = [c + v for c in CONSONANTS for v in VOWELS]
    n = len(syl)
    return [syl[i % n] + syl[(i // n) % n] + syl[(i // (n * n)) % n] for i in ids.tolist()]


def generate(folder: Path, n_docs: int, n_queries: int, seed: int = 0) -> dict:
    """Write a BEIR folder (corpus, queries, qrels/train.tsv) unless the same one is already there."""
    meta = {"documents": n_docs, "queries": n_queries, "seed": seed, "version": 1}
    if (folder / "meta.json").is_file() and json.loads((folder / "meta.json").read_text()) == meta:
        return meta
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_topics = max(10, n_docs // 500)
    topic_words, common = 50, 2000
    vocab = np.array(_words(np.arange(n_topics * topic_words + common)), dtype=object)
    topics = rng.integers(0, n_topics, n_docs)
    lengths = rng.integers(10, 21, n_docs)
    zipf = 1.0 / np.arange(1, common + 1)
    zipf /= zipf.sum()
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    pos = np.sort(rng.choice(n_docs, size=min(n_queries, n_docs), replace=False))
    pos_set = set(pos.tolist())
    pos_words: dict[int, list[str]] = {}
    with (folder / "corpus.jsonl").open("w") as fh:
        for start in range(0, n_docs, 100_000):
            stop = min(n_docs, start + 100_000)
            width = 20
            own = topics[start:stop, None] * topic_words + rng.integers(0, topic_words, (stop - start, width))
            com = n_topics * topic_words + rng.choice(common, size=(stop - start, width), p=zipf)
            pick = np.where(rng.random((stop - start, width)) < 0.8, own, com)
            for i in range(stop - start):
                words = vocab[pick[i, :lengths[start + i]]].tolist()
                d = start + i
                if d in pos_set:
                    pos_words[d] = words
                fh.write(json.dumps({"_id": f"d{d}", "title": "", "text": " ".join(words)}) + "\n")
    with (folder / "queries.jsonl").open("w") as qf, (folder / "qrels" / "train.tsv").open("w") as rf:
        rf.write("query-id\tcorpus-id\tscore\n")
        for j, d in enumerate(pos.tolist()):
            words = pos_words[d]
            k = int(rng.integers(4, 7))
            q = " ".join(words[i] for i in sorted(rng.choice(len(words), size=min(k, len(words)), replace=False)))
            qf.write(json.dumps({"_id": f"q{j}", "text": q}) + "\n")
            rf.write(f"q{j}\td{d}\t1\n")
    (folder / "meta.json").write_text(json.dumps(meta))
    return {**meta, "generate_s": time.perf_counter() - t0}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    import mining_jobs.shard as mm
    from mining_jobs.config import load_config

    after_shard: list[float] = []
    orig = mm.mine_shard

    def mine_shard(*a, **k):
        out = orig(*a, **k)
        after_shard.append(_rss_mb())
        return out

    mm.mine_shard = mine_shard
    n_docs = spec["documents"]
    cfg = load_config(overrides=[
        f"data.name={json.dumps(spec['data'])}", "data.split=train", "candidates.bm25_k=30", "candidates.dense_k=30",
        f"candidates.model={json.dumps(spec['bi_encoder'])}", "candidates.index=ivf",
        f"candidates.ivf_nlist={max(16, int(np.sqrt(n_docs)))}", "candidates.ivf_nprobe=16",
        "candidates.batch_size=256",
        *([f"cross_encoder.model={json.dumps(spec['cross_encoder'])}", "cross_encoder.max_length=64",
           "cross_encoder.batch_size=256"] if spec["cross_encoder"] else []),
        "sampling.num_negatives=3", "output.shard_size=256", "output.overwrite=true"])
    t0 = time.perf_counter()
    manifest = mm.run_mining(cfg, spec["out"])
    return {"wall_s": time.perf_counter() - t0, "timings": manifest["timings"],
            "queries": manifest["counts"]["queries"], "candidates": manifest["counts"]["candidates"],
            "ce_pairs": manifest["counts"]["ce_pairs"], "rss_after_first_shard_mb": after_shard[0],
            "rss_after_last_shard_mb": after_shard[-1], "rss_after_shards_mb": after_shard}


def run_child(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.NamedTemporaryFile(suffix=".json") as res:
        # torch on one thread: for a 64-wide model the thread pool's per-operator synchronisation costs more
        # than the arithmetic (measured: 2 threads encode ~30x slower than 1 here)
        env = {**os.environ, "HARDNEG_CACHE": cache, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--child", json.dumps(spec),
                        "--result", res.name], check=True, env=env, cwd=HERE.parent)
        return json.loads(Path(res.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--few-queries", type=int, default=0,
                    help="also mine this many queries on the largest corpus, to compare peak memory (0 = skip)")
    ap.add_argument("--cross-encoder", action="store_true",
                    help="also run the small random cross-encoder filter (its cost grows with the queries, not the corpus)")
    ap.add_argument("--work", default="runs/scale")
    args = ap.parse_args()
    if args.child:
        res = child(json.loads(args.child))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(args.result).write_text(json.dumps(res))
        return

    from benchmarks.machine import describe, markdown, write_result
    from retriever.small_models import build_small_bi_encoder, build_small_cross_encoder

    work = Path(args.work).resolve()
    bi = build_small_bi_encoder(work / "models" / "bi", hidden=32, layers=1, max_seq_length=32)
    ce = build_small_cross_encoder(work / "models" / "ce", hidden=32, layers=1) if args.cross_encoder else None
    plan = [(n, args.queries) for n in args.sizes] + ([(max(args.sizes), args.few_queries)] if args.few_queries else [])
    rows = []
    for n_docs, n_q in plan:
        data = work / f"data_{n_docs}_{n_q}"
        gen = generate(data, n_docs, n_q)
        spec = {"data": str(data), "documents": n_docs, "bi_encoder": str(bi), "cross_encoder": str(ce) if ce else "",
                "out": str(work / f"out_{n_docs}_{n_q}")}
        r = run_child(spec)
        row = {"documents": n_docs, "queries_requested": n_q, "generate_s": gen.get("generate_s"), **r}
        rows.append(row)
        print(f"[{n_docs} docs, {r['queries']} queries] {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"RSS after first/last shard {r['rss_after_first_shard_mb']:.0f}/{r['rss_after_last_shard_mb']:.0f} MB",
              flush=True)
        (work / "partial.json").write_text(json.dumps(rows, indent=2))
    main_rows = [r for r in rows if r["queries_requested"] == args.queries]
    big = [r for r in rows if r["documents"] == max(args.sizes)]
    peak_ok = all(r["peak_rss_mb"] < 6 * 1024 for r in rows)
    summary = {"peak_rss_mb_largest": max(r["peak_rss_mb"] for r in big), "pass_<6GB": peak_ok,
               "peak_rss_mb_by_queries": {str(r["queries"]): r["peak_rss_mb"] for r in big},
               "time_growth": {str(r["documents"]): r["wall_s"] / main_rows[0]["wall_s"] for r in main_rows}}
    t = lambda r, k: r["timings"].get(k, 0.0)  # noqa: E731
    lines = [f"# Mining at scale: generated corpora, {args.queries:,} queries\n",
             "Synthetic short documents (10-20 pseudo-words) and queries (4-6 words of their positive); small random "
             "models (1-layer, 32-wide BERT bi-encoder and cross-encoder); BM25 top-30 + dense top-30 from faiss IVF "
             f"(sqrt(N) cells, 16 probed); {'the cross-encoder filter' if args.cross_encoder else 'no cross-encoder (its cost is per (query, candidate) pair, not per document: see vs_sentence_transformers.md)'}; 3 negatives; shards of 256 "
             "queries; cold cache; one process per run, torch on one thread (faster for models this small).\n",
             "| documents | queries | total s | load s | BM25 index s | encode corpus s | dense index s | retrieve s | "
             "cross-encoder s | other s | peak RSS MB | RSS after 1st / max / last shard MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        known = sum(t(r, k) for k in ("load_s", "bm25_index_s", "corpus_encode_s", "dense_index_s", "retrieve_s",
                                      "score_s"))
        lines.append(f"| {r['documents']:,} | {r['queries']:,} | {r['wall_s']:.1f} | {t(r, 'load_s'):.1f} | "
                     f"{t(r, 'bm25_index_s'):.1f} | {t(r, 'corpus_encode_s'):.1f} | {t(r, 'dense_index_s'):.1f} | "
                     f"{t(r, 'retrieve_s'):.1f} | {t(r, 'score_s'):.1f} | {r['wall_s'] - known:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['rss_after_first_shard_mb']:.0f} / "
                     f"{max(r['rss_after_shards_mb']):.0f} / {r['rss_after_last_shard_mb']:.0f} |")
    growth = ", ".join(f"{int(k):,} docs: {v:.1f}x" for k, v in summary["time_growth"].items())
    lines += ["", f"- time relative to the smallest corpus: {growth}",
              f"- peak resident memory of the largest run: **{summary['peak_rss_mb_largest'] / 1024:.2f} GB** "
              f"(target < 6 GB: {'met' if peak_ok else 'NOT met'})",
              "- peak resident memory on the largest corpus by queries mined: "
              + ", ".join(f"{int(q):,} queries: {m:.0f} MB" for q, m in summary["peak_rss_mb_by_queries"].items()),
              "- resident memory after each shard of the largest run: first "
              f"{big[0]['rss_after_first_shard_mb']:.0f} MB, max {max(big[0]['rss_after_shards_mb']):.0f} MB, "
              f"last {big[0]['rss_after_last_shard_mb']:.0f} MB over {len(big[0]['rss_after_shards_mb'])} shards "
              "(each shard's candidates and triples go to disk; nothing accumulates per query)",
              "", "## Machine", markdown(describe()), "## Command",
              f"`python -m benchmarks.bench_scale --sizes {' '.join(map(str, args.sizes))} --queries {args.queries} "
              f"{f' --few-queries {args.few_queries}' if args.few_queries else ''}{' --cross-encoder' if args.cross_encoder else ''}`", ""]
    write_result(RESULT, {"summary": summary, "runs": rows, "args": vars(args)}, lines)


if __name__ == "__main__":
    main()
