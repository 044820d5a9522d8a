"""The dataset card of a mining run folder: ``README.md`` with the YAML header the Hugging Face Hub reads.

It declares the ``triples``, ``ntuple`` (the default) and ``triplets`` views as configs, so the folder loads
as it is (``datasets.load_dataset(run_folder, "ntuple")``) and can be pushed to a hub unchanged
(``hardneg push``); its body holds the mining config and the report's headline counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VIEWS = {"ntuple": "ntuple.parquet", "triples": "triples.parquet", "triplets": "triplets.parquet"}
CARD = "README.md"


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML scalar


def render_card(m: dict[str, Any]) -> str:
    """The card of a finished mining job from its manifest."""
    c, cfg = m["counts"], m["config"]
    n = cfg["sampling"]["num_negatives"]
    name = m["input"]["name"]
    head = ["---", "configs:"]
    for view, path in VIEWS.items():
        head += [f"- config_name: {view}", "  data_files:", "  - split: train", f"    path: {path}"]
        if view == "ntuple":
            head.append("  default: true")
    head += ["tags:", "- hard-negatives", "- sentence-transformers", "- hardneg",
             "task_categories:", "- sentence-similarity", "size_categories:", f"- {_size(c['triples'])}",
             f"pretty_name: {_yaml_str(f'Hard negatives mined from {name}')}", "---", ""]
    fates = ", ".join(f"{k} {v:,}" for k, v in c["fates"].items())
    body = [
        f"# Hard negatives mined from {name}",
        "",
        f"Mined by [hardneg](https://github.com/) from `{m['input']['source']}` "
        f"(split `{cfg['data']['split']}`): BM25 and dense candidates, the labelled positives and their "
        f"duplicates excluded, the rest judged by `{m['models']['cross_encoder'] or 'no judge'}` "
        f"(false-negative filter: {m['models']['false_negative_filter']}), {n} negatives sampled per query "
        f"(`{cfg['sampling']['strategy']}`).",
        "",
        "| view | rows | columns |",
        "|---|---|---|",
        f"| `ntuple` (default) | {c.get('ntuple_rows', 0):,} | query, positive, negative_1..negative_{n} |",
        f"| `triples` | {c['triples']:,} | query, positive, negatives (list) with ids, judge scores and sources |",
        f"| `triplets` | {c.get('triplet_rows', 0):,} | query, positive, negative (one row per negative) |",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<this folder or repo id>", "ntuple", split="train")',
        "```",
        "",
        "## Headline counts",
        "",
        f"- queries: {c['queries']:,}; candidates judged or excluded: {c['candidates']:,}",
        f"- fates: {fates}",
        f"- queries without a negative: {c['queries_without_negatives']:,}",
        "",
        "`report.md` beside this card is the full mining report; `candidates.parquet` holds every candidate "
        "with its sources, ranks, scores and fate.",
        "",
        "## Mining config",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
    ]
    return "\n".join(head + body)


def _size(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "n>100M"


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    from .files import write_text

    write_text(Path(out) / CARD, render_card(manifest))


PUSHED = ["README.md", "ntuple.parquet", "triples.parquet", "triplets.parquet", "candidates.parquet", "report.md",
          "manifest.json", "scores.png"]



def _offline() -> bool:
    import os

    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def push_run(run: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Push a finished mining run folder (its card, views, candidates, report and manifest; not its shards)
    to a Hugging Face dataset repository; returns the repository URL. Nothing in the folder changes."""
    from retriever.errors import HardnegError

    run = Path(run)
    manifest_path = run / "manifest.json"
    if not manifest_path.is_file():
        raise HardnegError(f"{run}: not a finished mining run (no manifest.json); push the folder of a "
                           "`hardneg mine` run that completed")
    if not repo_id or repo_id.count("/") != 1 or any(not p for p in repo_id.split("/")):
        raise HardnegError(f"repository id {repo_id!r}: expected OWNER/NAME")
    if not (run / CARD).is_file():  # a run from before the card existed
        raise HardnegError(f"{run}: no {CARD} (dataset card); mine again with this version to write it")
    where = f"{run} -> https://huggingface.co/datasets/{repo_id}"
    if _offline():
        raise HardnegError(f"cannot push {where}: offline (HF_HUB_OFFLINE is set); nothing was sent and the run "
                           "folder is unchanged. Push it later from a machine with network: hardneg push "
                           f"{run} {repo_id}")
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(run), repo_id=repo_id, repo_type="dataset",
                          allow_patterns=[p for p in PUSHED if (run / p).is_file()],
                          commit_message="hardneg: mined hard negatives")
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all end the same way
        raise HardnegError(f"cannot push {where}: {type(exc).__name__}: {exc}. Nothing in the run folder "
                           "changed; check the network (offline machines cannot push) and the token "
                           "(huggingface-cli login or --token-file)") from None
    return f"https://huggingface.co/datasets/{repo_id}"
