"""Describe the machine a benchmark ran on (CPU, cores, memory, versions), for its result file."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from mining_jobs.files import versions as package_versions

RESULTS = Path(__file__).parent / "results"


def describe() -> dict[str, object]:
    cpu = "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx"))]
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions = package_versions()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "simd_flags": flags, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": mem_gb, "python": platform.python_version(), "platform": platform.platform(),
            "versions": versions, "gpu": gpu}


def arithmetic(info: dict[str, object] | None) -> str:
    """What a run with ``bf16 = "auto"`` computed in on the machine ``info`` (a ``describe()`` record): ``gpu``
    where one was there, ``bf16`` autocast on a CPU with AMX or AVX-512 BF16, else ``fp32``; ``unknown`` when
    the record is missing. Results of different arithmetic differ in their last digits and in speed."""
    if not info:
        return "unknown"
    if info.get("gpu"):
        return "gpu"
    flags = set(info.get("simd_flags") or [])  # type: ignore[arg-type]
    return "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "fp32"


def markdown(info: dict[str, object]) -> str:
    v = ", ".join(f"{k} {val}" for k, val in info["versions"].items())  # type: ignore[union-attr]
    return (f"- CPU: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
            f"{info['memory_gb']} GiB RAM\n- SIMD flags: {' '.join(info['simd_flags'])}\n"  # type: ignore[arg-type]
            f"- Python {info['python']} on {info['platform']}\n- {v}\n")


def write_result(name: str, data: dict[str, object], lines: list[str], res_dir: Path | None = None) -> None:
    """Write ``results/<name>.json`` (``data`` plus the machine) and ``results/<name>.md``; print the Markdown.
    ``res_dir`` replaces ``benchmarks/results`` (tests)."""
    import json

    res_dir = RESULTS if res_dir is None else Path(res_dir)
    res_dir.mkdir(exist_ok=True)
    (res_dir / f"{name}.json").write_text(json.dumps({**data, "machine": describe()}, indent=2))
    (res_dir / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
