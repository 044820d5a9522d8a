"""BEIR loading (retriever.data): real collections, hand-checked texts, and one test per bad input."""

from __future__ import annotations

import json
import logging
import re

import pytest
from datasets import Dataset, DatasetDict

from retriever.data import (
    collection_from_datasets,
    join_title_text,
    load_beir,
    load_collection,
    load_hf_beir,
    read_qrels,
    resolve_data,
)
from retriever.errors import DataError

HEADER = "query-id\tcorpus-id\tscore\n"

# A valid tiny collection; bad-input tests change one thing at a time.
DOCS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs bark."},
    {"_id": "d3", "title": "", "text": "Birds sing."},
]
QUERIES = [{"_id": "q1", "text": "purring cats"}, {"_id": "q2", "text": "barking dogs"}]
QRELS = HEADER + "q1\td1\t1\nq2\td2\t2\n"


@pytest.fixture(scope="module")
def scifact(data_root):
    return load_beir(data_root / "scifact", "test")


# ------------------------------------------------------------------------------------ real collections


def test_scifact_test_counts(scifact):
    assert scifact.corpus.num_rows == 5183
    assert len(scifact.queries) == 300
    assert sum(len(v) for v in scifact.qrels.values()) == 339
    assert scifact.stats["documents"] == 5183
    assert scifact.stats["queries"] == 1109  # all queries of the file
    assert scifact.stats["split_queries"] == 300
    assert scifact.stats["qrels"] == 339
    assert scifact.stats["empty_texts"] == 0
    assert scifact.name == "scifact" and scifact.split == "test"
    assert set(scifact.queries) == set(scifact.qrels)


def test_scifact_corpus_is_arrow_dataset(scifact):
    assert isinstance(scifact.corpus, Dataset)
    assert scifact.corpus.column_names == ["_id", "title", "text"]
    assert len(scifact.doc_ids) == 5183
    assert len(set(scifact.doc_ids)) == 5183
    assert scifact.doc_ids[0] == "4983"  # first line of corpus.jsonl


def test_scifact_query_and_qrels_by_hand(scifact):
    # queries.jsonl: {"_id": "1", "text": "0-dimensional biomaterials show inductive properties.", ...}
    assert scifact.queries["1"] == "0-dimensional biomaterials show inductive properties."
    # qrels/test.tsv line 2: "1\t31715818\t1"
    assert scifact.qrels["1"] == {"31715818": 1}
    # query "0" is in the train split only
    assert "0" not in scifact.queries


def test_doc_texts_joins_title_and_text(scifact):
    texts = scifact.doc_texts()
    assert len(texts) == 5183
    i = scifact.doc_ids.index("33989422")
    assert texts[i] == (
        "On the origins of ultra-fine anaphase bridges. "
        "Comment on: Chan KL, Palmai-Pallag T, Ying S, Hickson ID. Replication stress induces "
        "sister-chromatid bridging at fragile site loci in mitosis. Nat Cell Biol 2009; 11:753-60."
    )


def test_join_title_text_strips_like_beir():
    assert join_title_text("Title", "Body") == "Title Body"
    assert join_title_text("", "Body") == "Body"  # no leading space
    assert join_title_text("Title", "") == "Title"
    assert join_title_text(None, None) == ""
    assert join_title_text("  T ", " B  ") == "T   B"  # only the ends are stripped


def test_doc_texts_on_tiny_collection(make_beir):
    col = load_beir(make_beir(DOCS, QUERIES, QRELS))
    assert col.doc_texts() == ["Cats Cats purr.", "Dogs Dogs bark.", "Birds sing."]
    assert col.doc_ids == ["d1", "d2", "d3"]
    assert col.queries == {"q1": "purring cats", "q2": "barking dogs"}
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_fingerprint_changes_when_one_doc_changes(make_beir, tmp_path):
    a = load_beir(make_beir(DOCS, QUERIES, QRELS, name="a"))
    a_again = load_beir(make_beir(DOCS, QUERIES, QRELS, name="a_again"))
    changed = [dict(d) for d in DOCS]
    changed[2]["text"] = "Birds sing!"
    b = load_beir(make_beir(changed, QUERIES, QRELS, name="b"))
    assert a.fingerprint() == a_again.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", a.fingerprint())
    assert b.fingerprint() != a.fingerprint()
    retitled = [dict(d) for d in DOCS]
    retitled[0]["title"] = "Kittens"
    c = load_beir(make_beir(retitled, QUERIES, QRELS, name="c"))
    assert c.fingerprint() != a.fingerprint()


