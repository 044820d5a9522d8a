"""The commands the README and the Makefile show parse with the current command lines: every ``hardneg ...``
against ``mining_jobs.cli.build_parser`` and every ``python -m benchmarks.NAME ...`` against that script's own
argument parser (its ``main`` is stopped right after parsing, so nothing runs). A renamed or removed option
then fails here instead of on a reader's machine."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
BENCH = re.compile(r"^(?:\S*/)?python3? -m (benchmarks\.[a-z_]+)(?:\s|$)")
# synopsis lines, not commands: optional parts, alternatives, elisions, placeholders in angle brackets
SYNOPSIS = re.compile(r"\[|\||\.\.\.|<|\$\(|\$\$")


def shell_lines(block: str) -> list[str]:
    """The command lines of a shell block: continuations joined, comments and trailing ``&`` dropped."""
    out, cur = [], ""
    for raw in block.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        for part in re.split(r"\s&&\s|\s&\s|\s&$|;\s", cur):
            if part.strip():
                out.append(" ".join(part.split()))
        cur = ""
    return out


def commands(text: str) -> list[tuple[str, bool]]:
    """Command lines in ``text`` as (command, whole): those of fenced blocks are whole commands; an inline code
    span (wrapped spans joined) may be a fragment of prose (`hardneg train --loss`), so only its options count."""
    found = [(c, True) for block in FENCE.findall(text) for c in shell_lines(block)]
    rest = FENCE.sub("", text)
    found += [(" ".join(span.split()), False) for span in INLINE.findall(rest)]
    return [(c, whole) for c, whole in found if not SYNOPSIS.search(c)]


def makefile_commands(text: str) -> list[str]:
    """Recipe lines of a Makefile, with ``$(VENV)/bin/`` and ``$(PY)`` read as the commands they name."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [ln.strip() for ln in joined.splitlines() if ln.startswith("\t")]
    lines = [ln.replace("$(VENV)/bin/python", "python").replace("$(PY)", "python").replace("$(VENV)/bin/", "")
             for ln in lines]
    cmds = [" ".join(c.split(" >", 1)[0].split()) for ln in lines
            for c in re.split(r"\s*(?:&&|\|\||;)\s*", ln.lstrip("@-"))]
    return [c for c in cmds if c and not SYNOPSIS.search(c)]  # SYNOPSIS also drops lines with make's $(...)


def hardneg_args(cmd: str) -> list[str] | None:
    words = shlex.split(cmd)
    return words[1:] if words and words[0] == "hardneg" and len(words) > 1 else None


def unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The ``--options`` in ``argv`` that ``parser`` (or the subcommand named first) does not define."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs and argv and argv[0] in subs[0].choices:
        parser, argv = subs[0].choices[argv[0]], argv[1:]
    known = set(parser._option_string_actions)
    return [w.split("=", 1)[0] for w in argv if w.startswith("--") and w.split("=", 1)[0] not in known]


def check(parser: argparse.ArgumentParser, argv: list[str], whole: bool) -> bool:
    """Whether ``argv`` parses (a whole command) or names only options the parser has (a fragment)."""
    if not whole:
        return not unknown_options(parser, argv)
    try:
        parser.parse_args(argv)
    except SystemExit:
        return False
    return True


class _Parsed(Exception):
    pass


def benchmark_parser(module: str, monkeypatch) -> argparse.ArgumentParser | None:
    """The parser ``module.main`` builds (its main is stopped when it parses); None for a script without one."""
    mod = importlib.import_module(module)
    if "parse_args(" not in Path(mod.__file__).read_text():
        return None

    def stop(self, args=None, namespace=None):
        raise _Parsed(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", stop)
        m.setattr("sys.argv", [module])
        try:
            mod.main()
        except _Parsed as done:
            return done.args[0]
    raise AssertionError(f"{module}.main() returned without parsing its arguments")


def all_commands() -> list[tuple[str, bool]]:
    cmds = commands((ROOT / "README.md").read_text())
    cmds += [(c, True) for c in makefile_commands((ROOT / "Makefile").read_text())]
    return list(dict.fromkeys(cmds))


def test_extraction_reads_blocks_spans_and_recipes():
    text = ("Run `hardneg mine --data scifact\n  --out runs/m` or:\n```bash\n"
            "hardneg evaluate --data a \\\n  --out b   # a comment\nhardneg serve &   # background\n"
            "hardneg train [--lr X]\n```\nand `python -m benchmarks.bench_bm25`.")
    assert commands(text) == [("hardneg evaluate --data a --out b", True), ("hardneg serve", True),
                              ("hardneg mine --data scifact --out runs/m", False),
                              ("python -m benchmarks.bench_bm25", False)]
    make = "demo:\n\t$(VENV)/bin/hardneg mine \\\n\t\t--data x && $(PY) -m benchmarks.record_run a b > /dev/null\n"
    assert makefile_commands(make) == ["hardneg mine --data x", "python -m benchmarks.record_run a b"]


def test_a_removed_option_is_caught(monkeypatch):
    from mining_jobs.cli import build_parser

    assert not check(build_parser(), ["mine", "--no-such-option", "1"], whole=True)
    assert not check(build_parser(), ["train", "--no-such-option"], whole=False)
    assert check(build_parser(), ["train", "--loss"], whole=False)
    ablation = benchmark_parser("benchmarks.bench_ablation", monkeypatch)
    assert not check(ablation, ["--cross-encoder", "runs/ce"], whole=True)
    assert check(ablation, ["--judge", "runs/j", "--steps", "60"], whole=True)


def test_readme_and_makefile_hardneg_commands_parse():
    from mining_jobs.cli import build_parser

    cmds = [(c, whole) for c, whole in all_commands() if hardneg_args(c)]
    assert len(cmds) >= 15, cmds  # the README shows many; few found means the extraction broke
    bad = [c for c, whole in cmds if not check(build_parser(), hardneg_args(c), whole)]
    assert bad == [], f"commands that no longer parse: {bad}"


def test_readme_and_makefile_benchmark_commands_parse(monkeypatch):
    cmds = [(c, whole) for c, whole in all_commands() if BENCH.match(c)]
    assert len(cmds) >= 8, cmds
    bad = []
    for cmd, whole in cmds:
        module = BENCH.match(cmd).group(1)
        words = shlex.split(cmd)
        argv = words[words.index(module) + 1:]
        parser = benchmark_parser(module, monkeypatch)
        if parser is None:  # a script without options takes no arguments
            ok = not argv
        else:
            ok = check(parser, argv, whole)
        if not ok:
            bad.append(cmd)
    assert bad == [], f"benchmark commands that no longer parse: {bad}"
