"""ANCE-style rounds: mine with model r (BM25 + dense(model r) + cross-encoder), train model r+1, evaluate.

Layout of the loop folder::

    loop.json                the resolved config and its fingerprint
    round_0/eval.json        the starting model on dev and test
    round_R/mine/            a `hardneg mine` run (candidates from model R-1)
    round_R/train/           a `hardneg train` run (model R in train/model)
    round_R/eval.json        model R on dev and test
    round_R/round.json       the round's manifest: metrics, counts, churn, time per stage (marks it finished)
    report.md, metrics.png   per-round table and plot

Every stage writes its completion marker last, so a killed loop resumes at the first unfinished stage (and
the mining stage itself resumes per shard). The corpus embeddings of model R are computed once, by its
evaluation, and reused through the embedding cache by round R+1's mining; cross-encoder scores of pairs seen
in an earlier round come from the score cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from retriever.progress import stage

from .config import ConfigError, MineConfig, from_dict, read_toml, set_override
from .evaluate import evaluate_model
from .files import versions
from .judge_check import render_check
from .losses import needs_scores
from .runfolder import (
    Layout,
    RunFolderError,
    changed_inputs,
    fingerprint,
    prepare,
    write_json,
    write_parquet,
    write_text,
)
from .settings import fill, opt, section
from .train import EVAL_METRICS, TrainConfig, TrainError

logger = logging.getLogger(__name__)

LoopError = RunFolderError  # the loop folder holds a different loop (``runfolder``)


@dataclass
class LoopSection:
    out: str = opt("runs/ance", "loop folder: one round_R/ per round, report.md, metrics.png")
    rounds: int = opt(3, "ANCE rounds (mine with model R-1, train model R, evaluate)")
    base_model: str = opt("default", "the starting bi-encoder: hub name or local path ('default' = packaged "
                                     "all-MiniLM-L6-v2)")
    mode: Literal["warm", "restart"] = opt("warm", "warm: round R+1 fine-tunes model R; restart: the base model "
                                                   "on the union of all rounds' negatives")
    patience: int = opt(1, "stop after this many rounds without a better dev nDCG@10")
    data: str = opt("scifact", "collection of the dev and test splits (and of mining, unless mine.data.name)")
    dev_split: str = opt("train:dev", "split that chooses the best round")
    test_split: str = opt("test", "split reported per round ('' = no test evaluation)")
    overwrite: bool = opt(False, "replace a finished or differently configured loop in the loop folder")


# the [train] keys the loop sets per round: not settings of a loop
LOOP_SETS = ("triples", "out", "base_model", "overwrite")


@dataclass
class LoopConfig:
    """Settings of ``hardneg iterate`` (examples/ance.toml): [loop], [mine.<section>] and [train]."""

    loop: LoopSection = section(LoopSection, "the rounds")
    mine: MineConfig = section(MineConfig, "each round's mining job",
                               derived={"data.name": "loop.data", "data.split": "train:fit"})
    train: TrainConfig = section(TrainConfig, "each round's training job", exclude=LOOP_SETS)

    def to_dict(self) -> dict[str, Any]:
        return {"loop": dataclasses.asdict(self.loop), "mine": self.mine.to_dict(),
                "train": dataclasses.asdict(self.train)}

    def fingerprint(self) -> str:
        d = self.to_dict()
        d["loop"] = {k: v for k, v in d["loop"].items() if k not in ("out", "overwrite", "rounds", "patience")}
        d["mine"] = self.mine.fingerprint()  # what changes the mined triples (not the engine, not overwrite)
        d["train"] = {k: v for k, v in d["train"].items()
                      if k not in self.train.unused_fields() | {"device"}}  # where it runs changes no result
        return fingerprint(d)


def load_loop_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                     out: str | None = None) -> LoopConfig:
    """``[loop]``, ``[train]`` and ``[mine.<section>]`` tables of a TOML file, then ``--set`` overrides
    (``loop.rounds=2``, ``train.lr=3e-5``, ``mine.filter.relative_margin=0.2``)."""
    raw: dict[str, Any] = read_toml(path) if path else {}
    for text in overrides or []:
        set_override(raw, text)
    return loop_config_from_dict(raw, str(path or "config"), out)


def loop_config_from_dict(raw: dict[str, Any], source: str = "config", out: str | None = None) -> LoopConfig:
    """A loop config from nested dicts (``loop``, ``mine``, ``train``), validated; errors name the field."""
    unknown = set(raw) - {"loop", "mine", "train"}
    if unknown:
        raise ConfigError(f"{source}: unknown section [{sorted(unknown)[0]}]; expected loop, mine, train",
                          sorted(unknown)[0])
    for sname, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table of keys", sname)
    cfg = LoopConfig()
    fill(cfg.loop, raw.get("loop", {}), "", ("loop",))
    try:
        cfg.mine = from_dict(raw.get("mine", {}), "mine")
    except ConfigError as exc:
        raise ConfigError(str(exc), f"mine.{exc.field}" if exc.field else "mine") from None
    train = dict(raw.get("train", {}))
    for k in LOOP_SETS:
        if k in train:
            raise ConfigError(f"train.{k}: set by the loop (loop.base_model, loop.out); remove it", f"train.{k}")
    fill(cfg.train, train, "", ("train",))
    if out:
        cfg.loop.out = out
    lp = cfg.loop
    if lp.rounds < 1:
        raise ConfigError(f"loop.rounds must be >= 1, got {lp.rounds}", "loop.rounds")
    if lp.mode not in ("warm", "restart"):
        raise ConfigError(f"loop.mode {lp.mode!r}: expected warm or restart", "loop.mode")
    if lp.patience < 1:
        raise ConfigError(f"loop.patience must be >= 1, got {lp.patience}", "loop.patience")
    if not lp.dev_split:
        raise ConfigError("loop.dev_split: the loop needs a dev split to choose the best round", "loop.dev_split")
    if not cfg.mine.candidates.dense:
        raise ConfigError("mine.candidates.dense: the loop mines with the current model; it must be true",
                          "mine.candidates.dense")
    cfg.mine.data.name = cfg.mine.data.name if "name" in raw.get("mine", {}).get("data", {}) else lp.data
    if "split" not in raw.get("mine", {}).get("data", {}):
        cfg.mine.data.split = "train:fit"
    _check_splits(cfg)
    c = cfg.mine.candidates
    if not train.get("query_prompt"):
        cfg.train.query_prompt = c.query_prompt  # train with the prompts the loop mines and evaluates with
    if not train.get("doc_prompt"):
        cfg.train.doc_prompt = c.doc_prompt
    _check_train(cfg)
    return cfg


def _check_train(cfg: LoopConfig) -> None:
    """The [train] settings, checked before any round mines (the loop fills in triples and base_model)."""
    try:
        dataclasses.replace(cfg.train, triples="set-by-the-loop").validate()
    except TrainError as exc:
        field_name = f"train.{exc.field}" if exc.field else "train"
        raise ConfigError(f"{field_name}: {exc}", field_name) from None
    if needs_scores(cfg.train.loss) and not cfg.mine.cross_encoder.model:
        raise ConfigError(f"train.loss = {cfg.train.loss!r} learns from the judge's scores, but the loop mines "
                          "without a judge: set mine.cross_encoder.model, or choose another train.loss", "train.loss")


def _check_splits(cfg: LoopConfig) -> None:
    """Refuse a mining split that shares queries with the dev or the test split (same collection): the loop
    would train on the queries that choose its best round or that it reports."""
    from retriever.data import parse_split

    if cfg.mine.data.pairs or cfg.mine.data.name != cfg.loop.data:
        return
    mb, mp, mf = parse_split(cfg.mine.data.split)
    for key, split in (("loop.dev_split", cfg.loop.dev_split), ("loop.test_split", cfg.loop.test_split)):
        if not split:
            continue
        b, p, f = parse_split(split)
        if b != mb:
            continue
        disjoint = {mp, p} == {"fit", "dev"} and mf == f
        if not disjoint:
            raise ConfigError(f"{key} = {split!r} shares queries with mine.data.split = {cfg.mine.data.split!r}; "
                              f"mine '{b}:fit' and evaluate on '{b}:dev' (same fraction), or use another split", key)


# ---------------------------------------------------------------------------------------------- stages


# no completion marker: rerunning a finished loop resumes it (every stage is reused) and reports it again
FOLDER = Layout("iterate", state_file="loop.json", noun="loop", hint="set loop.overwrite=true")


def loop_inputs(cfg: LoopConfig) -> dict[str, str | None]:
    """Content fingerprints of what every round depends on besides the config: the base model's weights and
    the judge's (its weights, fitted feature weights and stored filter rule). The config names them by name or
    path, and a folder's content can change under the same path (a judge refitted, a model retrained): a
    finished round made with other content must not be reused as if it were this loop's."""
    import gc

    from retriever.encoder import Encoder
    from retriever.judge import load_judge

    enc = Encoder(cfg.loop.base_model, bf16="off")
    fps: dict[str, str | None] = {"base_model": enc.fingerprint(), "judge": None}
    del enc
    x = cfg.mine.cross_encoder
    if x.model:
        judge = load_judge(x.model, x.max_length, x.batch_size, "off", "cpu")
        rule = getattr(judge, "positive_rule", None)
        fps["judge"] = judge.fingerprint() if not rule else fingerprint({"scores": judge.fingerprint(),
                                                                          "positive_rule": rule})
        del judge
    gc.collect()
    return fps


