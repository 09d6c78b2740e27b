"""Batch prediction throughput: `predict_file` (and `cd4ml predict`) on ~1M rows, against floors.

The input is every series of a bundle x every servable date, repeated to `--rows` rows, with a
deterministic promotion pattern. Compared, in one run on the same rows:

- `predict_file`: CSV in → validate → features (`cd4ml.features.row_features`) → ONNX → CSV out,
  the path `cd4ml predict` runs, timed in-process after warm-up;
- `cd4ml predict`: the CLI in a subprocess, start-up and registry look-up included;
- the floors: ONNX and the native model on the precomputed feature matrix (no CSV, no features);
- row by row: `Scorer.predict` on one row at a time (what a naive service loop would do),
  timed on a few hundred rows.

CPU seconds are shown next to wall seconds: on a shared machine wall time also measures the
neighbours. A breakdown of `predict_file`'s steps follows. Predictions of every method are
checked to be identical to `predict_file`'s.

Run: `.venv/bin/python bench/predict.py [--workdir DIR] [--rows 1000000]`; without --workdir a
small sample pipeline (5 stores x 20 items) is run first in a temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from cd4ml.batch import predict_file
from cd4ml.bundle import scorer
from cd4ml.models import load_model
from cd4ml.scoring import Scorer

console = Console(width=None if sys.stdout.isatty() else 120)
CLI = Path(sys.executable).parent / "cd4ml"
ROW_BY_ROW = 300


@dataclass
class Timing:
    method: str
    rows: int
    wall: float
    cpu: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall


def timed(method: str, rows: int, work: Callable[[], object]) -> tuple[Timing, object]:
    """Wall and CPU time of `work()` (this process and the children it waited for)."""
    with console.status(method):
        cpu = _cpu()
        wall = time.perf_counter()
        result = work()
        timing = Timing(method, rows, time.perf_counter() - wall, _cpu() - cpu)
    console.print(f"[green]✓[/] {method}: {timing.wall:.2f} s", highlight=False)
    return timing, result


def _cpu() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def trained_workdir(scratch: Path) -> Path:
    workdir = scratch / "work"
    sample = ["--set", "data.sample.items=20", "--set", "data.sample.stores=5"]
    with console.status("cd4ml run on a 5 x 20 sample"):
        subprocess.run([str(CLI), "run", "-w", str(workdir), *sample], check=True, capture_output=True)
    return workdir


def servable_rows(score: Scorer, rows: int) -> pd.DataFrame:
    """Every series x servable date, repeated to `rows` rows; promotions on every third row."""
    spec = score.spec
    step = timedelta(days=spec.period_days)
    dates = pd.date_range(score.origin + step, score.last_servable, freq=step).strftime("%Y-%m-%d")
    grid = score.attributes.index.to_frame(index=False).merge(pd.DataFrame({"date": dates}), how="cross")
    frame = grid.iloc[np.arange(rows) % len(grid)].reset_index(drop=True)
    for number, covariate in enumerate(spec.covariates):
        frame[covariate] = ((np.arange(rows) + number) % 3 == 0).astype(int)
    return frame[["date", *spec.series_keys, *spec.covariates]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a work directory after `cd4ml run`")
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="cd4ml-bench-predict-"))
    try:
        run(args.workdir or trained_workdir(scratch), args.rows, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(workdir: Path, rows: int, scratch: Path) -> None:
    bundle = workdir.resolve() / "models" / "bundle"
    score = scorer(bundle)
    frame = servable_rows(score, rows)
    source, target = scratch / "rows.csv", scratch / "predictions.csv"
    frame.to_csv(source, index=False)
    console.print(
        f"{rows:,} rows ({len(score.attributes):,} series x {score.spec.horizon} dates, "
        f"repeated), origin {score.origin}, bundle {bundle}"
    )

    head = scratch / "warm-up.csv"
    frame.head(1000).to_csv(head, index=False)
    predict_file(score, head, scratch / "warm-up-out.csv")  # imports, ONNX session

    timings: list[Timing] = []
    timing, _ = timed("predict_file (CSV → CSV)", rows, lambda: predict_file(score, source, target))
    timings.append(timing)
    expected = pd.read_csv(target, float_precision="round_trip")["prediction"].to_numpy()

    cli_target = scratch / "cli.csv"
    command = [
        str(CLI),
        "predict",
        "-i",
        str(source),
        "-o",
        str(cli_target),
        "--model",
        str(bundle),
        "--origin",
        score.origin.isoformat(),
        "-w",
        str(scratch),
    ]
    timing, _ = timed(
        "cd4ml predict (CLI, start-up incl.)",
        rows,
        lambda: subprocess.run(command, check=True, capture_output=True),
    )
    timings.append(timing)
    cli = pd.read_csv(cli_target, float_precision="round_trip")["prediction"].to_numpy()

    steps: list[Timing] = []
    timing, typed_rows = timed("  read CSV + validate", rows, lambda: score.validate(pd.read_csv(source)))
    steps.append(timing)
    timing, X = timed("  features (row_features)", rows, lambda: score.features(typed_rows))
    steps.append(timing)
    timing, onnx = timed("  ONNX on the feature matrix", rows, lambda: score.predictor.predict_features(X))
    steps.append(timing)
    out = frame.assign(prediction=onnx)
    timing, _ = timed("  write CSV", rows, lambda: out.to_csv(scratch / "written.csv", index=False))
    steps.append(timing)

    native_model = load_model(bundle / "native")
    timing, native = timed("floor: native model on the feature matrix", rows, lambda: native_model.predict(X))
    timings.append(timing)
    timings.append(Timing("floor: ONNX on the feature matrix", rows, steps[2].wall, steps[2].cpu))

    singles = [frame.iloc[[i]] for i in range(ROW_BY_ROW)]
    timing, single = timed(
        f"row by row: Scorer.predict x {ROW_BY_ROW}",
        ROW_BY_ROW,
        lambda: np.concatenate([score.predict(row) for row in singles]),
    )
    timings.append(timing)

    identical = {
        "cd4ml predict": np.array_equal(cli, expected),
        "ONNX on matrix": np.array_equal(onnx, expected),
        "row by row": np.array_equal(single, expected[:ROW_BY_ROW]),
        "native (log1p gap)": float(np.max(np.abs(np.log1p(native) - np.log1p(expected)))),
    }
    show(timings, steps, identical)


def show(timings: list[Timing], steps: list[Timing], identical: dict[str, object]) -> None:
    reference = timings[0].rows_per_second
    table = Table(title="batch prediction throughput")
    for column in (
        "method",
        "rows",
        "wall s",
        "CPU s",
        "rows/s (wall)",
        "rows/s (CPU)",
        "vs predict_file",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    for t in timings:
        per_cpu = f"{t.rows / t.cpu:,.0f}" if t.cpu else "-"
        table.add_row(
            t.method,
            f"{t.rows:,}",
            f"{t.wall:.2f}",
            f"{t.cpu:.2f}",
            f"{t.rows_per_second:,.0f}",
            per_cpu,
            f"{t.rows_per_second / reference:.2f}x",
        )
    console.print(table)
    breakdown = Table(title="predict_file, step by step (whole input at once)")
    for column in ("step", "wall s", "CPU s", "share of CPU"):
        breakdown.add_column(column, justify="left" if column == "step" else "right")
    total = sum(s.cpu for s in steps)
    for s in steps:
        breakdown.add_row(s.method.strip(), f"{s.wall:.2f}", f"{s.cpu:.2f}", f"{s.cpu / total:.0%}")
    console.print(breakdown)
    verdicts = {k: "yes" if v is True else "NO" if v is False else f"{v:.1e}" for k, v in identical.items()}
    console.print("same predictions as predict_file: " + ", ".join(f"{k} {v}" for k, v in verdicts.items()))


if __name__ == "__main__":
    main()
