"""CLI start-up: wall time of quick commands, this checkout against an earlier revision.

    .venv/bin/python bench/cli.py [--before REV] [--workdir DIR] [--repeat N]

The earlier revision's `src/` is exported with `git archive` into a temporary folder and put first
on PYTHONPATH, so both columns run in the same virtual environment. `models` needs a work directory
with a registry (default: a fresh empty one, which MLflow initialises on the first call). The import
column is the median of `python -X importtime -c "import cd4ml.cli"`'s cumulative time for `cd4ml.cli`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["--version"], ["release", "show"], ["models"]]
RUN_CLI = "import sys; from cd4ml.cli import app; sys.argv[0] = 'cd4ml'; app()"


def export_src(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def seconds(src: Path, args: list[str], workdir: Path, repeat: int) -> float | None:
    """Median wall time of `cd4ml ARGS` (None when the revision has no such command)."""
    env = os.environ | {"PYTHONPATH": str(src)}
    command = [
        sys.executable,
        "-c",
        RUN_CLI,
        *args,
        *(["-w", str(workdir)] if args[0] in {"models", "release"} else []),
    ]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, env=env, check=False)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            return None
    return statistics.median(times)


def import_seconds(src: Path, repeat: int) -> float:
    """Median cumulative `-X importtime` of cd4ml.cli."""
    env = os.environ | {"PYTHONPATH": str(src)}
    times = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import cd4ml.cli"], capture_output=True, text=True, env=env
        )
        line = next(x for x in done.stderr.splitlines() if x.rstrip().endswith("| cd4ml.cli"))
        times.append(int(line.split("|")[1]) / 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="262dd9d", help="git revision to compare with")
    parser.add_argument("--workdir", type=Path, help="work directory for models / release show")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        before = export_src(options.before, Path(temporary))
        workdir = options.workdir or Path(temporary) / "work"
        workdir.mkdir(exist_ok=True)
        after = ROOT / "src"
        seconds(after, ["models"], workdir, 1)  # the first call creates the registry's tables
        print(f"cd4ml start-up, median of {options.repeat} (s) · before = {options.before}, after = working tree")
        print(f"{'command':<22}{'before':>10}{'after':>10}")
        rows = [("import cd4ml.cli", import_seconds(before, options.repeat), import_seconds(after, options.repeat))]
        rows += [
            (
                " ".join(args),
                seconds(before, args, workdir, options.repeat),
                seconds(after, args, workdir, options.repeat),
            )
            for args in COMMANDS
        ]
        for name, was, now in rows:
            print(f"{name:<22}{'-' if was is None else f'{was:.2f}':>10}{'-' if now is None else f'{now:.2f}':>10}")


if __name__ == "__main__":
    main()
