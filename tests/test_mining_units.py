"""Unit tests of the mining job's pieces on inline data: filter, positive reduction, sampling, text hashing,
candidate union, exclusions and the job config. No model, no collection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mining_jobs.candidates import Candidate, mark_exclusions, normalized_hash, union_candidates
from mining_jobs.config import (
    ConfigError,
    FilterSection,
    MineConfig,
    SamplingSection,
    load_config,
    parse_override,
)
from mining_jobs.filtering import apply_filter, filter_reason, reduce_positive
from mining_jobs.sampling import query_rng, sample

REPO = Path(__file__).resolve().parents[1]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _fcfg(**kw) -> FilterSection:
    """A filter section with every rule off unless given."""
    base = {"absolute_margin": None, "relative_margin": None, "max_score": None, "min_score": None,
            "range_min": 0, "range_max": None}
    base.update(kw)
    return FilterSection(**base)


def _cands(scores: list[float | None], start: int = 0) -> list[Candidate]:
    """Pending candidates at corpus positions start.. with these cross-encoder scores, in fused-rank order."""
    out = []
    for i, s in enumerate(scores):
        c = Candidate(start + i, sources=["bm25"], bm25_rank=i + 1, bm25_score=10.0 - i)
        c.ce_score = s
        out.append(c)
    return out


# ----------------------------------------------------------------------------------------------- filter


def test_filter_absolute_margin():
    cfg = _fcfg(absolute_margin=1.0)
    # dropped when cand > pos - margin
    assert filter_reason(2.5, 3.0, cfg) == "filtered:absolute_margin"
    assert filter_reason(2.1, 3.0, cfg) == "filtered:absolute_margin"
    assert filter_reason(1.9, 3.0, cfg) is None
    assert filter_reason(5.0, 3.0, cfg) == "filtered:absolute_margin"  # above the positive
    # negative logits: pos -2, cand -2.5 is within 1.0 -> dropped; -3.5 is not
    assert filter_reason(-2.5, -2.0, cfg) == "filtered:absolute_margin"
    assert filter_reason(-3.5, -2.0, cfg) is None


def test_filter_relative_margin_on_probabilities_with_negative_logits():
    cfg = _fcfg(relative_margin=0.1)
    # by hand: sigmoid(-2) = 0.11920, x 0.9 = 0.10728; sigmoid(-2.05) = 0.11405 > 0.10728 -> filtered
    assert _sig(-2.05) > 0.9 * _sig(-2.0)
    assert filter_reason(-2.05, -2.0, cfg) == "filtered:relative_margin"
    # sigmoid(-4) = 0.01799 < 0.10728 -> kept
    assert _sig(-4.0) < 0.9 * _sig(-2.0)
    assert filter_reason(-4.0, -2.0, cfg) is None
    # a naive rule on logits (cand > (1 - m) * pos = -1.8) would have kept -2.05 and dropped nothing below;
    # the probability rule must not behave like that
    assert filter_reason(-1.9, -2.0, cfg) == "filtered:relative_margin"


def test_filter_relative_margin_positive_logits():
    cfg = _fcfg(relative_margin=0.1)
    # pos 2.0: p = 0.8808, x 0.9 = 0.7927; logit of 0.7927 = 1.3409
    assert filter_reason(1.4, 2.0, cfg) == "filtered:relative_margin"
    assert filter_reason(1.3, 2.0, cfg) is None
    assert filter_reason(2.0, 2.0, cfg) == "filtered:relative_margin"  # equal to the positive
    # margin 0 drops only candidates strictly more probable than the positive
    assert filter_reason(2.0, 2.0, _fcfg(relative_margin=0.0)) is None
    assert filter_reason(2.01, 2.0, _fcfg(relative_margin=0.0)) == "filtered:relative_margin"


def test_filter_max_and_min_score():
    cfg = _fcfg(max_score=5.0, min_score=-5.0)
    assert filter_reason(5.5, 10.0, cfg) == "filtered:max_score"
    assert filter_reason(5.0, 10.0, cfg) is None
    assert filter_reason(-5.5, 10.0, cfg) == "filtered:min_score"
    assert filter_reason(-5.0, 10.0, cfg) is None
    assert filter_reason(0.0, 10.0, _fcfg()) is None  # every rule off


def test_filter_first_matching_rule_is_the_fate():
    cfg = _fcfg(max_score=1.0, absolute_margin=1.0, relative_margin=0.1)
    # 3.0 breaks max_score, the absolute and the relative margin (pos 2.0): max_score comes first
    assert filter_reason(3.0, 2.0, cfg) == "filtered:max_score"
    # 1.6 breaks both the absolute (> 2.0 - 0.5) and the relative margin (p 0.832 > 0.9 x 0.881 = 0.793):
    # the absolute margin comes first
    assert _sig(1.6) > 0.9 * _sig(2.0)
    assert filter_reason(1.6, 2.0, _fcfg(absolute_margin=0.5, relative_margin=0.1)) == "filtered:absolute_margin"
    # min_score before the margins
    assert filter_reason(-9.0, -8.0, _fcfg(min_score=-8.5, absolute_margin=2.0)) == "filtered:min_score"
    # 1.4 passes the absolute margin (<= 1.5) but not the relative one (logit of 0.793 is 1.341)
    cands = _cands([3.0, 1.8, 1.4, -3.0])
    kept = apply_filter(cands, 2.0, _fcfg(max_score=2.5, absolute_margin=0.5, relative_margin=0.1))
    assert [c.fate for c in cands] == ["filtered:max_score", "filtered:absolute_margin",
                                       "filtered:relative_margin", "pending"]
    assert kept == [cands[3]]


def test_apply_filter_orders_by_ce_score_and_applies_rank_window():
    cands = _cands([0.0, 3.0, 1.0, 2.0, -1.0])  # fused order d0..d4, scores shuffled
    kept = apply_filter(cands, 10.0, _fcfg(range_min=1, range_max=3))
    # by score: d1 (3.0), d3 (2.0), d2 (1.0), d0 (0.0), d4 (-1.0); window [1, 3) keeps d3 and d2
    assert [c.doc for c in kept] == [3, 2]
    fates = {c.doc: c.fate for c in cands}
    assert fates == {1: "filtered:rank_window", 3: "pending", 2: "pending", 0: "filtered:rank_window",
                     4: "filtered:rank_window"}


def test_apply_filter_without_scores_uses_fused_rank_and_skips_score_rules():
    cands = _cands([None, None, None, None])
    kept = apply_filter(cands, None, _fcfg(range_min=1, relative_margin=0.1, max_score=-100.0))
    assert [c.doc for c in kept] == [1, 2, 3]
    assert cands[0].fate == "filtered:rank_window"


def test_apply_filter_leaves_excluded_candidates_alone():
    cands = _cands([9.0, 1.0, 0.5])
    cands[0].fate = "positive"
    kept = apply_filter(cands, 2.0, _fcfg(relative_margin=0.1))
    assert cands[0].fate == "positive"
    assert [c.doc for c in kept] == [1, 2]
    # rank 0 of the window is the best *pending* candidate, not the positive
    cands = _cands([9.0, 1.0, 0.5])
    cands[0].fate = "duplicate"
    kept = apply_filter(cands, 2.0, _fcfg(range_min=1))
    assert [c.doc for c in kept] == [2]
    assert cands[0].fate == "duplicate" and cands[1].fate == "filtered:rank_window"


def test_reduce_positive():
    assert reduce_positive([1.0, 3.0, 5.0], "min") == 1.0
    assert reduce_positive([1.0, 3.0, 5.0], "mean") == 3.0
    assert reduce_positive([1.0, 3.0, 5.0], "max") == 5.0
    assert reduce_positive([-2.0], "min") == -2.0
    with pytest.raises(ValueError):
        reduce_positive([], "min")
    # the default is min: the strictest comparison with several positives
    assert MineConfig().cross_encoder.positive_reduce == "min"


def test_default_min_reduction_filters_against_weakest_positive():
    cfg = FilterSection()  # defaults: relative margin 0.1
    pos = reduce_positive([4.0, -1.0], MineConfig().cross_encoder.positive_reduce)
    assert pos == -1.0
    # 0.0 would pass against the strong positive (p 0.5 < 0.9 x 0.982) but not against the weak one
    assert filter_reason(0.0, 4.0, cfg) is None
    assert filter_reason(0.0, pos, cfg) == "filtered:relative_margin"


# --------------------------------------------------------------------------------------------- sampling


def _scfg(**kw) -> SamplingSection:
    return SamplingSection(**kw)


def test_sample_top():
    kept = _cands([5.0, 4.0, 3.0, 2.0, 1.0])
    chosen = sample(kept, 6.0, _scfg(strategy="top", num_negatives=3), "q1")
    assert [c.doc for c in chosen] == [0, 1, 2]
    assert [c.fate for c in kept] == ["kept", "kept", "kept", "not_sampled", "not_sampled"]


def test_sample_fewer_candidates_than_wanted_keeps_all():
    for strategy in ("top", "random", "simans", "positive-aware"):
        kept = _cands([-5.0, -6.0])
        chosen = sample(kept, 6.0, _scfg(strategy=strategy, num_negatives=5), "q1")
        assert [c.doc for c in chosen] == [0, 1], strategy
        assert all(c.fate == "kept" for c in kept)
    assert sample([], 1.0, _scfg(strategy="random"), "q") == []


def test_sample_random_is_seeded_per_query():
    def pick(seed: int, qid: str) -> list[int]:
        kept = _cands([float(-i) for i in range(20)])
        chosen = sample(kept, 5.0, _scfg(strategy="random", num_negatives=3, seed=seed), qid)
        assert sum(c.fate == "kept" for c in kept) == 3
        assert sum(c.fate == "not_sampled" for c in kept) == 17
        assert {c.doc for c in chosen} == {c.doc for c in kept if c.fate == "kept"}
        return [c.doc for c in chosen]

    a = pick(42, "q1")
    assert pick(42, "q1") == a  # same seed and query -> same choice
    assert a == sorted(a)  # returned best first (in the order of kept)
    others = [pick(s, "q1") for s in range(100, 110)]
    assert sum(o != a for o in others) >= 8  # different seeds -> usually different
    assert sum(pick(42, f"q{i}") != a for i in range(2, 12)) >= 8  # and different queries
    assert query_rng(1, "x").integers(1 << 30) == query_rng(1, "x").integers(1 << 30)


def test_sample_positive_aware_only_below_ratio_of_positive_probability():
    pos = 1.0  # p = 0.7311; ratio 0.95 -> limit 0.6945 (logit 0.822)
    cands = _cands([2.0, 0.9, 0.8, 0.0, -1.0, -2.0])
    # the positive-aware ratio is a rule of the filter (one rule function, filter_reason); sampling then picks
    kept = apply_filter(cands, pos, _fcfg(), positive_aware_ratio=0.95)
    assert filter_reason(0.9, pos, _fcfg(), 0.95) == "filtered:positive_aware"
    assert filter_reason(0.8, pos, _fcfg(), 0.95) is None and filter_reason(0.9, pos, _fcfg()) is None
    chosen = sample(kept, pos, _scfg(strategy="positive-aware", num_negatives=2, positive_aware_ratio=0.95), "q")
    assert _sig(0.9) > 0.95 * _sig(pos) > _sig(0.8)
    assert [c.doc for c in chosen] == [2, 3]  # best two under the limit
    # above the ratio: rejected by the positive-aware rule, named as such; below it but not chosen: not_sampled
    assert [c.fate for c in cands] == ["filtered:positive_aware", "filtered:positive_aware", "kept", "kept",
                                       "not_sampled", "not_sampled"]
    for c in chosen:
        assert _sig(c.ce_score) < 0.95 * _sig(pos)


def test_sample_simans_prefers_candidates_near_the_positive():
    pos = 3.0
    counts = {0: 0, 1: 0}
    for seed in range(300):
        kept = _cands([3.0, -6.0])  # d0 as probable as the positive, d1 far below
        chosen = sample(kept, pos, _scfg(strategy="simans", num_negatives=1, seed=seed, simans_a=10.0), "q")
        assert len(chosen) == 1
        counts[chosen[0].doc] += 1
    assert counts[0] > 10 * counts[1], counts
    # the default a = 1 still prefers the near one
    counts = {0: 0, 1: 0}
    for seed in range(300):
        kept = _cands([3.0, -6.0])
        chosen = sample(kept, pos, _scfg(strategy="simans", num_negatives=1, seed=seed), "q")
        counts[chosen[0].doc] += 1
    assert counts[0] > 1.5 * counts[1], counts


def test_sample_simans_marks_fates():
    kept = _cands([2.0, 1.0, 0.0, -1.0, -2.0, -3.0])
    chosen = sample(kept, 2.0, _scfg(strategy="simans", num_negatives=3, seed=1), "q")
    assert len(chosen) == 3 and len({c.doc for c in chosen}) == 3
    assert sorted(c.fate for c in kept) == ["kept"] * 3 + ["not_sampled"] * 3
    assert [c.doc for c in chosen] == sorted(c.doc for c in chosen)


# ------------------------------------------------------------------------------------ hashing, candidates


def test_normalized_hash_ignores_case_punctuation_and_whitespace():
    h = normalized_hash("The quick brown fox, jumps over the lazy dog.")
    assert normalized_hash("the QUICK brown fox jumps over the lazy dog") == h
    assert normalized_hash("  The quick\tbrown\n\nfox -- jumps over; the lazy dog!!  ") == h
    assert normalized_hash("The quick brown cat jumps over the lazy dog.") != h
    assert normalized_hash("ﬁle") == normalized_hash("FILE")  # NFKC folds the ligature
    assert len(h) == 24


def test_union_candidates_tags_sources_and_ranks():
    bm25 = (np.array([[3, 1, -1], [0, -1, -1]]), np.array([[9.0, 5.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32))
    dense = (np.array([[1, 2, 3], [-1, -1, -1]]), np.array([[0.9, 0.8, 0.7], [0.0, 0.0, 0.0]], dtype=np.float32))
    out = union_candidates(bm25, dense, 2)
    assert len(out) == 2
    by_doc = {c.doc: c for c in out[0]}
    assert set(by_doc) == {1, 2, 3}  # -1 slots skipped
    assert by_doc[3].sources == ["bm25", "dense"] and by_doc[3].bm25_rank == 1 and by_doc[3].dense_rank == 3
    assert by_doc[1].sources == ["bm25", "dense"] and by_doc[1].bm25_rank == 2 and by_doc[1].dense_rank == 1
    assert by_doc[2].sources == ["dense"] and by_doc[2].bm25_rank is None and by_doc[2].dense_rank == 2
    assert by_doc[3].bm25_score == pytest.approx(9.0) and by_doc[2].dense_score == pytest.approx(0.8)
    assert all(c.fate == "pending" and c.ce_score is None for c in out[0])
    # ordered by fused rank: d1 (1/62 + 1/61) > d3 (1/61 + 1/63) > d2 (1/62)
    assert [c.doc for c in out[0]] == [1, 3, 2]
    assert [(c.doc, c.sources, c.bm25_rank) for c in out[1]] == [(0, ["bm25"], 1)]


def test_union_candidates_single_source_and_empty():
    bm25 = (np.array([[2, 0]]), np.array([[2.0, 1.0]]))
    out = union_candidates(bm25, None, 1)
    assert [(c.doc, c.sources, c.bm25_rank, c.dense_rank) for c in out[0]] == [(2, ["bm25"], 1, None),
                                                                                 (0, ["bm25"], 2, None)]
    out = union_candidates(None, (np.array([[-1, -1]]), np.zeros((1, 2))), 1)
    assert out == [[]]


def test_mark_exclusions():
    doc_ids = ["q1", "d1", "d2", "d3", "d4", "d5", "d6"]
    texts = ["query doc", "The positive text.", "the POSITIVE text", "other", "near", "banned", "plain"]
    hashes = [normalized_hash(t) for t in texts]
    emb = np.zeros((7, 3), dtype=np.float32)
    emb[:, 2] = 1.0
    emb[1] = [1.0, 0.0, 0.0]
    emb[4] = [0.99, math.sqrt(1 - 0.99 ** 2), 0.0]  # cosine 0.99 with the positive d1
    cands = [Candidate(i) for i in range(7)]
    mark_exclusions(cands, {1}, "q1", doc_ids, hashes, drop_self=True, emb=emb, near_dup_cosine=0.97, banned={5})
    assert [c.fate for c in cands] == ["self", "positive", "duplicate", "pending", "duplicate", "eval_positive",
                                       "pending"]
    # without the embedding threshold the near duplicate stays; without drop_self the query's own doc stays
    cands = [Candidate(i) for i in range(7)]
    mark_exclusions(cands, {1}, "q1", doc_ids, hashes, drop_self=False, emb=emb, near_dup_cosine=0.0)
    assert [c.fate for c in cands] == ["pending", "positive", "duplicate", "pending", "pending", "pending",
                                       "pending"]
    # a stricter threshold than the cosine leaves it
    cands = [Candidate(i) for i in range(7)]
    mark_exclusions(cands, {1}, "q1", doc_ids, hashes, drop_self=True, emb=emb, near_dup_cosine=0.995)
    assert cands[4].fate == "pending"


# ------------------------------------------------------------------------------------------------ config


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_load_config_from_toml(tmp_path):
    p = _toml(tmp_path, '[data]\nname = "adi"\nsplit = "test"\neval_splits = ["dev"]\n'
                        "[filter]\nabsolute_margin = 1\nrelative_margin = 0.2\n"
                        '[sampling]\nstrategy = "random"\nnum_negatives = 7\n[candidates]\ndense = false\n')
    cfg = load_config(p)
    assert cfg.data.name == "adi" and cfg.data.split == "test" and cfg.data.eval_splits == ["dev"]
    assert cfg.filter.absolute_margin == 1.0 and isinstance(cfg.filter.absolute_margin, float)
    assert cfg.filter.relative_margin == 0.2
    assert cfg.sampling.strategy == "random" and cfg.sampling.num_negatives == 7
    assert cfg.candidates.dense is False and cfg.candidates.bm25 is True  # untouched field keeps its default


def test_load_config_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[bogus\]"):
        load_config(_toml(tmp_path, "[bogus]\nx = 1\n"))


def test_load_config_unknown_key_names_section_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'filter\.bogus'"):
        load_config(_toml(tmp_path, "[filter]\nbogus = 1\n"))
    with pytest.raises(ConfigError, match=r"'sampling\.seeds'"):
        load_config(overrides=["sampling.seeds=3"])


def test_load_config_wrong_type_names_field(tmp_path):
    with pytest.raises(ConfigError, match=r"'sampling\.num_negatives'.*expected an integer"):
        load_config(_toml(tmp_path, '[sampling]\nnum_negatives = "five"\n'))
    with pytest.raises(ConfigError, match=r"'candidates\.dense'"):
        load_config(overrides=["candidates.dense=3"])
    with pytest.raises(ConfigError, match=r"'sampling\.num_negatives'"):
        load_config(overrides=["sampling.num_negatives=2.5"])
    with pytest.raises(ConfigError, match=r"'data\.eval_splits'"):
        load_config(overrides=["data.eval_splits=test"])


def test_load_config_invalid_choice():
    with pytest.raises(ConfigError, match=r"'sampling\.strategy'.*'bogus'.*top"):
        load_config(overrides=["sampling.strategy=bogus"])
    with pytest.raises(ConfigError, match=r"'candidates\.index'"):
        load_config(overrides=["candidates.index=annoy"])


def test_load_config_invalid_values():
    for override, field in (("filter.relative_margin=1.5", "filter.relative_margin"),
                            ("sampling.num_negatives=0", "sampling.num_negatives"),
                            ("output.shard_size=0", "output.shard_size"),
                            ("filter.range_max=0", "filter.range_max"),
                            ("data.min_relevance=0", "data.min_relevance")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(overrides=[override])
    with pytest.raises(ConfigError, match="candidates"):
        load_config(overrides=["candidates.bm25=false", "candidates.dense=false"])


def test_overrides_win_over_the_file(tmp_path):
    p = _toml(tmp_path, "[sampling]\nnum_negatives = 7\nseed = 1\n[filter]\nrelative_margin = 0.3\n")
    cfg = load_config(p, ["sampling.num_negatives=3", "filter.relative_margin=none"],
                      base={"sampling": {"seed": 5, "num_negatives": 9}})
    assert cfg.sampling.num_negatives == 3  # --set beats base and file
    assert cfg.sampling.seed == 5  # base beats the file
    assert cfg.filter.relative_margin is None  # 'none' clears an optional field


def test_override_values_are_parsed():
    assert parse_override("sampling.num_negatives=7") == ("sampling", "num_negatives", 7)
    assert parse_override("filter.relative_margin=0.25") == ("filter", "relative_margin", 0.25)
    assert parse_override("candidates.dense=false") == ("candidates", "dense", False)
    assert parse_override('data.eval_splits=["test", "dev"]') == ("data", "eval_splits", ["test", "dev"])
    assert parse_override("data.name=adi") == ("data", "name", "adi")  # bare word: a string
    assert parse_override('data.pairs="a=b.jsonl"') == ("data", "pairs", "a=b.jsonl")
    cfg = load_config(overrides=["sampling.num_negatives=7", "filter.absolute_margin=1", "candidates.dense=false",
                                 'data.eval_splits=["test"]', "cross_encoder.bf16=off"])
    assert cfg.sampling.num_negatives == 7
    assert cfg.filter.absolute_margin == 1.0 and isinstance(cfg.filter.absolute_margin, float)
    assert cfg.candidates.dense is False and cfg.data.eval_splits == ["test"] and cfg.cross_encoder.bf16 == "off"
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("num_negatives=7")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("sampling.num_negatives")


def test_example_config_equals_defaults():
    cfg = load_config(REPO / "examples" / "mine.toml")
    assert cfg.to_dict() == MineConfig().to_dict()
    assert cfg.fingerprint() == MineConfig().fingerprint()


def test_fingerprint_ignores_overwrite_and_score_cache_only():
    base = MineConfig().fingerprint()
    assert load_config(overrides=["output.overwrite=true", "output.score_cache=/tmp/x.sqlite"]).fingerprint() == base
    assert load_config(overrides=["sampling.seed=1"]).fingerprint() != base
    assert load_config(overrides=["output.shard_size=3"]).fingerprint() != base


def test_score_based_strategies_need_a_cross_encoder():
    for strategy in ("positive-aware", "simans"):
        with pytest.raises(ConfigError, match=r"'sampling\.strategy'.*cross_encoder\.model"):
            load_config(overrides=[f"sampling.strategy={strategy}"])
        cfg = load_config(overrides=[f"sampling.strategy={strategy}", "cross_encoder.model=some/model"])
        assert cfg.sampling.strategy == strategy
    assert load_config(overrides=["sampling.strategy=random"]).sampling.strategy == "random"


def test_missing_or_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_toml(tmp_path, "[data\nname = 1\n"))


def test_sample_simans_with_underflowing_weights_takes_the_nearest():
    """A huge simans_a underflows all but the nearest weights; sampling still returns n negatives."""
    kept = _cands([3.0, 2.9, -8.0, -9.0, -10.0])
    chosen = sample(kept, 3.0, _scfg(strategy="simans", num_negatives=3, simans_a=5000.0), "q")
    assert len(chosen) == 3
    assert {c.doc for c in chosen} >= {0, 1}


def test_config_rejects_negative_simans_a():
    with pytest.raises(ConfigError, match="'sampling.simans_a' must be >= 0"):
        load_config(overrides=["sampling.simans_a=-1", "cross_encoder.model=x", "sampling.strategy=simans"])


def test_filter_state_names_the_rules_or_says_none_apply():
    from mining_jobs.triples import _filter_state

    cfg = MineConfig()
    assert _filter_state(cfg, has_ce=False) == "off (no cross-encoder configured)"
    assert _filter_state(cfg, has_ce=True) == "on (relative_margin)"
    cfg.filter.relative_margin = None
    assert _filter_state(cfg, has_ce=True).startswith("on, but no score rule is set")
    cfg.filter.absolute_margin, cfg.filter.max_score = 1.0, 5.0
    assert _filter_state(cfg, has_ce=True) == "on (absolute_margin, max_score)"
