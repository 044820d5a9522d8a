"""The losses of `hardneg train --loss` (mining_jobs.losses) on tiny random models: every loss back-propagates
into the model; GIST masks exactly the candidates its guide scores above the margin plus the exact duplicates
of the positive's text; batch-hard picks the highest-scored negative and only that one carries the loss;
margin-mse is zero when the student's margins are the judge's; the judge's margins reach the training views as
a ``label`` column; a bad loss name or a loss without the scores it needs fails before any model loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mining_jobs import losses as L
from mining_jobs.cli import build_parser, main
from mining_jobs.config import ConfigError
from mining_jobs.iterate import load_loop_config
from mining_jobs.runfolder import fingerprint
from mining_jobs.train import TrainConfig, TrainError, load_examples, run_training
from retriever.small_models import build_small_bi_encoder

pytest_plugins = ("mining_fixtures",)  # tiny_bi_encoder, tiny_cross_encoder, torch_one_thread

QUERIES = ["what causes tides", "how do vaccines work", "why is the sky blue", "what is a black hole"]
POSITIVES = ["the moon's gravity pulls the oceans", "vaccines train the immune system",
             "rayleigh scattering of sunlight", "a region where gravity traps light"]
NEGATIVES = [["tidal pools hold small crabs", "ocean liners cross the atlantic"],
             ["the flu season peaks in winter", "antibiotics kill bacteria"],
             ["blue paint is made of pigments", "sunsets look red"],
             ["black paint absorbs light", "stars burn hydrogen"]]


@pytest.fixture(scope="module")
def models(tiny_bi_encoder, tmp_path_factory, torch_one_thread):
    """The student (the tiny bi-encoder, seed 0) and a guide (another tiny bi-encoder, seed 1), in eval mode."""
    from sentence_transformers import SentenceTransformer

    guide_dir = build_small_bi_encoder(tmp_path_factory.mktemp("guide") / "model", hidden=32, layers=2,
                                       max_seq_length=64, seed=1)
    student = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    guide = SentenceTransformer(str(guide_dir), device="cpu")
    student.eval()
    guide.eval()
    return student, guide, guide_dir


def columns(negatives: list[list[str]] = NEGATIVES, n: int = 2) -> list[list[str]]:
    return [QUERIES, POSITIVES, *([row[j] for row in negatives] for j in range(n))]


def features(model, cols: list[list[str]]) -> list[dict]:
    return [model.tokenize(c) for c in cols]


def embed(model, cols: list[list[str]]):
    """Each column embedded on its own forward (not the losses' merged forward)."""
    import torch

    with torch.no_grad():
        return [model(dict(f))["sentence_embedding"] for f in features(model, cols)]


def cos_matrix(a, b):
    import torch.nn.functional as F

    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


# ---------------------------------------------------------------------------------------------- choices


def test_every_loss_is_a_choice_of_the_cli_and_nothing_else():
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    loss_opt = sub.choices["train"]._option_string_actions["--loss"]
    assert L.LOSSES == ("mnrl", "cached-mnrl", "gist", "hardness", "batch-hard-triplet", "margin-mse")
    assert loss_opt.metavar == "{" + ",".join(L.LOSSES) + "}"  # --help lists them; TrainConfig enforces them
    mode = sub.choices["train"]._option_string_actions["--hardness-mode"]
    assert mode.metavar == "{in_batch_negatives,hard_negatives,all_negatives}"


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("loss", L.LOSSES)
def test_gradients_flow_into_the_model_for_each_loss(models, loss):
    import torch

    student, guide, _ = models
    cfg = TrainConfig(triples="x", loss=loss, negatives=2, triplet_margin=1.0, mini_batch_size=2)
    module = L.build_loss(cfg, student, guide=guide)
    student.zero_grad(set_to_none=True)
    labels = torch.tensor([[3.0, 5.0], [1.0, 2.0], [4.0, -1.0], [2.0, 2.5]]) if loss == "margin-mse" else None
    value = module(features(student, columns()), labels)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, f"{loss}: no gradient reached the model"
    # the encoder's own layers are trained, not only the embeddings
    layer = [p.grad for n, p in student.named_parameters() if "encoder.layer.0" in n]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in layer)
    assert all(p.grad is None for p in guide.parameters())  # the guide is frozen


