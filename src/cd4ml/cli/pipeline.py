"""Pipeline commands: run, backtest, the stage entry point dvc.yaml calls, init and sample data."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import typer
from rich.table import Table

from cd4ml.cli.common import (
    WORKDIR,
    app,
    console,
    fail,
)


@app.command()
def run(
    workdir: Path = WORKDIR,
    data: str | None = typer.Option(
        None, "--data", help="sample, a Favorita/Store Sales folder, a CSV path or URL, or a spec YAML."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a params.yaml key for this and later runs: KEY=VALUE."),
) -> None:
    """Run the pipeline with DVC: only stages whose inputs changed run again."""
    _reproduce(workdir.resolve(), data, set_)


@app.command()
def backtest(
    workdir: Path = WORKDIR,
    folds: int | None = typer.Option(None, min=1, help="Forecast origins one horizon apart [params: backtest.folds]."),
    models: list[str] = typer.Option([], "--models", "-m", help="Another model family to compare (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Override a params.yaml key: KEY=VALUE."),
) -> None:
    """Rolling-origin backtest: the pipeline's model, seasonal naive and --models at every fold.

    Runs the pipeline up to its backtest stage (nothing is registered); writes reports/backtest.json
    and reports/backtest.png and logs them to the run in MLflow."""
    import json

    overrides = [*set_, *([f"backtest.folds={folds}"] if folds else [])]
    if models:
        overrides.append(f"backtest.models={json.dumps(models)}")
    workdir = workdir.resolve()
    _reproduce(workdir, None, overrides, last_stage="backtest")
    report = json.loads((workdir / "reports" / "backtest.json").read_text())
    methods = list(report["mean"])
    table = Table(title=f"backtest · NWRMSLE / WAPE per fold ({report['family']} is the pipeline's model)")
    for column in ("fold", "origin", *methods):
        table.add_column(column, justify="right")
    for fold in report["folds"]:
        cells = [fold["metrics"].get(m) for m in methods]
        table.add_row(
            str(fold["fold"]), fold["origin"], *(f"{c['nwrmsle']:.4f} / {c['wape']:.3f}" if c else "-" for c in cells)
        )
    table.add_row(
        "mean", "", *(f"{report['mean'][m]['nwrmsle']:.4f} / {report['mean'][m]['wape']:.3f}" for m in methods)
    )
    console.print(table)
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"→ {workdir / 'reports' / 'backtest.json'}, {workdir / 'reports' / 'backtest.png'}")


def _reproduce(workdir: Path, data: str | None, overrides: list[str], last_stage: str | None = None) -> None:
    """Apply the overrides, then reproduce the pipeline (up to `last_stage`) and print its stage table."""
    from rich.live import Live
    from rich.spinner import Spinner

    from cd4ml.config import ConfigError
    from cd4ml.pipeline.runner import PipelineFailed, ensure_dvc, prepare, run_pipeline

    try:
        applied = prepare(workdir, data, overrides)
    except ConfigError as exc:
        fail(str(exc), 2)
    for key, value in applied:
        console.print(f"param [bold]{key}[/] = {value!r}")
    dvc_state = ensure_dvc(workdir)
    if dvc_state != "existing":
        console.print(f"DVC {dvc_state} in {workdir}")
    with Live(Spinner("dots", "starting"), console=console, transient=True) as live:
        try:
            results = run_pipeline(workdir, lambda s: live.update(Spinner("dots", f"stage {s}")), last_stage)
        except PipelineFailed as exc:
            live.stop()
            fail(f"stage '{exc.stage}' failed (exit code {exc.exit_code}): {exc}", exc.exit_code)
    table = Table(title=f"cd4ml run · {workdir}")
    for column in ("stage", "status", "seconds", "result"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, "[green]ran[/]" if r.ran else "up to date", f"{r.seconds:.1f}", r.summary)
    console.print(table)


@app.command(hidden=True)
def stage(name: str, workdir: Path = WORKDIR) -> None:
    """Run one pipeline stage (dvc.yaml calls this)."""
    from cd4ml.data.spec import SpecError
    from cd4ml.data.split import HistoryTooShort
    from cd4ml.data.validation import EXIT_INVALID_DATA, DataValidationError
    from cd4ml.pipeline.runner import record_failure, record_summary
    from cd4ml.pipeline.stages import STAGES

    if name not in STAGES:
        fail(f"unknown stage '{name}'; stages: {', '.join(STAGES)}", 2)
    workdir = workdir.resolve()
    from cd4ml.config import Paths, tracking_uri
    from cd4ml.gates import EXIT_GATE_FAILED, GateFailed
    from cd4ml.registry import RegistryError, kept_model_note
    from cd4ml.tracking import read_run

    try:
        summary = STAGES[name](workdir)
    except GateFailed as exc:
        kept = kept_model_note(tracking_uri(workdir), read_run(Paths(workdir).run)["run_id"])
        record_failure(workdir, name, EXIT_GATE_FAILED, f"gates failed (see reports/gates.json); no alias moved{kept}")
        _print_gates(workdir)
        fail(f"promotion gates failed: {exc}{kept}", EXIT_GATE_FAILED)
    except HistoryTooShort as exc:
        record_failure(workdir, name, EXIT_INVALID_DATA, str(exc))
        fail(str(exc), EXIT_INVALID_DATA)
    except (DataValidationError, SpecError) as exc:
        record_failure(workdir, name, EXIT_INVALID_DATA, "invalid data (see reports/validation.json)")
        fail(f"invalid data, nothing downstream runs:\n{exc}", EXIT_INVALID_DATA)
    except RegistryError as exc:  # unknown is not absent: no alias moves on a guess
        record_failure(workdir, name, 1, f"{exc}; nothing was promoted")
        fail(f"{exc}; nothing was promoted", 1)
    record_summary(workdir, name, summary)
    if name == "gate":
        _print_gates(workdir)
    console.print(f"[green]✓[/] {name}: {summary}", highlight=False)


def _print_gates(workdir: Path) -> None:
    import json

    report = json.loads((workdir / "reports" / "gates.json").read_text())
    table = Table(title="promotion gates")
    for column in ("check", "value", "threshold", "result", "detail"):
        table.add_column(column)
    for c in report["checks"]:
        table.add_row(
            c["name"], str(c["value"]), c["threshold"], "[green]pass[/]" if c["passed"] else "[red]FAIL[/]", c["detail"]
        )
    console.print(table)


@app.command()
def init(workdir: Path = typer.Argument(Path("."))) -> None:
    """Copy dvc.yaml and params.yaml into a work directory."""
    from cd4ml.config import init_project

    added = init_project(workdir)
    console.print(f"added {', '.join(added)}" if added else "dvc.yaml and params.yaml already there")


data_app = typer.Typer(help="Sample data and data sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("sample")
def data_sample(
    out: Path = typer.Option(..., "--out", help="Folder for the Favorita-layout CSV files."),
    stores: int = typer.Option(10, min=1),
    items: int = typer.Option(50, min=1),
    days: int = typer.Option(730, min=1),
    start: str = typer.Option("2015-01-01", help="First date, YYYY-MM-DD."),
    seed: int = typer.Option(42),
) -> None:
    """Write the deterministic synthetic Favorita-shaped data set."""
    from rich.progress import Progress

    from cd4ml.data.sample import SampleConfig, write_sample

    try:
        first = date.fromisoformat(start)
    except ValueError:
        fail(f"--start {start!r} is not a date in YYYY-MM-DD form", 2)
    config = SampleConfig(stores=stores, items=items, days=days, start=first, seed=seed)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating stores", total=stores)
        counts = write_sample(out, config, progress=lambda done, total: progress.update(task, completed=done))
    table = Table(title=f"sample data in {out}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
