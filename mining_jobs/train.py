"""The fine-tuning job: train a bi-encoder on mined triples with the sentence-transformers trainer.

MultipleNegativesRankingLoss or another loss of ``--loss`` (``mining_jobs.losses``), batches without duplicate
texts, bf16 where the CPU supports it, seeded, checkpoints with resume, evaluation on a dev split with the
project's own metrics, the best checkpoint kept, and a model folder whose README names the data, the mining
config and the metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.parquet as pq

from retriever import metrics as M
from retriever.data import Collection, load_collection
from retriever.dense_index import DenseIndex
from retriever.encoder import load_model, resolve_bf16, resolve_model_name
from retriever.progress import report, show_progress, stage

from . import losses as L
from .files import versions
from .runfolder import Layout, fingerprint, finish, prepare, write_json, write_text
from .settings import ConfigError, opt

logger = logging.getLogger(__name__)

EVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100")
LOSSES = L.LOSSES


class TrainError(ConfigError):
    """Bad training input or settings; the message names the option (``field`` too, where it is one)."""


BF16 = Literal["auto", "on", "off"]


@dataclass
class TrainConfig:
    """Settings of ``hardneg train``; each field is a command-line option (``--base-model`` for base_model), a
    key of ``[train]`` in the ANCE config and of a service ``train`` job."""

    triples: str = opt("", "a mining run folder (its triples.parquet) or a parquet file with query, positive and "
                           "negatives columns")
    out: str = opt("runs/train", "run folder: checkpoints, the model (out/model) and its model card")
    base_model: str = opt("default", "bi-encoder to fine-tune: hub name or local path ('default' = packaged "
                                     "all-MiniLM-L6-v2)")
    negatives: int = opt(1, "hard negatives per example (0 = in-batch negatives only)")
    loss: Literal[L.LOSSES] = opt(  # type: ignore[valid-type]
        "mnrl", "mnrl: in-batch + mined negatives, softmax; cached-mnrl: the same with GradCache (large batches); "
                "gist: mnrl without the candidates a guide bi-encoder scores above the positive (minus "
                "--gist-margin) or that repeat the positive's text; hardness: mnrl with harder negatives weighted "
                "up (--hardness-mode, --hardness-strength); batch-hard-triplet: per query only the hardest in-batch "
                "negative, a cosine margin loss (--triplet-margin); margin-mse: distil the judge's score margins "
                "(triples mined with a judge; --margin-mse-weight)")
    mini_batch_size: int = opt(16, "cached-mnrl: examples per forward pass")
    guide: str = opt("default", "gist: the guide bi-encoder, hub name or local path ('default' = packaged "
                                "all-MiniLM-L6-v2); a `hardneg train-judge` folder or a cross-encoder cannot guide "
                                "(no embeddings)")
    gist_margin: float = opt(0.0, "gist: mask a candidate the guide scores above positive - margin (absolute) or "
                                  "positive - |positive| * margin (relative)")
    gist_margin_strategy: Literal[L.GIST_MARGIN_STRATEGIES] = opt(  # type: ignore[valid-type]
        "absolute", "gist: how --gist-margin applies")
    hardness_mode: Literal[L.HARDNESS_MODES] = opt(  # type: ignore[valid-type]
        "all_negatives", "hardness: which negatives are weighted by the model's own cosine (in-batch, mined, or "
                         "both)")
    hardness_strength: float = opt(5.0, "hardness: alpha, the logit of a negative gets alpha * cos (no gradient "
                                        "through the weight)")
    triplet_margin: float = opt(0.2, "batch-hard-triplet: cosine margin between the positive and the hardest "
                                     "in-batch negative")
    margin_mse_weight: float = opt(1.0, "margin-mse: loss = (1 - w) * mnrl + w * MarginMSE, w in (0, 1]; 1 = "
                                        "distillation alone. The student's margin is --scale * (cos(q, pos) - "
                                        "cos(q, neg)), the target positive_score - negative_score")
    batch_size: int = opt(32, "examples per batch (each one's positive is every other's in-batch negative)")
    epochs: float = opt(1.0, "passes over the triples (unless --max-steps)")
    max_steps: int = opt(-1, "stop after this many steps (-1 = epochs decide)")
    lr: float = opt(2e-5, "learning rate (AdamW, linear decay)")
    warmup_ratio: float = opt(0.1, "share of the steps with a linear warm-up")
    scale: float = opt(20.0, "inverse temperature of the softmax over cosines")
    max_seq_length: int = opt(128, "token limit while training (the saved model keeps the base model's limit "
                                   "for encoding)")
    seed: int = opt(42, "seed of the data order, dropout and the head")
    device: str = opt("auto", "where training runs: auto (a GPU when there is one, else the CPU), cpu, cuda or "
                              "cuda:N")
    bf16: BF16 = opt("auto", "bf16 mixed precision; auto = on only with AMX / AVX-512 BF16 (or a GPU that has it)")
    dev_data: str = opt("", "collection of the dev split ('' = no evaluation)")
    dev_split: str = opt("train:dev", "dev split: evaluated during training, its best checkpoint kept")
    dev_corpus: Literal["full", "pooled"] = opt("pooled", "'full' corpus or 'pooled' (dev positives + BM25 top "
                                                          "dev_pool_depth of each dev query)")
    dev_pool_depth: int = opt(100, "pooled dev corpus: BM25 candidates per dev query")
    eval_steps: int = opt(0, "evaluate and checkpoint every N steps (0 = per epoch)")
    save_total_limit: int = opt(2, "checkpoints kept on disk (the best one always)")
    query_prompt: str = opt("", "text prepended to queries (training and dev)")
    doc_prompt: str = opt("", "text prepended to positives, negatives and dev documents")
    overwrite: bool = opt(False, "replace a finished or differently configured run in the output folder")

    def validate(self) -> None:
        if not self.triples:
            raise TrainError("--triples: name a mining run folder or a parquet file", field="triples")
        try:
            L.check_settings(self)
        except L.LossError as exc:
            raise TrainError(str(exc), field=exc.field) from None
        for name in ("batch_size", "max_seq_length", "mini_batch_size", "dev_pool_depth"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", field=name)
        if self.negatives < 0:
            raise TrainError(f"--negatives must be >= 0, got {self.negatives}", field="negatives")
        if self.lr <= 0 or not np.isfinite(self.lr):
            raise TrainError(f"--lr must be a positive number, got {self.lr}", field="lr")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise TrainError("--epochs must be > 0 (or give --max-steps)", field="epochs")
        if self.dev_corpus not in ("full", "pooled"):
            raise TrainError(f"--dev-corpus {self.dev_corpus!r}: expected full or pooled", field="dev_corpus")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise TrainError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}", field="warmup_ratio")
        if self.eval_steps < 0:
            raise TrainError(f"--eval-steps must be >= 0, got {self.eval_steps}", field="eval_steps")
        if self.save_total_limit < 1:
            raise TrainError(f"--save-total-limit must be >= 1, got {self.save_total_limit}", field="save_total_limit")
        if self.bf16 not in ("auto", "on", "off"):
            raise TrainError(f"--bf16 {self.bf16!r}: expected auto, on or off", field="bf16")
        from retriever.devices import DeviceError, parse_devices

        try:
            parse_devices(self.device, "device")
        except DeviceError as exc:
            raise TrainError(f"--{exc}", field="device") from None
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise TrainError(f"--scale must be a positive number, got {self.scale}", field="scale")

    def unused_fields(self) -> set[str]:
        """The loss settings this config's loss does not read (left out of fingerprints)."""
        return L.unused_fields(self.loss)

    def fingerprint(self) -> str:
        """Hash of what changes the trained model: the settings and the triples file (path, size, mtime)."""
        skip = {"out", "overwrite", "save_total_limit", "device"} | self.unused_fields()
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        try:
            st = _triples_path(self.triples).stat()
            d["triples_file"] = [st.st_size, st.st_mtime_ns]
        except TrainError:
            pass
        return fingerprint(d)


