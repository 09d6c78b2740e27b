"""Wall time and peak memory of `cd4ml run`, end to end, at about 1M and 10M rows of train.csv.

The real CLI runs in a subprocess on a fresh work directory with the sample data sized by
`--set data.sample.*`. Every 0.2 s the RSS of the whole process tree (the `cd4ml run` process,
DVC's shells and the `cd4ml stage ...` process it starts) is summed; the maximum is the peak
that must stay under the budget. Samples are attributed to the stage running at the time, so
the per-stage table shows where time and memory go.

Run: `.venv/bin/python bench/pipeline.py [--sizes 1M,10M] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 120)
GB = 1e9
BUDGET_BYTES = 4 * GB  # at 10M rows, on 2 cores
POLL_SECONDS = 0.2
DAYS = 730
FAVORITA_STORES = 54
# train.csv rows per store x item x day of the sample at seed 42 (zero sales are not written)
ROWS_PER_CELL = 0.41
OUTSIDE_STAGES = "(cd4ml run + DVC)"


@dataclass
class StageTrace:
    """One stage as seen from outside: when its process lived, and the memory peaks meanwhile."""

    first_seen: float
    last_seen: float
    peak_tree: int = 0  # whole process tree while this stage ran: what the budget is about
    peak_own: int = 0  # the `cd4ml stage` process alone


@dataclass
class Measurement:
    label: str
    stores: int
    items: int
    exit_code: int = 0
    seconds: float = 0.0
    peak_tree: int = 0
    peak_stage: str = ""
    stages: dict[str, StageTrace] = field(default_factory=dict)
    train_csv_rows: int = 0
    canonical_rows: int = 0
    summaries: dict[str, str] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average at each sample
    log: Path | None = None
    noop_seconds: float | None = None  # a second `cd4ml run` with nothing changed, best of 3


def parse_rows(text: str) -> int:
    """'1M' → 1_000_000, '500k' → 500_000, '2500000' → 2_500_000."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def sample_shape(rows: int) -> tuple[int, int]:
    """Stores and items giving about `rows` train.csv rows over DAYS days."""
    stores = FAVORITA_STORES if rows >= 5_000_000 else 20
    return stores, math.ceil(rows / (stores * DAYS * ROWS_PER_CELL))


def _stage_of(command: list[str]) -> str | None:
    """`... cd4ml stage featurize` → 'featurize'."""
    if "stage" in command[:-1] and any(part.endswith("cd4ml") for part in command):
        return command[command.index("stage") + 1]
    return None


def _sample_tree(root: psutil.Process) -> tuple[int, dict[str, int]]:
    """RSS of every live process in the tree, and of each `cd4ml stage` process in it."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, {}
    total, stages = 0, {}
    for process in processes:
        try:
            rss = process.memory_info().rss
            stage = _stage_of(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        total += rss
        if stage:
            stages[stage] = stages.get(stage, 0) + rss
    return total, stages


def measure(label: str, rows: int, workdir: Path) -> Measurement:
    """Run `cd4ml run` on a fresh sample of about `rows` rows, polling its process tree."""
    stores, items = sample_shape(rows)
    result = Measurement(label, stores, items, log=workdir / "run.log")
    cd4ml = Path(sys.executable).parent / "cd4ml"
    command = [str(cd4ml), "run", "--workdir", str(workdir)]
    for key, value in {"stores": stores, "items": items, "days": DAYS}.items():
        command += ["--set", f"data.sample.{key}={value}"]
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with result.log.open("w") as log, console.status(f"{label}: starting") as status:
        process = psutil.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while process.poll() is None:
            total, stage_rss = _sample_tree(process)
            now = time.perf_counter() - started
            running = next(iter(stage_rss), OUTSIDE_STAGES)
            trace = result.stages.setdefault(running, StageTrace(now, now))
            trace.last_seen = now
            result.load.append(os.getloadavg()[0])
            trace.peak_tree = max(trace.peak_tree, total)
            trace.peak_own = max(trace.peak_own, stage_rss.get(running, 0))
            if total > result.peak_tree:
                result.peak_tree, result.peak_stage = total, running
            status.update(
                f"{label}: {running} · {now:.0f} s · tree {total / GB:.2f} GB (peak {result.peak_tree / GB:.2f} GB)"
            )
            time.sleep(POLL_SECONDS)
    result.seconds = time.perf_counter() - started
    result.exit_code = process.returncode
    _read_outputs(workdir, result)
    if result.exit_code == 0:
        result.noop_seconds = min(_timed_noop(command) for _ in range(3))
    return result


def _timed_noop(command: list[str]) -> float:
    """Seconds of a `cd4ml run` that finds every stage up to date."""
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def _read_outputs(workdir: Path, result: Measurement) -> None:
    ingest = workdir / "reports" / "ingest.json"
    if ingest.exists():
        counts = json.loads(ingest.read_text())
        result.train_csv_rows, result.canonical_rows = counts["rows_read"], counts["rows"]
    for summary in sorted((workdir / ".cd4ml" / "summaries").glob("*.txt")):
        result.summaries[summary.stem] = summary.read_text().strip()


def _verdict(m: Measurement) -> str:
    if m.exit_code != 0:
        ran = [name for name in m.stages if name != OUTSIDE_STAGES]
        return f"[red]failed in {ran[-1] if ran else 'setup'}[/]"
    return "[green]within[/]" if m.peak_tree < BUDGET_BYTES else "[red]over[/]"


def _seconds(m: Measurement, stage: str) -> float:
    """A stage's lifetime; outside the stages, the rest of the wall time."""
    if stage != OUTSIDE_STAGES:
        trace = m.stages[stage]
        return trace.last_seen - trace.first_seen
    return m.seconds - sum(_seconds(m, s) for s in m.stages if s != OUTSIDE_STAGES)


