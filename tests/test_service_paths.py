"""The job service's path policy: every path in a submitted config resolves (symlinks followed) inside an
allowed root (``--data-root``, default ``$HARDNEG_DATA`` and ``$HARDNEG_HOME``), else 422 naming the field;
names, hub ids and "default" are not paths. The worker checks again before running a job. In-process (the
real FastAPI app over a real SQLite store); no job is run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service extra: pip install 'hardneg[service]'")
from fastapi.testclient import TestClient  # noqa: E402

from mining_jobs.cli import build_parser, main  # noqa: E402
from mining_jobs.service import kinds  # noqa: E402
from mining_jobs.service.server import create_app  # noqa: E402
from mining_jobs.service.store import SQLiteJobStore, default_data_roots  # noqa: E402
from mining_jobs.service.worker import Worker  # noqa: E402

ADI = {"name": "adi", "split": "test"}


@pytest.fixture
def tree(tmp_path, monkeypatch, data_root):
    """``allowed/`` (a root, holding files and a symlink ``escape`` that points out of it), ``outside/`` (no
    root; the working directory and $HOME, so that ``./x`` and ``~/x`` point outside), and the store home."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for d in (allowed / "model", allowed / "run", outside / "model", outside / "org" / "name"):
        d.mkdir(parents=True)
    (allowed / "pairs.jsonl").write_text('{"query": "q", "positive": "p"}\n')
    (allowed / "run" / "triples.parquet").write_bytes(b"PAR1")
    (outside / "pairs.jsonl").write_text('{"query": "q", "positive": "p"}\n')
    (outside / "triples.parquet").write_bytes(b"PAR1")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("HARDNEG_DATA", str(data_root))
    monkeypatch.setenv("HARDNEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(outside))
    monkeypatch.chdir(outside)
    return allowed, outside


@pytest.fixture
def api(tree, tmp_path, data_root):
    allowed, _ = tree
    store = SQLiteJobStore(tmp_path / "home")
    return store, TestClient(create_app(store, data_roots=[data_root, allowed]))


def snapshot(store: SQLiteJobStore) -> str:
    return json.dumps([j.to_dict() | {"timings": None} for j in store.list(limit=1000)], sort_keys=True)


def refused(api, kind: str, config: dict, field: str) -> str:
    """Submit; assert a 422 located at ``field`` whose message names it and the allowed roots, and that nothing
    was stored. Returns the message."""
    store, client = api
    before = snapshot(store)
    r = client.post("/jobs", json={"kind": kind, "config": config})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "config", *field.split(".")], detail
    assert detail["msg"].startswith(f"{field} = "), detail["msg"]
    assert str(Path(store.home / "runs").resolve()) in detail["msg"]  # the allowed roots are listed
    assert snapshot(store) == before
    return detail["msg"]


def accepted(api, kind: str, config: dict) -> dict:
    r = api[1].post("/jobs", json={"kind": kind, "config": config})
    assert r.status_code == 201, r.text
    return r.json()["config"]


# ---------------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize("value", ["../outside", "adi/../../outside", "./model/../../outside", "scifact/.."])
def test_dot_dot_is_refused_in_any_path_field(api, value):
    msg = refused(api, "mine", {"data": {**ADI, "name": value}}, "data.name")
    assert "'..' is not allowed" in msg
    msg = refused(api, "evaluate", {"data": "adi", "split": "test", "model": value}, "model")
    assert "'..' is not allowed" in msg


