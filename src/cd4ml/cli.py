"""The cd4ml command line: each command parses its options and delegates."""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Continuous Delivery for Machine Learning: sales forecasting, end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Sample data and data sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")
release_app = typer.Typer(
    help="Release strategies: which models serve and how traffic is shared.", no_args_is_help=True
)
app.add_typer(release_app, name="release")
ab_app = typer.Typer(help="A/B tests.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")
console = Console()
errors = Console(stderr=True, soft_wrap=True)

WORKDIR = typer.Option(Path("."), "--workdir", "-w", help="Folder holding dvc.yaml, params.yaml and outputs.")


def fail(message: str, code: int) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def gateway_settings(workdir: Path):
    """The gateway's settings for a work directory, from CD4ML_* variables; a bad one exits 2."""
    from cd4ml.serving.settings import GatewaySettings

    try:
        return GatewaySettings.from_env(workdir=workdir.resolve())
    except ValueError as exc:
        fail(str(exc), 2)


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
    from cd4ml.registry import kept_model_note
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


MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="Bundle folder, model URI (models:/name@alias, runs:/<run_id>) or `last` (the newest run's model, "
    "promoted or not); default: the registry's champion.",
)
REASON = typer.Option("", "--reason", help="Why: kept in the alias history.")


def _model_name(workdir: Path) -> str:
    from cd4ml.config import load_params

    params_file = workdir.resolve() / "params.yaml"
    return load_params(params_file).registry.model_name if params_file.exists() else "sales-forecaster"


def _registry(workdir: Path):
    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    return Registry(tracking_uri(workdir.resolve()), _model_name(workdir))


def _bundle(workdir: Path, model: str | None) -> Path:
    """A bundle folder; the tracking store is opened only for a model URI (a local bundle
    must not create an mlflow.db in the work directory). A run's model that is not a
    registered version (`runs:/<id>`, `last`) is usable, with a warning."""
    from cd4ml.config import Params, Paths, load_params, tracking_uri
    from cd4ml.registry import CHAMPION, RegistryError, last_run_with_model, resolve_bundle, run_of, unregistered_reason

    store, uri = tracking_uri(workdir.resolve()), model or f"models:/{_model_name(workdir)}@{CHAMPION}"
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


@app.command()
def models(
    workdir: Path = WORKDIR, history: bool = typer.Option(False, "--history", help="Show alias moves instead.")
) -> None:
    """List registered versions with aliases, key metrics, gate result and creation time."""
    from datetime import datetime

    from rich.markup import escape

    registry = _registry(workdir)
    if history:
        table = Table(title=f"{registry.name}: alias history")
        for column in ("when", "alias", "from", "to", "who", "why"):
            table.add_column(column)
        for m in registry.history():
            table.add_row(
                datetime.fromtimestamp(m.when).isoformat(" ", "seconds"),
                m.alias,
                escape(m.from_version or "-"),
                escape(m.to_version or "-"),
                m.who,
                escape(m.why),
            )
        console.print(table)
        return
    table = Table(title=f"{registry.name}: versions")
    for column in ("version", "aliases", "NWRMSLE", "WAPE", "R²", "gate", "created", "run"):
        table.add_column(column)
    aliases = registry.aliases()
    for v in registry.versions():
        tags = v.tags
        table.add_row(
            str(v.version),
            ", ".join(a for a, n in aliases.items() if n == str(v.version)),
            tags.get("holdout.nwrmsle", "-"),
            tags.get("holdout.wape", "-"),
            tags.get("holdout.r2", "-"),
            tags.get("gate", "-"),
            datetime.fromtimestamp(v.creation_timestamp / 1000).strftime("%Y-%m-%d %H:%M"),
            (v.run_id or "")[:8],
        )
    console.print(table)


@app.command()
def promote(version: str, workdir: Path = WORKDIR, reason: str = REASON) -> None:
    """Make VERSION the champion (the old champion is remembered for rollback)."""
    from cd4ml.registry import RegistryError
    from cd4ml.release import promote as promote_version

    try:
        move = promote_version(workdir.resolve(), _registry(workdir), version, reason or "promoted by hand")
    except RegistryError as exc:
        fail(str(exc), 2)
    console.print(f"champion: v{move.from_version or '-'} → v{move.to_version}")