def test_the_losses_are_the_sentence_transformers_ones_where_they_fit(models):
    from sentence_transformers import losses

    student, guide, _ = models
    build = lambda **kw: L.build_loss(TrainConfig(triples="x", **kw), student, guide=guide)  # noqa: E731
    assert type(build(loss="mnrl")) is losses.MultipleNegativesRankingLoss
    assert type(build(loss="cached-mnrl")) is losses.CachedMultipleNegativesRankingLoss
    h = build(loss="hardness", hardness_mode="hard_negatives", hardness_strength=7.0, negatives=1)
    assert type(h) is losses.MultipleNegativesRankingLoss
    assert (h.hardness_mode, h.hardness_strength) == ("hard_negatives", 7.0)
    g = build(loss="gist", gist_margin=0.1, gist_margin_strategy="relative", scale=25.0)
    assert isinstance(g, losses.GISTEmbedLoss) and g.guide is guide
    assert (g.margin, g.margin_strategy, g.temperature) == (0.1, "relative", pytest.approx(1 / 25.0))
    assert type(build(loss="margin-mse")) is losses.MarginMSELoss
    assert type(build(loss="margin-mse", margin_mse_weight=0.4)).__name__ == "MarginMSEWithMNRL"


# ---------------------------------------------------------------------------------------------- gist


def _guide_margins(guide, cols):
    """Per anchor, ``guide(a, c) - guide(a, p)`` for every candidate (all positives, then each negative column),
    from the guide's own ``encode``."""
    emb = [guide.encode(c, convert_to_tensor=True) for c in cols]
    import torch

    sims = cos_matrix(emb[0], torch.cat(emb[1:]))
    pos = sims.diagonal()[:, None]
    return (sims - pos).numpy()


def test_gist_masks_exactly_the_candidates_the_guide_scores_above_the_margin_and_the_planted_duplicate(models):
    import torch

    student, guide, _ = models
    negs = [list(r) for r in NEGATIVES]
    negs[2][0] = POSITIVES[0]  # planted: row 2's first negative is row 0's positive, word for word
    cols = columns(negs)
    bs, n_cand = len(QUERIES), 3 * len(QUERIES)
    dup = np.zeros((bs, n_cand), dtype=bool)
    dup[0, bs + 2] = True  # for anchor 0, candidate "negative_1 of row 2" repeats its positive's text
    own = np.eye(bs, n_cand, dtype=bool)
    d = _guide_margins(guide, cols)
    assert abs(d[0, bs + 2]) < 1e-4  # the guide scores the duplicate like the positive: not above it

    # a margin between two of the guide's scores, far from every one of them, so some candidates are masked
    vals = np.sort(d[~own & ~dup])
    gaps = np.diff(vals)
    lo = len(vals) // 4
    k = lo + int(np.argmax(gaps[lo:3 * lo]))
    cut = (vals[k] + vals[k + 1]) / 2
    assert gaps[k] > 2e-3
    module = L.build_loss(TrainConfig(triples="x", loss="gist", negatives=2, gist_margin=float(-cut)), student,
                          guide=guide)
    feats = features(student, cols)
    text_ids = L.column_text_ids(feats)
    guide_emb = module.guide_embeddings([dict(f) for f in feats])
    mask = module.candidate_mask(guide_emb, text_ids).numpy()
    expected = ((d > cut) | dup) & ~own
    assert 0 < (expected & ~dup).sum() < (~own & ~dup).sum()  # the guide masks some candidates, not all
    assert (mask == expected).all(), np.argwhere(mask != expected)

    # a margin above every guide score: the guide masks nothing, the text rule still drops the duplicate
    high = float(d[~own].max()) + 0.05
    module = L.build_loss(TrainConfig(triples="x", loss="gist", negatives=2, gist_margin=-high), student,
                          guide=guide)
    mask = module.candidate_mask(guide_emb, text_ids).numpy()
    assert (mask == dup).all() and mask[0, bs + 2]

    # and the loss is the softmax cross-entropy over exactly the unmasked candidates
    emb = embed(student, cols)
    logits = cos_matrix(emb[0], torch.cat(emb[1:])) / module.temperature
    want = torch.nn.functional.cross_entropy(logits.masked_fill(torch.from_numpy(dup), -torch.inf), torch.arange(bs))
    with torch.no_grad():
        got = module(features(student, cols), None)
    assert got.item() == pytest.approx(want.item(), rel=1e-4)
    kept = torch.nn.functional.cross_entropy(logits, torch.arange(bs))
    assert abs(kept.item() - got.item()) > 1e-3  # keeping the duplicate would change the loss