def test_absolute_relative_and_home_paths_outside_the_roots_are_refused(api, tree, data_root):
    allowed, outside = tree
    out = str(outside)
    cases = [
        ("mine", {"data": {**ADI, "pairs": str(outside / "pairs.jsonl")}}, "data.pairs"),
        ("mine", {"data": {"name": out, "split": "test"}}, "data.name"),
        ("mine", {"data": ADI, "candidates": {"model": str(outside / "model")}}, "candidates.model"),
        ("mine", {"data": ADI, "cross_encoder": {"model": "./model"}}, "cross_encoder.model"),  # cwd is outside
        ("mine", {"data": ADI, "output": {"score_cache": str(outside / "scores.sqlite")}}, "output.score_cache"),
        ("mine", {"data": ADI, "output": {"score_cache": "scores.sqlite"}}, "output.score_cache"),  # relative file
        ("train", {"triples": str(outside / "triples.parquet")}, "triples"),
        ("train", {"triples": str(allowed / "run"), "base_model": "~/model"}, "base_model"),
        ("train", {"triples": str(allowed / "run"), "dev_data": out}, "dev_data"),
        ("train-reranker", {"data": out, "split": "test"}, "data"),
        ("train-reranker", {"data": "adi", "split": "test", "backbone": "/etc"}, "backbone"),
        ("evaluate", {"data": "adi", "split": "test", "cache_dir": str(outside / "cache")}, "cache_dir"),
        ("evaluate", {"data": "adi", "split": "test", "model": "org/name"}, "model"),  # exists here: a path
        ("iterate", {"loop": {"data": out}}, "loop.data"),
        ("iterate", {"loop": {"data": "scifact", "base_model": str(outside / "model")}}, "loop.base_model"),
        ("iterate", {"loop": {"data": "scifact"}, "mine": {"data": {"pairs": str(outside / "pairs.jsonl")}}},
         "mine.data.pairs"),
        ("iterate", {"loop": {"data": "scifact"}, "mine": {"cross_encoder": {"model": out}}}, "mine.cross_encoder.model"),
        ("iterate", {"loop": {"data": "scifact"}, "train": {"dev_data": out}}, "train.dev_data"),
    ]
    for kind, config, field in cases:
        msg = refused(api, kind, config, field)
        assert "outside the allowed roots" in msg, (kind, field, msg)
        assert str(allowed.resolve()) in msg and str(data_root.resolve()) in msg


def test_a_symlink_inside_a_root_that_points_out_of_it_is_refused(api, tree):
    allowed, outside = tree
    escape = allowed / "escape"
    msg = refused(api, "mine", {"data": {**ADI, "pairs": str(escape / "pairs.jsonl")}}, "data.pairs")
    assert f"resolves to {outside.resolve() / 'pairs.jsonl'}" in msg
    refused(api, "mine", {"data": ADI, "candidates": {"model": str(escape / "model")}}, "candidates.model")
    refused(api, "train", {"triples": str(escape / "triples.parquet")}, "triples")
    refused(api, "evaluate", {"data": "adi", "split": "test", "model": str(escape)}, "model")


