"""filter.recall_target: a score threshold placed on the labelled positives alone (one per query is enough),
for collections whose queries have a single labelled positive (the sparse-label regime)."""

from __future__ import annotations

import json
from statistics import NormalDist

import numpy as np
import pytest

from mining_jobs.config import ConfigError, MineConfig, load_config
from mining_jobs.filtering import filter_reason
from mining_jobs.judge_check import recall_threshold
from retriever.judge import save_judge

pytest_plugins = ("mining_fixtures",)

from mining_fixtures import mine, mining_env, read_manifest, read_rows  # noqa: E402


def test_the_threshold_by_hand():
    s = np.arange(10.0)  # 0..9: 90% above means 0 stays below
    assert recall_threshold(s, 0.9) == pytest.approx(0.5)
    assert recall_threshold(s, 0.7) == pytest.approx(2.5)  # 0, 1, 2 stay below
    assert recall_threshold(s, 0.75) == pytest.approx(1.5)  # 80% is the least share >= 75% that ten allow
    assert recall_threshold(np.arange(5.0), 0.9) < 0.0  # five positives: 90% is only met by filtering all
    # a tie at the place of the threshold: it goes below the tied scores, never between them
    assert recall_threshold(np.array([0.0, 1.0, 1.0, 1.0, 2.0]), 0.7) == pytest.approx(0.5)
    assert recall_threshold(np.array([3.0, 3.0, 3.0]), 0.5) < 3.0


@pytest.mark.parametrize("seed", range(5))
def test_at_least_the_target_of_the_positives_is_filtered_and_not_more_than_needed(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    s = np.round(rng.normal(size=n), 1)  # rounded: ties
    target = float(rng.uniform(0.5, 0.99))
    t = recall_threshold(s, target)
    assert (s > t).mean() >= target
    assert (s <= t).sum() <= int(np.floor((1 - target) * n + 1e-9))


def test_positives_drawn_like_the_unlabelled_ones_give_the_target_recall_on_those():
    """The positive-unlabelled assumption the rule rests on: labelled positives are a random draw from the
    relevant documents. Then the unlabelled positives are filtered at about the target rate, whatever the
    score scale, while the negatives' cost depends only on how well the judge separates them."""
    rng = np.random.default_rng(0)
    for shift, scale in ((0.0, 1.0), (5.0, 3.0), (-2.0, 0.2)):  # three judges' score scales
        relevant = shift + scale * rng.normal(1.5, 1.0, 4000)
        labelled, unlabelled = relevant[:1000], relevant[1000:]
        negatives = shift + scale * rng.normal(0.0, 1.0, 5000)
        t = recall_threshold(labelled, 0.9)
        assert abs((unlabelled > t).mean() - 0.9) < 0.03  # s.e. of the recall at a quantile of 1000: about 0.01
        # the cost: negatives above the relevant scores' 10th percentile, 1.5 - 1.28 sd above their mean
        expected = 1 - NormalDist().cdf(1.5 + NormalDist().inv_cdf(0.1))
        assert abs((negatives > t).mean() - expected) < 0.06  # 3 s.e. of a quantile of 1000


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="positives"):
        recall_threshold(np.zeros(0), 0.9)
    with pytest.raises(ValueError, match="finite"):
        recall_threshold(np.array([1.0, np.nan]), 0.9)
    with pytest.raises(ValueError, match="target"):
        recall_threshold(np.arange(3.0), 1.0)


@pytest.mark.parametrize(("overrides", "field"), [
    (["filter.recall_target=1.0"], "filter.recall_target"),
    (["filter.recall_target=0"], "filter.recall_target"),
    (["filter.recall_target=0.9", "filter.auto_threshold=true"], "filter.recall_target"),
    (["filter.recall_target=0.9", "filter.auto_margin=true"], "filter.recall_target"),
    (["filter.recall_target=0.9", "filter.score_threshold=1.0"], "filter.recall_target"),
])
def test_settings_are_checked(overrides, field):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["cross_encoder.model=x", *overrides])
    assert exc.value.field == field
    with pytest.raises(ConfigError, match="cross_encoder.model"):
        load_config(overrides=["filter.recall_target=0.9"])


def test_the_option_leaves_existing_fingerprints_alone(monkeypatch):
    import mining_jobs.config as config

    with_ce = load_config(overrides=["cross_encoder.model=x"]).fingerprint()
    assert load_config(overrides=["cross_encoder.model=x", "filter.recall_target=0.9"]).fingerprint() != with_ce
    # unset, the key is left out of the fingerprint: jobs mined before the option resume
    base = MineConfig().fingerprint()
    monkeypatch.delitem(config.NEW_FILTER_DEFAULTS, "recall_target")
    assert MineConfig().fingerprint() != base


