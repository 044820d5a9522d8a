"""Every job's settings dataclass by command name, and the documented example TOML of each
(``examples/<command>.toml``), generated from the dataclass (``settings.example_toml``).

    python -m mining_jobs.job_settings --write     # regenerate examples/*.toml after changing a setting
    hardneg config train                           # print one of them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import example_toml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

USAGE = {
    "mine": "hardneg mine --config examples/mine.toml --out runs/mine",
    "train": "hardneg train --config examples/train.toml --triples runs/mine",
    "evaluate": "hardneg evaluate --config examples/evaluate.toml",
    "train-reranker": "hardneg train-reranker --config examples/train-reranker.toml",
    "train-judge": "hardneg train-judge --config examples/train-judge.toml",
    "iterate": "hardneg iterate --config examples/iterate.toml (a worked example: examples/ance.toml)",
}
COMMANDS = tuple(USAGE)


def settings_class(command: str) -> type:
    """The settings dataclass of ``hardneg <command>``."""
    if command == "mine":
        from .config import MineConfig

        return MineConfig
    if command == "train":
        from .train import TrainConfig

        return TrainConfig
    if command == "evaluate":
        from .evaluate import EvalConfig

        return EvalConfig
    if command == "train-reranker":
        from .train_reranker import RerankerJob

        return RerankerJob
    if command == "train-judge":
        from .judge_train import JudgeJob

        return JudgeJob
    if command == "iterate":
        from .iterate import LoopConfig

        return LoopConfig
    raise ValueError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")


def example(command: str) -> str:
    """The documented example TOML of ``hardneg <command>``: every setting, its default and its help."""
    if command == "mine":
        from .config import describe_fields

        return describe_fields()
    header = (f"hardneg {command}: every setting, with its default and what it does.",
              f"Run:   {USAGE[command]}",
              "Every key is also a flag (--key, or --section.key) and a --set key=value override, and the same",
              "keys make a job service config; unknown keys and values of the wrong type are refused by name.")
    return example_toml(settings_class(command), header)


def example_path(command: str) -> Path:
    return EXAMPLES / f"{command}.toml"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write or check examples/<command>.toml")
    p.add_argument("--write", action="store_true", help="rewrite the files (default: check them)")
    args = p.parse_args(argv)
    stale = []
    for c in COMMANDS:
        text, path = example(c), example_path(c)
        if args.write:
            path.write_text(text)
        elif not path.is_file() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        print("out of date (run python -m mining_jobs.job_settings --write): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