def test_text_ids_name_equal_texts_across_columns(models):
    student, _, _ = models
    ids = L.column_text_ids(features(student, [["a b", "c d", "a b"], ["c d", "e f", "a b c"]]))
    assert ids[0].tolist() == [0, 1, 0]
    assert ids[1].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- batch-hard


def test_batch_hard_picks_the_highest_scored_negative_and_only_it_carries_the_loss(models):
    import math

    import torch

    student, _, _ = models
    module = L.build_loss(TrainConfig(triples="x", loss="batch-hard-triplet", triplet_margin=0.3), student)

    def unit(deg: float) -> list[float]:
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    # 3 rows in the plane, candidates ordered [p0, p1, p2, n0, n1, n2]; the anchors at 0, 120 and 240 degrees
    anchors = torch.tensor([unit(0), unit(120), unit(240)])
    positives = torch.tensor([unit(60), unit(150), unit(280)], requires_grad=True)
    negatives = torch.tensor([unit(190), unit(10), unit(255)], requires_grad=True)
    # anchor 0: p1 150, p2 280, n0 190, n1 10, n2 255 -> hardest n1 (index 4), 10 degrees away
    # anchor 1 (120): p0 60, p2 280, n0 190, n1 10, n2 255 -> hardest row 0's positive p0 (index 0), 60 away
    # anchor 2 (240): p0 60, p1 150, n0 190, n1 10, n2 255 -> hardest its own n2 (index 5), 15 away
    pos, hard, idx = module.hardest([anchors, positives, negatives])
    assert idx.tolist() == [4, 0, 5]
    want_hard = [math.cos(math.radians(a)) for a in (10, 60, 15)]
    assert hard.tolist() == pytest.approx(want_hard, abs=1e-6)
    loss = module.loss_from_embeddings([anchors, positives, negatives])
    terms = [max(0.0, 0.3 - math.cos(math.radians(a)) + h) for a, h in zip((60, 30, 40), want_hard, strict=True)]
    assert terms[0] > 0 and terms[1] == 0 and terms[2] > 0
    assert loss.item() == pytest.approx(sum(terms) / 3, abs=1e-6)
    loss.backward()
    # the gradient reaches the hardest negatives of rows 0 and 2 (their hinges are active) and their positives;
    # nothing reaches n0 (never the hardest) or p1 (row 1's hinge is inactive, and p1 is nobody's hardest)
    assert float(negatives.grad[0].abs().sum()) == 0.0 and float(positives.grad[1].abs().sum()) == 0.0
    assert float(negatives.grad[1].abs().sum()) > 0 and float(negatives.grad[2].abs().sum()) > 0
    assert float(positives.grad[0].abs().sum()) > 0 and float(positives.grad[2].abs().sum()) > 0

    # a negative that repeats the positive's text is not a negative: the next hardest is picked
    ids = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 3, 8])]  # n1 = p0's text
    _, hard2, idx2 = module.hardest([anchors, positives.detach(), negatives.detach()], ids)
    assert idx2.tolist()[0] != 4 and idx2.tolist()[0] == 2  # anchor 0: n1 dropped, next is p2 (280 = -80)
    assert idx2.tolist()[1:] == [0, 5]