# ---------------------------------------------------------------------------------------------- data


def _triples_path(triples: str) -> Path:
    p = Path(triples)
    if p.is_dir():
        if not (p / "triples.parquet").is_file():
            raise TrainError(f"--triples {p}: no triples.parquet there (is it a finished `hardneg mine` run?)", field="triples")
        return p / "triples.parquet"
    if not p.is_file():
        raise TrainError(f"--triples {p}: no such folder or file", field="triples")
    if p.suffix != ".parquet":
        raise TrainError(f"--triples {p}: expected a mining run folder or a .parquet file", field="triples")
    return p


def load_examples(triples: str, negatives: int, loss: str = "mnrl") -> tuple[dict[str, list], dict[str, object]]:
    """Training columns ``query, positive, negative_1..n`` from a triples table.

    Accepts the mining job's ``triples.parquet`` (a list column ``negatives``) or a table whose text
    columns are already ``query, positive, negative...`` (the sentence-transformers miner's output).
    Rows with fewer than ``negatives`` negatives are dropped and counted.

    For a loss that learns from the judge's scores (``margin-mse``) a ``label`` column is added: per row the
    list of margins ``positive_score - negative_scores[j]``, j < ``negatives`` (what sentence-transformers'
    ``MarginMSELoss`` reads as is). Rows without those scores are dropped and counted; triples without any
    (mined without a judge) raise ``TrainError``.
    """
    path = _triples_path(triples)
    table = pq.read_table(path)
    cols = table.column_names
    info: dict[str, object] = {"path": str(path), "rows_in": table.num_rows}
    if "query" not in cols:
        raise TrainError(f"--triples {path}: no 'query' column (columns: {', '.join(cols)})", field="triples")
    pos_col = "positive" if "positive" in cols else ("answer" if "answer" in cols else None)
    if pos_col is None:
        raise TrainError(f"--triples {path}: no 'positive' column (columns: {', '.join(cols)})", field="triples")
    queries = table.column("query").to_pylist()
    pos = table.column(pos_col).to_pylist()
    if "negatives" in cols:
        negs = table.column("negatives").to_pylist()
    else:
        neg_cols = [c for c in cols if c.startswith("negative") and c not in ("negative_ids", "negative_scores",
                                                                               "negative_sources")]
        negs = [list(r) for r in zip(*(table.column(c).to_pylist() for c in neg_cols), strict=True)] \
            if neg_cols else [[] for _ in queries]
    keep = [i for i in range(len(queries)) if len(negs[i]) >= negatives and queries[i] and pos[i]]
    if not keep:
        raise TrainError(f"--triples {path}: no row has {negatives} negatives (lower --negatives)", field="triples")
    n_enough = len(keep)
    margins: list[list[float]] = []
    if L.needs_scores(loss):
        keep, margins = _score_margins(table, path, keep, negatives, loss)
    data: dict[str, list] = {"query": [queries[i] for i in keep], "positive": [pos[i] for i in keep]}
    for j in range(negatives):
        data[f"negative_{j + 1}"] = [negs[i][j] for i in keep]
    info.update({"rows": len(keep), "rows_dropped_few_negatives": len(queries) - n_enough})
    if L.needs_scores(loss):
        data["label"] = margins
        info["rows_dropped_no_scores"] = n_enough - len(keep)
    if "query_id" in cols:
        ids = table.column("query_id").to_pylist()
        info["query_ids"] = sorted({ids[i] for i in keep})
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        inp = m.get("input") or {}
        info["mining"] = {"collection": {k: inp.get(k) for k in ("name", "source", "fingerprint")},
                          "config": m.get("config")}
    return data, info


