"""The run-folder protocol every job kind uses (``mining_jobs.runfolder``): fresh, resume, refuse, overwrite,
the completion marker, the service's recovery of an unstarted folder, and the one fingerprint helper."""

from __future__ import annotations

import hashlib
import json

import pytest

from mining_jobs.runfolder import (
    Layout,
    RunFolderError,
    clear_unstarted,
    fingerprint,
    finish,
    is_finished,
    prepare,
    read_done,
)
from retriever.errors import HardnegError

KIND = Layout("demo", state_file="demo.json", done_file="done.json", noun="demo job", redo="demo again")


def test_fingerprint_is_sha256_of_sorted_json():
    obj = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    assert fingerprint(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    assert fingerprint({"a": {"x": None, "y": 1.5}, "b": [1, 2]}) == fingerprint(obj)  # key order never counts
    assert fingerprint({**obj, "b": [2, 1]}) != fingerprint(obj)
    assert len(fingerprint(obj, 24)) == 24


def test_a_fresh_folder_gets_the_state_file(tmp_path):
    out = tmp_path / "a" / "run"
    state = prepare(out, KIND, "k1", config={"lr": 1})
    assert not state.resumed and state.key == "k1"
    record = json.loads((out / "demo.json").read_text())
    assert record["kind"] == "demo" and record["fingerprint"] == "k1" and record["config"] == {"lr": 1}
    assert not is_finished(out, KIND) and read_done(out, KIND) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not prepare(empty, KIND, "k1").resumed  # an empty folder is a fresh one


def test_the_same_kind_and_key_resumes_and_the_record_can_grow(tmp_path):
    out = tmp_path / "run"
    first = prepare(out, KIND, "k1", extra={"note": "x"})
    (out / "partial.bin").write_bytes(b"work")
    first.record["inputs"] = {"corpus": "abc"}
    first.save()
    again = prepare(out, KIND, "k1")
    assert again.resumed and again.record["inputs"] == {"corpus": "abc"} and again.record["note"] == "x"
    assert (out / "partial.bin").read_bytes() == b"work"
    assert not list(out.glob("*.tmp"))  # written atomically


def test_another_key_is_refused_and_the_folder_left_alone(tmp_path):
    out = tmp_path / "run"
    prepare(out, KIND, "k1")
    (out / "partial.bin").write_bytes(b"work")
    with pytest.raises(RunFolderError, match="holds a demo job with a different config; pass --overwrite") as err:
        prepare(out, KIND, "k2")
    assert isinstance(err.value, HardnegError)
    assert (out / "partial.bin").is_file() and json.loads((out / "demo.json").read_text())["fingerprint"] == "k1"


def test_a_foreign_non_empty_folder_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=r"not empty and holds no hardneg demo job \(no demo.json\)"):
            prepare(out, KIND, "k1", overwrite=overwrite)
    assert (out / "thesis.tex").read_text() == "years of work" and not (out / "demo.json").exists()


def test_another_kinds_state_file_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    prepare(out, Layout("other", state_file="demo.json"), "k1")
    with pytest.raises(RunFolderError, match="holds a hardneg other run, not a demo"):
        prepare(out, KIND, "k1", overwrite=True)
    (out / "demo.json").write_text(json.dumps({"key": "k1"}))  # a state file of some kind that names none
    with pytest.raises(RunFolderError, match="demo.json of another kind"):
        prepare(out, KIND, "k1", overwrite=True)
    assert (out / "demo.json").is_file()


def test_a_state_file_from_before_kinds_counts_by_its_key_field(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"fingerprint": "k1", "config": {}}))
    assert prepare(out, KIND, "k1").resumed