def test_batch_hard_without_candidates_gives_a_zero_loss_attached_to_the_graph(models):
    import torch

    student, _, _ = models
    module = L.build_loss(TrainConfig(triples="x", loss="batch-hard-triplet"), student)
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = module.loss_from_embeddings([a, torch.tensor([[0.0, 1.0]])])
    assert loss.item() == 0.0 and loss.requires_grad


# ---------------------------------------------------------------------------------------------- margin-mse


def _student_margins(student, cols, scale: float):
    import torch

    emb = embed(student, cols)
    pos = torch.nn.functional.cosine_similarity(emb[0], emb[1])
    return torch.stack([scale * (pos - torch.nn.functional.cosine_similarity(emb[0], n)) for n in emb[2:]], dim=1)


def test_margin_mse_is_zero_when_the_students_margins_are_the_judges(models):
    import torch

    student, _, _ = models
    cols = columns()
    module = L.build_loss(TrainConfig(triples="x", loss="margin-mse", negatives=2, scale=20.0), student)
    margins = _student_margins(student, cols, 20.0)
    assert float(margins.abs().min()) > 1e-3  # not trivially zero
    with torch.no_grad():
        assert module(features(student, cols), margins).item() < 1e-8
        # the same margins off by 0.5 each: mean squared error 0.25
        assert module(features(student, cols), margins + 0.5).item() == pytest.approx(0.25, rel=1e-3)
        # pos - neg scores (n + 1 columns) are read as margins too, as sentence-transformers documents
        scores = torch.cat([margins[:, :1] * 0 + 7.0, 7.0 - margins], dim=1)
        assert module(features(student, cols), scores).item() < 1e-8


def test_margin_mse_with_mnrl_is_the_weighted_sum(models):
    import torch

    student, _, _ = models
    cols = columns()
    labels = torch.tensor([[3.0, 5.0], [1.0, 2.0], [4.0, -1.0], [2.0, 2.5]])
    cfg = TrainConfig(triples="x", loss="margin-mse", negatives=2)
    with torch.no_grad():
        mse = L.build_loss(cfg, student)(features(student, cols), labels).item()
        mnrl = L.build_loss(dataclasses.replace(cfg, loss="mnrl"), student)(features(student, cols), None).item()
        mixed = L.build_loss(dataclasses.replace(cfg, margin_mse_weight=0.25), student)(features(student, cols),
                                                                                      labels).item()
    assert mixed == pytest.approx(0.75 * mnrl + 0.25 * mse, rel=1e-4)
    assert abs(mixed - mse) > 1e-3 and abs(mixed - mnrl) > 1e-3


# ---------------------------------------------------------------------------------------------- data columns