def _hand_judge(folder):
    """A judge of one feature (BM25 normalised by the query's best)."""
    save_judge(folder, ["bm25"], np.zeros(1), np.ones(1), np.array([1.0]), (4.0, -2.0), {"bi": "", "ce": ""},
               {"dense_model": "default"})
    return folder


def _one_positive_per_query(data_root, folder):
    src = data_root / "adi"
    qrels = (src / "qrels" / "test.tsv").read_text().splitlines()
    kept, seen = [qrels[0]], set()
    for line in qrels[1:]:
        q = line.split("\t")[0]
        if q not in seen:
            seen.add(q)
            kept.append(line)
    (folder / "qrels").mkdir(parents=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (folder / f).write_text((src / f).read_text())
    (folder / "qrels" / "train.tsv").write_text("\n".join(kept) + "\n")
    return len(seen)


@pytest.mark.usefixtures("torch_one_thread")
def test_a_job_with_one_positive_per_query_places_its_threshold_on_those_positives(monkeypatch, data_root, tmp_path,
                                                                                    tiny_bi_encoder):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    col = tmp_path / "adi_sparse"
    n_queries = _one_positive_per_query(data_root, col)
    judge = _hand_judge(tmp_path / "judge")
    args = ["--data", str(col), "--split", "train", "--cross-encoder", str(judge),
            "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "filter.recall_target=0.8"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert mine(a, *args) == 0 and mine(b, *args) == 0
    ma = read_manifest(a)
    auto = ma["auto_threshold"]
    assert auto == read_manifest(b)["auto_threshold"]  # the same inputs, the same threshold
    assert auto["source"] == "labelled positives" and auto["positives"] == auto["queries"] == n_queries
    rule = auto["chosen"]
    assert rule["logit_weight"] == 1.0 and rule["positive_cosine_weight"] == 0.0 and rule["recall"] >= 0.8
    # the threshold is the one the job's own positives give: each query's positive score is in its candidates
    rows = read_rows(a / "candidates.parquet")
    pos = {c["query_id"]: c["positive_score"] for c in rows if c["positive_score"] is not None}
    assert len(pos) == n_queries
    assert rule["score_threshold"] == pytest.approx(recall_threshold(np.array(list(pos.values())), 0.8))
    # every judged candidate met that rule and no margin: filtered exactly when its score is above it
    cfg = load_config(overrides=["cross_encoder.model=x"]).filter
    cfg.relative_margin, cfg.score_threshold = None, rule["score_threshold"]
    judged = [c for c in rows if c["fate"] in ("kept", "not_sampled", "filtered:score_threshold")]
    assert judged and any(c["fate"] == "filtered:score_threshold" for c in judged)
    for c in judged:
        expected = "filtered:score_threshold" if c["fate"] == "filtered:score_threshold" else None
        assert filter_reason(c["ce_score"], c["positive_score"], cfg) == expected
    assert "filtered:relative_margin" not in ma["counts"]["fates"]
    cost = sum(c["fate"] == "filtered:score_threshold" for c in judged) / len(judged)
    assert cost == pytest.approx(rule["cost"])  # every query is in the sample: the cost it reports is the job's
    report = (a / "report.md").read_text()
    assert "filter.recall_target 0.8" in report and "labelled positives" in ma["models"]["false_negative_filter"]


@pytest.mark.usefixtures("torch_one_thread")
def test_too_few_labelled_positives_keep_the_configured_rules(monkeypatch, data_root, tmp_path, tiny_bi_encoder):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    col = tmp_path / "adi_few"
    _one_positive_per_query(data_root, col)
    lines = (col / "qrels" / "train.tsv").read_text().splitlines()
    (col / "qrels" / "train.tsv").write_text("\n".join(lines[:6]) + "\n")  # header + 5 queries
    run = tmp_path / "mined"
    assert mine(run, "--data", str(col), "--split", "train", "--cross-encoder", str(_hand_judge(tmp_path / "j")),
                "--set", f"candidates.model={json.dumps(str(tiny_bi_encoder))}",
                "--set", "filter.recall_target=0.9") == 0
    m = read_manifest(run)
    assert m["auto_threshold"]["chosen"] is None and m["auto_threshold"]["positives"] == 5
    assert "at least 10" in m["auto_threshold"]["why"]
    assert "filtered:score_threshold" not in m["counts"]["fates"]
