"""Train a cross-encoder from a transformer backbone and a fresh one-logit head on groups of
(query, positive, negatives). Loss: binary cross-entropy per pair (keeps logits calibrated, so that
sigmoid(logit) is a usable probability for margins) plus listwise softmax cross-entropy per group.
Training only; the saved folder loads with sentence-transformers' ``CrossEncoder``."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .encoder import BF16Mode, resolve_bf16, resolve_model_name
from .progress import report
from .progress import show_progress as _show

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """One training example: a query, its positive and some negatives (texts)."""

    query: str
    positive: str
    negatives: list[str]


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainArgs:
    """How a cross-encoder is trained (help in each field's metadata, the project's settings convention)."""

    backbone: str = _opt("default", "transformer backbone: hub name or local path (default: packaged MiniLM-L6)")
    max_length: int = _opt(128, "tokens per (query, document) pair")
    epochs: int = _opt(3, "passes over the training groups")
    groups_per_batch: int = _opt(4, "groups (query, positive, negatives) per batch")
    lr: float = _opt(1e-4, "learning rate of the backbone")
    head_lr: float = _opt(1e-3, "learning rate of the new scoring head")
    warmup_ratio: float = _opt(0.1, "share of the steps with a linear warm-up")
    seed: int = _opt(42, "seed of the head, the data order and the negatives")
    bf16: BF16Mode = _opt("auto", "bf16 autocast; auto = on only with AMX / AVX-512 BF16")
    listwise_weight: float = _opt(1.0, "weight of the listwise softmax loss beside the pointwise BCE")


def train_cross_encoder(groups: Sequence[Group], out: str | os.PathLike, args: TrainArgs,
                        show_progress: bool | None = None) -> dict[str, float]:
    """Fine-tune ``args.backbone`` with a new scoring head on ``groups``; save to ``out``.

    Returns training statistics (steps, seconds, last loss).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not groups:
        raise ValueError("no training groups: every query needs a positive and at least one negative")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    backbone = resolve_model_name(args.backbone)
    tok = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1)
    model.train()
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW([{"params": body, "lr": args.lr}, {"params": head, "lr": args.head_lr}],
                            weight_decay=0.01)
    steps_per_epoch = math.ceil(len(groups) / args.groups_per_batch)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(total * args.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    use_bf16 = resolve_bf16(args.bf16)
    bce = torch.nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    step, last = 0, float("nan")
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="train cross-encoder", unit="step", disable=not _show(show_progress))
    for _ in range(args.epochs):
        order = rng.permutation(len(groups))
        for start in range(0, len(order), args.groups_per_batch):
            batch = [groups[i] for i in order[start:start + args.groups_per_batch]]
            qs, ds, labels, spans = [], [], [], []
            for g in batch:
                spans.append((len(qs), 1 + len(g.negatives)))
                for j, d in enumerate([g.positive, *g.negatives]):
                    qs.append(g.query)
                    ds.append(d)
                    labels.append(1.0 if j == 0 else 0.0)
            enc = tok(qs, ds, truncation="longest_first", max_length=args.max_length, padding=True,
                      return_tensors="pt")
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16 else nullcontext()
            with ctx:
                logits = model(**enc).logits.float().squeeze(-1)
            loss = bce(logits, torch.tensor(labels))
            if args.listwise_weight > 0:
                lw = torch.stack([torch.nn.functional.cross_entropy(logits[s:s + n].unsqueeze(0),
                                                                   torch.zeros(1, dtype=torch.long))
                                  for s, n in spans]).mean()
                loss = loss + args.listwise_weight * lw
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            last = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last:.3f}")
            report(step, total)
    bar.close()
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"steps": step, "seconds": time.perf_counter() - t0, "last_loss": last, "groups": len(groups)}