def _triples(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("positive", pa.string()),
                        ("positive_score", pa.float32()), ("negatives", pa.list_(pa.string())),
                        ("negative_scores", pa.list_(pa.float32()))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _row(i: int, pos_score, neg_scores) -> dict:
    return {"query_id": f"q{i}", "query": QUERIES[i % 4] + f" {i}", "positive": POSITIVES[i % 4] + f" {i}",
            "positive_score": pos_score, "negatives": [t + f" {i}" for t in NEGATIVES[i % 4]],
            "negative_scores": neg_scores}


def test_margin_mse_gets_a_label_column_of_judge_margins(tmp_path):
    short = _row(3, 4.0, [1.0])
    short["negatives"] = short["negatives"][:1]
    path = _triples(tmp_path / "t.parquet", [_row(0, 2.0, [0.5, -1.0]), _row(1, None, []), _row(2, 1.5, [3.0, 1.0]),
                                              short])
    data, info = load_examples(str(path), 2, "margin-mse")
    assert data["label"] == [[1.5, 3.0], [-1.5, 0.5]]
    assert data["query"] == [QUERIES[0] + " 0", QUERIES[2] + " 2"]
    assert info["rows"] == 2 and info["rows_dropped_no_scores"] == 1 and info["rows_dropped_few_negatives"] == 1
    one, _ = load_examples(str(path), 1, "margin-mse")
    assert one["label"] == [[1.5], [-1.5], [3.0]]
    plain, info = load_examples(str(path), 2, "mnrl")  # no label column for the losses that do not read it
    assert "label" not in plain and info["rows"] == 3


@pytest.mark.parametrize("loss", [x for x in L.LOSSES if x != "margin-mse"])
def test_hardneg_train_runs_each_loss(tmp_path, models, tiny_bi_encoder, monkeypatch, capsys, loss):
    monkeypatch.setenv("WANDB_DISABLED", "true")
    _, _, guide_dir = models
    path = _triples(tmp_path / "t.parquet", [_row(i, None, []) for i in range(8)])
    out = tmp_path / "out"
    rc = main(["-q", "train", "--triples", str(path), "--out", str(out), "--base-model", str(tiny_bi_encoder),
               "--loss", loss, "--guide", str(guide_dir), "--negatives", "1", "--batch-size", "4", "--max-steps", "2",
               "--max-seq-length", "32", "--lr", "1e-3", "--bf16", "off", "--mini-batch-size", "2",
               "--triplet-margin", "1.0"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "metrics.json").read_text())
    assert s["steps"] == 2 and s["config"]["loss"] == loss
    assert s["train_loss"] is not None and np.isfinite(s["train_loss"]) and s["train_loss"] > 0


def test_margin_mse_trains_from_the_label_column_through_the_trainer(tmp_path, tiny_bi_encoder, torch_one_thread,
                                                                   monkeypatch):
    monkeypatch.setenv("WANDB_DISABLED", "true")
    path = _triples(tmp_path / "t.parquet", [_row(i, 3.0, [1.0 - i / 8, -2.0]) for i in range(8)])
    s = run_training(TrainConfig(triples=str(path), out=str(tmp_path / "out"), base_model=str(tiny_bi_encoder),
                                 loss="margin-mse", negatives=2, margin_mse_weight=0.5, batch_size=4, max_steps=2,
                                 max_seq_length=32, lr=1e-3, bf16="off"))
    assert s["steps"] == 2 and s["data"]["rows_dropped_no_scores"] == 0
    assert s["train_loss"] is not None and np.isfinite(s["train_loss"]) and s["train_loss"] > 0


# ---------------------------------------------------------------------------------------------- errors


def _no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr("mining_jobs.train.load_model", refuse)
    monkeypatch.setattr("retriever.encoder.load_model", refuse)


def test_a_bad_loss_name_is_refused_naming_the_option_and_the_choices(tmp_path, monkeypatch, capsys):
    _no_model_loads(monkeypatch)
    path = _triples(tmp_path / "t.parquet", [_row(0, 2.0, [0.5, -1.0])])
    want = "--loss 'focal': expected one of mnrl, cached-mnrl, gist, hardness, batch-hard-triplet, margin-mse"
    with pytest.raises(TrainError) as err:
        run_training(TrainConfig(triples=str(path), out=str(tmp_path / "out"), loss="focal"))
    assert str(err.value) == want
    assert not (tmp_path / "out").exists()
    assert main(["-q", "train", "--triples", str(path), "--out", str(tmp_path / "out"), "--loss", "focal"]) == 2
    assert want in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError) as cerr:  # the ANCE config's [train] table, before any round mines
        load_loop_config(None, ['train.loss="focal"'], out=str(tmp_path / "loop"))
    assert cerr.value.field == "train.loss"
    assert str(cerr.value) == "train.loss " + want.removeprefix("--loss ")  # the loop names its table's key