@app.command()
def rollback(workdir: Path = WORKDIR, reason: str = REASON) -> None:
    """Move champion back to the version it replaced."""
    from cd4ml.registry import RegistryError

    try:
        move = _registry(workdir).rollback(reason or "rolled back by hand")
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

    bundle = _bundle(workdir, model_uri)
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

    bundle = _bundle(workdir, model)
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


@app.command()
def serve(
    workdir: Path = WORKDIR,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(5005),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Serve this bundle/URI instead of following the alias."
    ),
    poll: float | None = typer.Option(None, help="Seconds between registry alias checks, 0: never (default 5)."),
    prediction_log: str | None = typer.Option(None, help="sqlite:///path | postgresql://... | fluent://host:port/tag"),
    max_rows: int | None = typer.Option(None, help="Rows one request may carry (default 10000)."),
    max_body_bytes: int | None = typer.Option(None, help="Largest request body; larger ones get 413 (default 4 MiB)."),
    log_queue_size: int | None = typer.Option(
        None, help="Prediction records waiting to be written; beyond it they are dropped and counted (default 10000)."
    ),
) -> None:
    """Serve the registry's champion: /predict, the Sales forecast page on /, /metrics, hot reload.

    Settings can also come from CD4ML_<NAME> variables (CD4ML_MAX_ROWS, CD4ML_ADMIN_TOKEN, …); flags win."""
    from cd4ml.serving.server import serve as run_server

    flags = {
        "model": model or "",  # not given: follow the alias, whatever an old CD4ML_MODEL says
        "poll_seconds": poll,
        "prediction_log": prediction_log,
        "max_rows": max_rows,
        "max_body_bytes": max_body_bytes,
        "log_queue_size": log_queue_size,
    }
    env = {"CD4ML_WORKDIR": str(workdir.resolve())}
    env |= {f"CD4ML_{name.upper()}": str(value) for name, value in flags.items() if value is not None}
    os.environ.update(env)  # the workers read their settings from here; check them before starting
    gateway_settings(workdir)
    console.print(f"cd4ml gateway on [bold]http://{host}:{port}[/] (docs: /docs, metrics: /metrics)")
    run_server(host, port, workers)


@release_app.command("show")
def release_show(workdir: Path = WORKDIR) -> None:
    """Show the routing running gateways follow."""
    from cd4ml.release import describe, routing_path
    from cd4ml.routing import load_routing

    console.print(describe(load_routing(routing_path(workdir.resolve()))), markup=False)


@release_app.command("set")
def release_set(
    strategy: str = typer.Argument(..., help="single | multiple | shadow | canary | ab | bandit"),
    arm: list[str] = typer.Option([], "--arm", help="ARM=ALIAS_OR_VERSION, e.g. challenger=challenger or candidate=7."),
    share: float | None = typer.Option(None, help="canary: share of traffic for the challenger (0..1)."),
    shares: list[str] = typer.Option([], "--shares", help="ab: ARM=SHARE for each arm."),
    policy: str | None = typer.Option(None, help="bandit: epsilon_greedy | thompson | ucb1."),
    segment: str | None = typer.Option(None, help="multiple: COLUMN:VALUE=ARM,VALUE=ARM (others → champion)."),
    sticky_by: str | None = typer.Option(None, help="header (X-Client-Id) | series"),
    workdir: Path = WORKDIR,
    reason: str = REASON,
) -> None:
    """Change the release strategy; gateways apply it within one poll interval."""
    from pydantic import ValidationError

    from cd4ml.release import change_routing, routing_path, unknown_arms
    from cd4ml.routing import Routing, load_routing

    def pairs(option: str, values: list[str]) -> dict[str, str]:
        wrong = [v for v in values if "=" not in v]
        if wrong:
            fail(f"{option} {wrong[0]!r}: expected NAME=VALUE", 2)
        return dict(v.split("=", 1) for v in values)

    try:
        current = load_routing(routing_path(workdir.resolve())).model_dump()
    except ValueError as exc:
        fail(f"{exc}\nfix or delete the file first", 2)
    update: dict = {"strategy": strategy}
    if arm:
        update["arms"] = {"champion": "champion"} | pairs("--arm", arm)
    elif strategy != "single" and len(current["arms"]) < 2:
        update["arms"] = {"champion": "champion", "challenger": "challenger"}
    if share is not None:
        update["share"] = share
    if shares:
        update["shares"] = pairs("--shares", shares)
    if policy:
        update["bandit"] = current["bandit"] | {"policy": policy}
    if sticky_by:
        update["sticky_by"] = sticky_by
    if segment:
        column, colon, routes = segment.partition(":")
        if not colon:
            fail(f"--segment {segment!r}: expected COLUMN:VALUE=ARM,VALUE=ARM", 2)
        update["segment"] = {"column": column, "arms": pairs("--segment", [r for r in routes.split(",") if r])}
    try:
        routing = Routing.model_validate(current | update)
    except (ValidationError, ValueError) as exc:
        fail(f"invalid routing: {exc}", 2)
    registry = _registry(workdir)
    missing = unknown_arms(registry, routing)
    if missing:
        fail(f"invalid routing: {registry.name} has no version or alias for {', '.join(missing)}", 2)
    move = change_routing(workdir.resolve(), registry, routing, reason or "changed by hand")
    console.print(f"routing: {move.from_version} → {move.to_version}", markup=False)


