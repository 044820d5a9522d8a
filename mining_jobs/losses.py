"""The losses of ``hardneg train --loss``: which one, its settings' checks, and building it for the trainer.

- ``mnrl``: sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch + mined negatives, softmax).
- ``cached-mnrl``: its cached (GradCache) variant, for effective batches larger than memory allows.
- ``hardness``: ``MultipleNegativesRankingLoss`` with its hardness weighting (sentence-transformers >= 5.3):
  ``hardness_strength * stop_grad(cos)`` is added to the logits of the negatives ``hardness_mode`` selects, so
  the negatives the current model finds hard weigh more in the softmax.
- ``gist``: guided in-batch false-negative masking (``GISTEmbedLoss``, subclassed here as ``TextMaskedGISTLoss``):
  every in-batch or mined negative that the guide bi-encoder scores above ``positive - margin`` leaves the
  softmax, and so does every candidate whose text (the token ids the model reads) is the positive's text.
- ``batch-hard-triplet``: OHEM in its plain form (``HardestNegativeTripletLoss``, written here): per anchor,
  only the in-batch candidate with the highest cosine (other rows' positives, every mined negative) carries
  a margin loss against the positive.
- ``margin-mse``: distillation of the judge's margins ``positive_score - negative_score`` (the training
  views' ``label`` column) with sentence-transformers' ``MarginMSELoss``, alone or mixed with MNRL
  (``MarginMSEWithMNRL``).

Nothing here reads data or trains; ``mining_jobs.train`` calls ``check_settings`` while validating its
config and ``build_loss`` once the model is loaded.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .settings import ConfigError

LOSSES = ("mnrl", "cached-mnrl", "gist", "hardness", "batch-hard-triplet", "margin-mse")
HARDNESS_MODES = ("in_batch_negatives", "hard_negatives", "all_negatives")
GIST_MARGIN_STRATEGIES = ("absolute", "relative")
NEEDS_SCORES = ("margin-mse",)  # losses that read the judge's scores from the triples (the ``label`` column)
# The settings only one loss reads: they enter a training run's fingerprint only with that loss, so runs with
# the other losses keep the fingerprint (and the resumable folder) they had before these settings existed.
LOSS_FIELDS: dict[str, tuple[str, ...]] = {
    "gist": ("guide", "gist_margin", "gist_margin_strategy"),
    "hardness": ("hardness_mode", "hardness_strength"),
    "batch-hard-triplet": ("triplet_margin",),
    "margin-mse": ("margin_mse_weight",),
}


class LossError(ConfigError):
    """Bad loss settings; the message names the option."""


def needs_scores(loss: str) -> bool:
    """Whether ``loss`` trains on the judge's scores (the triples' ``positive_score`` and ``negative_scores``)."""
    return loss in NEEDS_SCORES


def unused_fields(loss: str) -> set[str]:
    """The loss-specific settings that ``loss`` does not read."""
    return {f for name, fields in LOSS_FIELDS.items() if name != loss for f in fields}


def loss_settings(cfg: Any) -> dict[str, Any]:
    """The loss and the settings it reads (for reports and benchmark keys)."""
    return {"loss": cfg.loss, **{f: getattr(cfg, f) for f in LOSS_FIELDS.get(cfg.loss, ())}}


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def check_settings(cfg: Any) -> None:
    """Refuse a bad loss name or loss settings (without loading anything); ``LossError`` names the option."""
    if cfg.loss not in LOSSES:
        raise LossError(f"--loss {cfg.loss!r}: expected one of {', '.join(LOSSES)}", field="loss")
    if cfg.loss == "gist":
        if cfg.gist_margin_strategy not in GIST_MARGIN_STRATEGIES:
            raise LossError(f"--gist-margin-strategy {cfg.gist_margin_strategy!r}: expected one of "
                            f"{', '.join(GIST_MARGIN_STRATEGIES)}", field="gist_margin_strategy")
        if not _finite(cfg.gist_margin):
            raise LossError(f"--gist-margin must be a finite number, got {cfg.gist_margin}", field="gist_margin")
        check_guide(cfg.guide)
    elif cfg.loss == "hardness":
        if cfg.hardness_mode not in HARDNESS_MODES:
            raise LossError(f"--hardness-mode {cfg.hardness_mode!r}: expected one of {', '.join(HARDNESS_MODES)}", field="hardness_mode")
        if not (_finite(cfg.hardness_strength) and cfg.hardness_strength > 0):
            raise LossError(f"--hardness-strength must be a positive number (0 would be plain mnrl), got "
                            f"{cfg.hardness_strength}", field="hardness_strength")
        if cfg.hardness_mode == "hard_negatives" and cfg.negatives < 1:
            raise LossError("--hardness-mode hard_negatives weights the mined negatives, but --negatives is 0; "
                            "give --negatives >= 1 or --hardness-mode in_batch_negatives / all_negatives", field="hardness_mode")
    elif cfg.loss == "batch-hard-triplet":
        if not (_finite(cfg.triplet_margin) and 0 <= cfg.triplet_margin <= 2):
            raise LossError(f"--triplet-margin is a cosine margin in [0, 2], got {cfg.triplet_margin}", field="triplet_margin")
    elif cfg.loss == "margin-mse":
        if cfg.negatives < 1:
            raise LossError("--loss margin-mse distils the judge's margins between the positive and the mined "
                            "negatives; give --negatives >= 1", field="loss")
        if not (_finite(cfg.margin_mse_weight) and 0 < cfg.margin_mse_weight <= 1):
            raise LossError(f"--margin-mse-weight must be in (0, 1] (1 = margin-mse alone; for mnrl alone use "
                            f"--loss mnrl), got {cfg.margin_mse_weight}", field="margin_mse_weight")


def check_guide(guide: str) -> None:
    """Refuse a GIST guide that is not a bi-encoder: a ``hardneg train-judge`` folder, a cross-fitted fold set
    or a cross-encoder folder (checked on disk, nothing is loaded)."""
    if not guide:
        raise LossError("--guide: name a bi-encoder (hub name or local path; 'default' = the packaged "
                        "all-MiniLM-L6-v2)", field="guide")
    p = Path(guide).expanduser()
    if not p.is_dir():
        return  # a hub name, or a path load_model reports
    why = None
    if (p / "judge.json").is_file():
        why = "a `hardneg train-judge` folder: the judge scores (query, document) pairs of the corpus it is bound to"
    elif (p / "folds.json").is_file():
        why = ("a cross-fitted fold set: each query has its own fold model, and GIST would need one guide for the "
               "whole batch")
    elif not (p / "modules.json").is_file() and (p / "config.json").is_file():
        try:
            archs = json.loads((p / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError):
            archs = []
        if any(str(a).endswith("ForSequenceClassification") for a in archs):
            why = "a cross-encoder: it scores (query, document) pairs and gives no embeddings"
    if why:
        raise LossError(f"--guide {guide}: {why}. GIST's guide must be a bi-encoder (a SentenceTransformer that "
                        "embeds queries, positives and negatives, whose cosines decide what is masked). Give a "
                        "bi-encoder (default: the packaged all-MiniLM-L6-v2), or learn from the judge's scores "
                        "with --loss margin-mse", field="guide")


# ---------------------------------------------------------------------------------------------- building


def load_guide(name: str):
    """The GIST guide bi-encoder through the project's loader, frozen and in eval mode (no dropout)."""
    from retriever.encoder import load_model

    check_guide(name)
    guide = load_model(name)
    guide.eval()
    guide.requires_grad_(False)
    return guide