def test_overwrite_empties_the_folder_and_starts_afresh(tmp_path):
    out = tmp_path / "run"
    prepare(out, KIND, "k1")
    (out / "partial.bin").write_bytes(b"work")
    finish(out, KIND, {"score": 1})
    for key in ("k1", "k2"):  # the same or other settings
        state = prepare(out, KIND, key, overwrite=True)
        assert not state.resumed and state.key == key
        assert sorted(p.name for p in out.iterdir()) == ["demo.json"]


def test_finished_marker_refuses_a_rerun_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare(out, KIND, "k1")
    finish(out, KIND, {"score": 0.5})
    assert is_finished(out, KIND) and read_done(out, KIND) == {"score": 0.5}
    with pytest.raises(RunFolderError, match="already holds this finished demo job; pass --overwrite to demo again"):
        prepare(out, KIND, "k1")
    text = Layout("t", done_file="summary.md")
    prepare(tmp_path / "t", text, "k")
    finish(tmp_path / "t", text, "| a | b |\n")  # a text marker is written as it is
    assert (tmp_path / "t" / "summary.md").read_text() == "| a | b |\n"
    with pytest.raises(ValueError, match="no completion marker"):
        finish(out, Layout("loop"), {})


def test_resume_same_keeps_a_run_with_the_same_key_and_clears_only_another(tmp_path):
    out = tmp_path / "run"
    prepare(out, KIND, "k1")
    (out / "fold_0.bin").write_bytes(b"kept")
    finish(out, KIND, {"score": 1})
    state = prepare(out, KIND, "k1", overwrite=True, resume_same=True)
    assert state.resumed and (out / "fold_0.bin").is_file()
    assert not is_finished(out, KIND)  # redone in place: it must not look finished meanwhile
    assert not prepare(out, KIND, "k2", overwrite=True, resume_same=True).resumed
    assert not (out / "fold_0.bin").exists()
    loop = Layout("loop", state_file="loop.json")  # no completion marker: a finished run resumes
    prepare(tmp_path / "loop", loop, "k")
    assert prepare(tmp_path / "loop", loop, "k").resumed


def test_a_folder_from_before_state_files_is_recognised_by_legacy(tmp_path):
    legacy = Layout("demo", done_file="metrics.json", noun="evaluation",
                    legacy=lambda p: (p / "metrics.json").is_file())
    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"written by an earlier hardneg \(no run.json\); pass --overwrite"):
        prepare(out, legacy, "k1")
    assert not clear_unstarted(out, legacy) and (out / "metrics.json").is_file()
    assert not prepare(out, legacy, "k1", overwrite=True).resumed
    assert not (out / "metrics.json").exists()


def test_an_unreadable_state_file_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "demo.json").write_text("{")
    with pytest.raises(RunFolderError, match="cannot be read"):
        prepare(out, KIND, "k1", overwrite=True)


def test_clear_unstarted_empties_only_a_folder_without_state(tmp_path):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "demo.json.tmp").write_text("{")  # killed while writing its state file
    assert clear_unstarted(out, KIND) and not out.exists()
    assert not clear_unstarted(out, KIND)  # missing: nothing to do
    prepare(out, KIND, "k1")
    (out / "partial.bin").write_bytes(b"work")
    assert not clear_unstarted(out, KIND) and (out / "partial.bin").is_file()


def test_every_job_kind_describes_its_folder_once():
    """The kinds keep the file names their users see; each names its own kind."""
    from mining_jobs import evaluate, iterate, mine, train, train_reranker

    files = {m.FOLDER.kind: (m.FOLDER.state_file, m.FOLDER.done_file)
             for m in (mine, train, iterate, evaluate, train_reranker)}
    assert files == {"mine": ("job.json", "manifest.json"), "train": ("train.json", "metrics.json"),
                     "iterate": ("loop.json", None), "evaluate": ("run.json", "metrics.json"),
                     "train-reranker": ("run.json", "report.json")}
    assert evaluate.FOLDER_MANY.done_file == "summary.md"
    assert isinstance(mine.JobStateError("x"), RunFolderError) and iterate.LoopError is RunFolderError