def report(measurements: list[Measurement]) -> None:
    """The comparison table, the per-stage table and what each stage said it did."""
    overview = Table(title="cd4ml run, end to end (sample data, 2 cores)")
    for column in (
        "size",
        "stores x items x days",
        "train.csv rows",
        "canonical rows",
        "wall s",
        "no-op rerun s",
        "load avg",
        "peak RSS GB",
        "peak during",
        "budget GB",
        "verdict",
    ):
        overview.add_column(column, justify="right" if column not in ("size", "peak during") else "left")
    for m in measurements:
        overview.add_row(
            m.label,
            f"{m.stores} x {m.items} x {DAYS}",
            f"{m.train_csv_rows:,}",
            f"{m.canonical_rows:,}",
            f"{m.seconds:.0f}",
            f"{m.noop_seconds:.1f}" if m.noop_seconds is not None else "-",
            f"{sum(m.load) / len(m.load):.1f}" if m.load else "-",
            f"{m.peak_tree / GB:.2f}",
            m.peak_stage,
            f"{BUDGET_BYTES / GB:.0f}",
            _verdict(m),
        )
    console.print(overview)
    console.print(
        "load avg: mean 1-minute load average during the run (2 cores; above 2, other "
        "processes were competing for the CPU and wall times are inflated)"
    )
    stages = Table(title="per stage: seconds, peak RSS of the process tree (of the stage process)")
    stages.add_column("stage")
    for m in measurements:
        stages.add_column(f"{m.label} s", justify="right")
        stages.add_column(f"{m.label} peak GB", justify="right")
    names = list(dict.fromkeys(name for m in measurements for name in m.stages))
    for name in names:
        cells = []
        for m in measurements:
            trace = m.stages.get(name)
            cells += (
                ["—", "—"]
                if trace is None
                else [
                    f"{_seconds(m, name):.1f}",
                    f"{trace.peak_tree / GB:.2f} ({trace.peak_own / GB:.2f})",
                ]
            )
        stages.add_row(name, *cells)
    console.print(stages)
    for m in measurements:
        for stage in m.stages:
            if stage in m.summaries:
                console.print(f"  {m.label} {stage}: {m.summaries[stage]}", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="train.csv rows per run, e.g. 1M,10M")
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args()
    measurements = []
    for label in args.sizes.split(","):
        workdir = Path(tempfile.mkdtemp(prefix=f"cd4ml-pipeline-{label}-"))
        m = measure(label, parse_rows(label), workdir)
        measurements.append(m)
        console.print(
            f"[green]✓[/] {label}: {m.seconds:.0f} s, peak {m.peak_tree / GB:.2f} GB, exit {m.exit_code}",
            highlight=False,
        )
        if m.exit_code != 0:
            console.print(m.log.read_text()[-3000:], highlight=False, markup=False)
        if args.keep or m.exit_code != 0:
            console.print(f"  work directory kept: {workdir}", highlight=False)
        else:
            shutil.rmtree(workdir)
    report(measurements)


if __name__ == "__main__":
    main()