def build_loss(cfg: Any, model, guide=None):
    """The sentence-transformers loss module of ``cfg.loss`` for ``model``.

    ``cfg``: a ``TrainConfig`` (or anything with its loss fields); ``guide``: an already loaded guide
    bi-encoder for ``gist`` (default: ``cfg.guide`` loaded with ``load_model``).
    """
    from sentence_transformers import losses

    check_settings(cfg)
    if cfg.loss == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, scale=cfg.scale)
    if cfg.loss == "cached-mnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, scale=cfg.scale, mini_batch_size=cfg.mini_batch_size,
                                                         show_progress_bar=False)
    if cfg.loss == "hardness":
        return losses.MultipleNegativesRankingLoss(model, scale=cfg.scale, hardness_mode=cfg.hardness_mode,
                                                   hardness_strength=cfg.hardness_strength)
    ours = _classes()
    if cfg.loss == "gist":
        guide = guide if guide is not None else load_guide(cfg.guide)
        return ours["TextMaskedGISTLoss"](model, guide, temperature=1.0 / cfg.scale,
                                          margin_strategy=cfg.gist_margin_strategy, margin=cfg.gist_margin,
                                          contrast_anchors=False, contrast_positives=False)
    if cfg.loss == "batch-hard-triplet":
        return ours["HardestNegativeTripletLoss"](model, margin=cfg.triplet_margin)
    if cfg.margin_mse_weight >= 1.0:
        return losses.MarginMSELoss(model, similarity_fct=scaled_cosine(cfg.scale))
    return ours["MarginMSEWithMNRL"](model, scale=cfg.scale, weight=cfg.margin_mse_weight)


