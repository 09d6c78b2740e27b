"""Monitoring commands: actuals, the monitor, the controller and the closed-loop simulation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cd4ml.cli.common import (
    JSON,
    WORKDIR,
    app,
    console,
    errors,
    fail,
    gateway_settings,
    plain,
    print_json,
    problems,
    series_keys,
)


@app.command()
def actuals(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="CSV: series keys, date and the observed target."
    ),
    target: str = typer.Option("sales", help="Column holding observed sales."),
    complete_through: datetime | None = typer.Option(
        None,
        "--complete-through",
        formats=["%Y-%m-%d"],
        help="Actuals are all in up to this day: gateways forecast from it (their next poll or reload).",
    ),
    workdir: Path = WORKDIR,
) -> None:
    """Ingest observed sales in bulk and join them to logged predictions; storing them never
    moves the forecast origin, --complete-through does."""
    from cd4ml.monitoring.actuals import ingest_actuals
    from cd4ml.monitoring.database import StoreUnavailable
    from cd4ml.monitoring.feedback import FeedbackStore

    settings = gateway_settings(workdir)
    keys = series_keys(workdir)
    log = settings.resolved_log()
    log_db = Path(log.removeprefix("sqlite:///")) if log.startswith("sqlite:") else None
    try:
        store = FeedbackStore(settings.resolved_feedback())
        through = complete_through.date() if complete_through else None
        result = ingest_actuals(file, keys, target, store, log_db, through)
    except ValueError as exc:
        fail(str(exc), 2)
    except StoreUnavailable as exc:
        fail(str(exc), 3)
    console.print(
        f"{result.rows:,} rows: {result.new:,} new, {result.duplicates:,} already known; "
        f"{result.requests_joined:,} logged requests now have actuals"
    )
    if result.complete_through:
        console.print(
            f"complete through {result.complete_through}: gateways forecast from it; a series without "
            "an actual for a day keeps that day missing (send 0 for no sales)"
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
    as_json: bool = JSON,
) -> None:
    """Drift, skew, quality with actuals and operations for a window; exit 4 on a policy breach."""
    import json

    from cd4ml.monitoring.loop import monitor_window

    ws, rules = _workspace(workdir, gateway), _policy(policy)
    try:
        summary = monitor_window(ws, _window(since_hours), None, rules)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        fail(str(exc), 2)
    if as_json:
        print_json(json.loads(summary.to_json()))
    else:
        _print_summary(summary, ws.reports)
    for breach in summary.breaches:
        errors.print(f"[bold red]breach:[/] {escape(breach)}", highlight=False)
    if summary.breaches:
        raise typer.Exit(4)


def _print_summary(summary, reports: Path) -> None:
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
    if summary.drift and summary.drift.get("share") is None:
        console.print(f"drift: {summary.drift['note']}", highlight=False)
    elif summary.drift:
        console.print(f"drift: {summary.drift['share']:.0%} of columns ({', '.join(summary.drift['drifted'][:6])})")
    if summary.skew:
        console.print(f"training-serving skew: max {summary.skew['max']:.2e} over {summary.skew['rows']:,} rows")
    console.print(f"report: {reports / 'report.html'}, summary: {reports / 'summary.json'}")


@app.command()
def control(
    workdir: Path = WORKDIR,
    since_hours: float | None = typer.Option(24.0, "--since-hours", help="Window: the last H hours."),
    policy: Path | None = POLICY,
    gateway: str | None = typer.Option(None, help="Gateway URL: reloaded right after an action."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be done; change nothing."),
    every: str | None = typer.Option(
        None, "--every", help="Run the cycle now and then every DURATION (30m, 1h, 1d) until SIGTERM or Ctrl-C."
    ),
) -> None:
    """A controller cycle: monitor, then promote / step a canary / roll back / retrain per the policy.

    One controller at a time acts on a work directory: a second one exits with code 1 naming the first."""
    from cd4ml.monitoring.schedule import ControllerBusy, exclusive, lock_path, parse_duration

    try:
        seconds = parse_duration(every) if every else None
    except ValueError as exc:
        fail(f"--every {exc}", 2)
    ws, rules = _workspace(workdir, gateway), _policy(policy)
    try:
        with exclusive(lock_path(ws.root)):
            if seconds is None:
                try:
                    _control_cycle(ws, since_hours, rules, dry_run)
                except (FileNotFoundError, RuntimeError, ValueError) as exc:
                    fail(str(exc), 2)
            else:
                _control_loop(ws, since_hours, rules, dry_run, every, seconds)
    except ControllerBusy as exc:
        fail(str(exc), 1)


def _control_cycle(ws, since_hours: float | None, rules, dry_run: bool) -> None:
    """Monitor the window, then decide and act; prints each action (or why none)."""
    from cd4ml.monitoring.loop import control as run_control
    from cd4ml.monitoring.loop import monitor_window

    summary = monitor_window(ws, _window(since_hours), None, rules)
    actions = run_control(ws, summary, rules, dry_run, [])
    for action in actions:
        console.print(f"{'would ' if dry_run else ''}{action.kind}: {action.reason}", highlight=False)
    if not actions:
        console.print("no action: " + ("; ".join(summary.breaches) or "all within policy"), highlight=False)


def _control_loop(ws, since_hours: float | None, rules, dry_run: bool, every: str, seconds: float) -> None:
    """Cycles until SIGTERM or Ctrl-C; a failed cycle is reported and the loop goes on."""
    from cd4ml.monitoring.schedule import run_every, stop_on_signals

    def cycle() -> None:
        console.print(f"[bold]{datetime.now():%Y-%m-%d %H:%M:%S}[/] control cycle", highlight=False)
        try:
            _control_cycle(ws, since_hours, rules, dry_run)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            errors.print(f"[bold red]cycle failed:[/] {escape(plain(str(exc)))}", highlight=False)
        console.print(f"next cycle in {every}", highlight=False)
        console.file.flush()

    console.print(f"control loop on {ws.root} every {every}; SIGTERM or Ctrl-C stops it", highlight=False)
    console.file.flush()
    with stop_on_signals() as stop:
        cycles = run_every(seconds, cycle, stop)
    console.print(f"control loop stopped after {cycles} cycle(s)", highlight=False)


def _policy(path: Path | None):
    """The policy file's rules (built-in defaults without --policy); a missing or invalid file exits 2."""
    from pydantic import ValidationError

    from cd4ml.monitoring.controller import load_policy

    try:
        return load_policy(path)
    except ValidationError as exc:
        fail(f"--policy {path}: {problems(exc)}", 2)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc), 2)


@app.command()
def simulate(
    workdir: Path | None = typer.Option(
        None, "--workdir", "-w", help="A fresh folder for the simulation [default: simulation/<scenario>]."
    ),
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
    workdir = workdir or Path("simulation") / scenario
    if workdir.exists() and any(workdir.iterdir()):
        fail(f"{workdir} is not empty (an earlier simulation?): remove it or pass another --workdir", 2)
    plan = Scenario(kind=scenario, days=days, shift_day=shift_day, shift_family=family, shift_factor=factor)
    try:
        timeline = run_simulation(
            workdir, plan, progress=lambda text: console.print(text, highlight=False, markup=False)
        )
    except RuntimeError as exc:  # training or the gateway failed: the message carries their output
        fail(f"simulation in {workdir} stopped: {exc}", 1)
    console.print(f"{len(timeline)} days; report: {workdir / 'reports' / 'simulation' / 'report.html'}")
