"""The mining job end to end, in-process through ``hardneg mine`` (``mining_jobs.cli.main``): outputs on the
real adi collection with BM25 + dense candidates and a tiny random cross-encoder, exclusions, determinism,
the score cache, run-folder protection, bad input and the leak guard, on tiny collections."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mining_jobs.config import load_config
from mining_jobs.filtering import filter_reason
from mining_jobs.inputs import LeakError
from mining_jobs.mine import run_mining
from retriever.data import join_title_text, load_beir
from retriever.rerank import CrossEncoderScorer, ScoreCache, ScoreError, sigmoid

pytest.register_assert_rewrite("mining_fixtures")  # assertions in the helpers stay rewritten
from mining_fixtures import OUTPUT_FILES, mine, mining_env, pairs_scored_now, read_manifest, read_rows  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_cross_encoder, torch_one_thread
pytestmark = pytest.mark.usefixtures("torch_one_thread")

EXCLUDED = {"positive", "duplicate", "self", "eval_positive"}
SCORED = {"kept", "not_sampled", "filtered:relative_margin", "filtered:absolute_margin", "filtered:max_score",
          "filtered:min_score", "filtered:rank_window"}

# A tiny collection about energy; d_dup (added where needed) copies d1 up to case and punctuation.
DOCS = [
    {"_id": "d1", "title": "Solar power", "text": "Solar panels convert sunlight into electricity for homes."},
    {"_id": "d2", "title": "Wind power", "text": "Wind turbines convert the wind into electricity on farms."},
    {"_id": "d3", "title": "Hydro power", "text": "Dams turn falling water into electricity with turbines."},
    {"_id": "d4", "title": "Batteries", "text": "Batteries store electricity from solar panels for the night."},
    {"_id": "d5", "title": "Coal", "text": "Coal plants burn coal to make steam and electricity."},
    {"_id": "d6", "title": "Nuclear", "text": "Nuclear reactors split atoms; the heat makes electricity."},
    {"_id": "d7", "title": "Sunlight", "text": "Sunlight reaching the earth varies with the seasons."},
    {"_id": "d8", "title": "Homes", "text": "Homes use electricity for light, heat and cooking."},
]
DUP = {"_id": "d_dup", "title": "SOLAR POWER:", "text": "solar panels -- convert sunlight, into ELECTRICITY for homes!"}
QUERIES = [
    {"_id": "q1", "text": "how do solar panels make electricity for homes"},
    {"_id": "q2", "text": "wind turbines and electricity"},
    {"_id": "q3", "text": "which plants burn coal"},
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td5\t1\n"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One ``$HARDNEG_CACHE`` for the module (bi-encoder embeddings of adi are computed once); tests that
    count cross-encoder work point ``output.score_cache`` at their own file."""
    return tmp_path_factory.mktemp("mining_cache")


@pytest.fixture
def env(monkeypatch, data_root, shared_cache) -> Path:
    mining_env(monkeypatch, data_root, shared_cache)
    return shared_cache


def _adi_args(ce: Path, score_cache: Path, *extra: str) -> list[str]:
    return ["--data", "adi", "--split", "test", "--cross-encoder", str(ce),
            "--set", f"output.score_cache={json.dumps(str(score_cache))}", "--set", "output.shard_size=10", *extra]


@pytest.fixture(scope="module")
def adi_run(tmp_path_factory, data_root, shared_cache, tiny_cross_encoder, torch_one_thread):
    """adi test split (35 queries), BM25 + dense candidates, tiny cross-encoder, 4 shards of 10 queries."""
    base = tmp_path_factory.mktemp("adi_run")
    out, scores = base / "out", base / "scores.sqlite"
    with pytest.MonkeyPatch.context() as mp:
        mining_env(mp, data_root, shared_cache)
        rc = mine(out, *_adi_args(tiny_cross_encoder, scores))
    assert rc == 0
    return SimpleNamespace(out=out, scores=scores, manifest=read_manifest(out),
                           triples=read_rows(out / "triples.parquet"), cands=read_rows(out / "candidates.parquet"),
                           qrels=load_beir(data_root / "adi", "test").qrels)


# ------------------------------------------------------------------------------------------- adi run