# ---------------------------------------------------------------------------------------------- helpers


def pairwise_scaled_cos(a, b, scale: float = 1.0):
    """``scale * cos(a_i, b_i)`` per row."""
    import torch.nn.functional as F

    return scale * F.cosine_similarity(a, b, dim=-1)


def scaled_cosine(scale: float):
    """The student's score for ``MarginMSELoss``: ``scale * cosine``, so that its margins live on the scale of the
    judge's logit margins (a normalised bi-encoder's dot product would cap them at 2)."""
    return functools.partial(pairwise_scaled_cos, scale=float(scale))


def column_text_ids(features: Sequence[dict[str, Any]]):
    """Per column of a batch, one integer per row naming its text: equal ids = equal token sequences (the text
    as the model reads it: after the prompt, the tokenizer's normalisation and truncation). Ids are shared
    across columns, so a negative that repeats the positive's text gets the positive's id."""
    import torch

    table: dict[tuple[int, ...], int] = {}
    out = []
    for f in features:
        ids = f["input_ids"]
        if "cu_seq_lens_q" in f:  # a flattened (padding-free) batch: rows are slices of one sequence
            flat = ids.reshape(-1).tolist()
            bounds = f["cu_seq_lens_q"].tolist()
            seqs = [tuple(flat[s:e]) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
        else:
            mask = f.get("attention_mask")
            seqs = [tuple((row[m.bool()] if mask is not None else row).tolist())
                    for row, m in zip(ids, mask if mask is not None else ids, strict=True)]
        out.append(torch.tensor([table.setdefault(s, len(table)) for s in seqs], dtype=torch.long,
                                device=ids.device))
    return out


def _embed(model, features: list[dict[str, Any]]):
    from sentence_transformers.base.losses.merged_forward import embed_columns

    return embed_columns(model, features)


_LAZY = ("TextMaskedGISTLoss", "HardestNegativeTripletLoss", "MarginMSEWithMNRL")


def __getattr__(name: str):
    """The loss classes, defined on first use: they subclass torch / sentence-transformers classes, and importing
    those for every ``hardneg`` command (``--help`` included) would cost seconds."""
    if name in _LAZY:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _classes() -> dict[str, type]:
    import torch
    import torch.nn.functional as F
    from sentence_transformers import losses
    from torch import nn

    class TextMaskedGISTLoss(losses.GISTEmbedLoss):
        """``GISTEmbedLoss`` for (anchor, positive, negative_1 .. negative_n) with duplicates masked by text.

        Like sentence-transformers' GIST, a candidate (another row's positive, any mined negative; with
        ``contrast_anchors`` / ``contrast_positives`` also the other anchors / positives) leaves the softmax when the
        guide scores it above the anchor's positive: ``guide(a, c) > guide(a, p) - margin`` ("absolute") or
        ``> guide(a, p) - |guide(a, p)| * margin`` ("relative"). Two differences:

        - a candidate whose text is the positive's text is masked too, whatever the guide says: the guide scores an
          exact duplicate *equal* to the positive (not above it), so at margin 0 GIST keeps it as a negative, and
          with padding or dropout the tie falls either way;
        - any number of mined negatives (sentence-transformers' GIST takes at most one).
        """

        def forward(self, sentence_features: Iterable[dict[str, Any]], labels=None):
            features = list(sentence_features)
            text_ids = column_text_ids(features)
            guide_features = [dict(f) for f in features]  # before the model's forward adds its outputs to the dicts
            embeddings = _embed(self.model, features)
            guide_embeddings = self.guide_embeddings(guide_features)
            return self.loss_from_embeddings(embeddings, guide_embeddings, text_ids)

        def guide_embeddings(self, features: list[dict[str, Any]]):
            """The guide's embeddings of every column (re-tokenised when the guide's vocabulary differs)."""
            from sentence_transformers.util import batch_to_device

            with torch.no_grad():
                if self.must_retokenize:
                    retok = []
                    for f in features:
                        decoded = self.tokenizer.batch_decode(f["input_ids"], skip_special_tokens=True)
                        retok.append(batch_to_device(self.guide.preprocess(decoded), self.guide.device))
                    features = retok
                return _embed(self.guide, features)

        def _threshold(self, guided_pos):
            if self.margin_strategy == "absolute":
                return guided_pos - self.margin
            return guided_pos - guided_pos.abs() * self.margin

        def candidate_mask(self, guide_embeddings, text_ids):
            """Boolean (batch, batch * (1 + negatives)): True where a candidate of the anchor-document block (the
            positives of every row, then each negative column) leaves the softmax. The own positive is never
            masked."""
            anchor_g, docs_g = guide_embeddings[0], torch.cat(list(guide_embeddings[1:]), dim=0)
            bs = anchor_g.size(0)
            rows = torch.arange(bs, device=anchor_g.device)
            guided = self.sim_matrix(anchor_g, docs_g)
            mask = guided > self._threshold(guided[rows, rows].view(-1, 1))
            if text_ids is not None:
                doc_ids = torch.cat(list(text_ids[1:]), dim=0)
                mask |= doc_ids.view(1, -1) == text_ids[1].view(-1, 1)
            mask[rows, rows] = False
            return mask

        def loss_from_embeddings(self, embeddings, guide_embeddings, text_ids=None):
            if len(embeddings) < 2:
                raise ValueError(f"gist: expected (anchor, positive, negatives...) columns, got {len(embeddings)}")
            anchor, docs = embeddings[0], torch.cat(list(embeddings[1:]), dim=0)
            positive = embeddings[1]
            bs = anchor.size(0)
            rows = torch.arange(bs, device=anchor.device)
            scores = [self.sim_matrix(anchor, docs).masked_fill(self.candidate_mask(guide_embeddings, text_ids),
                                                                 -torch.inf)]
            anchor_g, positive_g = guide_embeddings[0], guide_embeddings[1]
            guided_pos = self.sim_matrix(anchor_g, positive_g)[rows, rows].view(-1, 1)
            same = torch.eye(bs, dtype=torch.bool, device=anchor.device)
            if self.contrast_anchors:
                mask = self.sim_matrix(anchor_g, anchor_g) > self._threshold(guided_pos)
                if text_ids is not None:
                    mask |= (text_ids[0].view(1, -1) == text_ids[0].view(-1, 1))
                    mask |= (text_ids[0].view(1, -1) == text_ids[1].view(-1, 1))
                scores.append(self.sim_matrix(anchor, anchor).masked_fill(mask | same, -torch.inf))
            if self.contrast_positives:
                mask = self.sim_matrix(positive_g, positive_g) > self._threshold(guided_pos)
                if text_ids is not None:
                    mask |= (text_ids[1].view(1, -1) == text_ids[1].view(-1, 1))
                scores.append(self.sim_matrix(positive, positive).masked_fill(mask | same, -torch.inf))
            logits = torch.cat(scores, dim=1) / self.temperature
            return self.cross_entropy_loss(logits, rows)

        def get_config_dict(self) -> dict[str, Any]:
            return {**super().get_config_dict(), "mask_duplicate_texts": True}

    class HardestNegativeTripletLoss(nn.Module):
        """OHEM in its plain form: per anchor, only the hardest in-batch negative carries a margin loss.

        Candidates of anchor ``i``: the positives of the other rows and every mined negative of every row, minus any
        whose text is anchor ``i``'s positive's text. The hardest is the candidate with the highest cosine to the
        anchor; the loss is ``mean_i max(0, margin - cos(a_i, p_i) + cos(a_i, hardest_i))`` over the anchors that
        have a candidate, so the gradient reaches the positive and that one negative only.
        (sentence-transformers' ``BatchHardTripletLoss`` needs class labels per text; retrieval pairs have none.)
        """

        def __init__(self, model, margin: float = 0.2) -> None:
            super().__init__()
            self.model = model
            self.margin = float(margin)

        def forward(self, sentence_features: Iterable[dict[str, Any]], labels=None):
            features = list(sentence_features)
            text_ids = column_text_ids(features)
            return self.loss_from_embeddings(_embed(self.model, features), text_ids)

        def hardest(self, embeddings, text_ids=None):
            """``(cos(a_i, p_i), cos(a_i, hardest_i), index of hardest_i)``; the index counts the candidates as
            [positives of rows 0..B-1, negative_1 of rows 0..B-1, ...]; -inf (and index 0) where a row has none."""
            anchor = F.normalize(embeddings[0], dim=-1)
            docs = F.normalize(torch.cat(list(embeddings[1:]), dim=0), dim=-1)
            sim = anchor @ docs.T
            bs = anchor.size(0)
            rows = torch.arange(bs, device=anchor.device)
            mask = torch.zeros_like(sim, dtype=torch.bool)
            mask[rows, rows] = True
            if text_ids is not None:
                doc_ids = torch.cat(list(text_ids[1:]), dim=0)
                mask |= doc_ids.view(1, -1) == text_ids[1].view(-1, 1)
            hard, idx = sim.masked_fill(mask, -torch.inf).max(dim=1)
            return sim[rows, rows], hard, idx

        def loss_from_embeddings(self, embeddings, text_ids=None):
            pos, hard, _ = self.hardest(embeddings, text_ids)
            valid = torch.isfinite(hard)
            if not bool(valid.any()):
                return (pos * 0.0).sum()  # no candidate in the batch: zero loss, still attached to the graph
            return torch.relu(self.margin - pos[valid] + hard[valid]).mean()

        def get_config_dict(self) -> dict[str, Any]:
            return {"margin": self.margin, "similarity": "cosine", "negatives": "hardest in batch"}

    class MarginMSEWithMNRL(nn.Module):
        """``(1 - weight) * MNRL + weight * MarginMSE`` on one forward pass: the in-batch ranking objective plus the
        distillation of the judge's margins (the ``label`` column), the student scoring ``scale * cosine``."""

        def __init__(self, model, scale: float = 20.0, weight: float = 0.5) -> None:
            super().__init__()
            self.model = model
            self.weight = float(weight)
            self.mnrl = losses.MultipleNegativesRankingLoss(model, scale=scale)
            self.margin_mse = losses.MarginMSELoss(model, similarity_fct=scaled_cosine(scale))

        def forward(self, sentence_features: Iterable[dict[str, Any]], labels):
            embeddings = _embed(self.model, list(sentence_features))
            return self.loss_from_embeddings(embeddings, labels)

        def loss_from_embeddings(self, embeddings, labels):
            return ((1.0 - self.weight) * self.mnrl.compute_loss_from_embeddings(embeddings, labels)
                    + self.weight * self.margin_mse.compute_loss_from_embeddings(embeddings, labels))

        def get_config_dict(self) -> dict[str, Any]:
            return {"weight": self.weight, "mnrl": self.mnrl.get_config_dict(),
                    "margin_mse": self.margin_mse.get_config_dict()}

    found = {"TextMaskedGISTLoss": TextMaskedGISTLoss, "HardestNegativeTripletLoss": HardestNegativeTripletLoss,
             "MarginMSEWithMNRL": MarginMSEWithMNRL}
    for name, cls in found.items():
        cls.__qualname__ = name
    return found