def test_fingerprint_is_stable_on_scifact(scifact, data_root):
    again = load_beir(data_root / "scifact", "test")
    assert again.fingerprint() == scifact.fingerprint()


def test_scifact_train_split(data_root):
    col = load_beir(data_root / "scifact", "train")
    assert len(col.queries) == 809
    assert sum(len(v) for v in col.qrels.values()) == 919


def test_cranfield_real_empty_texts_are_kept(data_root, caplog):
    with caplog.at_level(logging.WARNING, logger="retriever.data"):
        col = load_beir(data_root / "cranfield", "test")
    assert col.corpus.num_rows == 1400
    assert col.stats["empty_texts"] == 2
    assert col.stats["empty_text_ids"] == ["471", "995"]
    assert "471" in col.doc_ids and "995" in col.doc_ids
    assert any("empty title and text" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ empty texts


def test_empty_text_doc_is_kept_counted_and_logged(make_beir, caplog):
    docs = DOCS + [{"_id": "d4", "title": "", "text": ""}]
    with caplog.at_level(logging.WARNING, logger="retriever.data"):
        col = load_beir(make_beir(docs, QUERIES, QRELS))
    assert col.corpus.num_rows == 4
    assert col.doc_ids[-1] == "d4"
    assert col.doc_texts()[-1] == ""
    assert col.stats["empty_texts"] == 1
    assert col.stats["empty_text_ids"] == ["d4"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 document(s) have empty title and text" in warnings[0].getMessage()
    assert "d4" in warnings[0].getMessage()


def test_no_warning_without_empty_texts(make_beir, caplog):
    with caplog.at_level(logging.WARNING, logger="retriever.data"):
        col = load_beir(make_beir(DOCS, QUERIES, QRELS))
    assert col.stats["empty_texts"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_whitespace_only_doc_counts_as_empty(make_beir):
    docs = DOCS + [{"_id": "d4", "title": "  ", "text": "\t"}]
    col = load_beir(make_beir(docs, QUERIES, QRELS))
    assert col.stats["empty_texts"] == 1


# ------------------------------------------------------------------------------------ bad inputs


def _loc(folder, name: str, line: int | None = None) -> str:
    """Regex for ``<folder>/<name>[:line]`` as the messages write it."""
    s = re.escape(str(folder / name))
    return s + (f":{line}:" if line is not None else "")


def test_malformed_json_line(make_beir):
    corpus = [json.dumps(DOCS[0]), '{"_id": "d2", "text": "broken', json.dumps(DOCS[2])]
    folder = make_beir(corpus, QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 2) + " malformed JSON line"):
        load_beir(folder)


def test_malformed_json_line_in_queries(make_beir):
    queries = [QUERIES[0], QUERIES[1], "not json at all"]
    folder = make_beir(DOCS, queries, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "queries.jsonl", 3) + " malformed JSON line"):
        load_beir(folder)


def test_json_line_that_is_not_an_object(make_beir):
    folder = make_beir([DOCS[0], '["d2", "Dogs"]'], QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 2) + " expected a JSON object, got list"):
        load_beir(folder)


def test_missing_id(make_beir):
    folder = make_beir([DOCS[0], {"title": "Dogs", "text": "Dogs bark."}], QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 2) + " missing '_id'"):
        load_beir(folder)


def test_missing_text(make_beir):
    folder = make_beir([DOCS[0], {"_id": "d2", "title": "Dogs"}], QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 2) + " id 'd2' has no 'text' field"):
        load_beir(folder)


def test_missing_text_in_queries(make_beir):
    folder = make_beir(DOCS, [QUERIES[0], {"_id": "q2"}], QRELS)
    with pytest.raises(DataError, match=_loc(folder, "queries.jsonl", 2) + " id 'q2' has no 'text' field"):
        load_beir(folder)


def test_non_string_text(make_beir):
    folder = make_beir([DOCS[0], {"_id": "d2", "text": 42}], QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 2) + " id 'd2' field 'text' must be a string"):
        load_beir(folder)


def test_duplicate_document_ids(make_beir):
    docs = [DOCS[0], DOCS[1], DOCS[2], {"_id": "d2", "title": "", "text": "again"}]
    folder = make_beir(docs, QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl", 4)
                       + r" duplicate document id 'd2' \(first seen on line 2\)"):
        load_beir(folder)


def test_duplicate_query_ids(make_beir):
    queries = [QUERIES[0], QUERIES[1], {"_id": "q1", "text": "again"}]
    folder = make_beir(DOCS, queries, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "queries.jsonl", 3)
                       + r" duplicate query id 'q1' \(first seen on line 1\)"):
        load_beir(folder)