@ab_app.command("report")
def ab_report(
    workdir: Path = WORKDIR, min_rows: int = typer.Option(100, help="Rows with actuals each arm needs.")
) -> None:
    """Per-arm sample sizes, errors with 95% intervals, a significance test and a verdict."""
    from cd4ml.monitoring.abtest import report
    from cd4ml.monitoring.feedback import FeedbackStore

    settings = gateway_settings(workdir)
    decision = report(FeedbackStore(settings.resolved_feedback()).all(), min_rows)
    table = Table(title="A/B report")
    for column in ("arm", "requests", "rows with actuals", "RMSLE", "mean sq. log error (95% CI)", "mean reward"):
        table.add_column(column)
    for a in decision.arms:
        table.add_row(
            a.arm,
            str(a.requests),
            str(a.rows),
            f"{a.rmsle:.4f}",
            f"{a.mean_squared_log_error:.4f} ({a.ci95[0]:.4f}..{a.ci95[1]:.4f})",
            "-" if a.mean_reward is None else f"{a.mean_reward:.3f} (n={a.rewards})",
        )
    console.print(table)
    console.print((f"p = {decision.p_value:.4f} · " if decision.p_value is not None else "") + decision.verdict)


@app.command()
def actuals(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV: series keys, date and the observed target."
    ),
    target: str = typer.Option("sales", help="Column holding observed sales."),
    workdir: Path = WORKDIR,
) -> None:
    """Ingest observed sales in bulk and join them to logged predictions."""
    import json

    from cd4ml.monitoring.actuals import ingest_actuals
    from cd4ml.monitoring.feedback import FeedbackStore

    settings = gateway_settings(workdir)
    spec_file = workdir.resolve() / "data" / "features" / "feature_spec.json"
    keys = json.loads(spec_file.read_text())["series_keys"] if spec_file.exists() else ["store_nbr", "item_nbr"]
    log = settings.resolved_log()
    log_db = Path(log.removeprefix("sqlite:///")) if log.startswith("sqlite:") else None
    try:
        result = ingest_actuals(file, keys, target, FeedbackStore(settings.resolved_feedback()), log_db)
    except ValueError as exc:
        fail(str(exc), 2)
    console.print(
        f"{result.rows:,} rows: {result.new:,} new, {result.duplicates:,} already known; "
        f"{result.requests_joined:,} logged requests now have actuals"
    )


POLICY = typer.Option(None, "--policy", help="Policy YAML (monitor: and controller: sections); default: built-in.")


def _workspace(workdir: Path, gateway: str | None):
    from cd4ml.monitoring.loop import Workspace

    settings = gateway_settings(workdir)
    return Workspace(
        workdir.resolve(), settings.resolved_log(), settings.resolved_feedback(), gateway, settings.admin_token
    )


def _window(since_hours: float | None) -> float | None:
    import time

    return time.time() - since_hours * 3600 if since_hours else None