def dropped_rows_warning(info: dict, negatives: int) -> str | None:
    """What to tell a user whose triples lose more than a tenth of their rows for want of negatives (None:
    nothing to say)."""
    dropped = info["rows_dropped_few_negatives"]
    if dropped <= 0.1 * info["rows_in"]:
        return None
    return (f"{dropped} of the {info['rows_in']} triples rows have fewer than {negatives} negative(s) and are left "
            "out of training; mine with sampling.fill = \"random\" to fill them from the corpus, or train with "
            "fewer --negatives")


def _score_margins(table, path: Path, keep: list[int], negatives: int, loss: str
                   ) -> tuple[list[int], list[list[float]]]:
    """The rows of ``keep`` with the judge's scores of the positive and of the first ``negatives`` negatives,
    and their margins ``positive_score - negative_score``."""
    cols = table.column_names
    hint = (f"--loss {loss} learns from the judge's scores, but the triples {path} have none{{}}: they were mined "
            "without a judge (no cross-encoder). Mine with one (hardneg mine --cross-encoder ..., or "
            "[cross_encoder] model in the config) or choose another --loss")
    missing = [c for c in ("positive_score", "negative_scores") if c not in cols]
    if missing:
        raise TrainError(hint.format(f" (no {' / '.join(missing)} column)"))
    ps = table.column("positive_score").to_pylist()
    ns = table.column("negative_scores").to_pylist()

    def ok(x) -> bool:
        return x is not None and np.isfinite(x)

    scored = [i for i in keep if ok(ps[i]) and ns[i] is not None and len(ns[i]) >= negatives
              and all(ok(x) for x in ns[i][:negatives])]
    if not scored:
        raise TrainError(hint.format(f" (no row with a positive_score and {negatives} negative_scores)"))
    return scored, [[float(ps[i]) - float(ns[i][j]) for j in range(negatives)] for i in scored]