def test_margin_mse_on_triples_without_judge_scores_fails_before_any_model_loads(tmp_path, monkeypatch):
    _no_model_loads(monkeypatch)
    # what `hardneg mine` writes without a cross-encoder: null positive_score, empty negative_scores
    path = _triples(tmp_path / "mined" / "triples.parquet", [_row(i, None, []) for i in range(4)])
    with pytest.raises(TrainError, match=r"^--loss margin-mse learns from the judge's scores, but the triples .* "
                                         r"have none \(no row with a positive_score and 1 negative_scores\)"):
        run_training(TrainConfig(triples=str(path.parent), out=str(tmp_path / "out"), loss="margin-mse"))
    assert not (tmp_path / "out").exists()
    st = tmp_path / "st.parquet"  # the sentence-transformers miner's format: no score columns at all
    pq.write_table(pa.table({"query": QUERIES, "positive": POSITIVES, "negative_1": [r[0] for r in NEGATIVES]}), st)
    with pytest.raises(TrainError, match=r"no positive_score / negative_scores column"):
        run_training(TrainConfig(triples=str(st), out=str(tmp_path / "out"), loss="margin-mse"))
    # the other losses train on the same triples
    data, _ = load_examples(str(path.parent), 1, "gist")
    assert len(data["query"]) == 4
    with pytest.raises(ConfigError, match="mine.cross_encoder.model") as cerr:  # the loop: no judge configured
        load_loop_config(None, ['train.loss="margin-mse"'], out=str(tmp_path / "loop"))
    assert cerr.value.field == "train.loss"


@pytest.mark.parametrize(("settings", "msg"), [
    ({"loss": "hardness", "hardness_mode": "hard_negatives", "negatives": 0}, "--hardness-mode hard_negatives"),
    ({"loss": "hardness", "hardness_mode": "sometimes"}, "--hardness-mode 'sometimes': expected one of"),
    ({"loss": "hardness", "hardness_strength": 0.0}, "--hardness-strength must be a positive number"),
    ({"loss": "margin-mse", "margin_mse_weight": 0.0}, r"--margin-mse-weight must be in \(0, 1\]"),
    ({"loss": "margin-mse", "negatives": 0}, "--loss margin-mse .* give --negatives >= 1"),
    ({"loss": "gist", "gist_margin_strategy": "both"}, "--gist-margin-strategy 'both'"),
    ({"loss": "gist", "gist_margin": float("nan")}, "--gist-margin must be a finite number"),
    ({"loss": "batch-hard-triplet", "triplet_margin": -0.1}, r"--triplet-margin is a cosine margin in \[0, 2\]"),
])
def test_bad_loss_settings_name_the_option(settings, msg):
    with pytest.raises(TrainError, match=msg):
        TrainConfig(triples="x", **settings).validate()


def test_a_judge_or_a_cross_encoder_cannot_guide_gist(tmp_path, tiny_cross_encoder, monkeypatch):
    _no_model_loads(monkeypatch)
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "judge.json").write_text(json.dumps({"features": ["ce"]}))
    with pytest.raises(TrainError, match=r"^--guide .*judge: a `hardneg train-judge` folder.*must be a bi-encoder"):
        TrainConfig(triples="x", loss="gist", guide=str(judge)).validate()
    with pytest.raises(TrainError, match=r"^--guide .*: a cross-encoder"):
        TrainConfig(triples="x", loss="gist", guide=str(tiny_cross_encoder)).validate()
    TrainConfig(triples="x", loss="mnrl", guide=str(judge)).validate()  # only gist reads the guide


# ---------------------------------------------------------------------------------------------- config plumbing


