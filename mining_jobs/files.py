"""File helpers shared by the jobs: atomic writes (temporary name, then rename) and the package versions every
manifest records. No job logic here; the run-folder protocol (prepare, resume, refuse, overwrite, completion
marker, fingerprint) is ``runfolder``, which re-exports these writers."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PACKAGES = ("hardneg", "torch", "sentence-transformers", "transformers", "faiss-cpu", "bm25s", "rank-bm25",
            "datasets", "pytrec-eval-terrier")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name and rename it, so readers never see half a file (parent folders
    are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2))


def write_parquet(table: pa.Table, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """Python and package versions, for manifests."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
