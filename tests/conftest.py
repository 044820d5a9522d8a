"""Shared fixtures: where the real BEIR collections live, and a builder of tiny BEIR folders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).parents[1].parent / "shared" / "data"

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"


def _resolve_data_root() -> tuple[Path | None, list[str]]:
    """The data folder from ``$HARDNEG_DATA`` (relative paths: from the cwd, then from the repo root),
    else ``<repo>/../shared/data``; also the candidates tried, for the error message."""
    tried: list[str] = []
    env = os.environ.get("HARDNEG_DATA")
    candidates: list[Path] = []
    if env:
        p = Path(env).expanduser()
        candidates.append(p)
        if not p.is_absolute():
            candidates.append(REPO_ROOT / p)
    candidates.append(DEFAULT_DATA)
    for c in candidates:
        tried.append(str(c))
        if c.is_dir():
            return c.resolve(), tried
    return None, tried


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Folder holding the real BEIR collections (scifact, adi, cranfield, cisi, med)."""
    root, tried = _resolve_data_root()
    if root is None:
        pytest.fail(
            "BEIR data folder not found. Set HARDNEG_DATA to the folder holding scifact/, adi/, ... "
            f"(CI uses HARDNEG_DATA=../shared/data from the repo root). Tried: {', '.join(tried)}",
            pytrace=False,
        )
    return root


Line = str | dict


def _jsonl(lines: Iterable[Line]) -> str:
    """Each item becomes one line: dicts are JSON-encoded, strings are written verbatim (so tests can
    write malformed lines)."""
    out = []
    for item in lines:
        out.append(json.dumps(item) if isinstance(item, dict) else item)
    return "".join(s + "\n" for s in out)


@pytest.fixture
def make_beir(tmp_path: Path) -> Callable[..., Path]:
    """Return ``make(corpus, queries, qrels, split="test", name="tiny")`` that writes a BEIR folder under
    ``tmp_path`` and returns its path.

    ``corpus`` and ``queries`` are sequences of lines (dict -> JSON, str -> verbatim); ``None`` leaves
    the file out. ``qrels`` is the raw TSV text of ``qrels/<split>.tsv`` (``None``: no qrels folder).
    """

    def make(corpus: Iterable[Line] | None, queries: Iterable[Line] | None, qrels: str | None,
             split: str = "test", name: str = "tiny") -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        if corpus is not None:
            (folder / "corpus.jsonl").write_text(_jsonl(corpus), encoding="utf-8")
        if queries is not None:
            (folder / "queries.jsonl").write_text(_jsonl(queries), encoding="utf-8")
        if qrels is not None:
            (folder / "qrels").mkdir(exist_ok=True)
            (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
        return folder

    return make