@app.command()
def monitor(
    workdir: Path = WORKDIR,
    since_hours: float | None = typer.Option(None, "--since-hours", help="Window: the last H hours (default: all)."),
    policy: Path | None = POLICY,
    gateway: str | None = typer.Option(None, help="Gateway URL, for error and drop counts from /metrics."),
) -> None:
    """Drift, skew, quality with actuals and operations for a window; exit 4 on a policy breach."""
    from cd4ml.monitoring.controller import load_policy
    from cd4ml.monitoring.loop import monitor_window

    ws = _workspace(workdir, gateway)
    try:
        summary = monitor_window(ws, _window(since_hours), None, load_policy(policy))
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        fail(str(exc), 2)
    table = Table(title=f"monitor · {summary.window['requests']:,} requests, {summary.window['rows']:,} rows")
    for column in ("arm", "version", "rows with actuals", "NWRMSLE", "WAPE", "bias"):
        table.add_column(column)
    for q in summary.quality.get("by_arm_version", []):
        table.add_row(
            q["arm"],
            str(q["model_version"]),
            str(q["rows"]),
            f"{q['nwrmsle']:.4f}",
            f"{q['wape']:.3f}",
            f"{q['bias']:+.3f}",
        )
    console.print(table)
    if summary.drift:
        console.print(f"drift: {summary.drift['share']:.0%} of columns ({', '.join(summary.drift['drifted'][:6])})")
    if summary.skew:
        console.print(f"training-serving skew: max {summary.skew['max']:.2e} over {summary.skew['rows']:,} rows")
    console.print(f"report: {ws.reports / 'report.html'}, summary: {ws.reports / 'summary.json'}")
    for breach in summary.breaches:
        errors.print(f"[bold red]breach:[/] {breach}", highlight=False)
    if summary.breaches:
        raise typer.Exit(4)


@app.command()
def control(
    workdir: Path = WORKDIR,
    since_hours: float | None = typer.Option(24.0, "--since-hours", help="Window: the last H hours."),
    policy: Path | None = POLICY,
    gateway: str | None = typer.Option(None, help="Gateway URL: reloaded right after an action."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be done; change nothing."),
) -> None:
    """One controller cycle: monitor, then promote / step a canary / roll back / retrain per the policy."""
    from cd4ml.monitoring.controller import load_policy
    from cd4ml.monitoring.loop import control as run_control
    from cd4ml.monitoring.loop import monitor_window

    ws = _workspace(workdir, gateway)
    rules = load_policy(policy)
    summary = monitor_window(ws, _window(since_hours), None, rules)
    actions = run_control(ws, summary, rules, dry_run, [])
    for action in actions:
        console.print(f"{'would ' if dry_run else ''}{action.kind}: {action.reason}", highlight=False)
    if not actions:
        console.print("no action: " + ("; ".join(summary.breaches) or "all within policy"))


@app.command()
def simulate(
    workdir: Path = typer.Option(Path("simulation"), "--workdir", "-w", help="A fresh folder for the simulation."),
    days: int = typer.Option(30, min=3),
    scenario: str = typer.Option("shift", help="shift: retrain, canary, promote · bad-release: roll back."),
    shift_day: int = typer.Option(4, help="Simulated day the demand of --family drops."),
    family: str = typer.Option("GROCERY I", help="Product family whose demand drops."),
    factor: float = typer.Option(0.1, help="Demand multiplier after the shift."),
) -> None:
    """The closed loop on sample data through the real gateway: drift, decay, retrain, release."""
    from cd4ml.monitoring.simulate import Scenario
    from cd4ml.monitoring.simulate import simulate as run_simulation

    if scenario not in {"shift", "bad-release"}:
        fail("--scenario must be shift or bad-release", 2)
    plan = Scenario(kind=scenario, days=days, shift_day=shift_day, shift_family=family, shift_factor=factor)
    timeline = run_simulation(workdir, plan, progress=lambda text: console.print(text, highlight=False, markup=False))
    console.print(f"{len(timeline)} days; report: {workdir / 'reports' / 'simulation' / 'report.html'}")


@app.command()
def ui(workdir: Path = WORKDIR, port: int = typer.Option(5000)) -> None:
    """Start the MLflow UI on the work directory's tracking store (127.0.0.1 only)."""
    import os

    from cd4ml.config import tracking_uri

    uri = tracking_uri(workdir.resolve())
    console.print(f"MLflow UI on http://127.0.0.1:{port} for {uri}")
    mlflow = Path(sys.executable).parent / "mlflow"
    os.execv(str(mlflow), [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)])


if __name__ == "__main__":
    app()
