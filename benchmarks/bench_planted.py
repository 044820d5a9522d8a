"""Planted false negatives: how many end up among the mined negatives, with and without the filter.

Plants two kinds of false negatives in SciFact train:
- near-duplicate copies of positives (last sentence dropped, case and punctuation changed), added to the
  corpus as new documents: for a query, its positive's copy is a false negative;
- hidden positives: for each query with several positives, one is removed from the qrels (it stays in the
  corpus): it is relevant but unlabelled.
Then mines twice with the same candidates and sampling: without any filter (no cross-encoder, no
near-duplicate cosine) and with the filter (the cross-fitted cross-encoder and near-duplicate cosine).

Run: python -m benchmarks.bench_planted --cross-encoder runs/ce_scifact [--max-length 128]
Writes benchmarks/results/planted_false_negatives.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.machine import describe, markdown, write_result
from mining_jobs.config import load_config
from mining_jobs.mine import run_mining
from retriever.data import load_beir

HERE = Path(__file__).parent


def near_duplicate(title: str, text: str) -> tuple[str, str]:
    """Drop the last sentence, lowercase, strip some punctuation: not an exact or normalized duplicate."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    kept = " ".join(sentences[:-1]) if len(sentences) > 2 else text[: max(40, int(len(text) * 0.85))]
    return title.lower(), kept.lower().replace(",", "").replace("(", "").replace(")", "")


