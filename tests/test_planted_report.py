"""Planted false negatives (``planted.json`` next to ``corpus.jsonl``): the mining job counts how many it
retrieved, excluded, filtered with the judge, relabelled or trained on, and the judge's cost on the other
candidates, into ``manifest.json`` (``planted``) and ``report.md``; on tiny collections (BM25 candidates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retriever.rerank import sigmoid

pytest.register_assert_rewrite("mining_fixtures")  # assertions in the helpers stay rewritten
from mining_fixtures import mine, mining_env, read_manifest, read_rows  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, torch_one_thread
pytestmark = pytest.mark.usefixtures("torch_one_thread")

DOCS = [
    {"_id": "d1", "title": "Solar power", "text": "Solar panels convert sunlight into electricity for homes."},
    {"_id": "d2", "title": "Wind power", "text": "Wind turbines convert the wind into electricity on farms."},
    {"_id": "d3", "title": "Hydro power", "text": "Dams turn falling water into electricity with turbines."},
    {"_id": "d4", "title": "Batteries", "text": "Batteries store electricity from solar panels for the night."},
    {"_id": "d5", "title": "Coal", "text": "Coal plants burn coal to make steam and electricity."},
    {"_id": "d6", "title": "Nuclear", "text": "Nuclear reactors split atoms; the heat makes electricity."},
    {"_id": "d7", "title": "Sunlight", "text": "Sunlight reaching the earth varies with the seasons."},
    {"_id": "d8", "title": "Homes", "text": "Homes use electricity for light, heat and cooking."},
    # a copy of d1 up to case and punctuation: excluded as a duplicate of q1's positive
    {"_id": "d_dup", "title": "SOLAR POWER:", "text": "solar panels -- convert sunlight, into ELECTRICITY for homes!"},
]
QUERIES = [
    {"_id": "q1", "text": "how do solar panels make electricity for homes"},
    {"_id": "q2", "text": "wind turbines and electricity"},
    {"_id": "q3", "text": "which plants burn coal"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td5\t1\n"
# (q1, d_dup) and (q1, d4) are retrieved by BM25; (q3, d7) is not (no shared term); q9 is not a mined query
PLANTED = {"near_duplicates": [["q1", "d_dup"]], "hidden_positives": [["q1", "d4"], ["q3", "d7"], ["q9", "d1"]]}
BM25_ONLY = ("--split", "test", "--set", "candidates.dense=false", "--set", "sampling.num_negatives=8")


@pytest.fixture
def env(monkeypatch, data_root, tmp_path) -> Path:
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    return tmp_path


@pytest.fixture
def planted_beir(make_beir) -> Path:
    folder = make_beir(DOCS, QUERIES, QRELS)
    (folder / "planted.json").write_text(json.dumps(PLANTED))
    return folder


def _ce(ce: Path, scores: Path, *extra: str) -> list[str]:
    """The tiny cross-encoder as judge, only the given filter rules, no judge check."""
    return ["--cross-encoder", str(ce), "--set", f"output.score_cache={json.dumps(str(scores))}",
            "--set", "filter.relative_margin=none", "--set", "filter.judge_check_queries=0", *extra]


def test_exclusion_and_trained_on_counts_without_a_judge(planted_beir, env):
    out = env / "out"
    assert mine(out, "--data", str(planted_beir), *BM25_ONLY) == 0
    fates = {(c["query_id"], c["doc_id"]): c["fate"] for c in read_rows(out / "candidates.parquet")}
    assert fates[("q1", "d_dup")] == "duplicate" and fates[("q1", "d4")] == "kept" and ("q3", "d7") not in fates
    p = read_manifest(out)["planted"]
    assert p["file"] == str(planted_beir / "planted.json")
    nd, hp, al = p["kinds"]["near_duplicates"], p["kinds"]["hidden_positives"], p["all"]
    assert nd == {"planted": 1, "retrieved": 1, "excluded": 1, "filtered": 0, "relabelled": 0, "removed": 1,
                  "in_negatives": 0, "missed_not_sampled": 0, "recall": 1.0, "fates": {"duplicate": 1}}
    # (q9, d1) is left out: q9 is not mined; (q3, d7) is planted but never retrieved
    assert hp == {"planted": 2, "retrieved": 1, "excluded": 0, "filtered": 0, "relabelled": 0, "removed": 0,
                  "in_negatives": 1, "missed_not_sampled": 0, "recall": 0.0, "fates": {"kept": 1}}
    assert (al["planted"], al["retrieved"], al["removed"], al["in_negatives"], al["recall"]) == (3, 2, 1, 1, 0.5)
    sampled = {(r["query_id"], d) for r in read_rows(out / "triples.parquet") for d in r["negative_ids"]}
    assert p["negatives"] == {"sampled": len(sampled), "planted": 1, "share": 1 / len(sampled)}
    assert p["cost"] == {"other_scored": 0, "other_filtered": 0, "share": None}
    report = (out / "report.md").read_text()
    assert "## Planted false negatives" in report
    assert "Planted false negatives: caught 1 of 2 retrieved (50.0%)" in report
    assert f"1 ended up as sampled negatives (1 of {len(sampled)} sampled" in report
    assert "| near_duplicates | 1 | 1 | 1 | 0 | 0 | 1 (100.0%) | 0 | 0 |" in report
    assert "| hidden_positives | 2 | 1 | 0 | 0 | 0 | 0 (0.0%) | 1 | 0 |" in report
    assert "| all | 3 | 2 | 1 | 0 | 0 | 1 (50.0%) | 1 | 0 |" in report

    # the rank window is not the judge: skipping the best candidate (d4 for q1) misses it, without training on it
    out = env / "window"
    assert mine(out, "--data", str(planted_beir), *BM25_ONLY, "--set", "filter.range_min=1") == 0
    hp = read_manifest(out)["planted"]["kinds"]["hidden_positives"]
    assert hp["fates"] == {"filtered:rank_window": 1}
    assert (hp["filtered"], hp["removed"], hp["in_negatives"], hp["missed_not_sampled"], hp["recall"]) == (0, 0, 0, 1, 0.0)
    assert "| hidden_positives | 2 | 1 | 0 | 0 | 0 | 0 (0.0%) | 0 | 1 |" in (out / "report.md").read_text()


def test_judge_recall_cost_and_relabelling(planted_beir, env, tiny_cross_encoder):
    scores = env / "scores.sqlite"
    free = env / "free"  # the judge scores every candidate but filters nothing
    assert mine(free, "--data", str(planted_beir), *BM25_ONLY, *_ce(tiny_cross_encoder, scores)) == 0
    ce = {(c["query_id"], c["doc_id"]): c["ce_score"] for c in read_rows(free / "candidates.parquet")
          if c["ce_score"] is not None}
    others = {k: s for k, s in ce.items() if k not in {("q1", "d_dup"), ("q1", "d4")}}
    assert ("q1", "d_dup") not in ce and len(others) >= 10  # the excluded duplicate is never scored
    p = read_manifest(free)["planted"]
    assert p["kinds"]["hidden_positives"]["in_negatives"] == 1 and p["cost"] == {
        "other_scored": len(others), "other_filtered": 0, "share": 0.0}

    # a max_score just below the hidden positive's score: it is filtered, and so is every other candidate above
    threshold = min(ce[("q1", "d4")], sorted(others.values())[len(others) // 2]) - 1e-4
    above = sum(s > threshold for s in others.values())
    assert 0 < above < len(others)
    out = env / "filtered"
    assert mine(out, "--data", str(planted_beir), *BM25_ONLY,
                *_ce(tiny_cross_encoder, scores, "--set", f"filter.max_score={threshold}")) == 0
    m = read_manifest(out)
    hp = m["planted"]["kinds"]["hidden_positives"]
    assert (hp["retrieved"], hp["filtered"], hp["removed"], hp["in_negatives"], hp["recall"]) == (1, 1, 1, 0, 1.0)
    assert hp["fates"] == {"filtered:max_score": 1}
    assert m["planted"]["all"]["removed"] == 2 and m["planted"]["all"]["recall"] == 1.0
    assert m["planted"]["cost"] == {"other_scored": len(others), "other_filtered": above,
                                    "share": above / len(others)}
    assert m["planted"]["negatives"]["planted"] == 0
    report = (out / "report.md").read_text()
    assert "Planted false negatives: caught 2 of 2 retrieved (100.0%)" in report
    assert f"cost: the judge removed {above} of {len(others)} other scored candidates ({above / len(others):.1%})" \
        in report
    assert "| hidden_positives | 2 | 1 | 0 | 1 | 0 | 1 (100.0%) | 0 | 0 |" in report

    # relabelling from a probability just below the hidden positive's: it becomes a positive (caught, not
    # filtered), and so does every other candidate at least as probable
    p_min = min(float(sigmoid(ce[("q1", "d4")])), float(sigmoid(sorted(others.values())[len(others) // 2]))) - 1e-6
    relabelled = sum(float(sigmoid(s)) >= p_min for s in others.values())
    assert 0 < relabelled < len(others)
    out = env / "relabel"
    assert mine(out, "--data", str(planted_beir), *BM25_ONLY,
                *_ce(tiny_cross_encoder, scores, "--set", f"filter.relabel_above={p_min}")) == 0
    p = read_manifest(out)["planted"]
    hp = p["kinds"]["hidden_positives"]
    assert (hp["filtered"], hp["relabelled"], hp["removed"], hp["in_negatives"]) == (0, 1, 1, 0)
    assert hp["fates"] == {"relabelled": 1}
    assert p["cost"] == {"other_scored": len(others), "other_filtered": relabelled,
                         "share": relabelled / len(others)}
    assert "| hidden_positives | 2 | 1 | 0 | 0 | 1 | 1 (100.0%) | 0 | 0 |" in (out / "report.md").read_text()


def test_resumed_job_counts_every_shard(planted_beir, env):
    """Counted on the merged tables: a job resumed after its last shard (q3, no retrieved planted pair) was lost
    still counts the planted pairs of the shards it did not mine again."""
    out = env / "out"
    args = ["--data", str(planted_beir), *BM25_ONLY, "--set", "output.shard_size=1"]
    assert mine(out, *args) == 0
    first = read_manifest(out)["planted"]
    for p in [*out.glob("*.parquet"), out / "manifest.json", out / "report.md", *out.glob("shards/00002.*")]:
        p.unlink()
    assert mine(out, *args) == 0
    m = read_manifest(out)
    assert m["counts"]["shards_resumed"] == 2
    assert m["planted"] == first
    assert (m["planted"]["all"]["retrieved"], m["planted"]["all"]["removed"]) == (2, 1)
    assert "caught 1 of 2 retrieved (50.0%)" in (out / "report.md").read_text()


def test_no_planted_file_no_section(make_beir, env):
    folder = make_beir(DOCS, QUERIES, QRELS)
    out = env / "out"
    assert mine(out, "--data", str(folder), *BM25_ONLY) == 0
    assert read_manifest(out)["planted"] is None
    report = (out / "report.md").read_text()
    assert "## What happened to the candidates" in report and "Planted" not in report


@pytest.mark.parametrize("text, message", [
    ('{"near_duplicates": [["q1", "d_dup"]', "not valid JSON"),
    ('[["q1", "d_dup"]]', "expected a JSON object"),
    ('{"near_duplicates": "q1 d_dup"}', "kind 'near_duplicates': expected a list"),
    ('{"near_duplicates": [["q1", "d_dup"], ["q2"]]}', "kind 'near_duplicates', entry 1: expected [query_id, doc_id]"),
    ('{"near_duplicates": [["q1", null]]}', "entry 0: expected [query_id, doc_id], got ['q1', None]"),
])
def test_malformed_planted_file_stops_the_job_before_it_starts(make_beir, env, monkeypatch, capsys, text, message):
    """Found through $HARDNEG_DATA like ``data.name``; refused before the run folder is created."""
    folder = make_beir(DOCS, QUERIES, QRELS, name="plantedcol")
    (folder / "planted.json").write_text(text)
    monkeypatch.setenv("HARDNEG_DATA", str(folder.parent))
    out = env / "out"
    assert mine(out, "--data", "plantedcol", *BM25_ONLY) == 2
    err = capsys.readouterr().err
    assert str(folder / "planted.json") in err and message in err
    assert not out.exists()
    (folder / "planted.json").write_text(json.dumps({"hidden_positives": [["q1", "d4"]]}))
    assert mine(out, "--data", "plantedcol", *BM25_ONLY) == 0  # the same name, fixed file: counted
    assert read_manifest(out)["planted"]["kinds"]["hidden_positives"]["in_negatives"] == 1
