"""Ablation: which negatives make the better retriever? SciFact, same base model and training budget per row.

Rows: the base model; in-batch negatives only; random negatives; BM25 negatives; dense negatives without the
filter; BM25 + dense with the cross-encoder filter (= ANCE round 1); negatives from
``sentence_transformers.util.mine_hard_negatives`` with the same bi-encoder, cross-encoder and depth; ANCE
rounds 2 and 3 (from a ``hardneg iterate`` run). Every model trains on ``train:fit`` (train minus the carved
``train:dev``) with the same steps, batch size and learning rate; dev (``train:dev``) and test metrics come
from the same corpus embeddings. Each row is kept in ``OUT/<row>/result.json``, so a killed run resumes.

    python -m benchmarks.bench_ablation --cross-encoder runs/ce_scifact --ance runs/ance_scifact
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

from mining_jobs.config import load_config
from mining_jobs.evaluate import evaluate_model
from mining_jobs.files import write_json, write_text
from mining_jobs.mine import run_mining
from mining_jobs.train import TrainConfig, run_training
from retriever import metrics as M
from retriever.data import load_collection

from .machine import describe, markdown

logger = logging.getLogger("bench_ablation")
METRICS = ("ndcg@10", "mrr@10", "recall@100")
ROWS = ("base", "in-batch", "random", "bm25", "dense", "filtered", "st", "ance-2", "ance-3")
LABELS = {"base": "base model (no fine-tuning)", "in-batch": "in-batch negatives only",
          "random": "random negatives", "bm25": "BM25 negatives (no filter)",
          "dense": "dense negatives (no filter)", "filtered": "hardneg: BM25 + dense, cross-encoder filter (ANCE round 1)",
          "st": "sentence_transformers.util.mine_hard_negatives (dense top-30 of the same bi-encoder, same "
                "cross-encoder and margin)",
          "ance-2": "hardneg ANCE round 2", "ance-3": "hardneg ANCE round 3"}


def mine_config(args, **sections) -> list[str]:
    sets = [f"data.name={json.dumps(args.data)}", f"data.split={json.dumps(args.fit_split)}",
            f"sampling.num_negatives={args.mine_negatives}", f"candidates.bm25_k={args.depth}",
            f"candidates.dense_k={args.depth}", "output.overwrite=false"]
    for k, v in sections.items():
        sets.append(f"{k.replace('__', '.')}={json.dumps(v)}")
    return sets


def mine(args, name: str, **sections) -> Path:
    out = Path(args.out) / name / "mine"
    cfg = load_config(None, mine_config(args, **sections))
    if (out / "manifest.json").is_file():
        if json.loads((out / "manifest.json").read_text())["config_fingerprint"] != cfg.fingerprint():
            raise SystemExit(f"{out} was mined with other settings; remove it or use another --out")
    else:
        run_mining(cfg, out)
    return out


TRAIN_KEYS = {"steps": "max_steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
              "train_max_seq_length": "max_seq_length"}


def check_train(args, config: dict, where: str, negatives: int) -> None:
    """A reused or external model must have been trained with this benchmark's budget."""
    want = {v: getattr(args, k) for k, v in TRAIN_KEYS.items()} | {"negatives": negatives}
    bad = {k: (config.get(k), v) for k, v in want.items() if config.get(k) != v}
    if bad:
        raise SystemExit(f"{where} was trained with other settings (found, wanted): {bad}")


