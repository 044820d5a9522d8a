"""Side by side: `hardneg mine` against sentence-transformers' `mine_hard_negatives`, same data, same models.

Both miners read SciFact train with planted false negatives (the corpus and qrels of `bench_planted`:
near-duplicate copies of positives, and positives hidden from the qrels), and use
- the same bi-encoder (all-MiniLM-L6-v2, max_seq_length --seq-length) for dense candidates,
- the same candidate depth: sentence-transformers retrieves range_max + max_positives dense candidates per
  query (range_max defaults to its own rule for a margin, 10 x num_negatives + max_positives); hardneg
  retrieves as many (candidates.dense_k), BM25 off,
- the same cross-encoder (--cross-encoder, one model, max_length --max-length) with the same relative margin
  on probabilities, and the same number of negatives, sampling "top".
sentence-transformers scores every candidate with the cross-encoder and ranks by that score. hardneg runs with
`filter.rank_by = "retrieval"`: it scores candidates in retrieval order only until num_negatives pass the filter.

Every run is a fresh subprocess with cold caches (hardneg gets an empty $HARDNEG_CACHE); the clock starts after
the imports and stops after the output is written. Runs come in pairs (sentence-transformers first, then
hardneg); the ratio of each pair is reported, and their median.

Mining quality: the share of planted false negatives that end up among the negatives (lower is better).

Run: python -m benchmarks.bench_vs_st --cross-encoder runs/ce_scifact/fold_0 [--repeats 3]
Writes benchmarks/results/vs_sentence_transformers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULT = "vs_sentence_transformers"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _positives(data: Path) -> tuple[dict[str, str], list[str], dict[str, str], dict[str, list[str]]]:
    from retriever.data import load_beir

    col = load_beir(data, "train")
    texts = col.doc_texts()
    ids = list(col.corpus["_id"])
    pos = {q: sorted(d for d, g in rel.items() if g >= 1) for q, rel in col.qrels.items()}
    return dict(zip(ids, texts, strict=True)), ids, {q: col.queries[q] for q in pos}, pos


def child_st(spec: dict) -> dict:
    """sentence-transformers' miner; returns the negatives per query id."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from retriever.encoder import resolve_model_name

    t0 = time.perf_counter()
    docs, ids, queries, pos = _positives(Path(spec["data"]))
    rows = [(queries[q], docs[d]) for q in sorted(pos) for d in pos[q]]
    ds = Dataset.from_dict({"query": [r[0] for r in rows], "positive": [r[1] for r in rows]})
    model = SentenceTransformer(resolve_model_name(spec["bi_encoder"]), device="cpu")
    model.max_seq_length = spec["seq_length"]
    ce = CrossEncoder(spec["cross_encoder"], max_length=spec["max_length"], device="cpu")
    out = mine_hard_negatives(ds, model, corpus=[docs[d] for d in ids], cross_encoder=ce,
                              range_max=spec["range_max"], relative_margin=spec["relative_margin"],
                              num_negatives=spec["num_negatives"], sampling_strategy="top",
                              batch_size=spec["batch_size"], use_faiss=True, output_format="triplet",
                              verbose=False)
    pq.write_table(pa.Table.from_pydict(out.to_dict()), spec["out"])
    wall = time.perf_counter() - t0
    by_text = {}
    for d in ids:
        by_text.setdefault(docs[d], d)
    qid_of = {t: q for q, t in queries.items()}
    negs: dict[str, list[str]] = {}
    for r in out:
        lst = negs.setdefault(qid_of[r["query"]], [])
        d = by_text[r["negative"]]
        if d not in lst:
            lst.append(d)
    return {"wall_s": wall, "negatives": negs, "ce_pairs": None}


