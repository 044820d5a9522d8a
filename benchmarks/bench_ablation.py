"""Ablation at equal budget: which negatives make the better retriever? SciFact, all-MiniLM-L6-v2.

Every fine-tuned row trains the same total number of optimizer steps (``--steps``) with the same batch size,
learning rate, loss and data (``train:fit``); the ANCE row spends them in ``--rounds`` rounds of
``steps / rounds`` each (re-mining with its own model between rounds). Every row runs with each seed of
``--seeds``. Rows:

- ``base``: the model before fine-tuning (no seed);
- ``in-batch``: (query, positive) pairs only, in-batch negatives;
- ``random``: one random corpus document per example (seeded per seed);
- ``bm25`` / ``dense``: the top BM25 / dense candidate, no filter;
- ``st``: ``sentence_transformers.util.mine_hard_negatives`` (dense top-``depth`` of the same bi-encoder)
  with the same judge and relative margin as hardneg;
- ``hardneg``: one hardneg mining round (BM25 + dense top-``depth``, near-duplicate exclusion, the judge's
  filter), the top surviving negative;
- ``ance``: hardneg's ANCE loop (``hardneg iterate``, warm mode), ``rounds`` rounds.

Loss rows (``--loss-rows``, issue 14): the same budget with another ``hardneg train --loss``. ``<row>+<loss>`` trains
like ``<row>`` with that loss (its other settings at ``hardneg train``'s defaults, or ``--loss-set``); a bare loss
name in ``--loss-rows`` stands for ``hardneg+<loss>``, and for the losses that mine online (gist, hardness) also
``in-batch+<loss>``. With loss rows, ``--rows`` defaults to the references ``in-batch,hardneg`` (MNRL) and the
report is ``benchmarks/results/losses.md`` (+ .json) instead of ablation.md: is offline mining still needed when
the loss mines online, and which loss is best on mined negatives (both chosen on dev).

Nothing is chosen on test: the judge (``--judge``, ``hardneg train-judge`` on ``train:fit``) was chosen on
``train:dev`` (benchmarks/results/judge.md), the budget is fixed in advance, and dev metrics are reported
beside test. Each (row, seed) result is one small JSON file under ``--rows-dir`` (committed; the loss report's
rows in their own folder), skipped when it was made with the same settings (the judge counts by its recipe,
``judge_fingerprint``), so the benchmark resumes across sessions. The committed rows' judges (after `make demo`,
which trains the cross-encoder runs/demo_ce):

    hardneg train-judge --data scifact --split train:fit --features bm25,bm25_log,dense,dense_gap,ce \
        --cross-encoder runs/demo_ce --out runs/ablation_judge
    python -m benchmarks.bench_ablation --judge runs/ablation_judge
    python -m benchmarks.bench_ablation --judge runs/ablation_judge --pa-cost-on multi --report-only \
        --results-dir benchmarks/results/ablation_pa_multi    # the positive-aware rows of the earlier fit
    hardneg train-judge --data scifact --split train:fit --out runs/demo_judge
    python -m benchmarks.bench_ablation --judge runs/demo_judge \
        --loss-rows gist,hardness,margin-mse,batch-hard-triplet,cached-mnrl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import statistics
import time
from pathlib import Path

from mining_jobs import losses as L
from mining_jobs.config import load_config
from mining_jobs.evaluate import evaluate_model
from mining_jobs.files import write_json
from mining_jobs.mine import run_mining
from mining_jobs.runfolder import fingerprint
from mining_jobs.train import TrainConfig, run_training
from retriever import metrics as M
from retriever.data import load_collection

from .machine import arithmetic, describe, markdown, write_result

logger = logging.getLogger("bench_ablation")
METRICS = ("ndcg@10", "mrr@10", "recall@100")
ROWS = ("base", "in-batch", "random", "bm25", "dense", "st", "hardneg", "ance", "dense-pa", "hardneg-pa",
        "hardneg-random")
CONTROLS = ("in-batch", "random", "bm25", "dense", "st")  # what hardneg's rows must beat
HARDNEG_ROWS = ("hardneg", "ance", "dense-pa", "hardneg-pa", "hardneg-random")
# hardneg's filter with the random sampler among its survivors, one draw per seed (sampling.seed = the seed);
# added after the sparse-label benchmark had shown the sampler to matter, before any of it was trained here
RANDOM_SAMPLER_ROWS = ("hardneg-random",)
PA_ROWS = ("dense-pa", "hardneg-pa")  # the judge's positive-aware rule, fitted by filter.auto_threshold
LABELS = {"base": "base model (no fine-tuning)", "in-batch": "in-batch negatives only",
          "random": "random negatives", "bm25": "BM25 negatives (no filter)",
          "dense": "dense negatives (no filter)",
          "st": "sentence-transformers' miner (dense top-N, same judge and margin)",
          "hardneg": "hardneg, one round (BM25 + dense, judge filter)",
          "ance": "hardneg ANCE (rounds re-mine with the model being trained)",
          "dense-pa": "hardneg, dense candidates, judge's positive-aware rule (filter.auto_threshold)",
          "hardneg-pa": "hardneg, BM25 + dense, judge's positive-aware rule (filter.auto_threshold)",
          "hardneg-random": "hardneg, one round, random among the survivors of the judge filter (sampling.strategy "
                            "= random: 5 drawn, training takes the best-scored of them)"}
# What each rule adds on its own: (row, the row it adds one thing to, what it adds)
CONTRASTS = (("random", "in-batch", "one random negative per example"),
             ("bm25", "random", "hard (BM25) instead of random negatives"),
             ("dense", "bm25", "dense instead of BM25 candidates"),
             ("hardneg", "dense", "BM25 + dense candidates, near-duplicate exclusion and the judge's filter"),
             ("hardneg", "st", "hardneg's miner instead of sentence-transformers' (same judge, margin, depth)"),
             ("ance", "hardneg", "re-mining with the model being trained (same total steps)"),
             ("ance", "in-batch", "everything hardneg does"),
             ("dense-pa", "dense", "the judge's positive-aware filter on dense candidates"),
             ("hardneg-pa", "hardneg", "the positive-aware rule instead of the relative margin"),
             ("hardneg-pa", "dense-pa", "BM25 candidates beside dense, with the positive-aware rule"),
             ("hardneg-random", "hardneg", "random among the filter's survivors instead of the best-scored ones"))
ONLINE_LOSSES = ("gist", "hardness")  # losses that mine inside the batch: they also get an in-batch-only row
LOSS_BASES = ("in-batch", "random", "bm25", "dense", "st", "hardneg")  # rows trained by one `hardneg train`


def split_row(row: str) -> tuple[str, str]:
    """``"hardneg+gist"`` -> ``("hardneg", "gist")``; a row without a loss trains with mnrl."""
    base, _, loss = row.partition("+")
    return base, loss or "mnrl"


def label(row: str) -> str:
    base, loss = split_row(row)
    return LABELS[base] if loss == "mnrl" else f"{LABELS[base]} + {loss} loss"


def loss_rows(spec: str) -> list[str]:
    """The rows of ``--loss-rows``: ``gist`` -> in-batch+gist, hardneg+gist; ``margin-mse`` -> hardneg+margin-mse;
    an explicit ``<row>+<loss>`` as given."""
    rows: list[str] = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        if "+" in item:
            new = [item]
        else:
            new = ([f"in-batch+{item}"] if item in ONLINE_LOSSES else []) + [f"hardneg+{item}"]
        for r in new:
            base, loss = split_row(r)
            if base not in LOSS_BASES or loss not in L.LOSSES or loss == "mnrl":
                raise SystemExit(f"--loss-rows {item!r}: expected a loss other than mnrl ({', '.join(L.LOSSES[1:])}) "
                                 f"or <row>+<loss> with a row of {', '.join(LOSS_BASES)}")
            if r not in rows:
                rows.append(r)
    return rows


def loss_settings(args, row: str) -> dict:
    """The TrainConfig fields of a row's loss: ``hardneg train``'s defaults, then ``--loss-set``."""
    _, loss = split_row(row)
    cfg = TrainConfig(loss=loss)
    known = {f for fields in L.LOSS_FIELDS.values() for f in fields}
    for item in args.loss_set:
        k, _, v = item.partition("=")
        if k not in known:
            raise SystemExit(f"--loss-set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        if k in L.LOSS_FIELDS.get(loss, ()):
            try:
                setattr(cfg, k, json.loads(v))
            except ValueError:
                setattr(cfg, k, v)  # a bare string (a guide's path, a mode)
    return L.loss_settings(cfg)


def settings_key(args, row: str, seed: int | None) -> dict:
    """Everything a row's result depends on; a stored result with another key is recomputed. A row with the
    default loss (mnrl) has the key it had before loss rows existed; another loss adds itself and its settings."""
    row_name, (row, loss) = row, split_row(row)
    key = {"row": row_name, "data": args.data, "fit": args.fit_split, "dev": args.dev_split, "test": args.test_split,
           "base_model": args.base_model}
    if row == "base":
        return key
    key |= {"seed": seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "train_max_seq_length": args.train_max_seq_length, "negatives": 0 if row == "in-batch" else args.negatives}
    if row in ("bm25", "dense", "st", "hardneg", "ance", *PA_ROWS, *RANDOM_SAMPLER_ROWS):
        key |= {"depth": args.depth, "mine_negatives": args.mine_negatives}
    if row in ("st", "hardneg", "ance", *RANDOM_SAMPLER_ROWS):
        key |= {"judge": judge_fingerprint(args.judge), "relative_margin": args.relative_margin}
    if row in RANDOM_SAMPLER_ROWS:
        key["sampling"] = "random"
    if row in PA_ROWS:
        key |= {"judge": judge_fingerprint(args.judge), "filter": "auto_threshold", "max_cost": args.pa_max_cost}
        if args.pa_cost_on != "multi":  # rows of the earlier fit ('multi') keep the key they were stored with
            key["cost_on"] = args.pa_cost_on
    if row == "ance":
        key["rounds"] = args.rounds
    if loss != "mnrl":
        key |= loss_settings(args, row_name)
    return key


def judge_fingerprint(folder: str) -> str:
    """How the judge was made, not the bytes of its file: the settings of ``hardneg train-judge`` as judge.json
    records them (collection, split, features, depth, seed, ...; not its output folder) and, for its
    cross-encoder, the training settings fingerprint of the folder hardneg trained it in (``run.json``), else
    the bytes of a local model's weights, else the hub name as given. A refit from the same recipe on a fresh
    machine or in a later session (judge.json then differs in its timings and last digits) keeps the key, so
    the committed rows it trained are reused, as the rows' own training settings are. It does not record the
    machine's arithmetic (bf16 on AVX-512, fp32 elsewhere): each row file records its machine."""
    p = Path(folder) / "judge.json"
    if not p.is_file():
        raise SystemExit(f"--judge {folder}: no judge.json (fit it first: hardneg train-judge --data scifact "
                         f"--split train:fit --out {folder})")
    job = dict(json.loads(p.read_text()).get("job") or {})
    if not job:
        raise SystemExit(f"--judge {folder}: judge.json has no settings (written by an earlier hardneg); fit it "
                         "again with hardneg train-judge")
    for k in ("out", "overwrite"):
        job.pop(k, None)
    return fingerprint({"judge": job, "cross_encoder": model_recipe(job.pop("cross_encoder", "") or "")})