def _prepare(out: Path, cfg: LoopConfig) -> None:
    """Create ``out`` or resume the loop it holds (``runfolder``): loop.overwrite replaces only a loop with
    another config; the resumed loop's state records the config it now runs with (rounds, patience).

    A resumed loop whose base model or judge changed content since it started (``loop_inputs``) is refused,
    naming what changed; with loop.overwrite it is started afresh. A loop folder written before the inputs
    were recorded records them now."""
    def open_folder():
        return prepare(out, FOLDER, cfg.fingerprint(), overwrite=cfg.loop.overwrite, resume_same=True,
                       config=cfg.to_dict(), extra={"versions": versions()})

    state = open_folder()
    inputs = loop_inputs(cfg)
    changed = changed_inputs(state, inputs)
    if changed:
        names = {"base_model": f"base model ({cfg.loop.base_model})", "judge": f"judge ({cfg.mine.cross_encoder.model})"}
        what = " and ".join(names[k] for k in changed)
        if not cfg.loop.overwrite:
            raise LoopError(f"{out} holds a loop whose {what} changed content since it started, so its finished "
                            f"rounds were made with another one; {FOLDER.hint} to start it again, or choose "
                            "another loop.out")
        logger.info("the %s changed since the loop in %s started: starting it afresh", what, out)
        shutil.rmtree(out)
        state = open_folder()
    if state.resumed:
        state.record["config"] = cfg.to_dict()
    state.record["inputs"] = inputs
    state.save()