def child_hardneg(spec: dict) -> dict:
    import pyarrow.parquet as pq

    from mining_jobs.config import load_config
    from mining_jobs.mine import run_mining

    t0 = time.perf_counter()
    cfg = load_config(overrides=[
        f"data.name={json.dumps(spec['data'])}", "data.split=train", "candidates.bm25=false",
        f"candidates.dense_k={spec['depth']}", f"candidates.model={json.dumps(spec['bi_encoder'])}",
        f"candidates.max_seq_length={spec['seq_length']}", f"candidates.batch_size={spec['batch_size']}",
        f"cross_encoder.model={json.dumps(spec['cross_encoder'])}", f"cross_encoder.max_length={spec['max_length']}",
        f"cross_encoder.batch_size={spec['batch_size']}", f"filter.relative_margin={spec['relative_margin']}",
        f"filter.rank_by={spec['rank_by']}", f"sampling.num_negatives={spec['num_negatives']}",
        f"exclusion.near_duplicate_cosine={spec['near_dup_cosine']}", "output.overwrite=true"])
    manifest = run_mining(cfg, spec["out"])
    wall = time.perf_counter() - t0
    negs: dict[str, list[str]] = {}
    for r in pq.read_table(Path(spec["out"]) / "triples.parquet", columns=["query_id", "negative_ids"]).to_pylist():
        lst = negs.setdefault(r["query_id"], [])
        lst.extend(d for d in r["negative_ids"] if d not in lst)
    return {"wall_s": wall, "negatives": negs, "ce_pairs": manifest["counts"]["ce_pairs_scored"],
            "timings": manifest["timings"]}


def run_child(kind: str, spec: dict, cache_dir: str | None = None) -> dict:
    """One miner in a fresh process; cold caches unless ``cache_dir`` (a $HARDNEG_CACHE to reuse) is given.
    Returns its result with peak RSS."""
    with tempfile.TemporaryDirectory() as tmp_cache, tempfile.NamedTemporaryFile(suffix=".json") as res:
        cache = cache_dir or tmp_cache
        env = {**os.environ, "HARDNEG_CACHE": cache, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.bench_vs_st", "--child", kind, "--spec", json.dumps(spec),
                        "--result", res.name], check=True, env=env, cwd=HERE.parent)
        out = json.loads(Path(res.name).read_text())
        out["process_s"] = time.perf_counter() - t0
        return out