def random_triples(args, out: Path) -> Path:
    """Per training query, ``mine_negatives`` corpus documents drawn uniformly (positives excluded), seeded."""
    path = out / "random" / "triples.parquet"
    if path.is_file():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = load_collection(args.data, args.fit_split)
    texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
    ids = col.doc_ids
    rng = random.Random(args.seed)
    rows = []
    for qid, judged in col.qrels.items():
        pos = [d for d, g in judged.items() if g >= 1]
        for p in pos:
            negs: list[str] = []
            while len(negs) < args.mine_negatives:
                d = ids[rng.randrange(len(ids))]
                if d not in judged and d not in negs:
                    negs.append(d)
            rows.append({"query_id": qid, "query": col.queries[qid], "positive": texts[p],
                         "negatives": [texts[d] for d in negs]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class CachedFoldCrossEncoder:
    """What ``mine_hard_negatives`` calls (``predict``), backed by the same cross-fitted cross-encoders and score
    cache as ``hardneg mine``: both miners see identical cross-encoder scores (sigmoid of the logits, which is
    what a one-label ``CrossEncoder.predict`` returns)."""

    def __init__(self, folder: str, max_length: int, queries: dict[str, str], docs: dict[str, str]) -> None:
        from retriever.rerank import ScoreCache, load_reranker

        self.model = load_reranker(folder, max_length, 32, "auto")
        self.cache = ScoreCache(None)
        self.qid = {t: q for q, t in queries.items()}
        self.did: dict[str, str] = {}
        for d, t in docs.items():
            self.did.setdefault(t, d)
        self.pairs_scored = 0

    def predict(self, pairs, batch_size: int = 32, convert_to_tensor: bool = False, **kw):  # noqa: ARG002
        import numpy as np
        import torch

        from retriever.rerank import score_with_cache, sigmoid

        pairs = [tuple(p) for p in pairs]
        qids = [self.qid[q] for q, _ in pairs]
        dids = [self.did.get(d, f"text:{hash(d)}") for _, d in pairs]
        logits, n_new = score_with_cache(self.model, qids, dids, pairs, self.cache, show_progress=False)
        self.pairs_scored += n_new
        probs = sigmoid(logits)
        return torch.tensor(probs, dtype=torch.float32) if convert_to_tensor else probs.astype(np.float32)


def st_triples(args, out: Path) -> Path:
    path = out / "st" / "triples.parquet"
    if path.is_file():
        return path
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from retriever.encoder import load_model

    col = load_collection(args.data, args.fit_split)
    texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
    q, p = [], []
    for qid, judged in col.qrels.items():
        for d, g in judged.items():
            if g >= 1:
                q.append(col.queries[qid])
                p.append(texts[d])
    ce = CachedFoldCrossEncoder(args.cross_encoder, args.max_length, col.queries, texts)
    t0 = time.perf_counter()
    ds = mine_hard_negatives(Dataset.from_dict({"query": q, "positive": p}), load_model("default"),
                             corpus=col.doc_texts(), cross_encoder=ce, range_max=args.depth,
                             relative_margin=0.1, num_negatives=max(1, args.negatives), sampling_strategy="top",
                             output_format="n-tuple", batch_size=64, verbose=True,
                             cache_folder=str(out / "st" / "emb_cache"))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    write_json(out / "st" / "mining.json", {"seconds": time.perf_counter() - t0, "rows": len(ds),
                                             "rows_in": len(q), "ce_pairs_scored": ce.pairs_scored})
    return path


def train_and_eval(args, name: str, triples: str | Path | None, negatives: int) -> dict:
    out = Path(args.out) / name
    res_path = out / "result.json"
    if res_path.is_file():
        if triples is not None:
            check_train(args, json.loads((out / "train" / "metrics.json").read_text())["config"], str(out), negatives)
        return json.loads(res_path.read_text())
    t0 = time.perf_counter()
    model_path = "default"
    train = None
    if triples is not None:
        cfg = TrainConfig(triples=str(triples), out=str(out / "train"), negatives=negatives, batch_size=args.batch_size,
                          max_steps=args.steps, lr=args.lr, seed=args.seed, max_seq_length=args.train_max_seq_length)
        train = run_training(cfg) if not (out / "train" / "metrics.json").is_file() else \
            json.loads((out / "train" / "metrics.json").read_text())
        model_path = train["model"]
    ev = evaluate_model(model_path, args.data, [args.dev_split, args.test_split])
    result = {"row": name, "label": LABELS[name], "model": model_path, "triples": str(triples) if triples else None,
              "train": {k: train[k] for k in ("steps", "train_loss", "data", "seconds")} if train else None,
              "dev": ev[args.dev_split]["metrics"], "test": ev[args.test_split]["metrics"],
              "test_per_query": ev[args.test_split]["per_query"], "seconds": time.perf_counter() - t0}
    res_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(res_path, result)
    logger.info("%s: dev nDCG@10 %.4f, test nDCG@10 %.4f", name, result["dev"]["ndcg@10"], result["test"]["ndcg@10"])
    return result


def ance_row(args, r: int) -> dict | None:
    """Round ``r`` of a ``hardneg iterate`` run, evaluated on the same splits by the loop itself."""
    if not args.ance:
        return None
    ev = Path(args.ance) / f"round_{r}" / "eval.json"
    if not ev.is_file():
        return None
    e = json.loads(ev.read_text())
    check_train(args, json.loads((Path(args.ance) / f"round_{r}" / "train" / "metrics.json").read_text())["config"],
                f"{args.ance}/round_{r}", args.negatives)
    m = json.loads((Path(args.ance) / f"round_{r}" / "mine" / "manifest.json").read_text())["config"]
    got = (m["candidates"]["bm25_k"], m["candidates"]["dense_k"], m["data"]["split"], m["cross_encoder"]["model"],
           m["cross_encoder"]["max_length"])
    if got != (args.depth, args.depth, args.fit_split, args.cross_encoder, args.max_length):
        raise SystemExit(f"{args.ance}/round_{r} was mined with other settings: {got}")
    name = "filtered" if r == 1 else f"ance-{r}"
    return {"row": name, "label": LABELS[name], "model": e["model"], "dev": e["splits"][args.dev_split]["metrics"],
            "test": e["splits"][args.test_split]["metrics"],
            "test_per_query": e["splits"][args.test_split]["per_query"]}


def render(results: dict[str, dict], args, machine: str, elapsed: float) -> str:
    order = [r for r in ROWS if r in results]
    refs = [r for r in ("in-batch", "st") if r in results]
    head = ["row", *(f"test {m}" for m in METRICS), "dev ndcg@10", *(f"p vs {r}" for r in refs)]
    lines = ["# Ablation: negatives for fine-tuning all-MiniLM-L6-v2 on SciFact", "",
             f"Every fine-tuned row: {args.steps} steps, batch {args.batch_size} (no duplicate texts), lr {args.lr}, "
             f"{args.negatives} hard negative per example (in-batch row: 0), MultipleNegativesRankingLoss, "
             f"max_seq_length {args.train_max_seq_length} while training, seed {args.seed}; trained on "
             f"`{args.fit_split}`, dev = `{args.dev_split}`, test = `{args.test_split}` (300 queries, never tuned on). "
             f"Mining depth {args.depth} (BM25 and dense each), {args.mine_negatives} negatives mined per query, "
             f"cross-encoder `{args.cross_encoder}` (cross-fitted, max_length {args.max_length}), relative margin 0.1.",
             "", "p: paired randomization test on per-query test nDCG@10 (10,000 resamples).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in order:
        res = results[r]
        row = [LABELS[r], *(f"{res['test'][m]:.4f}" for m in METRICS), f"{res['dev']['ndcg@10']:.4f}"]
        for ref in refs:
            if ref == r:
                row.append("-")
            else:
                t = M.randomization_test(results[ref]["test_per_query"]["ndcg@10"], res["test_per_query"]["ndcg@10"])
                row.append(f"{t['p_value']:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Reading the table", "",
              "- Single-round rows all train the same 50 steps. ANCE rounds warm-start from the previous round and "
              "add 50 steps each: round 2 has trained 100 steps in all, round 3 150. Part of their gain may come "
              "from the extra steps, which this table does not separate from the re-mined negatives.",
              "- hardneg mines BM25 top-N plus dense top-N candidates and excludes near duplicates of the positives "
              "(cosine >= 0.95). sentence-transformers' miner mines dense top-N only. Both rank the candidates with "
              "the same cross-encoder scores (the same cross-fitted models, read from one score cache) and use the "
              "same relative margin, 0.1 on probabilities. Both keep the top surviving negative.",
              "- The cross-encoder (`make reranker`) was cross-fitted on all of SciFact train, dev queries included. "
              "It only judges the training queries' candidates. Dev metrics come from the bi-encoder alone.",
              ""]
    spent = {r: results[r].get("seconds") for r in order if results[r].get("seconds")}
    lines += ["", "Minutes per row (training + encoding the corpus for dev/test): "
              + ", ".join(f"{r} {v / 60:.1f}" for r, v in spent.items())
              + f". This invocation: {elapsed / 60:.1f} min (rows finished earlier are reused).", "", "## Machine", "", machine, "",
              "## Commands", "", "```", *args.commands, "```", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="scifact")
    p.add_argument("--fit-split", default="train:fit")
    p.add_argument("--dev-split", default="train:dev")
    p.add_argument("--test-split", default="test")
    p.add_argument("--cross-encoder", default="runs/ce_scifact")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ance", default="", help="a `hardneg iterate` folder (rows filtered, ance-2, ance-3)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--mine-negatives", type=int, default=5)
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--train-max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--result", default="benchmarks/results/ablation.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.commands = ["python -m benchmarks.bench_ablation " + " ".join(os.sys.argv[1:])]
    out = Path(args.out)
    t0 = time.perf_counter()
    wanted = args.rows.split(",")
    results: dict[str, dict] = {}
    for row in wanted:
        if row == "base":
            results[row] = train_and_eval(args, row, None, 0)
        elif row == "in-batch":
            results[row] = train_and_eval(args, row, mine(args, "bm25", candidates__dense=False), 0)
        elif row == "bm25":
            results[row] = train_and_eval(args, row, mine(args, "bm25", candidates__dense=False), args.negatives)
        elif row == "dense":
            results[row] = train_and_eval(args, row, mine(args, "dense", candidates__bm25=False), args.negatives)
        elif row == "random":
            results[row] = train_and_eval(args, row, random_triples(args, out), args.negatives)
        elif row == "st":
            results[row] = train_and_eval(args, row, st_triples(args, out), args.negatives)
        elif row in ("filtered", "ance-2", "ance-3"):
            res = ance_row(args, 1 if row == "filtered" else int(row[-1]))
            if res is None:
                logger.warning("row %s needs a finished `hardneg iterate` round in --ance; skipped", row)
                continue
            results[row] = res
        else:
            raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
        write_text(Path(args.result), render(results, args, markdown(describe()), time.perf_counter() - t0))
        write_json(Path(args.result).with_suffix(".json"), {
            "machine": describe(), "commands": args.commands,
            "settings": {k: v for k, v in vars(args).items() if k != "commands"},
            "rows": {k: {"label": v["label"], "dev": v["dev"], "test": v["test"],
                         "test_per_query_ndcg@10": v["test_per_query"]["ndcg@10"]} for k, v in results.items()}})
    print(Path(args.result).read_text())


if __name__ == "__main__":
    main()