def test_qrels_unknown_query_id(make_beir):
    folder = make_beir(DOCS, QUERIES, QRELS + "q9\td1\t1\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 4) + r" qrels name query id 'q9'"):
        load_beir(folder)


def test_qrels_unknown_document_id(make_beir):
    folder = make_beir(DOCS, QUERIES, QRELS + "q1\td9\t1\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 4)
                       + r" qrels of query 'q1' name document id 'd9', which is not in the corpus"):
        load_beir(folder)


def test_missing_split_lists_available_splits(make_beir):
    folder = make_beir(DOCS, QUERIES, QRELS, split="train")
    (folder / "qrels" / "dev.tsv").write_text(QRELS)
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv")
                       + r": split 'test' not found; available splits: dev, train$"):
        load_beir(folder, "test")


def test_missing_split_without_qrels_folder(make_beir):
    folder = make_beir(DOCS, QUERIES, None)
    with pytest.raises(DataError, match=r"split 'test' not found; available splits: none"):
        load_beir(folder, "test")


def test_missing_split_on_real_collection(data_root):
    with pytest.raises(DataError, match=r"split 'dev' not found; available splits: test, train$"):
        load_beir(data_root / "scifact", "dev")


def test_empty_corpus(make_beir):
    folder = make_beir(["", "   "], QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl") + r": empty corpus \(no documents\)"):
        load_beir(folder)


def test_missing_corpus_file(make_beir):
    folder = make_beir(None, QUERIES, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "corpus.jsonl") + ": corpus file not found"):
        load_beir(folder)


def test_missing_queries_file(make_beir):
    folder = make_beir(DOCS, None, QRELS)
    with pytest.raises(DataError, match=_loc(folder, "queries.jsonl") + ": queries file not found"):
        load_beir(folder)


def test_qrels_wrong_column_count(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER + "q1\td1\t1\nq2\td2\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 3)
                       + r" expected 3 tab-separated columns .* got 2: 'q2\\td2'"):
        load_beir(folder)