def test_a_collection_name_that_is_a_symlink_out_of_hardneg_data_is_refused(tree, tmp_path, monkeypatch):
    allowed, outside = tree
    (outside / "coll").mkdir()
    monkeypatch.setenv("HARDNEG_DATA", str(allowed))  # the name "escape" resolves to $HARDNEG_DATA/escape
    store = SQLiteJobStore(tmp_path / "home")
    client = TestClient(create_app(store))  # default roots: $HARDNEG_DATA and $HARDNEG_HOME
    r = client.post("/jobs", json={"kind": "evaluate", "config": {"data": "escape", "split": "test"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config", "data"], r.text
    assert "outside the allowed roots" in r.json()["detail"][0]["msg"]
    assert store.list() == []


def test_toml_submissions_are_checked_too(api, tree):
    _, outside = tree
    r = api[1].post("/jobs", json={"kind": "mine", "config_toml": f'[data]\nname = "adi"\nsplit = "test"\n'
                                                                  f'pairs = "{outside / "pairs.jsonl"}"\n'})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config_toml", "data", "pairs"], r.text


# ---------------------------------------------------------------------------------------------- accepted


def test_paths_inside_the_roots_names_hub_ids_and_default_are_accepted(api, tree, monkeypatch):
    allowed, _ = tree
    conf = accepted(api, "mine", {"data": {**ADI, "pairs": str(allowed / "pairs.jsonl")},
                                  "candidates": {"model": str(allowed / "model")},
                                  "cross_encoder": {"model": "cross-encoder/ms-marco-MiniLM-L-6-v2"},
                                  "output": {"score_cache": str(allowed / "new" / "scores.sqlite")}})
    assert conf["data"]["pairs"] == str(allowed / "pairs.jsonl")
    assert conf["cross_encoder"]["model"] == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    conf = accepted(api, "mine", {"data": ADI})  # name under $HARDNEG_DATA, model "default", empty strings
    assert (conf["data"]["name"], conf["candidates"]["model"], conf["cross_encoder"]["model"]) == ("adi", "default", "")
    conf = accepted(api, "train", {"triples": str(allowed / "run"),
                                   "base_model": "sentence-transformers/all-MiniLM-L6-v2", "dev_data": "adi",
                                   "dev_split": "test"})
    assert conf["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    accepted(api, "evaluate", {"data": "adi", "split": "test", "model": str(allowed / "model"),
                               "cache_dir": str(allowed / "cache")})
    accepted(api, "train-reranker", {"data": "adi", "split": "test", "eval_split": "", "backbone": "org/other"})
    accepted(api, "iterate", {"loop": {"data": "scifact", "rounds": 1, "base_model": str(allowed / "model")}})
    (Path.cwd() / "default").mkdir()  # "default" is the packaged model even where a folder has that name
    assert accepted(api, "evaluate", {"data": "adi", "split": "test", "model": "default"})["model"] == "default"
    monkeypatch.chdir(allowed)  # relative paths resolve from the working directory
    assert accepted(api, "evaluate", {"data": "adi", "split": "test", "model": "./model"})["model"] == "./model"
    assert accepted(api, "evaluate", {"data": "adi", "split": "test", "model": "model"})["model"] == "model"


def test_job_references_into_the_stores_run_folders_are_allowed(api):
    store, client = api
    mined = store.create("mine", {"data": ADI})
    held = store.claim("w", 60)
    store.run_dir(mined.id).mkdir(parents=True)
    (store.run_dir(mined.id) / "triples.parquet").write_bytes(b"PAR1")
    store.finish(mined.id, held.claim, "succeeded")
    conf = accepted(api, "train", {"triples": f"job:{mined.id}"})
    assert conf["triples"] == str(store.run_dir(mined.id).resolve())


def test_check_paths_names_the_field_of_an_iterate_config(tree):
    allowed, outside = tree
    with pytest.raises(kinds.PathPolicyError) as err:
        kinds.check_paths("iterate", {"mine": {"data": {"name": str(outside)}}}, [allowed])
    assert err.value.field == "mine.data.name" and str(allowed.resolve()) in str(err.value)
    with pytest.raises(kinds.PathPolicyError, match="not a usable path"):
        kinds.check_paths("evaluate", {"model": "bad\x00name"}, [allowed])


# Every string field of every kind is either a path field of the policy or known not to be a path: a new field
# must be classified here before this test passes again.
NOT_PATHS = {
    "mine": {"data.split", "candidates.bm25_backend", "candidates.index", "candidates.bf16",
             "candidates.query_prompt", "candidates.doc_prompt", "cross_encoder.bf16", "cross_encoder.positive_reduce",
             "filter.rank_by", "filter.auto_threshold_cost_on", "sampling.strategy", "sampling.fill", "engine", "ray.address",
             "candidates.device", "cross_encoder.device"},
    "train": {"loss", "gist_margin_strategy", "hardness_mode", "bf16", "dev_split", "dev_corpus", "query_prompt",
              "doc_prompt", "device"},
    "train-reranker": {"split", "eval_split", "bf16"},
    "evaluate": {"split", "bm25_backend", "stopwords", "stemmer", "index", "bf16", "query_prompt", "doc_prompt",
                 "device"},
    "iterate": {"loop.mode", "loop.dev_split", "loop.test_split", "train.loss", "train.gist_margin_strategy",
                "train.hardness_mode", "train.bf16", "train.dev_split", "train.dev_corpus", "train.query_prompt",
                "train.doc_prompt", "train.device"},
}
NOT_PATHS["iterate"] |= {f"mine.{f}" for f in NOT_PATHS["mine"]}


def _flatten(conf: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in conf.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}.")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def test_every_string_field_of_every_kind_is_classified(tree):
    allowed, _ = tree
    minimal = {"mine": {"data": ADI}, "train": {"triples": str(allowed / "run")},
               "train-reranker": {"data": "adi", "split": "test"}, "evaluate": {"data": "adi", "split": "test"},
               "iterate": {"loop": {"data": "scifact", "rounds": 1}}}
    assert set(minimal) == set(kinds.KINDS) == set(kinds.PATH_FIELDS)
    for kind, raw in minimal.items():
        flat = _flatten(kinds.resolve(kind, raw))
        paths = set(kinds.PATH_FIELDS[kind])
        assert paths <= set(flat), (kind, paths - set(flat))  # no stale name in the policy
        assert not paths & NOT_PATHS[kind]
        strings = {f for f, v in flat.items() if isinstance(v, str)}
        assert strings - paths - NOT_PATHS[kind] == set(), kind


# ---------------------------------------------------------------------------------------------- worker


def test_worker_refuses_a_job_queued_before_the_policy_changed(tree, tmp_path, data_root):
    allowed, outside = tree
    store = SQLiteJobStore(tmp_path / "home")
    client = TestClient(create_app(store, data_roots=[data_root, allowed, outside]))  # the old, wider policy
    r = client.post("/jobs", json={"kind": "mine", "config": {"data": {**ADI, "pairs": str(outside / "pairs.jsonl")}}})
    assert r.status_code == 201, r.text
    worker = Worker(store, name="w", lease_s=30, poll_s=0.01, data_roots=[data_root, allowed])  # the new one
    assert worker.serve(max_jobs=1) == 1
    job = store.get(r.json()["id"])
    assert job.state == "failed" and job.worker == "w"
    assert job.error.startswith("refused by the worker's path policy: data.pairs = "), job.error
    assert "outside the allowed roots" in job.error and "Traceback" not in job.error
    assert not Path(job.run_dir).exists()  # nothing ran


# ---------------------------------------------------------------------------------------------- command line


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_data_root_flag_is_repeatable(command):
    args = build_parser().parse_args([command, "--data-root", "/a", "--data-root", "b"])
    assert args.data_root == ["/a", "b"]
    assert build_parser().parse_args([command]).data_root is None


def test_default_roots_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HARDNEG_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARDNEG_HOME", str(tmp_path / "home"))
    assert default_data_roots() == [tmp_path / "data", tmp_path / "home"]
    monkeypatch.delenv("HARDNEG_DATA")
    assert default_data_roots() == [tmp_path / "home"]


def test_serve_and_worker_pass_their_roots(monkeypatch, tmp_path):
    import mining_jobs.service.server as server

    monkeypatch.setenv("HARDNEG_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARDNEG_HOME", str(tmp_path / "home"))
    seen: dict[str, object] = {}
    monkeypatch.setattr(server, "serve", lambda home, **kw: seen.update(serve=kw["data_roots"]))
    monkeypatch.setattr(Worker, "install_signal_handlers", lambda self: None)
    monkeypatch.setattr(Worker, "serve", lambda self, **kw: seen.update(worker=self.roots) or 0)
    assert main(["-q", "serve"]) == 0
    assert seen["serve"] == [tmp_path / "data", tmp_path / "home"]
    assert main(["-q", "worker", "--home", str(tmp_path / "w")]) == 0
    assert seen["worker"] == [tmp_path / "data", tmp_path / "home", tmp_path / "w" / "runs"]
    assert main(["-q", "serve", "--data-root", str(tmp_path / "x"), "--data-root", "rel"]) == 0
    assert seen["serve"] == [tmp_path / "x", Path("rel")]
    assert main(["-q", "worker", "--home", str(tmp_path / "w"), "--data-root", str(tmp_path / "x")]) == 0
    assert seen["worker"] == [tmp_path / "x", tmp_path / "w" / "runs"]