def quality(negs: dict[str, list[str]], planted: dict[str, list[list[str]]], n: int) -> dict:
    out = {}
    allp = []
    for kind, items in planted.items():
        hit = sum(1 for q, d in items if d in negs.get(q, []))
        out[kind] = {"planted": len(items), "in_negatives": hit}
        allp += items
    hit = sum(1 for q, d in allp if d in negs.get(q, []))
    out["all"] = {"planted": len(allp), "in_negatives": hit, "share": hit / len(allp)}
    out["queries_with_n_negatives"] = sum(1 for v in negs.values() if len(v) >= n)
    out["negatives"] = sum(len(v) for v in negs.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=["st", "hardneg"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--cross-encoder", default="runs/ce_scifact/fold_0", help="one CrossEncoder folder or hub name")
    ap.add_argument("--bi-encoder", default="default")
    ap.add_argument("--max-length", type=int, default=128, help="cross-encoder tokens per pair")
    ap.add_argument("--seq-length", type=int, default=128, help="bi-encoder max_seq_length")
    ap.add_argument("--num-negatives", type=int, default=3)
    ap.add_argument("--range-max", type=int, default=None,
                    help="sentence-transformers range_max (default: its own rule, 10 x num_negatives + max_positives)")
    ap.add_argument("--relative-margin", type=float, default=0.1)
    ap.add_argument("--near-dup-cosine", type=float, default=0.95, help="hardneg exclusion.near_duplicate_cosine")
    ap.add_argument("--batch-size", type=int, default=32, help="bi-encoder and cross-encoder batch size, both miners")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-scoring", action="store_true",
                    help="also run hardneg once with rank_by = cross_encoder (every candidate scored, like the peer)")
    ap.add_argument("--remine", metavar="MODEL",
                    help="re-mining: a changed bi-encoder (e.g. a fine-tuned one); runs hardneg with rank_by = "
                         "cross_encoder cold, then again with MODEL on the same cross-encoder score cache")
    ap.add_argument("--work", default="runs/vs_st")
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.spec)
        res = child_st(spec) if args.child == "st" else child_hardneg(spec)
        res["peak_rss_mb"] = _peak_rss_mb()
        Path(args.result).write_text(json.dumps(res))
        return

    from benchmarks.bench_planted import plant
    from benchmarks.machine import describe, markdown, write_result

    os.environ.setdefault("HARDNEG_DATA", str(HERE.parent.parent / "shared" / "data"))
    work = Path(args.work).resolve()
    data = work / "scifact_planted"
    planted = plant(Path(os.environ["HARDNEG_DATA"]) / "scifact", data, 150, 13)
    _, _, _, pos = _positives(data)
    max_pos = max(len(v) for v in pos.values())
    range_max = args.range_max or 10 * args.num_negatives + max_pos
    depth = range_max + max_pos  # what sentence-transformers retrieves per query
    ce = args.cross_encoder if not Path(args.cross_encoder).exists() else str(Path(args.cross_encoder).resolve())
    spec = {"data": str(data), "bi_encoder": args.bi_encoder, "seq_length": args.seq_length, "cross_encoder": ce,
            "max_length": args.max_length, "num_negatives": args.num_negatives, "range_max": range_max,
            "depth": depth, "relative_margin": args.relative_margin, "near_dup_cosine": args.near_dup_cosine,
            "batch_size": args.batch_size}
    runs: list[dict] = []

    def record(kind: str, label: str, rep: int, extra: dict, cache_dir: str | None = None) -> dict:
        s = {**spec, **extra, "out": str(work / f"{label}_{rep}".replace(" ", "_") /
                                         ("st.parquet" if kind == "st" else ""))}
        Path(s["out"]).parent.mkdir(parents=True, exist_ok=True)
        r = run_child(kind, s, cache_dir)
        q = quality(r.pop("negatives"), planted, args.num_negatives)
        row = {"miner": label, "repeat": rep, **r, "quality": q}
        runs.append(row)
        (work / "partial.json").write_text(json.dumps(runs, indent=2))  # survives an interrupted benchmark
        print(f"[{label} #{rep}] {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, planted in negatives "
              f"{q['all']['in_negatives']}/{q['all']['planted']}", flush=True)
        return row

    ratios = []
    for rep in range(args.repeats):
        st = record("st", "sentence-transformers", rep, {})
        hn = record("hardneg", "hardneg", rep, {"rank_by": "retrieval"})
        ratios.append(st["wall_s"] / hn["wall_s"])
    remine = None
    if args.full_scoring or args.remine:
        with tempfile.TemporaryDirectory() as cache:
            first = record("hardneg", "hardneg rank_by=cross_encoder", 0, {"rank_by": "cross_encoder"}, cache)
            if args.remine:
                model = str(Path(args.remine).resolve()) if Path(args.remine).exists() else args.remine
                again = record("hardneg", "hardneg rank_by=cross_encoder, re-mine with the changed bi-encoder", 0,
                               {"rank_by": "cross_encoder", "bi_encoder": model}, cache)
                remine = {"first_s": first["wall_s"], "remine_s": again["wall_s"],
                          "ratio": first["wall_s"] / again["wall_s"], "first_pairs_scored": first["ce_pairs"],
                          "remine_pairs_scored": again["ce_pairs"], "model": args.remine,
                          "remine_timings": again["timings"], "first_timings": first["timings"]}

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["miner"] == label)

    st_q = [r["quality"]["all"]["share"] for r in runs if r["miner"] == "sentence-transformers"]
    hn_q = [r["quality"]["all"]["share"] for r in runs if r["miner"] == "hardneg"]
    summary = {"median_speed_ratio": statistics.median(ratios), "ratios": ratios,
               "planted_share_st": statistics.median(st_q), "planted_share_hardneg": statistics.median(hn_q),
               "pass_>=3x": statistics.median(ratios) >= 3,
               "pass_quality_equal_or_better": statistics.median(hn_q) <= statistics.median(st_q),
               "remine": remine}
    lines = [f"# hardneg mine vs sentence-transformers mine_hard_negatives on SciFact train ({len(pos)} queries)\n",
             f"Planted false negatives: {len(planted['near_duplicates'])} near-duplicates of positives in the corpus, "
             f"{len(planted['hidden_positives'])} positives hidden from the qrels. Same bi-encoder (all-MiniLM-L6-v2, "
             f"max_seq_length {args.seq_length}), same cross-encoder (`{args.cross_encoder}`, max_length "
             f"{args.max_length}), {depth} dense candidates per query, relative margin {args.relative_margin} on "
             f"probabilities, {args.num_negatives} negatives, sampling top, batch size {args.batch_size}. "
             f"sentence-transformers: range_max {range_max}, use_faiss. hardneg: BM25 off, "
             f"filter.rank_by = retrieval, near-duplicate cosine {args.near_dup_cosine}. Cold caches, one process "
             "per run.\n",
             "| run | miner | wall s | peak RSS MB | cross-encoder pairs | planted in negatives | near-dups | "
             "hidden positives | queries with all negatives |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        q = r["quality"]
        lines.append(f"| {r['repeat']} | {r['miner']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['ce_pairs'] if r['ce_pairs'] is not None else len(pos) * depth + sum(map(len, pos.values()))} | "
                     f"{q['all']['in_negatives']}/{q['all']['planted']} ({q['all']['share']:.1%}) | "
                     f"{q['near_duplicates']['in_negatives']} | {q['hidden_positives']['in_negatives']} | "
                     f"{q['queries_with_n_negatives']} |")
    lines += ["", f"- speed ratio per pair (sentence-transformers s / hardneg s): "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; **median {summary['median_speed_ratio']:.2f}x** "
              f"(target >= 3x: {'met' if summary['pass_>=3x'] else 'NOT met'})",
              f"- median wall: sentence-transformers {med('sentence-transformers', 'wall_s'):.1f} s, hardneg "
              f"{med('hardneg', 'wall_s'):.1f} s; median peak RSS {med('sentence-transformers', 'peak_rss_mb'):.0f} MB "
              f"vs {med('hardneg', 'peak_rss_mb'):.0f} MB",
              f"- planted false negatives among the negatives: sentence-transformers {summary['planted_share_st']:.1%}, "
              f"hardneg {summary['planted_share_hardneg']:.1%} (target: equal or lower: "
              f"{'met' if summary['pass_quality_equal_or_better'] else 'NOT met'})",
              "- sentence-transformers' cross-encoder pairs: every retrieved candidate plus every positive, by "
              "construction; hardneg's: counted by the job (pairs scored by the model, not read from the cache)",
              ]
    if remine:
        lines += ["", "## Re-mining", "",
                  f"hardneg with rank_by = cross_encoder (every candidate scored), cold, then the same job with a "
                  f"changed bi-encoder (`{args.remine}`) on the same cross-encoder score cache: the corpus is "
                  "encoded again by the new model, and only the (query, document) pairs not scored before go to "
                  "the cross-encoder.", "",
                  "| run | wall s | corpus encoding s | cross-encoder s | pairs scored |", "|---|---|---|---|---|",
                  f"| first mine | {remine['first_s']:.1f} | {remine['first_timings'].get('corpus_encode_s', 0):.1f} | "
                  f"{remine['first_timings'].get('score_s', 0):.1f} | {remine['first_pairs_scored']} |",
                  f"| re-mine | {remine['remine_s']:.1f} | {remine['remine_timings'].get('corpus_encode_s', 0):.1f} | "
                  f"{remine['remine_timings'].get('score_s', 0):.1f} | {remine['remine_pairs_scored']} |", "",
                  f"- re-mining is **{remine['ratio']:.2f}x** faster than the first mine (target >= 2x: "
                  f"{'met' if remine['ratio'] >= 2 else 'NOT met'})"]
    lines += [
              "", "## Machine", markdown(describe()), "## Command",
              f"`python -m benchmarks.bench_vs_st --cross-encoder {args.cross_encoder} --repeats {args.repeats}"
              f"{' --full-scoring' if args.full_scoring else ''}{' --remine ' + args.remine if args.remine else ''}`", ""]
    write_result(RESULT, {"summary": summary, "runs": runs, "args": vars(args), "spec": spec}, lines)


if __name__ == "__main__":
    main()