def test_qrels_five_columns(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER + "q1\td1\t1\tx\ty\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 2) + r" expected 3 .* got 5"):
        load_beir(folder)


def test_qrels_non_numeric_score(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER + "q1\td1\t1\nq2\td2\thigh\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 3)
                       + r" score 'high' is not an integer grade \(query 'q2', doc 'd2'\)"):
        load_beir(folder)


def test_qrels_fractional_grade_is_refused(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER + "q1\td1\t1.7\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 2) + r" score '1.7' is not an integer grade"):
        load_beir(folder)


def test_qrels_duplicate_judgment_is_refused(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER + "q1\td1\t1\nq2\td2\t1\nq1\td1\t2\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 4)
                       + r" duplicate judgment for query 'q1' and document 'd1' \(first on line 2\)"):
        load_beir(folder)


def test_qrels_header_after_blank_line_and_trailing_tab(make_beir):
    folder = make_beir(DOCS, QUERIES, "\n" + HEADER + "q1\td1\t1\t\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 3) + " expected 3 tab-separated columns"):
        load_beir(folder)
    folder = make_beir(DOCS, QUERIES, "\n" + HEADER + "q1\td1\t1\n")
    assert load_beir(folder).qrels == {"q1": {"d1": 1}}


@pytest.mark.parametrize("score", ["inf", "nan", "-inf"])
def test_qrels_non_finite_score_is_a_data_error(make_beir, score):
    # A grade must be an integer: "inf"/"nan" must be reported as DataError naming file:line, like any
    # other bad score (not leak an OverflowError from int(float("inf"))).
    folder = make_beir(DOCS, QUERIES, HEADER + f"q1\td1\t{score}\n")
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv", 2) + f" score '{score}'"):
        load_beir(folder)


def test_qrels_with_only_a_header(make_beir):
    folder = make_beir(DOCS, QUERIES, HEADER)
    with pytest.raises(DataError, match=_loc(folder, "qrels/test.tsv") + ": qrels file has no judgments"):
        load_beir(folder)


def test_missing_collection_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=re.escape(str(missing)) + ": collection folder not found"):
        load_beir(missing)


# ------------------------------------------------------------------------------------ qrels formats


def test_read_qrels_formats(tmp_path):
    p = tmp_path / "q.tsv"
    # headerless, 4-column TREC layout with spaces, float score, blank line
    p.write_text("q1 0 d1 2\n\nq1 0 d2 0\nq2 Q0 d3 1.0\n")
    assert read_qrels(p) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t-1\n")
    assert read_qrels(p) == {"q1": {"d1": 1, "d2": -1}}


def test_queries_only_of_the_split(make_beir):
    queries = QUERIES + [{"_id": "q3", "text": "unjudged"}]
    col = load_beir(make_beir(DOCS, queries, QRELS))
    assert set(col.queries) == {"q1", "q2"}
    assert col.stats["queries"] == 3
    assert col.stats["split_queries"] == 2


# ------------------------------------------------------------------------------------ resolve / load


def test_resolve_name_under_env(data_root, monkeypatch):
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    monkeypatch.chdir(data_root.parent)  # so "adi" is not also a folder of the cwd
    assert resolve_data("adi") == data_root / "adi"
    col = load_collection("adi")
    assert col.name == "adi"
    assert col.corpus.num_rows == 82
    assert len(col.queries) == 35
    assert sum(len(v) for v in col.qrels.values()) == 170


def test_resolve_direct_path(data_root, monkeypatch):
    monkeypatch.delenv("HARDNEG_DATA", raising=False)
    path = data_root / "med"
    assert resolve_data(str(path)) == path
    col = load_collection(str(path))
    assert col.name == "med"
    assert col.corpus.num_rows == 1033
    assert len(col.queries) == 30


def test_resolve_unknown_name_lists_collections(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"--data 'nosuchset': no such folder, and not found under "
                       r"\$HARDNEG_DATA=.*collections there: .*adi, cisi, cranfield, med, scifact"):
        load_collection("nosuchset")


def test_resolve_unknown_name_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("HARDNEG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"--data 'nosuchset'.*\$HARDNEG_DATA is not set"):
        resolve_data("nosuchset")


def test_resolve_hub_id_is_returned_as_string(monkeypatch, tmp_path):
    monkeypatch.delenv("HARDNEG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_data("BeIR/scifact") == "BeIR/scifact"


# ------------------------------------------------------------------------------------ Hugging Face layout


def _hub_datasets(qrels_rows=None):
    corpus = Dataset.from_dict({"_id": ["d1", "d2", "d3"], "title": ["Cats", "", None],
                                "text": ["Cats purr.", "Dogs bark.", ""]})
    queries = Dataset.from_dict({"_id": ["q1", "q2", "q3"], "text": ["purring cats", "barking dogs", "x"]})
    rows = qrels_rows or {"query-id": ["q1", "q2", "q2"], "corpus-id": ["d1", "d2", "d1"], "score": [1, 2, 0]}
    return corpus, queries, Dataset.from_dict(rows)


def test_collection_from_datasets():
    corpus, queries, qrels = _hub_datasets()
    col = collection_from_datasets(corpus, queries, qrels, name="tiny", split="test", source="mem")
    assert isinstance(col.corpus, Dataset)
    assert col.corpus.column_names == ["_id", "title", "text"]
    assert col.doc_ids == ["d1", "d2", "d3"]
    assert col.doc_texts() == ["Cats Cats purr.", "Dogs bark.", ""]
    assert col.queries == {"q1": "purring cats", "q2": "barking dogs"}  # q3 has no judgments
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d1": 0}}
    assert col.stats["documents"] == 3
    assert col.stats["empty_texts"] == 1
    assert col.stats["queries"] == 3 and col.stats["split_queries"] == 2 and col.stats["qrels"] == 3


def test_collection_from_datasets_integer_ids():
    # the hub's qrels often store ids as integers
    corpus = Dataset.from_dict({"_id": ["10", "20"], "title": ["", ""], "text": ["a", "b"]})
    queries = Dataset.from_dict({"_id": ["1"], "text": ["q"]})
    qrels = Dataset.from_dict({"query-id": [1], "corpus-id": [20], "score": [1]})
    col = collection_from_datasets(corpus, queries, qrels, name="t", split="test", source="mem")
    assert col.qrels == {"1": {"20": 1}}


def test_collection_from_datasets_errors():
    corpus, queries, qrels = _hub_datasets()
    with pytest.raises(DataError, match=r"mem corpus: missing column 'text'"):
        collection_from_datasets(corpus.remove_columns("text"), queries, qrels, "t", "test", "mem")
    with pytest.raises(DataError, match=r"mem queries: missing column '_id'"):
        collection_from_datasets(corpus, queries.remove_columns("_id"), qrels, "t", "test", "mem")
    dup = Dataset.from_dict({"_id": ["d1", "d1"], "title": ["", ""], "text": ["a", "b"]})
    with pytest.raises(DataError, match=r"mem corpus: duplicate document id 'd1' \(row 1\)"):
        collection_from_datasets(dup, queries, qrels, "t", "test", "mem")
    _, _, bad_q = _hub_datasets({"query-id": ["q7"], "corpus-id": ["d1"], "score": [1]})
    with pytest.raises(DataError, match=r"mem qrels\[test\]: qrels name query id 'q7'"):
        collection_from_datasets(corpus, queries, bad_q, "t", "test", "mem")
    _, _, bad_d = _hub_datasets({"query-id": ["q1"], "corpus-id": ["d7"], "score": [1]})
    with pytest.raises(DataError, match=r"mem qrels\[test\]: qrels of query 'q1' name document id 'd7'"):
        collection_from_datasets(corpus, queries, bad_d, "t", "test", "mem")


def test_load_hf_beir_with_patched_hub(monkeypatch, tmp_path):
    import datasets

    corpus, queries, qrels = _hub_datasets()
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        if path == "BeIR/tiny" and name == "corpus":
            return DatasetDict({"corpus": corpus})
        if path == "BeIR/tiny" and name == "queries":
            return DatasetDict({"queries": queries})
        if path == "BeIR/tiny-qrels" and split == "test":
            return qrels
        raise AssertionError(f"unexpected load_dataset({path!r}, {name!r}, split={split!r})")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    col = load_hf_beir("BeIR/tiny", "test")
    assert calls == [("BeIR/tiny", "corpus", None), ("BeIR/tiny", "queries", None),
                     ("BeIR/tiny-qrels", None, "test")]
    assert col.name == "BeIR/tiny" and col.split == "test" and col.source == "hf:BeIR/tiny"
    assert col.doc_ids == ["d1", "d2", "d3"]
    assert col.queries == {"q1": "purring cats", "q2": "barking dogs"}
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d1": 0}}

    # a hub id given as --data goes to load_hf_beir as well
    monkeypatch.delenv("HARDNEG_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_collection("BeIR/tiny").qrels == col.qrels


def test_load_hf_beir_failure_is_a_data_error(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match=r"Hugging Face dataset 'BeIR/nope' \(split 'test'\) could not be "
                       r"loaded: offline"):
        load_hf_beir("BeIR/nope", "test")


# ---------------------------------------------------------------------------------------------- hub fallback


def _fake_beir_hub(calls: list):
    """A stand-in for datasets.load_dataset holding BeIR/scifact and BeIR/scifact-qrels (three documents)."""
    corpus = Dataset.from_dict({"_id": ["d1", "d2", "d3"], "title": ["", "", ""],
                                "text": ["cells divide", "stars burn", "rivers flow"]})
    queries = Dataset.from_dict({"_id": ["q1", "q2"], "text": ["how do cells divide", "why do stars burn"]})
    qrels = Dataset.from_dict({"query-id": ["q1", "q2"], "corpus-id": ["d1", "d2"], "score": [1, 1]})

    def load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        if name == "BeIR/scifact" and config == "corpus":
            return {"corpus": corpus}
        if name == "BeIR/scifact" and config == "queries":
            return {"queries": queries}
        if name == "BeIR/scifact-qrels" and split == "test":
            return qrels
        raise FileNotFoundError(f"no {name} {config} {split}")

    return load_dataset


def test_a_beir_name_missing_locally_falls_back_to_the_beir_hub_copy(monkeypatch, tmp_path):
    import datasets

    from retriever.data import load_collection, resolve_data

    monkeypatch.setenv("HARDNEG_DATA", str(tmp_path))  # an empty data root: no local scifact
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_beir_hub(calls))
    assert resolve_data("scifact") == "BeIR/scifact"
    col = load_collection("scifact", "test")
    assert col.name == "scifact" and col.source == "hf:BeIR/scifact"
    assert col.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}} and len(col.doc_ids) == 3
    assert {c[0] for c in calls} == {"BeIR/scifact", "BeIR/scifact-qrels"}
    with pytest.raises(DataError, match=r"--data 'nosuchset': no such folder"):  # not a BEIR name: no fallback
        resolve_data("nosuchset")


def test_offline_the_error_names_both_places_it_looked(monkeypatch, tmp_path):
    import datasets

    from retriever.data import load_collection

    monkeypatch.setenv("HARDNEG_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried offline"))
    with pytest.raises(DataError) as err:
        load_collection("scifact", "test")
    msg = str(err.value)
    assert f"$HARDNEG_DATA={tmp_path}" in msg and "BeIR/scifact" in msg and "BeIR/scifact-qrels" in msg
    assert "offline" in msg
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list = []
    failing = _fake_beir_hub(calls)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: failing("BeIR/none"))
    with pytest.raises(DataError, match=r"not found under .*then looked for the hub copy BeIR/scifact .*could not "
                                         r"be loaded"):
        load_collection("scifact", "test")
