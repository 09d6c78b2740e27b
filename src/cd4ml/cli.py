"""The cd4ml command line: each command parses its options and delegates."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Continuous Delivery for Machine Learning: sales forecasting, end to end.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Sample data and data sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
errors = Console(stderr=True)

WORKDIR = typer.Option(Path("."), "--workdir", "-w", help="Folder holding dvc.yaml, params.yaml and outputs.")


def fail(message: str, code: int) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    workdir: Path = WORKDIR,
    data: str | None = typer.Option(None, "--data", help="sample, a Favorita/Store Sales folder, a CSV path or URL, or a spec YAML."),
    set_: list[str] = typer.Option([], "--set", help="Override a params.yaml key for this and later runs: KEY=VALUE."),
) -> None:
    """Run the pipeline with DVC: only stages whose inputs changed run again."""
    from rich.live import Live
    from rich.spinner import Spinner

    from cd4ml.config import ConfigError
    from cd4ml.pipeline.runner import PipelineFailed, ensure_dvc, prepare, run_pipeline

    workdir = workdir.resolve()
    try:
        applied = prepare(workdir, data, set_)
    except ConfigError as exc:
        fail(str(exc), 2)
    for key, value in applied:
        console.print(f"param [bold]{key}[/] = {value!r}")
    dvc_state = ensure_dvc(workdir)
    if dvc_state != "existing":
        console.print(f"DVC {dvc_state} in {workdir}")
    with Live(Spinner("dots", "starting"), console=console, transient=True) as live:
        try:
            results = run_pipeline(workdir, on_stage=lambda s: live.update(Spinner("dots", f"stage {s}")))
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
    from cd4ml.data.validation import EXIT_INVALID_DATA, DataValidationError
    from cd4ml.pipeline.runner import record_failure, record_summary
    from cd4ml.pipeline.stages import STAGES

    if name not in STAGES:
        fail(f"unknown stage '{name}'; stages: {', '.join(STAGES)}", 2)
    workdir = workdir.resolve()
    try:
        summary = STAGES[name](workdir)
    except (DataValidationError, SpecError) as exc:
        record_failure(workdir, name, EXIT_INVALID_DATA, "invalid data (see reports/validation.json)")
        fail(f"invalid data, nothing downstream runs:\n{exc}", EXIT_INVALID_DATA)
    record_summary(workdir, name, summary)
    console.print(f"[green]✓[/] {name}: {summary}", highlight=False)


@app.command()
def init(workdir: Path = typer.Argument(Path("."))) -> None:
    """Copy dvc.yaml and params.yaml into a work directory."""
    from cd4ml.config import init_project

    added = init_project(workdir)
    console.print(f"added {', '.join(added)}" if added else "dvc.yaml and params.yaml already there")


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


@app.command()
def ui(workdir: Path = WORKDIR, port: int = typer.Option(5000)) -> None:
    """Start the MLflow UI on the work directory's tracking store (127.0.0.1 only)."""
    import os

    from cd4ml.config import tracking_uri

    uri = tracking_uri(workdir.resolve())
    console.print(f"MLflow UI on http://127.0.0.1:{port} for {uri}")
    mlflow = Path(sys.executable).parent / "mlflow"
    os.execv(str(mlflow), [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)])


if __name__ == "__main__":
    app()
