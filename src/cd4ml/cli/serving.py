"""Serving commands: the gateway, its release strategies, A/B reports and the MLflow UI."""

from __future__ import annotations

import os
import sys
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
    min_rows: int = typer.Option(100, help="Rows with actuals each arm needs."),
    as_json: bool = JSON,
) -> None:
    """Per-arm sample sizes, errors with 95% intervals, a significance test and a verdict."""
    from dataclasses import asdict

    from cd4ml.monitoring.abtest import report
    from cd4ml.monitoring.feedback import FeedbackStore

    settings = gateway_settings(workdir)
    decision = report(FeedbackStore(settings.resolved_feedback()).all(), min_rows)
    if as_json:
        print_json(asdict(decision))
        return
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
