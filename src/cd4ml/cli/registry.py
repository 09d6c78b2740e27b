"""Registry commands: list, promote, roll back and verify models, and score files with one."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from cd4ml.cli.common import (
    JSON,
    MODEL,
    REASON,
    WORKDIR,
    app,
    console,
    fail,
    model_name,
    open_registry,
    print_json,
    resolve_model,
)


@app.command()
def models(
    workdir: Path = WORKDIR,
    history: bool = typer.Option(False, "--history", help="Show alias moves instead."),
    as_json: bool = JSON,
) -> None:
    """List registered versions with model type, aliases, key metrics, gate result and creation time."""
    if history:
        _history(workdir, as_json)
        return
    from datetime import datetime

    from cd4ml.config import tracking_uri
    from cd4ml.registry_listing import list_versions

    name = model_name(workdir)
    listed = [
        {
            "version": v.version,
            "type": v.model_type,
            "aliases": v.aliases,
            "nwrmsle": v.tags.get("holdout.nwrmsle"),
            "wape": v.tags.get("holdout.wape"),
            "r2": v.tags.get("holdout.r2"),
            "gate": v.tags.get("gate"),
            "created": datetime.fromtimestamp(v.created_ms / 1000).isoformat(" ", "minutes"),
            "run_id": v.run_id,
        }
        for v in list_versions(tracking_uri(workdir.resolve()), name)
    ]
    if as_json:
        print_json({"name": name, "versions": listed})
        return
    table = Table(title=f"{name}: versions")
    for column in ("version", "type", "aliases", "NWRMSLE", "WAPE", "R²", "gate", "created", "run"):
        table.add_column(column)
    for v in listed:
        cells = (v["type"], ", ".join(v["aliases"]), v["nwrmsle"], v["wape"], v["r2"], v["gate"])
        table.add_row(v["version"], *(c or "-" for c in cells), v["created"], (v["run_id"] or "")[:8])
    console.print(table)


def _history(workdir: Path, as_json: bool) -> None:
    from datetime import datetime

    from rich.markup import escape

    registry = open_registry(workdir)
    moves = registry.history()
    if as_json:
        print_json([asdict(m) for m in moves])
        return
    table = Table(title=f"{registry.name}: alias history")
    for column in ("when", "alias", "from", "to", "who", "why"):
        table.add_column(column)
    for m in moves:
        table.add_row(
            datetime.fromtimestamp(m.when).isoformat(" ", "seconds"),
            m.alias,
            escape(m.from_version or "-"),
            escape(m.to_version or "-"),
            m.who,
            escape(m.why),
        )
    console.print(table)


@app.command()
def promote(version: str, workdir: Path = WORKDIR, reason: str = REASON) -> None:
    """Make VERSION the champion (the old champion is remembered for rollback)."""
    from cd4ml.registry import RegistryError
    from cd4ml.release import promote as promote_version

    try:
        move = promote_version(workdir.resolve(), open_registry(workdir), version, reason or "promoted by hand")
    except RegistryError as exc:
        fail(str(exc), 2)
    if move is None:
        console.print(f"v{version} already is the champion: nothing changed")
        return
    console.print(f"champion: v{move.from_version or '-'} → v{move.to_version}")


@app.command()
def rollback(workdir: Path = WORKDIR, reason: str = REASON) -> None:
    """Move champion back to the version it replaced."""
    from cd4ml.registry import RegistryError

    try:
        move = open_registry(workdir).rollback(reason or "rolled back by hand")
    except RegistryError as exc:
        fail(str(exc), 2)
    console.print(f"champion: v{move.from_version} → v{move.to_version} (rollback)")


@app.command()
def verify(
    model_uri: str = typer.Argument(..., help="Bundle folder or model URI, e.g. models:/sales-forecaster@champion."),
    workdir: Path = WORKDIR,
) -> None:
    """Re-score a bundle's holdout and fail loudly if its metrics differ from those recorded."""
    from cd4ml.bundle import verify as check_bundle

    bundle = resolve_model(workdir, model_uri)
    try:
        results = check_bundle(bundle)
    except Exception as exc:  # whatever stops re-scoring (missing file, not ONNX, bad parquet) fails it
        fail(f"{bundle} cannot be re-scored: {type(exc).__name__}: {exc}", 1)
    table = Table(title=f"verify {model_uri}")
    for column in ("metric", "recorded", "re-scored", "result"):
        table.add_column(column)
    for name, recorded, rescored, ok in results:
        table.add_row(name, f"{recorded:.6f}", f"{rescored:.6f}", "[green]match[/]" if ok else "[red]DIFFERS[/]")
    console.print(table)
    if not all(ok for *_, ok in results):
        fail("re-scored holdout metrics differ from the recorded ones: this bundle is not what was gated", 1)


@app.command()
def predict(
    input: Path = typer.Option(
        ..., "--input", "-i", exists=True, dir_okay=False, help="CSV: series keys, date, covariates, as in the data."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="CSV: the input rows, the forecast under the data's target name, `fallback`."
    ),
    model: str | None = MODEL,
    origin: str | None = typer.Option(None, help="Forecast origin YYYY-MM-DD (default: the bundle's last actuals)."),
    unknown: Literal["naive", "zero", "error"] = typer.Option(
        "naive",
        "--unknown",
        help="Rows of a series the model never saw: `naive` (seasonal naive from the bundle's history, 0 without "
        "history) or `zero`, flagged in the `fallback` column; `error` refuses the file.",
    ),
    workdir: Path = WORKDIR,
) -> None:
    """Score rows with the champion (or --model) through the same feature code as training."""
    from rich.progress import Progress

    from cd4ml.batch import OriginError, UnknownSeries, open_scorer, predict_file
    from cd4ml.bundle import row_format
    from cd4ml.scoring import InputError

    bundle = resolve_model(workdir, model)
    try:
        start = date.fromisoformat(origin) if origin else None
    except ValueError:
        fail(f"--origin {origin!r} is not a date in YYYY-MM-DD form", 2)
    try:
        score = open_scorer(bundle, start)
    except OriginError as exc:
        fail(str(exc), 2)
    form = row_format(bundle)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("scoring", total=None)
        try:
            result = predict_file(
                score, input, output, form, UnknownSeries(unknown), lambda n: progress.advance(task, n)
            )
        except InputError as exc:
            fail(f"cannot score {input}: {exc}", 2)
    console.print(
        f"{result.rows:,} rows → {output} ({form.target}) in {result.seconds:.2f} s "
        f"({result.rows_per_second:,.0f} rows/s), origin {score.origin}, servable to {score.last_servable}; "
        f"{result.fallback_summary}",
        highlight=False,
    )