def check_dev_leak(col: Collection, info: dict) -> None:
    """Refuse a dev split whose queries are among the training queries (their metrics would be inflated)."""
    ids = set(info.get("query_ids") or ())
    same = (info.get("mining") or {}).get("collection", {}).get("name") in (None, col.name)
    leaked = sorted(ids & set(col.queries)) if same else []
    if leaked:
        raise TrainError(f"--dev-split {col.split!r}: {len(leaked)} of its {len(col.queries)} queries are in the "
                         f"training triples (e.g. {leaked[0]!r}); mine from a part without them (e.g. "
                         "--split train:fit with --dev-split train:dev)", field="dev_split")


# ---------------------------------------------------------------------------------------------- dev evaluation


def _base_evaluator():
    try:
        from sentence_transformers.sentence_transformer.evaluation import BaseEvaluator
        return BaseEvaluator
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.evaluation import SentenceEvaluator
        return SentenceEvaluator


def pooled_doc_ids(col: Collection, depth: int) -> list[str]:
    """The dev positives plus the BM25 top ``depth`` of every dev query, in corpus order."""
    from retriever.bm25 import BM25Index

    doc_ids = col.doc_ids
    index = BM25Index("bm25s").index(doc_ids, col.doc_texts(), show_progress=False)
    run = index.search(list(col.queries.values()), k=depth, query_ids=list(col.queries), show_progress=False)
    keep = {d for judged in col.qrels.values() for d in judged}
    keep |= {d for ranking in run.values() for d in ranking}
    return [d for d in doc_ids if d in keep]


