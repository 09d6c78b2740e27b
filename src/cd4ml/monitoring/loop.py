"""One turn of the closed loop on a work directory: monitor a window, decide, act, record."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cd4ml.config import Paths, load_params, tracking_uri
from cd4ml.monitoring import controller, report
from cd4ml.monitoring.feedback import FeedbackStore
from cd4ml.monitoring.monitor import Summary, read_log
from cd4ml.registry import CHALLENGER, CHAMPION, Registry, previous_champion, resolve_bundle
from cd4ml.release import change_routing, promote, routing_path
from cd4ml.routing import Routing, load_routing
from cd4ml.scoring import Predictor, SeriesData


@dataclass
class Workspace:
    """Where the loop reads and writes, resolved once from a work directory."""

    root: Path
    log_url: str
    feedback_url: str
    gateway_url: str | None = None
    admin_token: str | None = None

    @property
    def registry(self) -> Registry:
        params = self.root / "params.yaml"
        name = load_params(params).registry.model_name if params.exists() else "sales-forecaster"
        return Registry(tracking_uri(self.root), name)

    def bundle(self, name: str, version: str) -> Path:
        return resolve_bundle(f"models:/{name}/{version}", tracking_uri(self.root), Paths(self.root).cache / "models")

    @property
    def reports(self) -> Path:
        return self.root / "reports" / "monitor"


def monitor_window(ws: Workspace, since: float | None, until: float | None, policy: controller.Policy) -> Summary:
    registry = ws.registry
    champion = registry.alias(CHAMPION)
    if champion is None:
        raise RuntimeError(f"{registry.name} has no champion: run `cd4ml run` first")
    requests = read_log(ws.log_url, since, until)
    versions = {(r.model_name, str(r.model_version)) for r in requests.itertuples() if r.model_version}
    bundles = {version: ws.bundle(name, version) for name, version in versions}
    champion_bundle = ws.bundle(registry.name, champion)
    return report.run_monitor(
        ws.log_url,
        FeedbackStore(ws.feedback_url),
        bundles,
        champion_bundle,
        since,
        until,
        policy.monitor,
        ws.reports,
        ws.gateway_url,
    )


def control(
    ws: Workspace, summary: Summary, policy: controller.Policy, dry_run: bool, retrain_overrides: list[str]
) -> list[controller.Action]:
    """Decide and (unless dry_run) apply this window's actions; every one is recorded."""
    registry = ws.registry
    state_file = ws.root / "reports" / "controller" / "state.json"
    log_file = ws.root / "reports" / "controller" / "actions.jsonl"
    state = controller.ControllerState.read(state_file)
    routing = load_routing(routing_path(ws.root))
    champion, challenger = registry.alias(CHAMPION), registry.alias(CHALLENGER)
    actions = controller.decide(
        summary, routing, champion, challenger, previous_champion(registry.history(CHAMPION)), state, policy
    )
    retrain_failed = False
    for action in actions:
        detail = "dry run" if dry_run else _apply(ws, registry, action, routing, challenger, retrain_overrides)
        failed = action.kind == "retrain" and detail.startswith("retraining exited")
        retrain_failed |= failed
        controller.record(log_file, action, not (dry_run or failed), detail)
    if policy.controller.origin_coverage > 0 and champion is not None:
        moved = advance_origin(ws, registry.name, champion, policy.controller.origin_coverage, dry_run)
        if moved is not None:
            actions.append(moved)
    if not dry_run:
        state = controller.advance(state, summary, actions, champion)
        # a failed run (e.g. its gates) left no challenger to wait for: try again after
        # `retrain_after` more decaying windows instead of waiting forever
        state.retrain_pending = state.retrain_pending and not retrain_failed
        state.write(state_file)
        _reload(ws)
    return actions


def _apply(
    ws: Workspace,
    registry: Registry,
    action: controller.Action,
    routing: Routing,
    challenger: str | None,
    retrain_overrides: list[str],
) -> str:
    why = f"controller: {action.reason}"
    if action.kind == "rollback":
        move = registry.rollback(why)
        change_routing(ws.root, registry, Routing(), why)
        return f"champion v{move.from_version} → v{move.to_version}"
    if action.kind in {"step_canary", "start_canary"}:
        share = action.evidence.get("to", action.evidence.get("share"))
        canary = Routing(
            strategy="canary",
            share=share,
            arms={"champion": "champion", "challenger": "challenger"},
            sticky_by=routing.sticky_by,
        )
        change_routing(ws.root, registry, canary, why)
        return f"canary at {share:.0%}"
    if action.kind == "promote":
        promote(ws.root, registry, challenger, why)
        change_routing(ws.root, registry, Routing(), why)
        return f"v{challenger} is champion"
    if action.kind == "end_canary":
        change_routing(ws.root, registry, Routing(), why)
        registry.move(CHALLENGER, None, why)
        return "canary ended, challenger retired"
    return retrain(ws.root, retrain_overrides)


def advance_origin(ws: Workspace, name: str, champion: str, coverage: float, dry_run: bool) -> controller.Action | None:
    """Move the serving origin (recorded in the feedback store) to the newest day through which
    actuals are complete: `coverage` of the champion's series have an actual for it and for every
    day before it. Missing actuals stay missing; a day short of coverage holds the origin back."""
    bundle = ws.bundle(name, champion)
    data, spec = SeriesData.read(bundle), Predictor.read(bundle).spec
    store = FeedbackStore(ws.feedback_url)
    current = max(filter(None, [store.complete_through(), data.last_date]))
    newest = store.complete_until(current, len(data.series), coverage, spec.period_days)
    if newest is None:
        return None
    reason = f"actuals for at least {coverage:.0%} of {len(data.series):,} series through {newest}"
    action = controller.Action("advance_origin", reason, {"from": current, "to": newest})
    if not dry_run:
        store.mark_complete(newest, "cd4ml control")
    controller.record(ws.root / "reports" / "controller" / "actions.jsonl", action, not dry_run, f"origin {newest}")
    return action


def retrain(workdir: Path, overrides: list[str]) -> str:
    """`cd4ml run` on the latest data; a model that passes its gates becomes the challenger."""
    command = [str(Path(sys.executable).parent / "cd4ml"), "run", "--workdir", str(workdir)]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    registered = workdir / "models" / "registered.json"
    if done.returncode == 0 and registered.exists():
        return f"retrained: {registered.read_text().strip()}"
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"retraining exited {done.returncode}: {' | '.join(tail)}"


def _reload(ws: Workspace) -> None:
    """Ask the gateway to apply the new aliases now instead of at its next poll."""
    if not (ws.gateway_url and ws.admin_token):
        return
    import httpx

    httpx.post(
        f"{ws.gateway_url.rstrip('/')}/admin/reload", headers={"Authorization": f"Bearer {ws.admin_token}"}, timeout=120
    )
