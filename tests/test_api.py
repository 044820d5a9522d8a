"""The Python API (``import hardneg``): the same jobs as the command line, in-memory data like
sentence-transformers' miner, a mining run folder that loads with ``datasets.load_dataset``, the README's
Python example run as written, and ``hardneg push`` offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import Dataset

import hardneg
from mining_jobs.cli import main

pytest.register_assert_rewrite("mining_fixtures")
from mining_fixtures import mining_env  # noqa: E402

pytest_plugins = ("mining_fixtures",)  # tiny_bi_encoder, tiny_cross_encoder, torch_one_thread
pytestmark = pytest.mark.usefixtures("torch_one_thread")

REPO = Path(__file__).resolve().parents[1]

QUERIES = ["how do solar panels work", "what turns wind into power", "how do dams make electricity",
           "where is energy stored at night", "what burns in a coal plant", "how do heat pumps heat homes"]
POSITIVES = ["Solar panels convert sunlight into electricity for homes.",
             "Wind turbines convert the wind into electricity on farms.",
             "Dams turn falling water into electricity with turbines.",
             "Batteries store electricity from solar panels for the night.",
             "Coal plants burn coal to boil water and spin turbines.",
             "Heat pumps move heat from outside air into the house."]
OTHERS = ["Geothermal plants tap the heat under the ground.", "Nuclear reactors split atoms to make heat.",
          "Tidal barrages use the rise and fall of the sea.", "Transmission lines carry power across regions.",
          "Smart meters report electricity use every hour.", "Insulation keeps the heat inside a house."]


@pytest.fixture
def env(monkeypatch, data_root, tmp_path):
    mining_env(monkeypatch, data_root, tmp_path / "cache")
    return tmp_path


def _pairs() -> Dataset:
    return Dataset.from_dict({"anchor": QUERIES, "positive": POSITIVES})


def _settings(bi: Path) -> dict:
    return {"candidates": {"model": str(bi), "bm25_k": 5, "dense_k": 5},
            "sampling": {"num_negatives": 2, "strategy": "top"}}


def _neg_texts(run: Path) -> list[tuple]:
    rows = pq.read_table(run / "triples.parquet", columns=["query", "positive", "negatives"]).to_pylist()
    return sorted((r["query"], r["positive"], tuple(r["negatives"])) for r in rows)


def test_mine_on_an_in_memory_dataset_gives_the_same_triples_as_hardneg_mine(env, tiny_bi_encoder):
    result = hardneg.mine(_pairs(), corpus=POSITIVES + OTHERS, out=env / "api", **_settings(tiny_bi_encoder))
    assert isinstance(result.ntuple, Dataset) and isinstance(result.triples, Dataset)
    assert isinstance(result.triplets, Dataset) and isinstance(result.candidates, Dataset)
    assert result.ntuple.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert result.ntuple.num_rows == len(QUERIES)
    assert result.manifest["counts"]["queries"] == len(QUERIES)
    assert "# Mining report" in result.report or "report" in result.report.lower()
    # the same data as files, through the command line
    src = env / "files"
    src.mkdir()
    with open(src / "corpus.jsonl", "w") as f:
        for i, t in enumerate(POSITIVES + OTHERS):
            f.write(json.dumps({"_id": f"x{i}", "title": "", "text": t}) + "\n")
    Dataset.from_dict({"query": QUERIES, "positive": POSITIVES}).to_parquet(str(src / "pairs.parquet"))
    assert main(["-q", "mine", "--out", str(env / "cli"), "--data", str(src), "--set",
                 f"data.pairs={json.dumps(str(src / 'pairs.parquet'))}", "--set",
                 f"candidates.model={json.dumps(str(tiny_bi_encoder))}", "--set", "candidates.bm25_k=5",
                 "--set", "candidates.dense_k=5", "--set", "sampling.num_negatives=2"]) == 0
    assert _neg_texts(env / "cli") == _neg_texts(result.run_dir)
    assert all(len(n) == 2 for _, _, n in _neg_texts(result.run_dir))


def test_without_a_corpus_the_positives_are_the_corpus(env, tiny_bi_encoder):
    result = hardneg.mine(_pairs(), out=env / "api", **_settings(tiny_bi_encoder))
    for row in result.triples:
        assert set(row["negatives"]) <= set(POSITIVES) - {row["positive"]}
    again = hardneg.mine(_pairs(), out=env / "api", **_settings(tiny_bi_encoder))  # resumes: same job
    assert again.manifest["config_fingerprint"] == result.manifest["config_fingerprint"]


def test_the_run_folder_loads_as_a_dataset_with_its_card(env, tiny_bi_encoder):
    from datasets import load_dataset

    result = hardneg.mine(_pairs(), corpus=POSITIVES + OTHERS, out=env / "run", **_settings(tiny_bi_encoder))
    card = (result.run_dir / "README.md").read_text()
    head = card.split("---")[1]
    for view in ("triples", "ntuple", "triplets"):
        assert f"config_name: {view}" in head
    assert "queries: 6" in card and '"num_negatives": 2' in card
    nt = load_dataset(str(result.run_dir), "ntuple", split="train")
    assert nt.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert sorted(nt["query"]) == sorted(QUERIES)
    assert load_dataset(str(result.run_dir), "triplets", split="train").num_rows == 2 * len(QUERIES)
    assert load_dataset(str(result.run_dir), split="train").column_names == nt.column_names  # ntuple: default


def test_settings_errors_name_the_field_before_any_work(env):
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.mine("adi", split="test", out=env / "x", sampling={"num_negatives": "five"})
    assert err.value.field == "sampling.num_negatives"
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.mine("adi", out=env / "x", sampling={"bogus": 1})
    assert err.value.field == "sampling.bogus"
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.train(env / "nowhere.parquet", out=env / "t", lr=-1.0)
    assert err.value.field == "lr"
    with pytest.raises(hardneg.ConfigError, match="data"):
        hardneg.mine(Dataset.from_dict({"q": QUERIES}), out=env / "x")
    assert not (env / "x").exists() and not (env / "t").exists()


def test_config_sources_merge_like_the_command_line(env, tmp_path):
    from mining_jobs.api import _raw_settings
    from mining_jobs.config import MineConfig, load_config

    toml = tmp_path / "m.toml"
    toml.write_text("[sampling]\nnum_negatives = 7\nseed = 1\n")
    raw = _raw_settings(MineConfig, toml, {"sampling": {"seed": 5}}, ["filter.relative_margin=0.3"])
    from mining_jobs.settings import plain

    assert plain(raw) == {"sampling": {"num_negatives": 7, "seed": 5}, "filter": {"relative_margin": 0.3}}
    cfg = load_config(toml, ["sampling.seed=5", "filter.relative_margin=0.3"])
    assert _raw_settings(MineConfig, cfg, {}, None)["sampling"] == {**raw["sampling"], "strategy": "top",
                                                                      "positive_aware_ratio": 0.95,
                                                                      "simans_a": 1.0, "simans_b": 0.0,
                                                                      "fill": "none"}


def _readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_examples_run_and_return_datasets(env, tiny_bi_encoder, tiny_cross_encoder,
                                                            monkeypatch):
    """Every ```python block of the README runs as written (on tiny models: the packaged model names are
    pointed at them), and the mining example returns a datasets.Dataset."""
    import mining_jobs.api as api

    blocks = _readme_python_blocks()
    assert blocks, "the README has no Python example"
    real_mine, real_train = api.mine, api.train

    def small_mine(*a, **kw):  # the README's settings, on the tiny models
        kw.setdefault("model", str(tiny_bi_encoder))
        if kw.get("cross_encoder"):
            kw["cross_encoder"] = str(tiny_cross_encoder)
        return real_mine(*a, **kw)

    def small_train(*a, **kw):
        kw["base_model"] = str(tiny_bi_encoder)
        kw["max_steps"] = min(kw.get("max_steps", 2), 2)
        kw["batch_size"] = 4
        kw.pop("dev_data", None)
        return real_train(*a, **kw)

    monkeypatch.setattr(hardneg, "mine", small_mine)
    monkeypatch.setattr(hardneg, "train", small_train)
    monkeypatch.chdir(env)
    seen_dataset = False
    for code in blocks:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
        seen_dataset |= any(isinstance(v, Dataset) for v in scope.values())
    assert seen_dataset, "no README example produced a datasets.Dataset"


def test_push_offline_is_a_clear_error_and_changes_nothing(env, tiny_bi_encoder, monkeypatch, capsys):
    result = hardneg.mine(_pairs(), out=env / "run", **_settings(tiny_bi_encoder))
    before = sorted(p.name for p in result.run_dir.iterdir())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(result.run_dir), "someone/mined-negatives"]) == 2
    err = capsys.readouterr().err
    assert "someone/mined-negatives" in err and "offline" in err.lower()
    assert sorted(p.name for p in result.run_dir.iterdir()) == before
    assert main(["push", str(env / "nowhere"), "someone/x"]) == 2
    assert "not a finished mining run" in capsys.readouterr().err


def test_evaluate_from_python_matches_the_command_line(env):
    result = hardneg.evaluate("adi", split="test", retrievers="bm25", out=env / "py")
    assert main(["-q", "evaluate", "--data", "adi", "--split", "test", "--retriever", "bm25",
                 "--out", str(env / "cli")]) == 0
    cli = json.loads((env / "cli" / "metrics.json").read_text())
    assert result.metrics["bm25"]["ndcg@10"] == pytest.approx(cli["ndcg@10"])
    assert "bm25" in result.table and result.per_query
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.evaluate("adi", retrievers=["bm25", "splade"], out=env / "bad")
    assert err.value.field == "retrievers"


def test_iterate_from_python_refuses_bad_settings_by_name(env):
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.iterate(out=env / "loop", loop={"rounds": 0})
    assert err.value.field == "loop.rounds"
    with pytest.raises(hardneg.ConfigError) as err:
        hardneg.iterate(out=env / "loop", train={"lr": "fast"})
    assert err.value.field == "train.lr"


def test_the_config_decides_what_the_keywords_leave_out(env, tmp_path):
    from mining_jobs.api import _raw_settings, _with_out
    from mining_jobs.config import MineConfig
    from mining_jobs.evaluate import EvalConfig

    cfg = {"data": {"name": "nfcorpus"}}
    assert _raw_settings(MineConfig, cfg, {}, None)["data"]["name"] == "nfcorpus"  # mine(config=...) keeps it
    raw = _with_out(_raw_settings(EvalConfig, {"split": "dev", "out": str(tmp_path / "mine")}, {}, None), None, "e")
    assert raw["split"] == "dev" and raw["out"] == str(tmp_path / "mine")  # the config's own folder is used
    assert _with_out({}, tmp_path / "given", "e")["out"] == str(tmp_path / "given")
    with pytest.raises(hardneg.ConfigError) as err:  # a dict config for the loop is read, not refused
        hardneg.iterate({"loop": {"rounds": 0}}, out=env / "loop")
    assert err.value.field == "loop.rounds"
