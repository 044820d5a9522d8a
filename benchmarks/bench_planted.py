"""Planted false negatives: how many end up among the mined negatives, with and without the filter.

Plants two kinds of false negatives in SciFact train:
- near-duplicate copies of positives (last sentence dropped, case and punctuation changed), added to the
  corpus as new documents: for a query, its positive's copy is a false negative;
- hidden positives: for each query with several positives, one is removed from the qrels (it stays in the
  corpus): it is relevant but unlabelled.
Then mines with the same candidates and sampling, one row per rule: without any filter, the near-duplicate
cosine exclusion only, the judge only (by its score with the relative margin, and by its positive-aware rule,
``filter.auto_threshold``), and the exclusion with each judge rule; so each rule's own share shows.

The judge must not have seen the hidden positives as positives: fit it on the planted copy (as
``python -m benchmarks.bench_judge --with-ce`` does in runs/bench_judge/, with the same seed and count), e.g.

    python -m benchmarks.bench_planted --judge runs/bench_judge/ensemble+ce --split train:fit

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


MARGIN, RULE = "judge (margin)", "judge (positive-aware)"
ROWS = ("without filter", "exclusion only", f"{MARGIN} only", f"{RULE} only", f"exclusion + {MARGIN}",
        f"exclusion + {RULE}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", "--cross-encoder", dest="judge", required=True,
                    help="a `hardneg train-judge` folder, a `hardneg train-reranker` fold set or any cross-encoder")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--split", default="train", help="the planted split to mine (e.g. train:fit)")
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
    common = [f"data.name={json.dumps(str(data.resolve()))}", f"data.split={json.dumps(args.split)}",
              f"sampling.num_negatives={args.num_negatives}", "output.overwrite=true"]
    exclusion = [f"exclusion.near_duplicate_cosine={args.near_dup_cosine}"]
    judge_path = Path(args.judge)
    judge = [f"cross_encoder.model={json.dumps(str(judge_path.resolve()) if judge_path.exists() else args.judge)}",
             f"cross_encoder.max_length={args.max_length}"]
    margin, rule = [*judge, f"filter.relative_margin={args.relative_margin}"], [*judge, "filter.auto_threshold=true"]
    variants = dict(zip(ROWS, ([], exclusion, margin, rule, [*exclusion, *margin], [*exclusion, *rule]), strict=True))
    variants = {name: [*common, *extra] for name, extra in variants.items()}
    results = {}
    for name, overrides in variants.items():
        t0 = time.perf_counter()
        out = work / re.sub(r"[^a-z0-9]+", "_", name).strip("_")
        run_mining(load_config(overrides=overrides), out)
        results[name] = {**count(out, planted, args.num_negatives), "seconds": time.perf_counter() - t0,
                         "overrides": overrides}
    base = results["without filter"]
    summary: dict[str, object] = {}
    for name in ROWS[1:]:
        r = results[name]
        summary[name] = {f"{k}_removed": 1 - r[k]["in_negatives"] / base[k]["in_negatives"]
                         if base[k]["in_negatives"] else float("nan")
                         for k in ("near_duplicates", "hidden_positives", "all")}
        summary[name]["queries_with_>=3_negatives"] = r["share_queries_with_>=3_negatives"]
    both = summary[ROWS[-1]]
    summary |= {"removed_share": both["all_removed"], "queries_with_>=3_negatives_with_filter":
                both["queries_with_>=3_negatives"], "pass_removed_>=0.8": both["all_removed"] >= 0.8,
                "pass_>=95%_queries_keep_3": both["queries_with_>=3_negatives"] >= 0.95}
    write_result("planted_false_negatives", {"summary": summary, "runs": results, "args": vars(args)},
                 render(results, summary, planted, args))


def render(results: dict, summary: dict, planted: dict, args) -> list[str]:
    lines = [f"# Planted false negatives on SciFact {args.split}: each rule alone and both\n",
             f"{len(planted['near_duplicates'])} near-duplicate copies of positives planted in the corpus, "
             f"{len(planted['hidden_positives'])} positives hidden from the qrels of multi-positive queries (the "
             f"counts below are those whose query is in `{args.split}`). Candidates: BM25 top-30 + dense top-30 "
             f"(all-MiniLM-L6-v2); top-{args.num_negatives} negatives. Exclusion: near-duplicate cosine >= "
             f"{args.near_dup_cosine} to a labelled positive. Judge: `{args.judge}` (max_length {args.max_length}); "
             f"`{MARGIN}`: its score with relative margin {args.relative_margin} against the query's lowest "
             f"positive; `{RULE}`: its positive-aware rule (`filter.auto_threshold`: judge score + w x cosine to the "
             "nearest labelled positive, as stored with the judge or fitted on the job's multi-positive queries).\n",
             "| run | near-dups in negatives | hidden positives in negatives | all planted in negatives | "
             "removed vs no filter (near-dups / hidden / all) | queries with >= 3 negatives |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        nd, hp, al = r["near_duplicates"], r["hidden_positives"], r["all"]
        s = summary.get(name)
        removed = (f"{s['near_duplicates_removed']:.1%} / {s['hidden_positives_removed']:.1%} / "
                   f"{s['all_removed']:.1%}" if s else "-")
        lines.append(f"| {name} | {nd['in_negatives']}/{nd['retrieved_as_candidates']} | "
                     f"{hp['in_negatives']}/{hp['retrieved_as_candidates']} | {al['in_negatives']} | {removed} | "
                     f"{r['share_queries_with_>=3_negatives']:.1%} |")
    lines += ["", "Near-dups and hidden positives: in the negatives / retrieved among the candidates.", "",
              f"- `{ROWS[-1]}` removes **{summary['removed_share']:.1%}** of the planted false negatives that reach "
              f"the negatives without a filter (target >= 80%: "
              f"{'met' if summary['pass_removed_>=0.8'] else 'NOT met'})",
              f"- with it, **{summary['queries_with_>=3_negatives_with_filter']:.1%}** of queries keep at least 3 "
              f"negatives (target >= 95%: {'met' if summary['pass_>=95%_queries_keep_3'] else 'NOT met'})",
              "", "## Machine", markdown(describe()), "## Command",
              "`python -m benchmarks.bench_planted " + " ".join(
                  [f"--judge {args.judge}", f"--split {args.split}", f"--max-length {args.max_length}",
                   f"--relative-margin {args.relative_margin}"])
              + "`", ""]
    return lines


if __name__ == "__main__":
    main()