def plant(src: Path, dest: Path, n_dups: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    col = load_beir(src, "train")
    rng = np.random.default_rng(seed)
    qids = sorted(col.qrels)
    dup_q = sorted(rng.choice(len(qids), size=min(n_dups, len(qids)), replace=False).tolist())
    corpus = {d: (t, x) for d, t, x in zip(col.corpus["_id"], col.corpus["title"], col.corpus["text"], strict=True)}
    qrels = {q: dict(v) for q, v in col.qrels.items()}
    planted_dups, hidden = [], []
    for i in dup_q:
        q = qids[i]
        pos = sorted(qrels[q])[0]
        new_id = f"planted-dup-{q}-{pos}"
        corpus[new_id] = near_duplicate(*corpus[pos])
        planted_dups.append((q, new_id))
    for q in qids:
        if len(qrels[q]) >= 2:
            h = sorted(qrels[q])[-1]
            del qrels[q][h]
            hidden.append((q, h))
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "qrels").mkdir(parents=True)
    with (dest / "corpus.jsonl").open("w") as fh:
        for d, (t, x) in corpus.items():
            fh.write(json.dumps({"_id": d, "title": t, "text": x}) + "\n")
    shutil.copy(src / "queries.jsonl", dest / "queries.jsonl")
    with (dest / "qrels" / "train.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q in qids:
            for d, g in qrels[q].items():
                fh.write(f"{q}\t{d}\t{g}\n")
    planted = {"near_duplicates": planted_dups, "hidden_positives": hidden}
    (dest / "planted.json").write_text(json.dumps(planted))  # what `hardneg judge-report --planted` reads
    return planted


def count(run_dir: Path, planted: dict[str, list[tuple[str, str]]], n_neg: int) -> dict[str, object]:
    triples = pq.read_table(run_dir / "triples.parquet").to_pylist()
    cands = pq.read_table(run_dir / "candidates.parquet").select(["query_id", "doc_id", "fate"]).to_pylist()
    negs: dict[str, set[str]] = {}
    for r in triples:
        negs.setdefault(r["query_id"], set()).update(r["negative_ids"])
    fate = {(c["query_id"], c["doc_id"]): c["fate"] for c in cands}
    out: dict[str, object] = {}
    for kind, items in planted.items():
        mined = sum(1 for q, d in items if d in negs.get(q, set()))
        retrieved = sum(1 for q, d in items if (q, d) in fate)
        out[kind] = {"planted": len(items), "retrieved_as_candidates": retrieved, "in_negatives": mined,
                     "share_in_negatives": mined / len(items) if items else 0.0}
    allp = [x for v in planted.values() for x in v]
    total = sum(1 for q, d in allp if d in negs.get(q, set()))
    out["all"] = {"planted": len(allp), "in_negatives": total, "share_in_negatives": total / len(allp)}
    per_q = [len(v) for v in negs.values()]
    out["queries"] = len(per_q)
    out["share_queries_with_>=3_negatives"] = sum(1 for n in per_q if n >= 3) / len(per_q)
    out[f"share_queries_with_{n_neg}_negatives"] = sum(1 for n in per_q if n >= n_neg) / len(per_q)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cross-encoder", required=True, help="fold set from `hardneg train-reranker`")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--dups", type=int, default=150, help="queries that get a near-duplicate of a positive")
    ap.add_argument("--near-dup-cosine", type=float, default=0.95)
    ap.add_argument("--relative-margin", type=float, default=0.1)
    ap.add_argument("--num-negatives", type=int, default=5)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--work", default="runs/planted")
    args = ap.parse_args()
    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    work = Path(args.work)
    data = work / "scifact_planted"
    planted = plant(Path(os.environ["HARDNEG_DATA"]) / "scifact", data, args.dups, args.seed)
    common = [f"data.name={json.dumps(str(data.resolve()))}", "data.split=train",
              f"sampling.num_negatives={args.num_negatives}", "output.overwrite=true"]
    variants = {
        "without filter": common,
        "with filter": [*common, f"cross_encoder.model={json.dumps(str(Path(args.cross_encoder).resolve()))}",
                        f"cross_encoder.max_length={args.max_length}",
                        f"exclusion.near_duplicate_cosine={args.near_dup_cosine}",
                        f"filter.relative_margin={args.relative_margin}"],
    }
    results = {}
    for name, overrides in variants.items():
        t0 = time.perf_counter()
        out = work / name.replace(" ", "_")
        run_mining(load_config(overrides=overrides), out)
        results[name] = {**count(out, planted, args.num_negatives), "seconds": time.perf_counter() - t0,
                         "overrides": overrides}
    a, b = results["without filter"]["all"]["in_negatives"], results["with filter"]["all"]["in_negatives"]
    removed = 1 - b / a if a else float("nan")
    keep3 = results["with filter"]["share_queries_with_>=3_negatives"]
    summary = {"removed_share": removed, "queries_with_>=3_negatives_with_filter": keep3,
               "pass_removed_>=0.8": removed >= 0.8, "pass_>=95%_queries_keep_3": keep3 >= 0.95}
    lines = ["# Planted false negatives on SciFact train\n",
             f"{len(planted['near_duplicates'])} near-duplicate copies of positives planted in the corpus, "
             f"{len(planted['hidden_positives'])} positives hidden from the qrels of multi-positive queries. "
             f"Candidates: BM25 top-30 + dense top-30 (all-MiniLM-L6-v2); top-{args.num_negatives} negatives.\n",
             "| run | near-dups in negatives | hidden positives in negatives | all planted in negatives | "
             "queries with >= 3 negatives |", "|---|---|---|---|---|"]
    for name, r in results.items():
        nd, hp, al = r["near_duplicates"], r["hidden_positives"], r["all"]
        lines.append(f"| {name} | {nd['in_negatives']}/{nd['planted']} ({nd['share_in_negatives']:.1%}) | "
                     f"{hp['in_negatives']}/{hp['planted']} ({hp['share_in_negatives']:.1%}) | "
                     f"{al['in_negatives']}/{al['planted']} ({al['share_in_negatives']:.1%}) | "
                     f"{r['share_queries_with_>=3_negatives']:.1%} |")
    lines += ["", f"- the filter removes **{removed:.1%}** of the planted false negatives that reach the negatives "
              f"without it (target >= 80%: {'met' if summary['pass_removed_>=0.8'] else 'NOT met'})",
              f"- with the filter, **{keep3:.1%}** of queries keep at least 3 negatives (target >= 95%: "
              f"{'met' if summary['pass_>=95%_queries_keep_3'] else 'NOT met'})",
              f"- filter: cross-fitted cross-encoder `{args.cross_encoder}` (max_length {args.max_length}), relative "
              f"margin {args.relative_margin} on probabilities, near-duplicate cosine >= {args.near_dup_cosine}",
              "", "## Machine", markdown(describe()), "## Command",
              f"`python -m benchmarks.bench_planted --cross-encoder {args.cross_encoder} --max-length {args.max_length}`", ""]
    write_result("planted_false_negatives", {"summary": summary, "runs": results, "args": vars(args)}, lines)


if __name__ == "__main__":
    main()
