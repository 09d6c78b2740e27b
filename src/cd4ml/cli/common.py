"""What every command shares: the app, the consoles, common options and how errors end a command."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    help="Continuous Delivery for Machine Learning: sales forecasting, end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


console = Console()


errors = Console(stderr=True, soft_wrap=True)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PYDANTIC_LINK = re.compile(r"\n?[ \t]*For further information visit https://errors\.pydantic\.dev\S*")


def plain(text: str) -> str:
    """A message without terminal colour codes or pydantic's documentation links: a user reads
    what was wrong, not escape sequences or a link about pydantic itself."""
    return PYDANTIC_LINK.sub("", ANSI.sub("", text))


def problems(exc: Exception) -> str:
    """A pydantic validation error as `field: problem; …` (other errors as their message)."""
    found = getattr(exc, "errors", None)
    if not callable(found):
        return str(exc)
    return "; ".join(
        ".".join(map(str, e["loc"])) + (": " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
        for e in found()
    )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Libraries' warnings (MLflow colours some with raw ANSI codes) as one plain line."""
    errors.print(f"[yellow]warning:[/] {plain(str(message))}", highlight=False, markup=True)


warnings.showwarning = _show_warning


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        console.print(f"cd4ml {version('cd4ml')}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options before any command."""


JSON = typer.Option(False, "--json", help="Print JSON instead of a table (for scripts).")


def print_json(value: Any) -> None:
    """One JSON document on stdout, without Rich's wrapping or highlighting; NaN and infinity
    (not JSON) become null."""
    print(json.dumps(_finite(value), indent=2, default=str))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


WORKDIR = typer.Option(Path("."), "--workdir", "-w", help="Folder holding dvc.yaml, params.yaml and outputs.")


def fail(message: str, code: int) -> None:
    from rich.markup import escape

    errors.print(f"[bold red]error:[/] {escape(plain(message))}", highlight=False)
    raise typer.Exit(code)


def gateway_settings(workdir: Path):
    """The gateway's settings for a work directory, from CD4ML_* variables; a bad one exits 2."""
    from cd4ml.serving.settings import GatewaySettings

    try:
        return GatewaySettings.from_env(workdir=workdir.resolve())
    except ValueError as exc:
        fail(str(exc), 2)


MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="Bundle folder, model URI (models:/name@alias, runs:/<run_id>) or `last` (the newest run's model, "
    "promoted or not); default: the registry's champion.",
)


REASON = typer.Option("", "--reason", help="Why: kept in the alias history.")


def model_name(workdir: Path) -> str:
    from cd4ml.config import load_params

    params_file = workdir.resolve() / "params.yaml"
    return load_params(params_file).registry.model_name if params_file.exists() else "sales-forecaster"


def series_keys(workdir: Path) -> list[str]:
    """The series keys of the work directory's features; the sample's without a pipeline run."""
    spec_file = workdir.resolve() / "data" / "features" / "feature_spec.json"
    return json.loads(spec_file.read_text())["series_keys"] if spec_file.exists() else ["store_nbr", "item_nbr"]


def open_registry(workdir: Path):
    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    return Registry(tracking_uri(workdir.resolve()), model_name(workdir))


def resolve_model(workdir: Path, model: str | None) -> Path:
    """A bundle folder; the tracking store is opened only for a model URI (a local bundle
    must not create an mlflow.db in the work directory). A run's model that is not a
    registered version (`runs:/<id>`, `last`) is usable, with a warning."""
    from cd4ml.config import Params, Paths, load_params, tracking_uri
    from cd4ml.registry import CHAMPION, RegistryError, last_run_with_model, resolve_bundle, run_of, unregistered_reason

    store, uri = tracking_uri(workdir.resolve()), model or f"models:/{model_name(workdir)}@{CHAMPION}"
    try:
        if uri == "last":
            file = workdir.resolve() / "params.yaml"
            experiment = (load_params(file) if file.exists() else Params()).tracking.experiment
            uri = f"runs:/{last_run_with_model(store, experiment)}"
        bundle = resolve_bundle(uri, store, Paths(workdir.resolve()).cache / "models")
        if (run_id := run_of(uri)) and (why := unregistered_reason(store, run_id)):
            errors.print(f"[bold yellow]warning:[/] {why}", highlight=False)
        return bundle
    except RegistryError as exc:
        fail(str(exc), 2)