def test_loss_settings_enter_fingerprints_only_with_their_loss(tmp_path):
    base = TrainConfig(triples=str(tmp_path / "none.parquet"))
    old = {k: v for k, v in dataclasses.asdict(base).items()
           if k not in ("out", "overwrite", "save_total_limit", "guide", "gist_margin", "gist_margin_strategy",
                        "hardness_mode", "hardness_strength", "triplet_margin", "margin_mse_weight",
                        "device")}  # device: added later, never in fingerprints
    assert base.fingerprint() == fingerprint(old)  # mnrl runs keep the fingerprint they had before --loss grew
    assert dataclasses.replace(base, gist_margin=0.3).fingerprint() == base.fingerprint()
    gist = dataclasses.replace(base, loss="gist")
    assert dataclasses.replace(gist, gist_margin=0.3).fingerprint() != gist.fingerprint()
    assert dataclasses.replace(gist, hardness_strength=1.0).fingerprint() == gist.fingerprint()


def test_the_ance_config_passes_the_loss_settings_to_training(tmp_path):
    cfg = load_loop_config(None, ['train.loss="gist"', "train.gist_margin=0.05", 'train.guide="default"'],
                           out=str(tmp_path / "loop"))
    assert (cfg.train.loss, cfg.train.gist_margin, cfg.train.guide) == ("gist", 0.05, "default")
    mnrl = load_loop_config(None, [], out=str(tmp_path / "loop"))
    other = load_loop_config(None, ["train.gist_margin=0.05"], out=str(tmp_path / "loop"))
    assert mnrl.fingerprint() == other.fingerprint() != cfg.fingerprint()


def test_the_service_validates_the_loss_through_train_config(tmp_path):
    kinds = pytest.importorskip("mining_jobs.service.kinds")
    path = _triples(tmp_path / "t.parquet", [_row(0, 2.0, [0.5, -1.0])])
    conf = kinds.resolve("train", {"triples": str(path), "loss": "hardness", "hardness_strength": 9.0,
                                   "hardness_mode": "in_batch_negatives"})
    assert (conf["loss"], conf["hardness_strength"], conf["hardness_mode"]) == ("hardness", 9.0, "in_batch_negatives")
    for raw, field in (({"loss": "focal"}, "loss"), ({"loss": "hardness", "hardness_mode": "x"}, "hardness_mode"),
                       ({"loss": "margin-mse", "margin_mse_weight": 2.0}, "margin_mse_weight")):
        with pytest.raises(ConfigError) as err:
            kinds.resolve("train", {"triples": str(path), **raw})
        assert err.value.field == field, str(err.value)
    with pytest.raises(ConfigError) as err:
        kinds.resolve("iterate", {"train": {"loss": "focal"}})
    assert err.value.field == "train.loss" and "expected one of mnrl" in str(err.value)


def test_the_restart_loops_union_of_rounds_keeps_the_judges_scores(tmp_path):
    from mining_jobs.iterate import _union_triples

    def mined(name: str, neg_ids: list[str], scores: list[float]) -> Path:
        d = tmp_path / name
        d.mkdir()
        pq.write_table(pa.Table.from_pylist([{
            "query_id": "q1", "query": "what causes tides", "positive_id": "d0", "positive": "the moon",
            "positive_score": 5.0, "negative_ids": neg_ids, "negatives": [f"text {i}" for i in neg_ids],
            "negative_scores": scores}]), d / "triples.parquet")
        return d

    r1, r2 = mined("r1", ["a", "b"], [1.0, 2.0]), mined("r2", ["b", "c"], [2.0, 4.5])
    union = _union_triples([r1, r2], tmp_path / "union.parquet", 1)
    rows = pq.read_table(union).to_pylist()
    assert sorted((r["negative_ids"][0], r["negative_scores"][0]) for r in rows) == [("a", 1.0), ("b", 2.0),
                                                                                    ("c", 4.5)]
    data, _ = load_examples(str(union), 1, "margin-mse")
    assert sorted(x[0] for x in data["label"]) == [0.5, 3.0, 4.0]
