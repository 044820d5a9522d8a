"""The ``hardneg`` command line: parses options, configures logging, runs a job, prints a readable result.

Entry point only: the work is done by the job modules.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from retriever import metrics as M
from retriever.errors import HardnegError

from .evaluate import format_table, run_evaluation
from .settings import add_flags, command_line_raw, from_command_line


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _config_flags(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE``: every job command reads its settings the same way (the TOML
    file, then the flags, then --set; later ones win)."""
    p.add_argument("--config", help=f"TOML file of settings (every key documented in {example})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting with a TOML value (repeatable), e.g. --set lr=3e-5 or "
                        "--set filter.relative_margin=0.2")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from .evaluate import EvalConfig

    p = sub.add_parser("evaluate", help="retrieve with BM25 / dense / hybrid and score the run",
                       description="Retrieve for every query of a split, write run.trec and metrics.json, print a table.")
    _config_flags(p, "examples/evaluate.toml")
    add_flags(p, EvalConfig)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired randomization test between two TREC runs",
                       description="Score two run files on the same qrels and test the difference per metric.")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--data", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", type=_csv, default=list(M.DEFAULT_METRICS))
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)


def _add_mine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="mine hard negatives into triples",
                       description="Retrieve BM25 + dense candidates for every training query, exclude positives "
                                   "and duplicates, score and filter with a cross-encoder, sample negatives, write "
                                   "triples. Resumes a killed job in the same --out.")
    from .config import MineConfig

    _config_flags(p, "examples/mine.toml")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--data", help="shortcut for --data.name")
    p.add_argument("--split", help="shortcut for --data.split")
    p.add_argument("--cross-encoder", help="shortcut for --cross-encoder.model (a name, path, fold set or judge)")
    p.add_argument("--overwrite", action="store_true", help="shortcut for --output.overwrite")
    add_flags(p, MineConfig)


def _add_train_reranker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-reranker", help="train a (cross-fitted) cross-encoder for the false-negative filter",
                       description="Train a cross-encoder (backbone + new head) on a split's qrels with BM25 "
                                   "negatives; --folds K cross-fits K models so no query is judged by a model "
                                   "trained on it. Reports nDCG@10 of BM25 top-k reranked on --eval-split.")
    from .train_reranker import RerankerJob

    _config_flags(p, "examples/train-reranker.toml")
    add_flags(p, RerankerJob)


def _add_train_judge(sub: argparse._SubParsersAction) -> None:
    from .judge_train import JudgeJob

    p = sub.add_parser("train-judge", help="fit a learned false-negative judge (BM25 + bi-encoder + cross-encoder)",
                       description="Train a cross-fitted bi-encoder fold set on a split's qrels, then fit a calibrated "
                                   "pairwise-logistic combination of BM25, bi-encoder and cross-encoder features on the "
                                   "split's candidates. Use the folder as a mining judge: --cross-encoder DIR.")
    _config_flags(p, "examples/train-judge.toml")
    add_flags(p, JudgeJob)


def _add_judge_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge-report", help="measure judges on held-out queries against the retrievers",
                       description="nDCG@10 / MRR@10 of BM25 top-k reranked by each judge on every query of a split, "
                                   "ROC-AUC of positives against mined candidates, and with a planted collection the "
                                   "filter's recall and cost across margins. bm25, dense and hybrid are the baselines.")
    p.add_argument("--judge", type=_csv, required=True,
                   help="comma-separated judges: bm25, dense, hybrid, a cross-encoder name or path, a fold set, a "
                        "train-judge folder")
    p.add_argument("--data", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--depth", type=int, default=100, help="BM25 candidates reranked (default 100)")
    p.add_argument("--pool-depth", type=int, default=30, help="BM25 and dense candidates per query for AUC and "
                   "the planted sweep (default 30)")
    p.add_argument("--max-length", type=int, default=128, help="cross-encoder tokens per pair")
    p.add_argument("--planted-data", default="", help="a collection with planted false negatives")
    p.add_argument("--planted-split", default="train:fit")
    p.add_argument("--planted", default="", help="JSON file: {kind: [[query_id, doc_id], ...]}")
    p.add_argument("--out", required=True, help="folder for report.md and report.json")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train import TrainConfig

    p = sub.add_parser("train", help="fine-tune a bi-encoder on mined triples",
                       description="sentence-transformers trainer with the loss of --loss (MultipleNegativesRankingLoss "
                                   "by default), no duplicate texts in a batch, dev evaluation with the best checkpoint kept, "
                                   "resumable in the same --out.")
    _config_flags(p, "examples/train.toml")
    add_flags(p, TrainConfig)


def _add_iterate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("iterate", help="ANCE-style rounds: mine with model r, train model r+1, evaluate",
                       description="Each round encodes the corpus with the current model, mines with BM25 + "
                                   "dense + the cross-encoder, trains the next model and evaluates it on dev and "
                                   "test. Stops when dev drops; resumes a killed loop per round and stage.")
    from .iterate import LoopConfig

    _config_flags(p, "examples/iterate.toml; a worked example: examples/ance.toml")
    p.add_argument("--out", help="shortcut for --loop.out")
    add_flags(p, LoopConfig)


def _add_config(sub: argparse._SubParsersAction) -> None:
    from .job_settings import COMMANDS

    p = sub.add_parser("config", help="print a command's documented settings as TOML",
                       description="Every setting of a job command with its default and help, as a TOML file to "
                                   "edit and pass with --config (the same text as examples/<command>.toml).")
    p.add_argument("job", choices=COMMANDS)


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="push a mining run folder to a Hugging Face dataset repository",
                       description="Upload a finished mining run (its dataset card README.md, the ntuple, triples "
                                   "and triplets views, candidates, report and manifest; not the shards) to a "
                                   "dataset repository; it loads there with datasets.load_dataset(REPO_ID, "
                                   "'ntuple'). Needs network and a token.")
    p.add_argument("run", help="a finished `hardneg mine` run folder")
    p.add_argument("repo_id", help="OWNER/NAME of the dataset repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--token-file", help="file holding a Hugging Face token (default: the saved login)")


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="job service URL (default $HARDNEG_SERVER or http://127.0.0.1:8750)")
    p.add_argument("--token-file", help="file holding the bearer token (default $HARDNEG_TOKEN)")