def test_adi_writes_every_output_file(adi_run):
    for name in OUTPUT_FILES:
        assert (adi_run.out / name).is_file(), name
    assert (adi_run.out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (adi_run.out / "report.md").read_text()
    assert "# Mining report: adi" in report and "scores.png" in report
    assert not list(adi_run.out.glob("*.tmp*")), "temporary files left behind"
    m = adi_run.manifest
    assert m["counts"]["queries"] == 35 and m["counts"]["shards"] == 4 and m["counts"]["shards_resumed"] == 0
    assert m["models"]["false_negative_filter"] == "on (relative_margin)"  # names the rules that apply
    assert m["models"]["cross_encoder_fingerprint"] and m["models"]["bi_encoder_fingerprint"]
    assert m["config"]["data"] == {**m["config"]["data"], "name": "adi", "split": "test"}
    assert m["config"]["output"]["shard_size"] == 10
    assert m["config_fingerprint"] == json.loads((adi_run.out / "job.json").read_text())["config_fingerprint"]


def test_adi_outputs_load_with_datasets(adi_run):
    from datasets import load_dataset

    triples = load_dataset("parquet", data_files=str(adi_run.out / "triples.parquet"))["train"]
    assert triples.num_rows == adi_run.manifest["counts"]["triples"] == len(adi_run.triples)
    assert {"query_id", "query", "positive_id", "positive", "negative_ids", "negatives", "negative_scores",
            "negative_sources", "positive_score"} <= set(triples.column_names)
    ntuple = load_dataset("parquet", data_files=str(adi_run.out / "ntuple.parquet"))["train"]
    assert ntuple.column_names == ["query", "positive"] + [f"negative_{j}" for j in range(1, 6)]
    assert ntuple.num_rows == adi_run.manifest["counts"]["ntuple_rows"] > 0
    triplets = load_dataset("parquet", data_files=str(adi_run.out / "triplets.parquet"))["train"]
    assert triplets.column_names == ["query", "positive", "negative"]
    assert triplets.num_rows == adi_run.manifest["counts"]["triplet_rows"] == sum(
        len(r["negative_ids"]) for r in adi_run.triples)


def test_adi_one_row_per_query_positive_and_texts_match_corpus(adi_run, data_root):
    col = load_beir(data_root / "adi", "test")
    text = dict(zip(col.corpus["_id"], col.doc_texts(), strict=True))
    pairs = {(r["query_id"], r["positive_id"]) for r in adi_run.triples}
    assert len(pairs) == len(adi_run.triples)
    assert pairs == {(q, d) for q, judged in adi_run.qrels.items() for d, g in judged.items() if g >= 1}
    for r in adi_run.triples:
        assert r["query"] == col.queries[r["query_id"]]
        assert r["positive"] == text[r["positive_id"]]
        assert r["negatives"] == [text[d] for d in r["negative_ids"]]
        assert len(r["negative_ids"]) == len(set(r["negative_ids"])) <= 5


def test_adi_negatives_are_never_positives_nor_the_query_itself(adi_run):
    n_neg = 0
    for r in adi_run.triples:
        positives = set(adi_run.qrels[r["query_id"]])
        for d in r["negative_ids"]:
            n_neg += 1
            assert d not in positives, (r["query_id"], d)
            assert d != r["query_id"], (r["query_id"], d)
    assert n_neg > 0
    # adi numbers queries and documents 1..n: with exclusion.drop_self the document named like the query is
    # never a negative
    if adi_run.manifest["config"]["exclusion"]["drop_self"]:
        same = [c["fate"] for c in adi_run.cands if c["doc_id"] == c["query_id"]]
        assert same and set(same) <= {"self", "positive"}, same
    for c in adi_run.cands:
        if c["doc_id"] in adi_run.qrels[c["query_id"]]:
            assert c["fate"] == "positive", c


def test_adi_every_candidate_has_a_fate_and_counts_match(adi_run):
    m, cands, triples = adi_run.manifest, adi_run.cands, adi_run.triples
    fates = Counter(c["fate"] for c in cands)
    assert set(fates) <= EXCLUDED | SCORED, fates
    assert "pending" not in fates
    assert sum(m["counts"]["fates"].values()) == len(cands) == m["counts"]["candidates"]
    assert m["counts"]["fates"] == dict(fates)
    negs = {r["query_id"]: r["negative_ids"] for r in triples}
    assert m["queries_without_negatives"] == sorted(q for q, n in negs.items() if not n)
    assert m["counts"]["queries_without_negatives"] == len(m["queries_without_negatives"])
    assert m["counts"]["queries_with_fewer_than_5_negatives"] == sum(1 for n in negs.values() if 0 < len(n) < 5)
    assert m["counts"]["ntuple_rows"] == sum(1 for r in triples if len(r["negative_ids"]) >= 5)
    assert pq.read_table(adi_run.out / "ntuple.parquet").num_rows == m["counts"]["ntuple_rows"]
    # the negatives of a query are exactly its candidates with fate 'kept'
    kept = defaultdict(set)
    for c in cands:
        if c["fate"] == "kept":
            kept[c["query_id"]].add(c["doc_id"])
    for q, n in negs.items():
        assert set(n) == kept.get(q, set()), q
    assert fates["kept"] == sum(len(n) for n in negs.values())
    # candidates of one query are unique
    assert len({(c["query_id"], c["doc_id"]) for c in cands}) == len(cands)


def test_adi_candidates_are_tagged_with_sources_and_ranks(adi_run):
    seen = Counter()
    for c in adi_run.cands:
        assert c["sources"] and set(c["sources"]) <= {"bm25", "dense"}, c
        assert len(c["sources"]) == len(set(c["sources"]))
        for src in ("bm25", "dense"):
            if src in c["sources"]:
                assert 1 <= c[f"{src}_rank"] <= 30 and c[f"{src}_score"] is not None, c
            else:
                assert c[f"{src}_rank"] is None and c[f"{src}_score"] is None, c
        seen["+".join(c["sources"])] += 1
    assert seen["bm25"] and seen["dense"] and seen["bm25+dense"], seen
    # the triples name the sources of each negative
    src = {(c["query_id"], c["doc_id"]): "+".join(c["sources"]) for c in adi_run.cands}
    for r in adi_run.triples:
        assert r["negative_sources"] == [src[(r["query_id"], d)] for d in r["negative_ids"]]
    # per query, dense found its top 30 (adi has 82 documents)
    dense_per_q = Counter(c["query_id"] for c in adi_run.cands if "dense" in c["sources"])
    assert set(dense_per_q.values()) == {30}


def test_adi_cross_encoder_scored_every_pending_candidate(adi_run):
    m = adi_run.manifest
    cfg = load_config(overrides=[f"cross_encoder.model={json.dumps(m['config']['cross_encoder']['model'])}"])
    n_scored = 0
    for c in adi_run.cands:
        assert c["positive_score"] is not None and math.isfinite(c["positive_score"])
        if c["fate"] in SCORED:
            n_scored += 1
            assert c["ce_score"] is not None and math.isfinite(c["ce_score"]), c
        if c["fate"] == "kept" or c["fate"] == "not_sampled":
            assert filter_reason(c["ce_score"], c["positive_score"], cfg.filter) is None, c
        if c["fate"] == "filtered:relative_margin":
            assert sigmoid(c["ce_score"]) > 0.9 * sigmoid(c["positive_score"]) - 1e-6, c
    assert n_scored > 0
    n_positives = len(adi_run.triples)
    assert m["counts"]["ce_pairs"] == n_scored + n_positives
    # fresh score cache: every pair is scored once, by the judge check (a sample of the queries, all of its
    # pairs new) or by the shards
    check = m["judge_check"]
    assert check["queries"] == min(64, m["counts"]["queries"]) and check["pairs_scored"] == check["pairs"] > 0
    assert m["counts"]["ce_pairs_scored"] == m["counts"]["ce_pairs"] - check["pairs_scored"]
    # the candidates' positive score is the min over the query's positives (positive_reduce = min)
    pos_by_q = defaultdict(list)
    for r in adi_run.triples:
        assert r["positive_score"] is not None
        assert len(r["negative_scores"]) == len(r["negative_ids"])
        pos_by_q[r["query_id"]].append(r["positive_score"])
    for c in adi_run.cands:
        assert c["positive_score"] == pytest.approx(min(pos_by_q[c["query_id"]]), abs=1e-6)
    # the top strategy took the best-scored survivors
    for r in adi_run.triples:
        assert r["negative_scores"] == sorted(r["negative_scores"], reverse=True)
    assert m["score_stats"]["kept"]["n"] == m["counts"]["fates"]["kept"]


def test_second_run_reuses_score_cache(adi_run, tiny_cross_encoder, env, tmp_path):
    out = tmp_path / "again"
    assert mine(out, *_adi_args(tiny_cross_encoder, adi_run.scores)) == 0
    m = read_manifest(out)
    assert m["counts"]["ce_pairs"] == adi_run.manifest["counts"]["ce_pairs"] > 0
    assert m["counts"]["ce_pairs_scored"] == 0
    assert m["timings"]["embedding_cache"] == "hit"
    assert (out / "triples.parquet").read_bytes() == (adi_run.out / "triples.parquet").read_bytes()
    assert "of which 0 were scored now" in (out / "report.md").read_text()


def test_rank_by_retrieval_scores_lazily_and_takes_the_first_survivors(adi_run, tiny_cross_encoder, env, tmp_path):
    """filter.rank_by = retrieval: candidates are scored in fused-rank order only until num_negatives pass the
    filter; the negatives equal the first survivors in retrieval order of the fully scored run."""
    out = tmp_path / "lazy"
    assert mine(out, *_adi_args(tiny_cross_encoder, adi_run.scores, "--set", "filter.rank_by=retrieval")) == 0
    m = read_manifest(out)
    cfg = load_config(overrides=[f"cross_encoder.model={json.dumps(m['config']['cross_encoder']['model'])}"])
    n = m["config"]["sampling"]["num_negatives"]
    full_by_q, lazy_by_q = defaultdict(list), defaultdict(list)
    for c in adi_run.cands:
        full_by_q[c["query_id"]].append(c)
    for c in read_rows(out / "candidates.parquet"):
        lazy_by_q[c["query_id"]].append(c)
    expected, n_scored = {}, 0
    for q, rows in full_by_q.items():
        pending = [c for c in rows if c["fate"] not in EXCLUDED]
        fused = [sum(1 / (60 + r) for r in (c["bm25_rank"], c["dense_rank"]) if r is not None) for c in pending]
        assert fused == sorted(fused, reverse=True)  # rows are in retrieval order
        survivors = [c["doc_id"] for c in pending if filter_reason(c["ce_score"], c["positive_score"], cfg.filter) is None]
        expected[q] = survivors[:n]
        lazy = [c for c in lazy_by_q[q] if c["fate"] not in EXCLUDED]
        assert [c["doc_id"] for c in lazy] == [c["doc_id"] for c in pending]
        scored = [c["ce_score"] is not None for c in lazy]
        # a scored prefix, then only unscored candidates, which are never negatives
        assert scored == sorted(scored, reverse=True), q
        assert all(c["fate"] == "not_scored" for c in lazy if c["ce_score"] is None)
        assert all(c["fate"] != "not_scored" for c in lazy if c["ce_score"] is not None)
        if len(survivors) >= n:  # it stopped as soon as it had n survivors
            last = max(i for i, c in enumerate(lazy) if c["doc_id"] in expected[q])
            assert sum(scored) == last + 1, q
        else:
            assert all(scored), q
        n_scored += sum(scored)
    got = {}
    for r in read_rows(out / "triples.parquet"):
        got[r["query_id"]] = r["negative_ids"]
    assert got == expected
    assert m["counts"]["ce_pairs"] == n_scored + len(adi_run.triples)
    # every candidate left unscored is a pair saved against the fully scored run
    assert m["counts"]["fates"]["not_scored"] > 0
    assert adi_run.manifest["counts"]["ce_pairs"] - m["counts"]["ce_pairs"] == m["counts"]["fates"]["not_scored"] and "never scored" in (out / "report.md").read_text()


def test_rank_by_retrieval_with_random_sampling_scores_every_candidate(adi_run, tiny_cross_encoder, env, tmp_path):
    out = tmp_path / "lazy_random"
    assert mine(out, *_adi_args(tiny_cross_encoder, adi_run.scores, "--set", "filter.rank_by=retrieval",
                                "--set", "sampling.strategy=random")) == 0
    m = read_manifest(out)
    assert m["counts"]["ce_pairs"] == adi_run.manifest["counts"]["ce_pairs"]
    assert "not_scored" not in m["counts"]["fates"]


def test_rerun_into_finished_folder_is_refused(adi_run, tiny_cross_encoder, env, capsys):
    before = (adi_run.out / "manifest.json").read_bytes()
    assert mine(adi_run.out, *_adi_args(tiny_cross_encoder, adi_run.scores)) == 2
    err = capsys.readouterr().err
    assert "already holds this finished job" in err and "--overwrite" in err
    assert mine(adi_run.out, *_adi_args(tiny_cross_encoder, adi_run.scores, "--set", "sampling.num_negatives=3")) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "--overwrite" in err
    assert (adi_run.out / "manifest.json").read_bytes() == before


def test_same_config_and_seed_give_identical_files(tiny_cross_encoder, env, tmp_path):
    args = ["--data", "adi", "--split", "test", "--cross-encoder", str(tiny_cross_encoder),
            "--set", "sampling.strategy=random", "--set", "sampling.seed=7", "--set", "candidates.bm25_k=20",
            "--set", "candidates.dense_k=20"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    # separate score caches: the second run recomputes every score rather than reading the first's
    assert mine(a, *args, "--set", f"output.score_cache={json.dumps(str(tmp_path / 'a.sqlite'))}") == 0
    assert mine(b, *args, "--set", f"output.score_cache={json.dumps(str(tmp_path / 'b.sqlite'))}") == 0
    assert pairs_scored_now(read_manifest(b)) == read_manifest(b)["counts"]["ce_pairs"] > 0
    for name in ("triples.parquet", "candidates.parquet", "ntuple.parquet", "triplets.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the seed matters: another seed samples other negatives somewhere
    assert mine(c, *[x.replace("sampling.seed=7", "sampling.seed=8") for x in args],
                "--set", f"output.score_cache={json.dumps(str(tmp_path / 'a.sqlite'))}") == 0
    ta, tc = read_rows(a / "triples.parquet"), read_rows(c / "triples.parquet")
    assert [r["negative_ids"] for r in ta] != [r["negative_ids"] for r in tc]
    assert [r["query_id"] for r in ta] == [r["query_id"] for r in tc]


# ------------------------------------------------------------------------------------ tiny collections


def test_planted_duplicate_of_a_positive_is_never_a_negative(make_beir, env, tmp_path, tiny_cross_encoder):
    folder = make_beir(DOCS + [DUP], QUERIES, QRELS)
    for extra in ([], ["--cross-encoder", str(tiny_cross_encoder),
                       "--set", f"output.score_cache={json.dumps(str(tmp_path / 's.sqlite'))}"]):
        out = tmp_path / f"out{len(extra)}"
        assert mine(out, "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
                    "--set", "sampling.num_negatives=8", *extra) == 0
        cands = read_rows(out / "candidates.parquet")
        dup = [c for c in cands if c["doc_id"] == "d_dup"]
        assert dup, "BM25 should retrieve the planted duplicate"
        assert [c["fate"] for c in dup if c["query_id"] == "q1"] == ["duplicate"]
        (q1,) = [r for r in read_rows(out / "triples.parquet") if r["query_id"] == "q1"]
        assert "d_dup" not in q1["negative_ids"] and "d1" not in q1["negative_ids"]
        if not extra:  # without a cross-encoder nothing else is filtered: q1 keeps other negatives
            assert q1["negative_ids"]
        assert read_manifest(out)["counts"]["fates"]["duplicate"] >= 1


def test_near_duplicate_by_embedding_cosine_is_excluded(make_beir, env, tmp_path):
    from retriever.encoder import Encoder

    near = {"_id": "d_near", "title": "Solar power", "text": "Solar panels turn sunlight into electric power for houses."}
    folder = make_beir(DOCS + [near], QUERIES, QRELS)
    enc = Encoder("default", bf16="off")
    e = enc.encode_documents([join_title_text(d["title"], d["text"]) for d in (DOCS[0], near, DOCS[1])],
                             show_progress=False)
    cos_near, cos_other = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert cos_near > cos_other + 0.05
    threshold = round((cos_near + max(cos_other, cos_near - 0.1)) / 2, 4)
    common = ["--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
              "--set", "sampling.num_negatives=8"]
    out = tmp_path / "out"
    assert mine(out, *common, "--set", f"exclusion.near_duplicate_cosine={threshold}") == 0
    fates = {(c["query_id"], c["doc_id"]): c["fate"] for c in read_rows(out / "candidates.parquet")}
    assert fates[("q1", "d_near")] == "duplicate"
    assert fates[("q1", "d2")] != "duplicate"
    (q1,) = [r for r in read_rows(out / "triples.parquet") if r["query_id"] == "q1"]
    assert "d_near" not in q1["negative_ids"]
    # off (the default): the paraphrase is an ordinary candidate, and here a negative
    out = tmp_path / "off"
    assert mine(out, *common) == 0
    (q1,) = [r for r in read_rows(out / "triples.parquet") if r["query_id"] == "q1"]
    assert "d_near" in q1["negative_ids"]


def test_overwrite_and_foreign_folders(make_beir, env, tmp_path, capsys):
    folder = make_beir(DOCS, QUERIES, QRELS)
    common = ["--data", str(folder), "--split", "test", "--set", "candidates.dense=false"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a hardneg run")
    assert mine(foreign, *common) == 2
    assert "not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").is_file()
    out = tmp_path / "out"
    assert mine(out, *common) == 0
    first = read_rows(out / "triples.parquet")
    assert mine(out, *common, "--set", "sampling.num_negatives=2") == 2
    assert mine(out, *common, "--set", "sampling.num_negatives=2", "--overwrite") == 0
    m = read_manifest(out)
    assert m["config"]["sampling"]["num_negatives"] == 2
    assert all(len(r["negative_ids"]) <= 2 for r in read_rows(out / "triples.parquet"))
    assert any(len(r["negative_ids"]) > 2 for r in first)


def test_query_without_positive_is_refused(make_beir, env, tmp_path, capsys):
    folder = make_beir(DOCS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\nq2\td3\t0\n")
    assert mine(tmp_path / "out", "--data", str(folder), "--split", "test", "--set", "candidates.dense=false") == 2
    err = capsys.readouterr().err
    assert "'q2'" in err and "min_relevance" in err
    # with min_relevance 2 every query lacks a positive; the first one is named
    folder = make_beir(DOCS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\n", name="tiny2")
    assert mine(tmp_path / "out2", "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
                "--set", "data.min_relevance=2") == 2
    assert "'q1'" in capsys.readouterr().err


def test_positive_missing_from_corpus_is_refused(make_beir, env, tmp_path, capsys):
    folder = make_beir(DOCS, QUERIES, QRELS + "q3\td_unknown\t1\n")
    assert mine(tmp_path / "out", "--data", str(folder), "--split", "test", "--set", "candidates.dense=false") == 2
    err = capsys.readouterr().err
    assert "'d_unknown'" in err and "not in the corpus" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


class _NanModel:
    """Stands in for a sentence-transformers CrossEncoder whose predict returns NaN."""

    def predict(self, pairs, **kwargs):
        return np.full(len(pairs), np.nan, dtype=np.float32)


def test_scorer_raises_on_nan_scores():
    scorer = CrossEncoderScorer(_NanModel(), bf16="off")
    with pytest.raises(ScoreError, match="nan") as exc:
        scorer.score([("what is solar power", "Solar panels convert sunlight"), ("q", "d")])
    assert "what is solar power" in str(exc.value) or "'q'" in str(exc.value)

    class Partly(_NanModel):
        def predict(self, pairs, **kwargs):
            return np.array([1.0, np.inf, 0.5], dtype=np.float32)

    with pytest.raises(ScoreError, match="1 pair"):
        CrossEncoderScorer(Partly(), bf16="off").score([("a", "b"), ("c", "d"), ("e", "f")])


def test_nan_from_the_cross_encoder_stops_the_job(make_beir, env, tmp_path, capsys, monkeypatch,
                                                  tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    monkeypatch.setattr(CrossEncoder, "predict",
                        lambda self, inputs, **kw: np.full(len(inputs), np.nan, dtype=np.float32))
    folder = make_beir(DOCS, QUERIES, QRELS)
    scores = tmp_path / "scores.sqlite"
    rc = mine(tmp_path / "out", "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
              "--cross-encoder", str(tiny_cross_encoder), "--set", f"output.score_cache={json.dumps(str(scores))}")
    assert rc == 2
    err = capsys.readouterr().err
    assert "cross-encoder returned nan" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    cache = ScoreCache(scores)
    assert cache.count() == 0, "NaN scores must not enter the score cache"
    cache.close()


def test_query_with_no_candidates_is_listed(make_beir, env, tmp_path, tiny_cross_encoder):
    queries = QUERIES + [{"_id": "q4", "text": "zyxwv qwertz plugh"}]
    folder = make_beir(DOCS, queries, QRELS + "q4\td8\t1\n")
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
                "--cross-encoder", str(tiny_cross_encoder),
                "--set", f"output.score_cache={json.dumps(str(tmp_path / 's.sqlite'))}") == 0
    m = read_manifest(out)
    assert "q4" in m["queries_without_negatives"]
    assert not [c for c in read_rows(out / "candidates.parquet") if c["query_id"] == "q4"]
    (row,) = [r for r in read_rows(out / "triples.parquet") if r["query_id"] == "q4"]
    assert row["negative_ids"] == [] and row["positive_id"] == "d8" and row["positive_score"] is not None
    assert m["counts"]["queries_without_negatives"] == len(m["queries_without_negatives"])


def test_unknown_config_key_is_refused(env, tmp_path, capsys):
    assert mine(tmp_path / "out", "--data", "adi", "--split", "test", "--set", "filter.bogus=1") == 2
    err = capsys.readouterr().err
    assert "'filter.bogus'" in err
    assert not (tmp_path / "out").exists()


def test_unknown_config_key_in_toml_is_refused(env, tmp_path, capsys):
    cfg = tmp_path / "job.toml"
    cfg.write_text('[data]\nname = "adi"\nsplit = "test"\n[sampling]\nnum_negs = 3\n')
    assert mine(tmp_path / "out", "--config", str(cfg)) == 2
    assert "'sampling.num_negs'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- leak guard


def _two_splits(make_beir, train: str, test: str) -> Path:
    make_beir(DOCS, QUERIES, train, split="train")
    return make_beir(DOCS, QUERIES, test, split="test")


def test_leak_guard_refuses_shared_query(make_beir, env, tmp_path, capsys):
    folder = _two_splits(make_beir, "q1\td1\t1\nq2\td2\t1\n", "q2\td3\t1\nq3\td5\t1\n")
    rc = mine(tmp_path / "out", "--data", str(folder), "--split", "train", "--set", "candidates.dense=false",
              "--set", 'data.eval_splits=["test"]')
    assert rc == 2
    err = capsys.readouterr().err
    assert "leak guard" in err and "'q2'" in err and "'test'" in err
    cfg = load_config(overrides=[f"data.name={json.dumps(str(folder))}", "data.split=train",
                                 "candidates.dense=false", 'data.eval_splits=["test"]'])
    with pytest.raises(LeakError, match="q2"):
        run_mining(cfg, tmp_path / "out2")


def test_leak_guard_refuses_shared_positive(make_beir, env, tmp_path, capsys):
    folder = _two_splits(make_beir, "q1\td1\t1\nq2\td2\t1\n", "q3\td2\t1\n")
    rc = mine(tmp_path / "out", "--data", str(folder), "--split", "train", "--set", "candidates.dense=false",
              "--set", 'data.eval_splits=["test"]')
    assert rc == 2
    err = capsys.readouterr().err
    assert "leak guard" in err and "'d2'" in err


def test_leak_guard_bans_evaluation_positives_from_negatives(make_beir, env, tmp_path):
    # no overlap: mining goes ahead, and q3's positive d5 (an evaluation positive) is never a negative
    folder = _two_splits(make_beir, "q1\td1\t1\nq2\td2\t1\n", "q3\td5\t1\n")
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--split", "train", "--set", "candidates.dense=false",
                "--set", 'data.eval_splits=["test"]', "--set", "sampling.num_negatives=8") == 0
    cands = read_rows(out / "candidates.parquet")
    d5 = [c for c in cands if c["doc_id"] == "d5"]
    assert d5 and all(c["fate"] == "eval_positive" for c in d5)
    assert all("d5" not in r["negative_ids"] for r in read_rows(out / "triples.parquet"))
    # the same job without the guard would take d5 as a negative
    out2 = tmp_path / "out2"
    assert mine(out2, "--data", str(folder), "--split", "train", "--set", "candidates.dense=false",
                "--set", "sampling.num_negatives=8") == 0
    assert any("d5" in r["negative_ids"] for r in read_rows(out2 / "triples.parquet"))


# ---------------------------------------------------------------------------------------------- pairs input


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_pairs_input_adds_missing_positive(make_beir, env, tmp_path, fmt):
    folder = make_beir(DOCS, None, None)
    new_text = "Geothermal plants pump hot water from deep wells to make electricity."
    rows = [{"query": "solar panels electricity homes", "positive": join_title_text(DOCS[0]["title"], DOCS[0]["text"])},
            {"query": "geothermal electricity from hot water", "positive": new_text}]
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--set", f"data.pairs={json.dumps(str(path))}",
                "--set", "candidates.dense=false") == 0
    m = read_manifest(out)
    assert m["input"]["added_positives"] == 1
    assert m["input"]["documents"] == len(DOCS) + 1
    triples = {r["query"]: r for r in read_rows(out / "triples.parquet")}
    assert set(triples) == {r["query"] for r in rows}
    solar = triples["solar panels electricity homes"]
    assert solar["positive_id"] == "d1"  # matched to the corpus by text
    geo = triples["geothermal electricity from hot water"]
    assert geo["positive"] == new_text and geo["positive_id"] not in {d["_id"] for d in DOCS}
    assert geo["positive_id"] not in geo["negative_ids"]
    assert geo["negative_ids"], "BM25 finds other electricity documents"
    # the added document is a candidate like any other, and a positive for its own query
    cands = read_rows(out / "candidates.parquet")
    assert any(c["doc_id"] == geo["positive_id"] and c["fate"] == "positive" for c in cands)


# ------------------------------------------------------------------- caches and resume must not go stale


def _retexted(prefix: str) -> tuple[list[dict], list[dict]]:
    """DOCS and QUERIES with the same ids but other texts (as adi, cisi, cranfield and med share ids 1..n)."""
    docs = [{**d, "text": f"{prefix} {d['text']}"} for d in DOCS]
    queries = [{**q, "text": f"{prefix} {q['text']}"} for q in QUERIES]
    return docs, queries


def test_score_cache_is_not_reused_for_other_texts_with_the_same_ids(make_beir, env, tmp_path, tiny_cross_encoder):
    """The score cache is keyed by what was scored: a collection whose ids repeat another's (adi and cisi both
    number queries and documents 1..n) must not get the other collection's scores."""
    shared = tmp_path / "shared.sqlite"
    a = make_beir(DOCS, QUERIES, QRELS, name="coll_a")
    docs_b, queries_b = _retexted("Completely different wording:")
    b = make_beir(docs_b, queries_b, QRELS, name="coll_b")
    common = ["--split", "test", "--set", "candidates.dense=false", "--cross-encoder", str(tiny_cross_encoder)]
    assert mine(tmp_path / "a", "--data", str(a), *common, "--set", f"output.score_cache={json.dumps(str(shared))}") == 0
    assert mine(tmp_path / "b", "--data", str(b), *common, "--set", f"output.score_cache={json.dumps(str(shared))}") == 0
    fresh = tmp_path / "fresh.sqlite"
    assert mine(tmp_path / "b_fresh", "--data", str(b), *common,
                "--set", f"output.score_cache={json.dumps(str(fresh))}") == 0
    got = {(c["query_id"], c["doc_id"]): c["ce_score"] for c in read_rows(tmp_path / "b" / "candidates.parquet")}
    want = {(c["query_id"], c["doc_id"]): c["ce_score"]
            for c in read_rows(tmp_path / "b_fresh" / "candidates.parquet")}
    assert got.keys() == want.keys()
    stale = {k: (got[k], want[k]) for k in got
             if (got[k] is None) != (want[k] is None) or (got[k] is not None and abs(got[k] - want[k]) > 1e-3)}
    assert not stale, f"scores of collection b were taken from collection a's cache entries: {stale}"
    m = read_manifest(tmp_path / "b")
    assert pairs_scored_now(m) == m["counts"]["ce_pairs"]


def test_resume_after_the_input_changed_does_not_mix_old_and_new_shards(make_beir, env, tmp_path, capsys):
    """A killed job (job.json and some shards, no manifest) whose collection changed before the restart is
    refused (mine.check_inputs: the input fingerprint in job.json differs), never finished from shards of the
    old collection; --overwrite then mines the new collection from scratch."""
    folder = make_beir(DOCS, QUERIES, QRELS)
    out = tmp_path / "out"
    args = ["--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
            "--set", "output.shard_size=1"]
    assert mine(out, *args) == 0
    # what SIGKILL during shard 3 of 3 leaves behind
    for p in [*out.glob("*.parquet"), out / "manifest.json", out / "report.md", *out.glob("shards/00002.*")]:
        p.unlink()
    assert (out / "job.json").is_file() and len(list(out.glob("shards/*.triples.parquet"))) == 2
    old_shards = {p.name: p.read_bytes() for p in out.glob("shards/*")}
    docs_b, queries_b = _retexted("Edited:")
    make_beir(docs_b, queries_b, QRELS)  # same folder, new texts
    capsys.readouterr()
    assert mine(out, *args) == 2
    err = capsys.readouterr().err
    assert "input changed since it started" in err and "--overwrite" in err
    assert not (out / "manifest.json").exists() and not (out / "triples.parquet").exists()
    assert {p.name: p.read_bytes() for p in out.glob("shards/*")} == old_shards, "the refused run touched shards"
    assert mine(out, *args, "--overwrite") == 0
    fresh = tmp_path / "fresh"
    assert mine(fresh, *args) == 0
    rows = read_rows(out / "triples.parquet")
    assert rows == read_rows(fresh / "triples.parquet")
    assert all(r["query"].startswith("Edited:") for r in rows), "triples hold texts of the old collection"


def test_pairs_below_min_relevance_add_no_positive(make_beir, env, tmp_path):
    """A pair graded below data.min_relevance is not a positive: its text is not counted as an added positive."""
    folder = make_beir(DOCS, None, None)
    rows = [{"query": "geothermal electricity", "positive": "Geothermal wells bring up hot water.", "score": 1},
            {"query": "tidal electricity", "positive": "Tidal barrages use the sea's rise and fall.", "score": 0}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--set", f"data.pairs={json.dumps(str(path))}",
                "--set", "candidates.dense=false") == 0
    m = read_manifest(out)
    assert [r["query"] for r in read_rows(out / "triples.parquet")] == ["geothermal electricity"]
    assert m["input"]["positives"] == 1
    assert m["input"]["added_positives"] == 1, "the grade-0 pair's text was counted as an added positive"


def test_pairs_positive_given_as_body_text_matches_the_titled_document(make_beir, env, tmp_path):
    """A positive given without its title (and with other case/punctuation) is the corpus document, not a new one."""
    folder = make_beir(DOCS, None, None)
    rows = [{"query": "how do solar panels make electricity", "positive": "solar panels convert sunlight into "
                                                                          "electricity for homes"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--set", f"data.pairs={json.dumps(str(path))}",
                "--set", "candidates.dense=false") == 0
    assert read_manifest(out)["input"]["added_positives"] == 0
    (row,) = read_rows(out / "triples.parquet")
    assert row["positive_id"] == "d1" and "d1" not in row["negative_ids"]


def test_pairs_fractional_score_is_refused(make_beir, env, tmp_path, capsys):
    folder = make_beir(DOCS, None, None)
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "solar", "positive": "Solar panels.", "score": 0.8}) + "\n")
    assert mine(tmp_path / "out", "--data", str(folder), "--set", f"data.pairs={json.dumps(str(path))}",
                "--set", "candidates.dense=false") == 2
    assert "row 0: score 0.8 is not an integer grade" in capsys.readouterr().err


def test_overwrite_never_deletes_a_folder_that_is_not_a_job(make_beir, env, tmp_path, capsys):
    folder = make_beir(DOCS, QUERIES, QRELS)
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    assert mine(foreign, "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
                "--overwrite") == 2
    assert "holds no hardneg job" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_views_keep_rows_of_a_multi_positive_query_apart(make_beir, env, tmp_path):
    """q1 has two positives: its two rows are in different passes of the n-tuple and triplet views."""
    folder = make_beir(DOCS, QUERIES, QRELS + "q1\td4\t1\n")
    out = tmp_path / "out"
    assert mine(out, "--data", str(folder), "--split", "test", "--set", "candidates.dense=false",
                "--set", "sampling.num_negatives=1") == 0
    queries = [r["query"] for r in read_rows(out / "ntuple.parquet")]
    q1 = QUERIES[0]["text"]
    assert queries.count(q1) == 2
    first, second = (i for i, q in enumerate(queries) if q == q1)
    assert second - first == len(set(queries)), queries  # one full pass over the queries between them