class RetrievalEvaluator(_base_evaluator()):
    """Dev-split evaluation with the project's metrics (trec_eval semantics) for the trainer.

    Encodes the (full or pooled) corpus and the dev queries with the model under training at
    ``max_seq_length``, searches exactly, and returns ``{name}_ndcg@10``, ``_mrr@10``, ``_recall@100``.
    """

    def __init__(self, col: Collection, doc_ids: list[str] | None = None, name: str = "dev",
                 max_seq_length: int | None = None, batch_size: int = 64, bf16: bool = False,
                 query_prompt: str = "", doc_prompt: str = "") -> None:
        super().__init__()
        self.name = name
        self.col = col
        texts = dict(zip(col.doc_ids, col.doc_texts(), strict=True))
        self.doc_ids = doc_ids if doc_ids is not None else col.doc_ids
        self.doc_texts = [doc_prompt + texts[d] for d in self.doc_ids]
        self.query_texts = [query_prompt + q for q in col.queries.values()]
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.bf16 = bf16
        self.primary_metric = "ndcg@10"
        self.greater_is_better = True

    def evaluate(self, model) -> dict[str, float]:
        import contextlib

        import torch

        old = model.max_seq_length
        if self.max_seq_length:
            model.max_seq_length = self.max_seq_length
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        try:
            with torch.inference_mode(), ctx:
                d = model.encode(self.doc_texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=show_progress())
                q = model.encode(self.query_texts, batch_size=self.batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        finally:
            model.max_seq_length = old
        run = DenseIndex("flat").add(self.doc_ids, d).search(q, k=100, query_ids=list(self.col.queries))
        return M.evaluate(self.col.qrels, run, EVAL_METRICS)

    def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1
                 ) -> dict[str, float]:
        result = self.evaluate(model)
        logger.info("dev at step %s: %s", steps, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        self.primary_metric = "ndcg@10"
        return self.prefix_name_to_metrics(result, self.name)


# ---------------------------------------------------------------------------------------------- the job


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by the trainer) exists; newer,
    incomplete ones (a kill during a save) are deleted so the trainer never picks them up."""
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if
                   p.name.split("-")[-1].isdigit() else -1, reverse=True)
    for ckpt in found:
        if (ckpt / "trainer_state.json").is_file():
            return ckpt
        logger.warning("removing incomplete checkpoint %s", ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


FOLDER = Layout("train", state_file="train.json", done_file="metrics.json", noun="training job", done_noun="model",
                redo="train again")


def _prepare(out: Path, cfg: TrainConfig) -> Path | None:
    """Create ``out`` or check it holds the same unfinished job (``runfolder``); returns the checkpoint to
    resume from."""
    state = prepare(out, FOLDER, cfg.fingerprint(), overwrite=cfg.overwrite, config=dataclasses.asdict(cfg))
    return last_complete_checkpoint(out / "checkpoints") if state.resumed else None


def run_training(cfg: TrainConfig, model=None) -> dict:
    """Train (or resume training) into ``cfg.out``; returns the summary also written to ``metrics.json``.

    ``model``: an already loaded SentenceTransformer to fine-tune in place of ``cfg.base_model``.
    """
    cfg.validate()
    out = Path(cfg.out)
    t_start = time.perf_counter()
    data, data_info = load_examples(cfg.triples, cfg.negatives, cfg.loss)
    if (msg := dropped_rows_warning(data_info, cfg.negatives)) is not None:
        logger.warning(msg)
    dev_col = None
    if cfg.dev_data:
        dev_col = load_collection(cfg.dev_data, cfg.dev_split)
        check_dev_leak(dev_col, data_info)
    resume = _prepare(out, cfg)

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    try:
        from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.training_args import BatchSamplers

    from retriever.devices import resolve_device

    device = resolve_device(cfg.device, "device")
    torch.manual_seed(cfg.seed)
    model = model if model is not None else load_model(cfg.base_model, device)
    encode_len = int(model.max_seq_length)
    model.max_seq_length = cfg.max_seq_length
    bf16 = resolve_bf16(cfg.bf16, device)
    fp16 = device.startswith("cuda") and not bf16 and cfg.bf16 == "auto"  # a GPU without bf16: fp16 mixed
    train_ds = Dataset.from_dict(data)
    loss = L.build_loss(cfg, model)
    evaluator = None
    dev_info: dict[str, object] = {}
    if dev_col is not None:
        col = dev_col
        pool = pooled_doc_ids(col, cfg.dev_pool_depth) if cfg.dev_corpus == "pooled" else None
        evaluator = RetrievalEvaluator(col, pool, "dev", max_seq_length=encode_len, bf16=bf16,
                                       query_prompt=cfg.query_prompt, doc_prompt=cfg.doc_prompt)
        dev_info = {"data": cfg.dev_data, "split": cfg.dev_split, "queries": len(col.queries),
                    "corpus": cfg.dev_corpus, "documents": len(evaluator.doc_ids)}
    steps_per_epoch = max(1, -(-len(train_ds) // cfg.batch_size))
    eval_steps = cfg.eval_steps or steps_per_epoch
    strategy = "steps" if cfg.eval_steps else "epoch"
    prompts = None
    if cfg.query_prompt or cfg.doc_prompt:
        prompts = {c: (cfg.query_prompt if c == "query" else cfg.doc_prompt) for c in data if c != "label"}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, **_warmup(cfg.warmup_ratio), seed=cfg.seed, data_seed=cfg.seed, bf16=bf16,
        fp16=fp16, use_cpu=device == "cpu", batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy=strategy, save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy=strategy if evaluator else "no",
        eval_steps=eval_steps if evaluator else None, load_best_model_at_end=evaluator is not None,
        metric_for_best_model="eval_dev_ndcg@10" if evaluator else None, greater_is_better=True,
        report_to="none", disable_tqdm=not show_progress(), logging_steps=max(1, min(10, steps_per_epoch)),
        dataloader_drop_last=False, save_only_model=False, prompts=prompts)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss,
                                             evaluator=evaluator)
        if not show_progress():
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # no raw log dicts on stdout under -q
        trainer.add_callback(_progress_callback())
        if resume:
            logger.info("resuming training from %s", resume)
        t0 = time.perf_counter()
        with stage("train"):
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        train_s = time.perf_counter() - t0
    model.max_seq_length = encode_len
    # the trainer's state (restored on resume) holds every log and evaluation, also those before a kill
    log = list(trainer.state.log_history)
    history = [{"epoch": float(e.get("epoch", -1)), "step": int(e["step"]),
                **{m: float(e[f"eval_dev_{m}"]) for m in EVAL_METRICS}} for e in log if "eval_dev_ndcg@10" in e]
    best = trainer.state.best_model_checkpoint
    final_dev = None
    if evaluator is not None and history:
        # the kept weights must be the best checkpoint's: re-evaluate them (the trainer only logs a failed load)
        final_dev = evaluator.evaluate(model)
        want = _best(history)["ndcg@10"]
        if abs(final_dev["ndcg@10"] - want) > 1e-4:
            raise TrainError(f"{out}: the kept weights score dev nDCG@10 {final_dev['ndcg@10']:.4f}, but the best "
                             f"checkpoint ({best}) scored {want:.4f}; loading the best checkpoint failed")
    model_dir = out / "model"
    model.save(str(model_dir))
    summary = {
        "model": str(model_dir), "base_model": resolve_model_name(cfg.base_model) if isinstance(cfg.base_model, str)
        else str(cfg.base_model), "config": dataclasses.asdict(cfg),
        "data": {k: v for k, v in data_info.items() if k != "query_ids"}, "dev": dev_info,
        "steps": trainer.state.global_step, "train_loss": _mean_loss(log),
        "best_checkpoint": Path(best).name if best else None, "best_dev": _best(history), "final_dev": final_dev,
        "dev_history": history, "bf16": bf16, "resumed_from": resume.name if resume else None,
        "seconds": {"train": train_s, "total": time.perf_counter() - t_start}, "versions": versions(),
    }
    write_json(out / "log.json", log)
    write_text(model_dir / "README.md", model_card(summary))
    finish(out, FOLDER, summary)  # metrics.json, last: marks the job finished
    drop_checkpoints(out)
    return summary


def drop_checkpoints(out: Path) -> None:
    """Remove a finished run's trainer checkpoints (the best one's weights are in ``model/``)."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def _progress_callback():
    """A trainer callback that reports each optimizer step (a checkpoint where a job can be cancelled)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            report(state.global_step, state.max_steps or None)

    return _Progress()


def _mean_loss(log: list[dict]) -> float | None:
    """Training loss averaged over all steps, from the logged per-interval means (each weighted by its steps)."""
    total, steps, prev = 0.0, 0, 0
    for e in log:
        if "loss" in e and "step" in e:
            n = int(e["step"]) - prev
            total += float(e["loss"]) * n
            steps += n
            prev = int(e["step"])
    return total / steps if steps else None


def _warmup(ratio: float) -> dict[str, float]:
    """transformers >= 5 takes the warmup ratio as a float ``warmup_steps`` (``warmup_ratio`` is deprecated)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"warmup_steps": float(ratio)} if major >= 5 else {"warmup_ratio": ratio}