def _data_root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", action="append", metavar="DIR", help="a folder whose files job configs may name "
                   "(collections, pairs, triples, models, caches); repeatable. Any other path in a config is "
                   "refused (symlinks followed); names and hub ids are not paths. Default: $HARDNEG_DATA and "
                   "$HARDNEG_HOME (the service's run folders are always allowed)")


def _data_roots(args: argparse.Namespace) -> list[Path]:
    """``--data-root`` as given, else the default from the environment (``$HARDNEG_DATA``, ``$HARDNEG_HOME``)."""
    from .service.store import default_data_roots

    return [Path(d) for d in args.data_root] if args.data_root else default_data_roots()


def _add_service(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the job service's HTTP API (jobs are run by `hardneg worker`)",
                       description="FastAPI + uvicorn over the job store in --home. Binds 127.0.0.1 by default; "
                                   "another address needs a bearer token ($HARDNEG_TOKEN or --token-file).")
    p.add_argument("--home", help="service folder: jobs.sqlite, runs/, logs/ (default $HARDNEG_HOME or ~/.hardneg)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8750)
    p.add_argument("--token-file", help="file holding the bearer token (default $HARDNEG_TOKEN)")
    _data_root_flag(p)
    p = sub.add_parser("worker", help="run queued jobs of the service, one at a time",
                       description="Claims queued jobs from the job store in --home (several workers never take "
                                   "the same job), runs them, reports progress, honours cancellation. A job whose "
                                   "worker died is taken over when its lease expires and resumes from its run "
                                   "folder. SIGTERM gives the current job back at its next checkpoint.")
    p.add_argument("--home", help="service folder (default $HARDNEG_HOME or ~/.hardneg)")
    p.add_argument("--name", help="worker name in the job records (default host:pid)")
    p.add_argument("--lease", type=float, default=60.0, help="seconds a job stays this worker's without a "
                   "heartbeat; a dead worker's job is taken over after this (default 60)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue")
    p.add_argument("--max-attempts", type=int, default=3, help="a job whose workers died this many times is "
                   "failed instead of taken again (default 3)")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after running this many jobs")
    p.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    _data_root_flag(p)
    p = sub.add_parser("submit", help="submit a job to the service",
                       description="Send a job config (TOML or JSON file, plus --set overrides) to the service; "
                                   "prints the job id. Strings 'job:<id>[/path]' name another job's run folder.")
    p.add_argument("kind", help="mine, train-reranker, train, evaluate or iterate")
    p.add_argument("--config", help="TOML or JSON file (for mine: examples/mine.toml; iterate: examples/ance.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. filter.relative_margin=0.2 or lr=3e-5 (repeatable)")
    p.add_argument("--name", default="", help="a label for the job")
    p.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    _client_flags(p)
    p = sub.add_parser("status", help="list the service's jobs, or show one")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    _client_flags(p)
    p = sub.add_parser("wait", help="wait until a job ends; exit 0 when it succeeded")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    _client_flags(p)
    p = sub.add_parser("fetch", help="download an artifact of a job (without a name: list them)")
    p.add_argument("job_id")
    p.add_argument("name", nargs="?", help="file in the run folder, e.g. triples.parquet, report.md")
    p.add_argument("-o", "--out", default=".", help="destination file or folder (default .)")
    _client_flags(p)
    p = sub.add_parser("cancel", help="cancel a job (a running job stops at its next checkpoint)")
    p.add_argument("job_id")
    _client_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hardneg", description="Hard-negative mining for dense retrievers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_mine(sub)
    _add_train_reranker(sub)
    _add_train_judge(sub)
    _add_judge_report(sub)
    _add_train(sub)
    _add_iterate(sub)
    _add_config(sub)
    _add_push(sub)
    _add_service(sub)
    return parser


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig

    cfg = from_command_line(EvalConfig, args)
    results = run_evaluation(cfg)
    out = Path(cfg.out)
    summary = out / "summary.md"
    if summary.exists() and len(results) > 1:
        print(summary.read_text())
    else:
        print(format_table(results))
    print(f"\nwritten to {out}/ (metrics.json, per_query.json, run.trec, manifest.json)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from retriever.data import load_collection
    from retriever.runs import read_trec

    col = load_collection(args.data, args.split)
    a, b = read_trec(args.run_a), read_trec(args.run_b)
    pa, pb = M.per_query(col.qrels, a, args.metrics), M.per_query(col.qrels, b, args.metrics)
    print(f"A = {args.run_a}\nB = {args.run_b}\n{col.name}/{col.split}: {len(col.qrels)} queries\n")
    print("| metric | A | B | B - A | p (randomization) |\n|---|---|---|---|---|")
    for m in args.metrics:
        t = M.randomization_test(pa[m], pb[m], n_resamples=args.resamples, seed=args.seed)
        print(f"| {m} | {t['mean_a']:.4f} | {t['mean_b']:.4f} | {t['delta']:+.4f} | {t['p_value']:.4f} |")
    return 0


def _cmd_mine(args: argparse.Namespace) -> int:
    from .config import MineConfig
    from .mine import run_mining

    base: dict[str, dict[str, object]] = {}
    if args.data:
        base.setdefault("data", {})["name"] = args.data
    if args.split:
        base.setdefault("data", {})["split"] = args.split
    if args.cross_encoder:
        base.setdefault("cross_encoder", {})["model"] = args.cross_encoder
    if args.overwrite:
        base.setdefault("output", {})["overwrite"] = True
    cfg = from_command_line(MineConfig, args, base)
    m = run_mining(cfg, args.out)
    c = m["counts"]
    print(f"mined {c['queries']} queries -> {c['triples']} triples in {m['timings']['total_s']:.1f} s; "
          f"filter: {m['models']['false_negative_filter']}")
    print(f"fates: {', '.join(f'{k} {v}' for k, v in c['fates'].items())}")
    print(f"queries without negatives: {c['queries_without_negatives']}")
    print(f"\nread first: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_train_reranker(args: argparse.Namespace) -> int:
    from .train_reranker import RerankerJob, run_train_reranker

    job = from_command_line(RerankerJob, args)
    report = run_train_reranker(job)
    from .train_reranker import render

    print(render(report))
    print(f"fold set written to {job.out}/ (use it as: hardneg mine --cross-encoder {job.out} ...)")
    return 0


def _cmd_train_judge(args: argparse.Namespace) -> int:
    from .judge_train import JudgeJob, run_train_judge

    job = from_command_line(JudgeJob, args)
    run_train_judge(job)
    print((Path(job.out) / "report.md").read_text())
    print(f"judge written to {job.out}/ (use it as: hardneg mine --cross-encoder {job.out} ...)")
    return 0


def _cmd_judge_report(args: argparse.Namespace) -> int:
    import json

    from .files import write_text
    from .judge_report import render_report, run_judge_report

    if bool(args.planted_data) != bool(args.planted):
        raise ValueError("--planted-data and --planted go together")
    r = run_judge_report(args.judge, args.data, args.split, args.depth, args.pool_depth, args.max_length,
                         args.planted_data, args.planted_split, args.planted)
    text = render_report(r)
    write_text(Path(args.out) / "report.md", text)
    write_text(Path(args.out) / "report.json", json.dumps(r, indent=2, default=float))
    print(text)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import EVAL_METRICS, TrainConfig, run_training

    cfg = from_command_line(TrainConfig, args)
    s = run_training(cfg)
    loss = f"loss {s['train_loss']:.4f}" if s["train_loss"] is not None else "no loss logged"
    print(f"trained {s['steps']} steps on {s['data']['rows']} examples in {s['seconds']['train']:.0f} s ({loss})")
    if s["best_dev"]:
        b = s["best_dev"]
        print(f"best dev (step {b['step']}): " + ", ".join(f"{m} {b[m]:.4f}" for m in EVAL_METRICS))
    print(f"model written to {s['model']} (README.md is its model card)")
    return 0


def _cmd_iterate(args: argparse.Namespace) -> int:
    from .iterate import loop_config_from_dict, run_loop

    cfg = loop_config_from_dict(command_line_raw(args), str(args.config or "config"), out=args.out)
    result = run_loop(cfg)
    print(result["table"])
    print(f"\nbest round: {result['best_round']}; report: {Path(cfg.loop.out) / 'report.md'}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from .job_settings import example

    print(example(args.job), end="")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .card import push_run

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    print(f"pushed: {push_run(args.run, args.repo_id, private=args.private, token=token)}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .service.server import serve

    serve(args.home, host=args.host, port=args.port, token_file=args.token_file, data_roots=_data_roots(args))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .service import kinds
    from .service.store import open_store
    from .service.worker import Worker

    w = Worker(open_store(args.home, kinds.NAMES), name=args.name, lease_s=args.lease, poll_s=args.poll,
               max_attempts=args.max_attempts, data_roots=_data_roots(args))
    w.install_signal_handlers()
    n = w.serve(max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle)
    print(f"worker {w.name}: ran {n} job(s)")
    return 0


def _client(args: argparse.Namespace):
    from .service.client import Client

    return Client(args.server, token_file=args.token_file)


def _submitted_config(path: str | None, overrides: list[str]) -> dict:
    import json

    from .settings import ConfigError, apply_set, plain, read_toml

    raw: dict = {}
    if path:
        if path.endswith(".json"):
            try:
                raw = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
        else:
            raw = read_toml(path)
    for text in overrides:  # a field of a table (mine, iterate) or a top-level key (train, evaluate, ...)
        apply_set(raw, text)
    return plain(raw)


def _print_job(job: dict) -> None:
    import json

    from .service.client import describe

    print(describe(job))
    print(f"  run folder: {job['run_dir']}")
    if job.get("worker"):
        print(f"  worker: {job['worker']} (attempt {job['attempts']})")
    t = job.get("timings") or {}
    if t.get("running_s") is not None:
        print(f"  queued {t['queued_s']:.1f} s, running {t['running_s']:.1f} s")
    if job.get("metrics"):
        print("  metrics: " + json.dumps(job["metrics"], indent=2).replace("\n", "\n  "))
    if job.get("error"):
        print("  error: " + job["error"].strip().splitlines()[0])


def _cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.submit(args.kind, _submitted_config(args.config, args.set), name=args.name)
    print(job["id"])
    if args.wait:
        return _wait(client, job["id"], None)
    return 0


def _wait(client, job_id: str, timeout: float | None) -> int:
    from .service.client import describe

    job = client.wait(job_id, timeout=timeout, on_update=lambda j: print(describe(j), flush=True))
    _print_job(job)
    return 0 if job["state"] == "succeeded" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from .service.client import describe

    client = _client(args)
    if args.job_id:
        job = client.job(args.job_id)
        print(json.dumps(job, indent=2)) if args.json else _print_job(job)
        return 0
    jobs = client.jobs(state=args.state)
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        for j in jobs:
            print(describe(j))
        if not jobs:
            print("no jobs")
    return 0


def _cmd_wait(args: argparse.Namespace) -> int:
    return _wait(_client(args), args.job_id, args.timeout)


def _cmd_fetch(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.name:
        for a in client.artifacts(args.job_id):
            print(f"{a['bytes']:>12,}  {a['name']}")
        return 0
    print(client.fetch(args.job_id, args.name, args.out))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from .service.client import describe

    print(describe(_client(args).cancel(args.job_id)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import bm25s  # noqa: F401 - bm25s sets its own logger to DEBUG on import; import it first, then tame it

    for name in ("retriever", "mining_jobs", "bm25s"):
        logging.getLogger(name).setLevel(level if name != "bm25s" else max(level, logging.WARNING))
    try:
        commands = {"evaluate": _cmd_evaluate, "compare": _cmd_compare, "mine": _cmd_mine,
                    "train-reranker": _cmd_train_reranker, "train-judge": _cmd_train_judge,
                    "judge-report": _cmd_judge_report, "train": _cmd_train, "iterate": _cmd_iterate, "config": _cmd_config, "push": _cmd_push,
                    "serve": _cmd_serve, "worker": _cmd_worker, "submit": _cmd_submit, "status": _cmd_status,
                    "wait": _cmd_wait, "fetch": _cmd_fetch, "cancel": _cmd_cancel}
        return commands[args.command](args)
    except (HardnegError, ValueError, OSError, ImportError) as exc:  # a refused run folder: runfolder.RunFolderError
        # ImportError: an optional extra is missing (the service, Ray); its message names the pip command
        print(f"hardneg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