def model_recipe(name: str) -> str:
    """A cross-encoder as a key: '' for none; a folder hardneg trained: its settings fingerprint; another local
    folder: a hash of its weight files; else (a hub name) the name."""
    if not name:
        return ""
    path = Path(name)
    if (path / "run.json").is_file():
        return json.loads((path / "run.json").read_text())["fingerprint"]
    if path.is_dir():
        weights = sorted(f for f in path.rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())
        if not weights:
            raise SystemExit(f"cross-encoder {name}: a folder without run.json or weight files")
        h = hashlib.sha256()
        for f in weights:
            h.update(f.relative_to(path).as_posix().encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:16]
    if path.is_absolute() or name.startswith("."):
        raise SystemExit(f"cross-encoder {name}: no such folder (run from the folder the judge was trained in)")
    return name


def mine_sets(args, **sections) -> list[str]:
    sets = [f"data.name={json.dumps(args.data)}", f"data.split={json.dumps(args.fit_split)}",
            f"sampling.num_negatives={args.mine_negatives}", f"candidates.bm25_k={args.depth}",
            f"candidates.dense_k={args.depth}", f"candidates.model={json.dumps(args.base_model)}",
            "output.overwrite=false"]
    return sets + [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in sections.items()]


def judge_sections(args) -> dict:
    return {"cross_encoder__model": args.judge, "cross_encoder__max_length": args.max_length,
            "filter__relative_margin": args.relative_margin}