def _best(history: list[dict[str, float]]) -> dict[str, float] | None:
    return max(history, key=lambda h: h["ndcg@10"]) if history else None


def model_card(s: dict) -> str:
    """A model card naming the base model, the mined data and its mining config, the training settings and
    the dev metrics."""
    c = s["config"]
    mining = (s["data"].get("mining") or {})
    lines = [
        "---", "library_name: sentence-transformers", "tags: [sentence-transformers, hardneg, hard-negatives]",
        "---", "", "# Bi-encoder fine-tuned on hard negatives mined by hardneg", "",
        f"- Base model: `{s['base_model']}`",
        f"- Training data: `{s['data']['path']}`: {s['data']['rows']} examples "
        f"({s['data']['rows_dropped_few_negatives']} rows with fewer than {c['negatives']} negatives dropped)",
        f"- Loss: {c['loss']} (scale {c['scale']}), batch {c['batch_size']} without duplicate texts, "
        f"{c['negatives']} hard negative(s) per example, lr {c['lr']}, warmup {c['warmup_ratio']}, "
        f"epochs {c['epochs']}, {s['steps']} steps, max_seq_length {c['max_seq_length']} while training, "
        f"seed {c['seed']}, bf16 {s['bf16']}",
    ]
    if mining:
        lines += ["", "## Mining", "", f"Collection: `{json.dumps(mining.get('collection'))}`", "",
                  "```json", json.dumps(mining.get("config"), indent=2), "```"]
    if s["dev_history"]:
        lines += ["", f"## Dev metrics ({s['dev']['data']} / {s['dev']['split']}, {s['dev']['queries']} queries, "
                      f"{s['dev']['corpus']} corpus of {s['dev']['documents']} documents)", "",
                  "| step | " + " | ".join(EVAL_METRICS) + " |", "|---|" + "---|" * len(EVAL_METRICS)]
        for h in s["dev_history"]:
            lines.append(f"| {h['step']} | " + " | ".join(f"{h[m]:.4f}" for m in EVAL_METRICS) + " |")
        lines += ["", f"Kept: {s['best_checkpoint'] or 'the final weights'} (best dev nDCG@10)."]
    lines += ["", "## Use", "", "```python", "from sentence_transformers import SentenceTransformer",
              "model = SentenceTransformer('PATH_TO_THIS_FOLDER')", "```", ""]
    return "\n".join(lines)
