"""Record a finished job's report as a result file, so that a make target's numbers come from a script.

Run (the make targets do): python -m benchmarks.record_run RUN_DIR NAME --command "make demo"
RUN_DIR is a run folder with ``report.md`` (a mining job, an ANCE loop) or ``summary.md`` (an evaluation of
several retrievers). Writes, through ``benchmarks.machine.write_result``, ``benchmarks/results/NAME.md``: the
report as the job wrote it (images it shows are copied beside it as ``NAME_<image>``), then the machine and
the command; and ``NAME.json``: the run's ``summary.json``, ``manifest.json`` and ``metrics.json`` files (also
one folder down, ``<retriever>/metrics.json``), plus the machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

from benchmarks.machine import RESULTS, describe, markdown, write_result

REPORTS = ("report.md", "summary.md")
FACTS = ("summary.json", "manifest.json", "metrics.json")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)/\s]+\.png)\)")


def record(run: Path, name: str, command: str, res_dir: Path = RESULTS, wall_seconds: float | None = None) -> None:
    report = next((run / f for f in REPORTS if (run / f).is_file()), None)
    if report is None:
        raise SystemExit(f"{run}: no {' or '.join(REPORTS)}; run the job first")
    text = report.read_text().rstrip("\n")
    res_dir.mkdir(parents=True, exist_ok=True)

    def copy_image(m: re.Match) -> str:
        src = run / m.group(2)
        if not src.is_file():
            return m.group(0)
        shutil.copyfile(src, res_dir / f"{name}_{src.name}")
        return f"![{m.group(1)}]({name}_{src.name})"

    text = IMAGE.sub(copy_image, text)
    lines = text.split("\n")
    if not lines[0].startswith("# "):
        lines = [f"# {run.name}", "", *lines]
    lines += ["", f"Recorded from `{run}/{report.name}` by `python -m benchmarks.record_run`.", "",
              "## Machine", markdown(describe()), "## Command", f"`{command}`", ""]
    if wall_seconds is not None:  # the whole command, stages before the job's own report included
        lines[-2] += (f" took {wall_seconds:.0f} s ({wall_seconds / 60:.1f} min) of wall-clock time in this "
                      "invocation (finished stages of an earlier one are reused).")
    facts = {str(p.relative_to(run)): json.loads(p.read_text())
             for p in [*(run / f for f in FACTS), *sorted(run.glob("*/metrics.json"))] if p.is_file()}
    write_result(name, {"run": str(run), "report": report.name, "command": command, "wall_seconds": wall_seconds,
                        "files": facts}, lines, res_dir=res_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="the job's run folder")
    ap.add_argument("name", help="result name: writes benchmarks/results/NAME.md and NAME.json")
    ap.add_argument("--command", required=True, help="the command that produced the run (shown in the result)")
    ap.add_argument("--started", type=float, default=None,
                    help="the command's start (seconds since the epoch, `date +%%s`): records its wall-clock time")
    args = ap.parse_args()
    record(args.run, args.name, args.command,
           wall_seconds=None if args.started is None else time.time() - args.started)


if __name__ == "__main__":
    main()