def mine(args, name: str, **sections) -> Path:
    """A mining run in its own folder per settings: the mining config names the judge by its path only, so
    the folder's name also carries the judge's recipe (a judge refitted otherwise at the same path mines anew)."""
    cfg = load_config(None, mine_sets(args, **sections))
    judge = judge_fingerprint(args.judge) if "cross_encoder__model" in sections else ""
    out = Path(args.out) / f"mine_{name}_{fingerprint({'config': cfg.fingerprint(), 'judge': judge})}"
    if not (out / "manifest.json").is_file():  # the folder's name carries the settings: a finished one is this run
        run_mining(cfg, out)
    return out


def random_triples(args, seed: int) -> Path:
    """Per positive pair, ``mine_negatives`` corpus documents drawn uniformly (judged documents excluded)."""
    settings = {"data": args.data, "fit": args.fit_split, "mine_negatives": args.mine_negatives}
    path = Path(args.out) / "random_triples" / f"s{seed}_{fingerprint(settings)}.parquet"
    if path.is_file():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = load_collection(args.data, args.fit_split)
    texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
    rng = random.Random(seed)
    rows = []
    for qid, judged in col.qrels.items():
        for p in (d for d, g in judged.items() if g >= 1):
            negs: list[str] = []
            while len(negs) < args.mine_negatives:
                d = col.doc_ids[rng.randrange(len(col.doc_ids))]
                if d not in judged and d not in negs:
                    negs.append(d)
            rows.append({"query_id": qid, "query": col.queries[qid], "positive": texts[p],
                         "negatives": [texts[d] for d in negs]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


class JudgeAsCrossEncoder:
    """What ``mine_hard_negatives`` calls (``predict``), backed by hardneg's judge bound to the same corpus:
    both miners see identical judge scores (sigmoid of the logits, as a one-label ``CrossEncoder.predict``)."""

    def __init__(self, folder: str, max_length: int, col) -> None:
        from retriever.judge import Corpus, load_judge
        from retriever.rerank import ScoreCache

        texts = col.doc_texts()
        self.model = load_judge(folder, max_length, 32, "auto")
        if hasattr(self.model, "bind"):
            self.model.bind(Corpus(list(col.doc_ids), texts, col.fingerprint()))
        self.cache = ScoreCache(None)
        self.qid = {t: q for q, t in col.queries.items()}
        self.did: dict[str, str] = {}
        for d, t in zip(col.doc_ids, texts, strict=True):
            self.did.setdefault(t, d)
        self.pairs_scored = 0

    def predict(self, pairs, batch_size: int = 32, convert_to_tensor: bool = False, **kw):  # noqa: ARG002
        import numpy as np
        import torch

        from retriever.rerank import score_with_cache, sigmoid

        pairs = [tuple(p) for p in pairs]
        logits, n_new = score_with_cache(self.model, [self.qid[q] for q, _ in pairs],
                                         [self.did[d] for _, d in pairs], pairs, self.cache, show_progress=False)
        self.pairs_scored += n_new
        probs = sigmoid(logits)
        return torch.tensor(probs, dtype=torch.float32) if convert_to_tensor else probs.astype(np.float32)


def st_triples(args) -> Path:
    settings = {"data": args.data, "fit": args.fit_split, "base_model": args.base_model, "depth": args.depth,
                "judge": judge_fingerprint(args.judge), "max_length": args.max_length,
                "relative_margin": args.relative_margin, "mine_negatives": args.mine_negatives}
    out = Path(args.out) / f"st_{fingerprint(settings)}"
    path = out / "triples.parquet"
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
    ce = JudgeAsCrossEncoder(args.judge, args.max_length, col)
    t0 = time.perf_counter()
    ds = mine_hard_negatives(Dataset.from_dict({"query": q, "positive": p}), load_model(args.base_model),
                             corpus=col.doc_texts(), cross_encoder=ce, range_max=args.depth,
                             relative_margin=args.relative_margin, num_negatives=args.mine_negatives,
                             sampling_strategy="top", output_format="n-tuple", batch_size=64, verbose=True)
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    write_json(out / "mining.json", {"seconds": time.perf_counter() - t0, "rows": len(ds), "rows_in": len(q),
                                      "judge_pairs_scored": ce.pairs_scored})
    return path


def ance_model(args, seed: int, key: dict) -> tuple[str, dict]:
    """Run (or resume) ``hardneg iterate``: ``rounds`` rounds of ``steps / rounds`` steps each, no early stop."""
    from mining_jobs.iterate import loop_config_from_dict, run_loop

    per_round = args.steps // args.rounds
    raw = {"loop": {"out": str(Path(args.out) / f"ance_s{seed}_{fingerprint(key)}"), "rounds": args.rounds, "patience": args.rounds,
                    "base_model": args.base_model, "data": args.data, "dev_split": args.dev_split,
                    "test_split": args.test_split},
           "mine": {"data": {"name": args.data, "split": args.fit_split},
                    "candidates": {"bm25_k": args.depth, "dense_k": args.depth},
                    "cross_encoder": {"model": args.judge, "max_length": args.max_length},
                    "filter": {"relative_margin": args.relative_margin},
                    "sampling": {"num_negatives": args.mine_negatives}},
           "train": {"negatives": args.negatives, "batch_size": args.batch_size, "max_steps": per_round,
                     "lr": args.lr, "max_seq_length": args.train_max_seq_length, "seed": seed}}
    summary = run_loop(loop_config_from_dict(raw, "bench_ablation"))
    last = summary["rounds"][-1]
    return last["model"], {"steps": sum(r["train"]["steps"] for r in summary["rounds"][1:]),
                           "rounds": len(summary["rounds"]) - 1,
                           "rows": [r["train"]["rows"] for r in summary["rounds"][1:]]}


def triples_for(args, row: str, seed: int) -> Path:
    if row in ("in-batch", "bm25"):
        return mine(args, "bm25", candidates__dense=False)
    if row == "dense":
        return mine(args, "dense", candidates__bm25=False)
    if row == "random":
        return random_triples(args, seed)
    if row == "st":
        return st_triples(args)
    if row == "hardneg":
        return mine(args, "hardneg", **judge_sections(args))
    if row in RANDOM_SAMPLER_ROWS:  # one draw per seed: each seed's model trains on its own
        return mine(args, row, **judge_sections(args), sampling__strategy="random", sampling__seed=seed)
    if row in PA_ROWS:
        extra = {"candidates__bm25": False} if row == "dense-pa" else {}
        return mine(args, row, **judge_sections(args), filter__auto_threshold=True,
                    filter__auto_margin_max_cost=args.pa_max_cost, filter__auto_threshold_cost_on=args.pa_cost_on,
                    **extra)
    raise SystemExit(f"unknown row {row!r}; rows: {', '.join(ROWS)}")


def run_row(args, row: str, seed: int | None) -> dict:
    """One (row, seed): train (unless base), evaluate on dev and test, write ``rows-dir/<row>__s<seed>.json``."""
    key = settings_key(args, row, seed)
    path = row_path(args, row, seed)
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("key") == key:
            return old
        logger.info("%s: stored with other settings; recomputing", path)
    t0 = time.perf_counter()
    train: dict | None = None
    if row == "base":
        model = args.base_model
    elif row == "ance":
        model, train = ance_model(args, seed, key)
    else:
        base = split_row(row)[0]
        negatives = 0 if base == "in-batch" else args.negatives
        out = Path(args.out) / f"{row}_s{seed}_{fingerprint(key)}"  # a model per settings, never another's
        cfg = TrainConfig(triples=str(triples_for(args, base, seed)), out=str(out), base_model=args.base_model,
                          negatives=negatives, batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
                          seed=seed, max_seq_length=args.train_max_seq_length, **loss_settings(args, row))
        m = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else run_training(cfg)
        model = m["model"]
        train = {"steps": m["steps"], "rows": m["data"]["rows"], "loss": m["train_loss"]}
    ev = evaluate_model(model, args.data, [args.dev_split, args.test_split])
    res = {"key": key, "row": row, "seed": seed, "train": train,
           "dev": ev[args.dev_split]["metrics"], "test": ev[args.test_split]["metrics"],
           "dev_per_query_ndcg@10": ev[args.dev_split]["per_query"]["ndcg@10"],
           "test_per_query_ndcg@10": ev[args.test_split]["per_query"]["ndcg@10"],
           "minutes": round((time.perf_counter() - t0) / 60, 2), "machine": describe()}
    if train is not None and train["steps"] != args.steps:
        raise SystemExit(f"{row} seed {seed}: trained {train['steps']} steps, the budget is {args.steps}")
    write_json(path, res)
    logger.info("%s seed %s: dev nDCG@10 %.4f, test nDCG@10 %.4f (%.1f min)", row, seed, res["dev"]["ndcg@10"],
                res["test"]["ndcg@10"], res["minutes"])
    return res


def row_path(args, row: str, seed: int | None) -> Path:
    """``<row>__s<seed>.json``; a positive-aware row of a fit other than the committed rows' earlier one
    ('multi') is kept beside them as ``<row>-<fit>__s<seed>.json``, so neither overwrites the other."""
    if row in PA_ROWS and args.pa_cost_on != "multi":
        row = f"{row}-{args.pa_cost_on}"
    return Path(args.rows_dir) / (f"{row}.json" if seed is None else f"{row}__s{seed}.json")


def seed_mean(results: list[dict], split: str = "test") -> dict[str, float]:
    """Per-query nDCG@10 averaged over the row's seeds."""
    per = [r[f"{split}_per_query_ndcg@10"] for r in results]
    return {q: statistics.fmean(p[q] for p in per) for q in per[0]}


def summarize(by_row: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for row, rs in by_row.items():
        s = {"name": row, "label": label(row), "loss": split_row(row)[1],
             "steps": rs[0]["train"]["steps"] if rs[0]["train"] else 0, "seeds": [r["seed"] for r in rs]}
        for split in ("test", "dev"):
            for m in METRICS:
                v = [r[split][m] for r in rs]
                s[f"{split}_{m.replace('@', '')}_mean"] = statistics.fmean(v)
                s[f"{split}_{m.replace('@', '')}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
        s["test_per_query_ndcg@10_seed_mean"] = seed_mean(rs)
        s["minutes_per_seed"] = statistics.fmean(r["minutes"] for r in rs)
        s["arithmetic"] = ", ".join(sorted({arithmetic(r.get("machine")) for r in rs}))
        out[row] = s
    return out


def p_value(a: dict, b: dict) -> float:
    return M.randomization_test(a["test_per_query_ndcg@10_seed_mean"], b["test_per_query_ndcg@10_seed_mean"])["p_value"]


def verdict(summary: dict[str, dict], rows: list[dict]) -> dict:
    """The best control (highest mean test nDCG@10: the strictest reference), each row's p against it, and
    whether hardneg's best row (chosen on dev) beats every control with p < 0.05."""
    controls = [r for r in CONTROLS if r in summary]
    if not controls:
        return {}
    best_control = max(controls, key=lambda r: summary[r]["test_ndcg10_mean"])
    for row in rows:
        row["p_vs_best_control"] = (None if row["name"] == best_control or row["name"] == "base"
                                    else p_value(summary[best_control], summary[row["name"]]))
    ours = [r for r in summary if split_row(r)[0] in HARDNEG_ROWS and split_row(r)[1] == "mnrl"]
    best = max(ours, key=lambda r: summary[r]["dev_ndcg10_mean"], default=None)
    out = {"best_control": best_control, "hardneg_best_row": best}
    if best is not None:
        p = p_value(summary[best_control], summary[best])
        out["hardneg_beats_every_control"] = bool(
            all(summary[best]["test_ndcg10_mean"] > summary[c]["test_ndcg10_mean"] for c in controls) and p < 0.05)
        out["hardneg_best_row_p_vs_best_control"] = p
    return out


def machine_section(args) -> list[str]:
    """The machine this invocation ran on; with --report-only that is the one that rendered the table, not the
    ones that trained its rows (each row file records its own, and the arithmetic column shows it)."""
    head = ("## Machine that rendered this table (--report-only: the rows were trained on the machines their files "
            "record)" if args.report_only else "## Machine")
    return [head, "", markdown(describe())]


def mixed_arithmetic_note(summary: dict[str, dict]) -> list[str]:
    """A warning under the table when its rows were trained in different arithmetic (``machine.arithmetic``:
    bf16 autocast on AVX-512 BF16, fp32 on AVX2, a GPU): the row key does not hold it, so that a table can be
    completed on another machine, and the table says so instead."""
    kinds = sorted({k for s in summary.values() for k in s["arithmetic"].split(", ")})
    if len(kinds) < 2:
        return []
    by = {k: [r for r, s in summary.items() if k in s["arithmetic"].split(", ")] for k in kinds}
    return ["", "**These rows were not all trained in the same arithmetic** (" + "; ".join(
        f"{k}: {', '.join(rs)}" for k, rs in by.items()) + "): bf16 autocast on a CPU with AVX-512 BF16 or AMX, "
        "fp32 elsewhere. Differences between rows of different arithmetic include that effect."]


def render(summary: dict[str, dict], args) -> list[str]:
    ms = lambda s, k: f"{s[k + '_mean']:.4f} ± {s[k + '_std']:.4f}"  # noqa: E731
    refs = [r for r in ("in-batch", "st") if r in summary]
    lines = ["# Ablation at equal budget: negatives for fine-tuning all-MiniLM-L6-v2 on SciFact", "",
             f"Every fine-tuned row trains **{args.steps} optimizer steps** in all (the ANCE row: {args.rounds} "
             f"rounds of {args.steps // args.rounds}), batch {args.batch_size}, lr {args.lr}, "
             f"{args.negatives} hard negative per example (in-batch row: 0), MultipleNegativesRankingLoss, "
             f"max_seq_length {args.train_max_seq_length}, on `{args.fit_split}`; seeds {args.seeds}. "
             f"Mining depth {args.depth} (BM25 and dense each), {args.mine_negatives} negatives mined per query "
             f"(training uses the first), judge `{args.judge}` (`hardneg train-judge` on `{args.fit_split}`, chosen "
             f"on `{args.dev_split}` in benchmarks/results/judge.md), relative margin {args.relative_margin}; the "
             f"`positive-aware rule` rows replace the margin by the rule `filter.auto_threshold` fits on the "
             f"job's own multi-positive queries (filtering at most {args.pa_max_cost:.0%} of the candidates of "
             + ("a sample of all its queries" if args.pa_cost_on == "all" else "those queries") + "). "
             f"Test = `{args.test_split}` (300 queries), read only for this table.", "",
             "mean ± std over seeds. p: paired randomization test (10,000 sign flips) on per-query test nDCG@10 "
             "averaged over the seeds.", ""]
    head = ["row", "steps", "seeds", "test nDCG@10", "test MRR@10", "dev nDCG@10", *(f"p vs {r}" for r in refs),
            "arithmetic"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        if row not in summary:
            continue
        s = summary[row]
        cells = [s["label"], str(s["steps"]), str(len(s["seeds"]) if s["steps"] else "-"), ms(s, "test_ndcg10"),
                 ms(s, "test_mrr10"), ms(s, "dev_ndcg10")]
        cells += ["-" if r == row else f"{p_value(summary[r], s):.4f}" for r in refs]
        lines.append("| " + " | ".join([*cells, s["arithmetic"]]) + " |")
    lines += mixed_arithmetic_note(summary)
    lines += ["", "## What each rule contributes on its own", "",
              "| adds | to | test nDCG@10 change | p |", "|---|---|---|---|"]
    for row, ref, what in CONTRASTS:
        if row in summary and ref in summary:
            d = summary[row]["test_ndcg10_mean"] - summary[ref]["test_ndcg10_mean"]
            lines.append(f"| {what} ({row}) | {ref} | {d:+.4f} | {p_value(summary[ref], summary[row]):.4f} |")
    dev_best = max((r for r in summary if r != "base"), key=lambda r: summary[r]["dev_ndcg10_mean"], default=None)
    if dev_best:
        lines += ["", f"Chosen on dev (highest mean dev nDCG@10): **{summary[dev_best]['label']}**, test nDCG@10 "
                  f"{ms(summary[dev_best], 'test_ndcg10')}."]
    v = verdict(summary, [{"name": r} for r in summary])
    if v.get("hardneg_best_row"):
        b, c = v["hardneg_best_row"], v["best_control"]
        lines += ["", f"hardneg's best row, chosen on dev: **{summary[b]['label']}** ({ms(summary[b], 'test_ndcg10')}); "
                  f"the best control on test: {summary[c]['label']} ({ms(summary[c], 'test_ndcg10')}); paired p = "
                  f"{v['hardneg_best_row_p_vs_best_control']:.4f}. "
                  + ("**hardneg beats every control (p < 0.05).**" if v["hardneg_beats_every_control"] else
                     "**hardneg does not beat every control at p < 0.05.**")]
    missing = [r for r in args.rows.split(",") if r not in summary]
    if missing:
        lines += ["", f"Not yet run at these settings: {', '.join(missing)} (rerun the command; finished rows are kept)."]
    lines += ["", "Minutes per seed (training + mining + encoding the corpus for dev/test, on the machine that ran "
              "it): " + ", ".join(f"{r} {s['minutes_per_seed']:.1f}" for r, s in summary.items()), "",
              *machine_section(args),
              f"Each row file under `{args.rows_dir}/` records the machine that ran it.", "",
              "## Command", "", "```", args.command, "```", ""]
    return lines


def render_losses(summary: dict[str, dict], args) -> list[str]:
    """losses.md: every loss row beside its MNRL reference at the same budget, and the two answers of issue 14,
    each chosen on dev."""
    ms = lambda s, k: f"{s[k + '_mean']:.4f} ± {s[k + '_std']:.4f}"  # noqa: E731
    refs = [r for r in ("in-batch", "hardneg") if r in summary]
    order = [r for base in LOSS_BASES for r in summary if split_row(r)[0] == base]
    lines = ["# Losses at equal budget: fine-tuning all-MiniLM-L6-v2 on SciFact", "",
             f"Every row trains **{args.steps} optimizer steps**, batch {args.batch_size}, lr {args.lr}, "
             f"{args.negatives} mined negative per example (in-batch rows: 0), max_seq_length "
             f"{args.train_max_seq_length}, on `{args.fit_split}`; seeds {args.seeds}. Rows without a loss name use "
             "MultipleNegativesRankingLoss (mnrl); `<row> + <loss>` is the same data with `hardneg train --loss "
             "<loss>` at its default settings" + (f" and {', '.join(args.loss_set)}" if args.loss_set else "") +
             f". Mined rows: judge `{args.judge}`, relative margin {args.relative_margin}, depth {args.depth}. "
             f"Test = `{args.test_split}`, read only for this table.", "",
             "mean ± std over seeds. p: paired randomization test (10,000 sign flips) on per-query test nDCG@10 "
             "averaged over the seeds.", ""]
    head = ["row", "loss", "steps", "seeds", "test nDCG@10", "test MRR@10", "dev nDCG@10", *(f"p vs {r}" for r in refs)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in order:
        s = summary[row]
        cells = [s["label"], s["loss"], str(s["steps"]), str(len(s["seeds"])), ms(s, "test_ndcg10"),
                 ms(s, "test_mrr10"), ms(s, "dev_ndcg10")]
        cells += ["-" if r == row else f"{p_value(summary[r], s):.4f}" for r in refs]
        lines.append("| " + " | ".join(cells) + " |")
    lines += mixed_arithmetic_note(summary)

    def best(rows: list[str]) -> str | None:
        return max(rows, key=lambda r: summary[r]["dev_ndcg10_mean"], default=None)

    def versus(a: str, b: str) -> str:
        d = summary[a]["test_ndcg10_mean"] - summary[b]["test_ndcg10_mean"]
        return (f"**{summary[a]['label']}** ({ms(summary[a], 'test_ndcg10')}) vs {summary[b]['label']} "
                f"({ms(summary[b], 'test_ndcg10')}): {d:+.4f} test nDCG@10, p = {p_value(summary[b], summary[a]):.4f}")

    online = best([r for r in summary if split_row(r)[0] == "in-batch" and split_row(r)[1] in ONLINE_LOSSES])
    mined = best([r for r in summary if split_row(r)[0] == "hardneg"])
    lines += ["", "## Is offline mining still needed when the loss mines online?", ""]
    lines.append(f"In-batch negatives with the best online loss (chosen on dev) against hardneg's mined negatives "
                 f"with mnrl: {versus(online, 'hardneg')}." if online and "hardneg" in summary else
                 "Not answered yet: it needs an `in-batch+gist` or `in-batch+hardness` row and the `hardneg` row.")
    lines += ["", "## Mined negatives with the best loss", ""]
    if mined and mined != "hardneg" and "hardneg" in summary:
        lines.append(f"Best loss on hardneg's negatives (chosen on dev): {versus(mined, 'hardneg')}.")
        if online:
            lines += ["", f"Against the best online-only row: {versus(mined, online)}."]
    elif mined == "hardneg":
        lines.append("On dev, no loss beat mnrl on hardneg's negatives "
                     f"({ms(summary['hardneg'], 'dev_ndcg10')} dev nDCG@10).")
    else:
        lines.append("Not answered yet: it needs the `hardneg` row and at least one `hardneg+<loss>` row.")
    expected = ([r for r in args.rows.split(",") if r != "base"]) + args.loss_rows_list
    missing = [r for r in expected if r not in summary]
    if missing:
        lines += ["", f"Not yet run at these settings: {', '.join(missing)} (rerun the command; finished rows are kept)."]
    lines += ["", "Minutes per seed (training + mining + encoding the corpus for dev/test, on the machine that ran "
              "it): " + ", ".join(f"{r} {s['minutes_per_seed']:.1f}" for r, s in summary.items()), "",
              *machine_section(args),
              f"Each row file under `{args.rows_dir}/` records the machine that ran it.", "",
              "## Command", "", "```", args.command, "```", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="scifact")
    p.add_argument("--fit-split", default="train:fit")
    p.add_argument("--dev-split", default="train:dev")
    p.add_argument("--test-split", default="test")
    p.add_argument("--base-model", default="default")
    p.add_argument("--judge", default="runs/demo_judge", help="a `hardneg train-judge` folder (or any cross-encoder)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--relative-margin", type=float, default=0.1)
    p.add_argument("--pa-max-cost", type=float, default=0.25,
                   help="rows dense-pa, hardneg-pa: filter.auto_margin_max_cost of the fitted positive-aware rule")
    p.add_argument("--pa-cost-on", choices=("all", "multi"), default="all",
                   help="rows dense-pa, hardneg-pa: filter.auto_threshold_cost_on (rows of both are committed)")
    p.add_argument("--steps", type=int, default=60, help="total optimizer steps of every fine-tuned row")
    p.add_argument("--rounds", type=int, default=3, help="ANCE rounds (steps / rounds each)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--mine-negatives", type=int, default=5)
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--train-max-seq-length", type=int, default=128)
    p.add_argument("--rows", default=None, help=f"comma-separated rows of {', '.join(ROWS)} (default: all; with "
                   "--loss-rows: in-batch,hardneg, the mnrl references)")
    p.add_argument("--loss-rows", default="", help="losses to compare at the same budget: gist -> in-batch+gist and "
                   "hardneg+gist (gist and hardness mine online), margin-mse -> hardneg+margin-mse, or explicit "
                   "<row>+<loss>; the report is losses.md instead of ablation.md")
    p.add_argument("--loss-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a loss setting of `hardneg train` for the loss rows (e.g. gist_margin=0.05); repeatable")
    p.add_argument("--out", default=None, help="working folder (default: runs/ablation; with --loss-rows runs/losses)")
    p.add_argument("--rows-dir", default=None, help="where each (row, seed) result is kept (default: "
                   "benchmarks/results/ablation_rows; with --loss-rows benchmarks/results/losses_rows, so that the "
                   "two reports, whose judges differ, never overwrite each other's reference rows)")
    p.add_argument("--results-dir", default=None, help="where the report goes (default: benchmarks/results)")
    p.add_argument("--report-only", action="store_true", help="render the stored rows, train nothing")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.command = "python -m benchmarks.bench_ablation " + " ".join(os.sys.argv[1:])
    if args.steps % args.rounds:
        raise SystemExit(f"--steps {args.steps} is not a multiple of --rounds {args.rounds}")
    args.loss_rows_list = loss_rows(args.loss_rows)
    if args.out is None:
        args.out = "runs/losses" if args.loss_rows_list else "runs/ablation"
    if args.rows_dir is None:
        args.rows_dir = "benchmarks/results/" + ("losses_rows" if args.loss_rows_list else "ablation_rows")
    if args.rows is None:
        args.rows = "in-batch,hardneg" if args.loss_rows_list else ",".join(ROWS)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; rows: {', '.join(ROWS)}")
    for row in args.loss_rows_list:  # a loss that cannot train on its row fails here, before anything runs
        base = split_row(row)[0]
        try:
            TrainConfig(triples="set-per-row", negatives=0 if base == "in-batch" else args.negatives,
                        **loss_settings(args, row)).validate()
        except ValueError as exc:
            raise SystemExit(f"--loss-rows {row}: {exc}") from None
        if L.needs_scores(split_row(row)[1]) and base not in ("hardneg",):
            raise SystemExit(f"--loss-rows {row}: {split_row(row)[1]} needs the judge's scores; only hardneg's "
                             "triples carry them")
    seeds = [int(s) for s in args.seeds.split(",")]
    by_row: dict[str, list[dict]] = {}

    def publish() -> None:
        summary = summarize(by_row)
        order = [*ROWS, *args.loss_rows_list]
        if args.loss_rows_list:  # the references beside their loss rows, as in the table
            order = [r for base in LOSS_BASES for r in order if split_row(r)[0] == base]
        data = {"settings": {k: v for k, v in vars(args).items() if k != "command"}, "command": args.command,
                "rows": [{k: v for k, v in summary[r].items() if k != "test_per_query_ndcg@10_seed_mean"}
                         for r in order if r in summary]}
        if not args.loss_rows_list:
            data |= verdict(summary, data["rows"])
            data["mixed_arithmetic"] = bool(mixed_arithmetic_note(summary))
        if args.loss_rows_list:
            write_result("losses", data, render_losses(summary, args), res_dir=args.results_dir)
        else:
            write_result("ablation", data, render(summary, args), res_dir=args.results_dir)

    # seed-major: a partial run has every row at the first seeds rather than some rows at every seed
    jobs = [("base", None)] if "base" in rows else []
    jobs += [(r, s) for s in seeds for r in [*rows, *args.loss_rows_list] if r != "base"]
    for row, seed in jobs:
        if args.report_only:
            path = row_path(args, row, seed)
            if not path.is_file():
                continue  # not run yet: the table says so
            res = json.loads(path.read_text())
            want = settings_key(args, row, seed)
            if res.get("key") != want:  # a stored row of other settings: never a silently partial table
                diff = sorted(k for k in {*want, *res.get("key", {})} if want.get(k) != res.get("key", {}).get(k))
                raise SystemExit(f"{path} was made with other settings ({', '.join(diff)} differ): rerun without "
                                 "--report-only to recompute it, or pass the settings it was made with")
        else:
            res = run_row(args, row, seed)
        by_row.setdefault(row, []).append(res)
        publish()


if __name__ == "__main__":
    main()
