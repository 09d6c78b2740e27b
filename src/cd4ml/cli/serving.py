"""Serving commands: the gateway, its release strategies, A/B reports and the MLflow UI."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from cd4ml.cli.common import (
    JSON,
    REASON,
    WORKDIR,
    app,
    console,
    fail,
    gateway_settings,
    open_registry,
    print_json,
    problems,
    series_keys,
)

LOG_SCHEMES = {"sqlite", "postgresql", "postgres", "fluent"}  # what monitoring/sinks.py opens


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
    log = gateway_settings(workdir).resolved_log()
    if log != "none" and log.split("://", 1)[0] not in LOG_SCHEMES:
        fail(
            f"prediction log {log!r} (--prediction-log or CD4ML_PREDICTION_LOG): use sqlite:///path, "
            "postgresql://user@host/db, fluent://host:port/tag or none",
            2,
        )
    console.print(f"cd4ml gateway on [bold]http://{host}:{port}[/] (docs: /docs, metrics: /metrics)")
    run_server(host, port, workers)


release_app = typer.Typer(
    help="Release strategies: which models serve and how traffic is shared.", no_args_is_help=True
)
app.add_typer(release_app, name="release")


@release_app.command("show")
def release_show(workdir: Path = WORKDIR, as_json: bool = JSON) -> None:
    """Show the routing running gateways follow."""
    from cd4ml.release import describe, routing_path
    from cd4ml.routing import load_routing

    try:
        routing = load_routing(routing_path(workdir.resolve()))
    except ValueError as exc:
        fail(f"{problems(exc)}\nfix or delete the file", 2)
    if as_json:
        print_json(routing.model_dump(mode="json"))
    else:
        console.print(describe(routing), markup=False)


@release_app.command("set")
def release_set(
    strategy: str = typer.Argument(..., help="single | multiple | shadow | canary | ab | bandit | online"),
    arm: list[str] = typer.Option([], "--arm", help="ARM=ALIAS_OR_VERSION, e.g. challenger=challenger or candidate=7."),
    share: float | None = typer.Option(
        None, help="canary: the challenger's share of traffic (0..1); online: the online arm's."
    ),
    shares: list[str] = typer.Option([], "--shares", help="ab: ARM=SHARE for each arm."),
    policy: str | None = typer.Option(None, help="bandit: epsilon_greedy | thompson | ucb1."),
    segment: str | None = typer.Option(None, help="multiple: COLUMN:VALUE=ARM,VALUE=ARM (others → champion)."),
    sticky_by: str | None = typer.Option(None, help="header (X-Client-Id) | series"),
    workdir: Path = WORKDIR,
    reason: str = REASON,
) -> None:
    """Replace the routing with this strategy; gateways apply it within one poll interval.

    Options not given take their defaults: nothing of the previous strategy is kept."""
    from cd4ml.release import ReleaseOptions, change_routing, new_routing, routing_path, unknown_arms
    from cd4ml.routing import load_routing

    def pairs(option: str, values: list[str]) -> dict[str, str]:
        wrong = [v for v in values if "=" not in v]
        if wrong:
            fail(f"{option} {wrong[0]!r}: expected NAME=VALUE", 2)
        return dict(v.split("=", 1) for v in values)

    try:
        current = load_routing(routing_path(workdir.resolve()))
    except ValueError as exc:
        fail(f"{exc}\nfix or delete the file first", 2)
    routes = None
    if segment:
        column, colon, targets = segment.partition(":")
        if not colon:
            fail(f"--segment {segment!r}: expected COLUMN:VALUE=ARM,VALUE=ARM", 2)
        routes = {"column": column, "arms": pairs("--segment", [r for r in targets.split(",") if r])}
    options = ReleaseOptions(strategy, pairs("--arm", arm), share, pairs("--shares", shares), policy, routes, sticky_by)
    try:
        routing = new_routing(options, current)
    except ValueError as exc:  # pydantic's ValidationError is one
        fail(f"invalid routing: {problems(exc)}", 2)
    registry = open_registry(workdir)
    missing = unknown_arms(registry, routing)
    if missing:
        fail(f"invalid routing: {registry.name} has no version or alias for {', '.join(missing)}", 2)
    move = change_routing(workdir.resolve(), registry, routing, reason or "changed by hand")
    console.print(f"routing: {move.from_version} → {move.to_version}", markup=False)


ab_app = typer.Typer(help="A/B tests.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


@ab_app.command("report")
def ab_report(
    workdir: Path = WORKDIR,
    since: datetime | None = typer.Option(
        None,
        "--since",
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        help="Window start, local time: feedback recorded from then on [default: the last routing change].",
    ),
    min_series_days: int = typer.Option(100, help="Series-days with actuals each compared version needs."),
    as_json: bool = JSON,
) -> None:
    """Per model version: series-days with actuals, errors with 95% intervals, a test and a verdict."""
    from dataclasses import asdict

    from cd4ml.monitoring.abtest import report
    from cd4ml.monitoring.database import StoreUnavailable
    from cd4ml.monitoring.feedback import FeedbackStore

    start = since.timestamp() if since else _routing_changed(workdir)
    try:
        feedback = FeedbackStore(gateway_settings(workdir).resolved_feedback()).all()
    except StoreUnavailable as exc:
        fail(str(exc), 3)
    decision = report(feedback, series_keys(workdir), start, min_series_days)
    if as_json:
        print_json(asdict(decision))
        return
    window = f"since {datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S}" if start else "all feedback"
    table = Table(title=f"A/B report · {window}")
    columns = (
        "version",
        "arms",
        "requests",
        "rows with actuals",
        "series-days",
        "RMSLE",
        "mean sq. log error (95% CI)",
    )
    for column in (*columns, "mean reward"):
        table.add_column(column)
    for v in decision.versions:
        table.add_row(
            v.version,
            ", ".join(v.arms),
            str(v.requests),
            str(v.rows),
            str(v.series_days),
            f"{v.rmsle:.4f}",
            f"{v.mean_squared_log_error:.4f} ({v.ci95[0]:.4f}..{v.ci95[1]:.4f})",
            "-" if v.mean_reward is None else f"{v.mean_reward:.3f} (n={v.rewards})",
        )
    console.print(table)
    console.print((f"p = {decision.p_value:.4f} · " if decision.p_value is not None else "") + decision.verdict)


def _routing_changed(workdir: Path) -> float | None:
    """When the routing last changed (release history); None without a tracking store or a change."""
    from cd4ml.config import tracking_uri
    from cd4ml.registry import RegistryError

    uri = tracking_uri(workdir.resolve())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    try:
        moves = open_registry(workdir).history("routing")
    except RegistryError as exc:
        fail(f"{exc} (or pass --since)", 3)
    return moves[-1].when if moves else None


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