def _evaluate(cfg: LoopConfig, model: str, path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    splits = [cfg.loop.dev_split] + ([cfg.loop.test_split] if cfg.loop.test_split else [])
    c = cfg.mine.candidates
    ev = evaluate_model(model, cfg.mine.data.name, splits, EVAL_METRICS, bf16=c.bf16, batch_size=c.batch_size,
                        query_prompt=c.query_prompt, doc_prompt=c.doc_prompt)
    result = {"model": model, "splits": ev, "seconds": time.perf_counter() - t0}
    write_json(path, result)
    return result


def _negatives(mine_dir: Path) -> set[tuple[str, str]]:
    t = pq.read_table(mine_dir / "triples.parquet", columns=["query_id", "negative_ids"])
    return {(q, d) for q, negs in zip(t["query_id"].to_pylist(), t["negative_ids"].to_pylist(), strict=True)
            for d in negs}


def _union_triples(mine_dirs: list[Path], dest: Path, per_row: int) -> Path:
    """The negatives of every round so far, per (query, positive) without repeats, cut into rows of ``per_row``
    negatives, so training sees all of them whatever ``train.negatives`` is. The judge's scores
    (``positive_score``, ``negative_scores``, the same judge in every round) travel with them."""
    if dest.is_file():
        return dest
    rows: dict[tuple[str, str], dict] = {}
    for d in reversed(mine_dirs):
        t = pq.read_table(d / "triples.parquet", columns=["query_id", "query", "positive_id", "positive",
                                                          "positive_score", "negative_ids", "negatives",
                                                          "negative_scores"]).to_pylist()
        for r in t:
            key = (r["query_id"], r["positive_id"])
            row = rows.setdefault(key, {"query_id": r["query_id"], "query": r["query"], "positive": r["positive"],
                                        "positive_score": r["positive_score"], "negative_ids": [], "negatives": [],
                                        "negative_scores": []})
            scores = r["negative_scores"] or []
            for j, (nid, ntext) in enumerate(zip(r["negative_ids"], r["negatives"], strict=True)):
                if nid not in row["negative_ids"]:
                    row["negative_ids"].append(nid)
                    row["negatives"].append(ntext)
                    row["negative_scores"].append(scores[j] if j < len(scores) else None)
    out_rows = []
    for row in rows.values():
        ids, texts, scores = row["negative_ids"], row["negatives"], row["negative_scores"]
        for i in range(0, max(len(ids), 1), per_row):
            out_rows.append({**row, "negative_ids": ids[i:i + per_row], "negatives": texts[i:i + per_row],
                             "negative_scores": scores[i:i + per_row]})
    write_parquet(pa.Table.from_pylist(out_rows), dest)
    return dest


def run_round(cfg: LoopConfig, out: Path, r: int, prev_model: str, history: list[dict]) -> dict:
    rdir = out / f"round_{r}"
    marker = rdir / "round.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    rdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    # 1. mine with the previous round's model
    from .mine import run_mining

    mcfg = MineConfig(**{k: dataclasses.replace(getattr(cfg.mine, k)) for k in
                         ("data", "candidates", "exclusion", "cross_encoder", "filter", "sampling", "output", "ray")},
                      engine=cfg.mine.engine)
    mcfg.candidates.model = prev_model
    mine_dir = rdir / "mine"
    logger.info("round %d/%d: mining %s with BM25 + dense(%s)%s", r, cfg.loop.rounds, mcfg.data.split, prev_model,
                " + cross-encoder filter" if mcfg.cross_encoder.model else "")
    if (mine_dir / "manifest.json").is_file():
        manifest = json.loads((mine_dir / "manifest.json").read_text())
    else:
        with stage("mine"):
            manifest = run_mining(mcfg, mine_dir)
    timings["mine_s"] = float(manifest["timings"]["total_s"])
    # 2. train model r
    if cfg.loop.mode == "restart" and r > 1:
        triples = _union_triples([out / f"round_{k}" / "mine" for k in range(1, r + 1)], rdir / "union.parquet",
                                 max(1, cfg.train.negatives))
        base = cfg.loop.base_model
    else:
        triples, base = mine_dir, prev_model
    tcfg = dataclasses.replace(cfg.train, triples=str(triples), out=str(rdir / "train"), base_model=base,
                               overwrite=False)
    tm = rdir / "train" / "metrics.json"
    logger.info("round %d/%d: training from %s on %s", r, cfg.loop.rounds, base, triples)
    if tm.is_file():
        train = json.loads(tm.read_text())
    else:
        from .train import run_training

        train = run_training(tcfg)
    timings["train_s"] = float(train["seconds"]["total"])
    # 3. evaluate model r on dev and test
    logger.info("round %d/%d: evaluating %s", r, cfg.loop.rounds, train["model"])
    with stage("evaluate"):
        ev = _evaluate(cfg, train["model"], rdir / "eval.json")
    timings["eval_s"] = float(ev["seconds"])
    churn = None
    if r > 1:
        prev, cur = _negatives(out / f"round_{r - 1}" / "mine"), _negatives(mine_dir)
        churn = {"previous": len(prev), "current": len(cur), "retained": len(prev & cur),
                 "retained_share": len(prev & cur) / len(prev) if prev else None}
    fates = manifest["counts"]["fates"]
    result = {
        "round": r, "model": train["model"], "started_from": base, "mode": cfg.loop.mode,
        "metrics": {s: v["metrics"] for s, v in ev["splits"].items()},
        "negatives": {"kept": fates.get("kept", 0),
                      "filtered": sum(v for k, v in fates.items() if k.startswith("filtered")),
                      "sampled": sum(len(x) for x in pq.read_table(mine_dir / "triples.parquet",
                                                                   columns=["negative_ids"])["negative_ids"].to_pylist()),
                      "ce_pairs": manifest["counts"]["ce_pairs"], "ce_pairs_scored": manifest["counts"]["ce_pairs_scored"],
                      "embedding_cache": manifest["timings"].get("embedding_cache")},
        "churn": churn, "train": {"steps": train["steps"], "loss": train["train_loss"], "rows": train["data"]["rows"]},
        "timings": {**timings, "mine_stage_detail": manifest["timings"]}, "finished": time.time(),
    }
    write_json(marker, result)
    logger.info("round %d/%d done: %s", r, cfg.loop.rounds, ", ".join(
        f"{s} nDCG@10 {m['ndcg@10']:.4f}" for s, m in result["metrics"].items()))
    return result


def best_round(devs: list[float]) -> tuple[int, int]:
    """The best round by dev metric (the earliest on ties) and how many rounds have passed since it."""
    best = max(range(len(devs)), key=lambda i: (devs[i], -i))
    return best, len(devs) - 1 - best


def run_loop(cfg: LoopConfig) -> dict:
    """Run (or resume) the loop; returns ``{"rounds", "best_round", "table"}`` and writes the report."""
    out = Path(cfg.loop.out)
    _prepare(out, cfg)
    t0 = time.perf_counter()
    logger.info("round 0: evaluating the base model %s", cfg.loop.base_model)
    with stage("round_0"):
        base_eval = _evaluate(cfg, cfg.loop.base_model, out / "round_0" / "eval.json")
    rounds = [{"round": 0, "model": cfg.loop.base_model,
               "metrics": {s: v["metrics"] for s, v in base_eval["splits"].items()},
               "timings": {"eval_s": base_eval["seconds"]}}]
    best, stopped = 0, None
    prev_model = cfg.loop.base_model
    dev = cfg.loop.dev_split
    for r in range(1, cfg.loop.rounds + 1):
        with stage(f"round_{r}"):
            res = run_round(cfg, out, r, prev_model, rounds)
        rounds.append(res)
        prev_model = res["model"]
        devs = [x["metrics"][dev]["ndcg@10"] for x in rounds]
        best, since_best = best_round(devs)
        if since_best >= cfg.loop.patience and r < cfg.loop.rounds:
            stopped = f"dev nDCG@10 did not improve for {since_best} round(s) after round {best}"
            logger.info("stopping: %s", stopped)
            break
    _p_values(out, rounds, cfg.loop.test_split or dev)
    checks = {}  # each round's judge check, from its mining manifest (rounds finished before it was kept too)
    for x in rounds[1:]:
        mpath = out / f"round_{x['round']}" / "mine" / "manifest.json"
        if mpath.is_file():
            checks[x["round"]] = json.loads(mpath.read_text()).get("judge_check")
    summary = {"rounds": rounds, "best_round": best, "best_model": rounds[best]["model"], "stopped": stopped,
               "seconds": time.perf_counter() - t0, "judge_checks": checks}
    table = render_table(rounds, cfg)
    has_png = _plot(rounds, cfg, out / "metrics.png")
    write_text(out / "report.md", render_report(summary, table, cfg, has_png))
    write_json(out / "summary.json", summary)
    return {**summary, "table": table}


# ---------------------------------------------------------------------------------------------- report


def _p_values(out: Path, rounds: list[dict], split: str) -> None:
    """Paired randomization test of each round's per-query nDCG@10 on ``split`` against round 0's."""
    from retriever.metrics import randomization_test

    per_q = [json.loads((out / f"round_{r['round']}" / "eval.json").read_text())["splits"][split]["per_query"]
             for r in rounds]
    for r, pq_ in zip(rounds[1:], per_q[1:], strict=True):
        r["p_vs_base"] = {"split": split, "p": randomization_test(per_q[0]["ndcg@10"], pq_["ndcg@10"])["p_value"]}


def render_table(rounds: list[dict], cfg: LoopConfig) -> str:
    splits = [cfg.loop.dev_split] + ([cfg.loop.test_split] if cfg.loop.test_split else [])
    head = ["round"] + [f"{s} {m}" for s in splits for m in EVAL_METRICS] + \
        [f"p vs base ({cfg.loop.test_split or cfg.loop.dev_split} ndcg@10)", "neg kept", "neg filtered",
         "churn (retained)", "mine s", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        cells = [str(r["round"]) + (" (base)" if r["round"] == 0 else "")]
        cells += [f"{r['metrics'][s][m]:.4f}" for s in splits for m in EVAL_METRICS]
        n = r.get("negatives") or {}
        ch = r.get("churn")
        t = r.get("timings", {})
        cells += [f"{r['p_vs_base']['p']:.4f}" if r.get("p_vs_base") else "-",
                  str(n.get("kept", "-")), str(n.get("filtered", "-")),
                  f"{ch['retained_share']:.1%}" if ch and ch.get("retained_share") is not None else "-",
                  *(f"{t[k]:.0f}" if k in t else "-" for k in ("mine_s", "train_s", "eval_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(summary: dict, table: str, cfg: LoopConfig, has_png: bool) -> str:
    lp = cfg.loop
    lines = [f"# ANCE loop on {cfg.mine.data.name}", "",
             f"{len(summary['rounds']) - 1} round(s), mode `{lp.mode}`, base model `{lp.base_model}`, mining split "
             f"`{cfg.mine.data.split}`, dev `{lp.dev_split}`, test `{lp.test_split or '-'}`. "
             f"Best round by dev nDCG@10: **{summary['best_round']}** (`{summary['best_model']}`).",
             "" if not summary["stopped"] else f"\nStopped early: {summary['stopped']}.", "", table, "",
             "churn (retained): share of the previous round's mined negatives (query, document) mined again.",
             "p vs base: paired randomization test (10,000 resamples) of per-query nDCG@10 against round 0.",
             "neg kept / filtered: candidates that passed / failed the cross-encoder false-negative filter.", ""]
    checks = {r: c for r, c in (summary.get("judge_checks") or {}).items() if c}
    if checks:
        lines += ["The false-negative judge against the retrieval whose candidates it judges (the mining job's "
                  "check on its own held-in queries, before filtering):", ""]
        for r, c in sorted(checks.items(), key=lambda kv: int(kv[0])):
            lines += [f"- round {r}: " + render_check(c)[0].removeprefix("- judge check: ").removeprefix("> ")]
        lines.append("")
    if has_png:
        lines += ["![metrics over rounds](metrics.png)", ""]
    lines += [f"Total {summary['seconds']:.0f} s in this invocation (finished stages of an earlier one are reused)."]
    return "\n".join(lines) + "\n"


def _plot(rounds: list[dict], cfg: LoopConfig, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'hardneg[plot]'): report without plot")
        return False
    splits = [cfg.loop.dev_split] + ([cfg.loop.test_split] if cfg.loop.test_split else [])
    fig, axes = plt.subplots(1, len(EVAL_METRICS), figsize=(4 * len(EVAL_METRICS), 3.2))
    xs = [r["round"] for r in rounds]
    for ax, m in zip(axes, EVAL_METRICS, strict=True):
        for s in splits:
            ax.plot(xs, [r["metrics"][s][m] for r in rounds], marker="o", label=s)
        ax.set_title(m)
        ax.set_xlabel("round")
        ax.set_xticks(xs)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
