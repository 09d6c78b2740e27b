"""The controller's rules on constructed monitoring summaries, and one dry-run cycle on a real
work directory (the registry and routing stay as they were; the action is recorded as not
applied)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cd4ml.monitoring.controller import (
    Action,
    ControllerPolicy,
    ControllerState,
    Policy,
    advance,
    decide,
)
from cd4ml.monitoring.monitor import MonitorPolicy, Summary
from cd4ml.routing import Routing

POLICY = Policy(
    monitor=MonitorPolicy(max_quality_decay=0.2),
    controller=ControllerPolicy(canary_start=0.25, canary_step=0.25, min_rows=100, retrain_after=2),
)
SINGLE = Routing()
ARMS = {"champion": "champion", "challenger": "challenger"}
DRIFT = "drift: 60% of columns drifted (lmean_7, prediction) > 30%"
DECAY = "quality: v1 NWRMSLE 0.900 > holdout 0.500 + 20%"


def canary(share: float) -> Routing:
    return Routing(strategy="canary", share=share, arms=ARMS)


def summary(
    *,
    arms: dict[tuple[str, str], tuple[float, int]] | None = None,
    breaches: list[str] | None = None,
) -> Summary:
    """A summary whose quality is `(arm, version) → (NWRMSLE, rows with actuals)`."""
    arms = arms or {}
    by_arm = [
        {"arm": a, "model_version": v, "rows": n, "nwrmsle": e, "wape": 0.3, "bias": 0.0}
        for (a, v), (e, n) in arms.items()
    ]
    versions: dict[str, list[tuple[float, int]]] = {}
    for (_, v), (e, n) in arms.items():
        versions.setdefault(v, []).append((e, n))
    by_version = [
        {"model_version": v, "rows": sum(n for _, n in q),
         "nwrmsle": sum(e * n for e, n in q) / sum(n for _, n in q), "wape": 0.3, "bias": 0.0}
        for v, q in versions.items()
    ]  # fmt: skip
    return Summary(
        window={"since": 0.0, "until": 1.0, "requests": 10, "rows": 1000},
        operations={"requests": 10, "p50_ms": 1.0, "p99_ms": 2.0},
        quality={"by_version": by_version, "by_arm_version": by_arm},
        drift=None,
        skew=None,
        reference={"holdout_nwrmsle": 0.5},
        breaches=list(breaches or []),
    )


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


# --- canary -------------------------------------------------------------------------------


def test_canary_steps_up_when_the_challenger_is_better_with_enough_rows() -> None:
    window = summary(arms={("champion", "1"): (0.60, 300), ("challenger", "2"): (0.50, 120)})
    actions = decide(window, canary(0.25), "1", "2", None, ControllerState(), POLICY)
    assert kinds(actions) == ["step_canary"]
    assert actions[0].evidence["to"] == pytest.approx(0.5)
    assert actions[0].evidence["challenger"]["nwrmsle"] == 0.50


def test_canary_waits_for_enough_rows_on_both_arms() -> None:
    window = summary(arms={("champion", "1"): (0.60, 300), ("challenger", "2"): (0.10, 99)})
    assert decide(window, canary(0.25), "1", "2", None, ControllerState(), POLICY) == []


def test_canary_walks_up_to_a_promotion_at_100_percent() -> None:
    window = summary(arms={("champion", "1"): (0.60, 300), ("challenger", "2"): (0.50, 300)})
    routing, steps = canary(POLICY.controller.canary_start), []
    for _ in range(10):
        [action] = decide(window, routing, "1", "2", None, ControllerState(), POLICY)
        steps.append(action.kind)
        if action.kind != "step_canary":
            break
        routing = canary(action.evidence["to"])
    assert steps == ["step_canary", "step_canary", "promote"]
    assert routing.share == pytest.approx(0.75)


def test_canary_ends_when_the_challenger_is_worse() -> None:
    window = summary(arms={("champion", "1"): (0.50, 300), ("challenger", "2"): (0.55, 150)})
    actions = decide(window, canary(0.5), "1", "2", None, ControllerState(), POLICY)
    assert kinds(actions) == ["end_canary"]
    state = advance(ControllerState(retrain_pending=True), window, actions, "1")
    assert state.retrain_pending is False


def test_challenger_must_beat_the_champion_by_the_margin() -> None:
    strict = POLICY.model_copy(update={"controller": POLICY.controller.model_copy(update={"challenger_margin": 0.1})})
    window = summary(arms={("champion", "1"): (0.50, 300), ("challenger", "2"): (0.48, 300)})
    assert kinds(decide(window, canary(0.25), "1", "2", None, ControllerState(), POLICY)) == ["step_canary"]
    assert kinds(decide(window, canary(0.25), "1", "2", None, ControllerState(), strict)) == ["end_canary"]


def test_a_fresh_challenger_after_retraining_is_canaried_or_released_at_once() -> None:
    window = summary(arms={("champion", "1"): (0.60, 300)}, breaches=[DRIFT])
    pending = ControllerState(retrain_pending=True)
    [start] = decide(window, SINGLE, "1", "2", None, pending, POLICY)
    assert (start.kind, start.evidence["share"]) == ("start_canary", 0.25)
    immediate = POLICY.model_copy(update={"controller": POLICY.controller.model_copy(update={"release": "immediate"})})
    assert kinds(decide(window, SINGLE, "1", "2", None, pending, immediate)) == ["promote"]
    # a challenger nobody asked for (no retraining pending) is left alone
    assert decide(window, SINGLE, "1", "2", None, ControllerState(), POLICY) == []


# --- retraining ---------------------------------------------------------------------------


def test_retrain_after_consecutive_decaying_windows_and_not_twice_while_pending() -> None:
    healthy = summary(arms={("champion", "1"): (0.50, 300)})
    decaying = summary(arms={("champion", "1"): (0.90, 300)}, breaches=[DRIFT, DECAY])
    state = ControllerState()
    history = []
    for window in [decaying, healthy, decaying, decaying, decaying, decaying]:
        actions = decide(window, SINGLE, "1", None, None, state, POLICY)
        history.append(kinds(actions))
        state = advance(state, window, actions, "1")
    # a healthy window resets the count; two in a row trigger; then never again while pending
    assert history == [[], [], [], ["retrain"], [], []]
    assert state.retrain_pending is True


def test_operational_breaches_alone_do_not_trigger_retraining() -> None:
    slow = summary(arms={("champion", "1"): (0.5, 300)}, breaches=["latency: p99 400 ms > 250 ms"])
    state = ControllerState()
    for _ in range(3):
        actions = decide(slow, SINGLE, "1", None, None, state, POLICY)
        assert actions == []
        state = advance(state, slow, actions, "1")


# --- rollback -----------------------------------------------------------------------------


def promoted(before: float = 0.50) -> ControllerState:
    """The state right after a promotion that replaced a champion of NWRMSLE `before`."""
    window = summary(arms={("champion", "1"): (before, 300)})
    state = ControllerState(retrain_pending=True)
    return advance(state, window, [Action("promote", "test")], champion="1")


def test_promotion_remembers_the_replaced_champions_quality() -> None:
    state = promoted(0.5)
    assert (state.windows_since_promotion, state.quality_before_release) == (0, 0.5)
    assert state.retrain_pending is False


def test_a_degraded_release_is_rolled_back_in_one_cycle() -> None:
    state = promoted(0.50)
    degraded = summary(arms={("champion", "2"): (0.90, 120)}, breaches=[DECAY])
    actions = decide(degraded, SINGLE, "2", None, "1", state, POLICY)
    assert kinds(actions) == ["rollback"]
    assert actions[0].evidence == {"breaches": [], "before": 0.5, "to": "1"}
    state = advance(state, degraded, actions, "2")
    assert state.windows_since_promotion is None


def test_a_release_within_tolerance_or_without_evidence_is_kept() -> None:
    state = promoted(0.50)
    slightly_worse = summary(arms={("champion", "2"): (0.59, 300)})  # < 0.50 * 1.2
    too_few_rows = summary(arms={("champion", "2"): (2.0, 99)})
    assert decide(slightly_worse, SINGLE, "2", None, "1", state, POLICY) == []
    assert decide(too_few_rows, SINGLE, "2", None, "1", state, POLICY) == []


def test_errors_after_a_release_roll_it_back_but_not_later_than_rollback_within() -> None:
    failing = summary(arms={("champion", "2"): (0.5, 300)}, breaches=["errors: 9.0% > 5%"])
    state = promoted()
    assert kinds(decide(failing, SINGLE, "2", None, "1", state, POLICY)) == ["rollback"]
    state.windows_since_promotion = POLICY.controller.rollback_within + 1
    assert decide(failing, SINGLE, "2", None, "1", state, POLICY) == []


def test_no_rollback_without_an_earlier_champion() -> None:
    degraded = summary(arms={("champion", "1"): (5.0, 300)})
    assert decide(degraded, SINGLE, "1", None, None, promoted(0.5), POLICY) == []


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    state = promoted(0.42)
    state.decaying_windows = 3
    state.write(tmp_path / "controller" / "state.json")
    assert ControllerState.read(tmp_path / "controller" / "state.json") == state
    assert ControllerState.read(tmp_path / "missing.json") == ControllerState()


# --- dry run on a real work directory -----------------------------------------------------


def _snapshot(workdir: Path) -> dict[str, Any]:
    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    registered = json.loads((workdir / "models" / "registered.json").read_text())
    registry = Registry(tracking_uri(workdir), registered["name"])
    routing = workdir / "routing.yaml"
    return {
        "aliases": registry.aliases(),
        "history": len(registry.history()),
        "routing": routing.read_text() if routing.exists() else None,
    }


@pytest.mark.integration
def test_dry_run_records_but_applies_nothing(released_workdir) -> None:
    from cd4ml.monitoring.loop import Workspace, control
    from cd4ml.registry import CHAMPION

    workdir: Path = released_workdir("dry-run")
    ws = Workspace(workdir, f"sqlite:///{workdir / 'predictions.db'}", f"sqlite:///{workdir / 'feedback.db'}")
    registry = ws.registry
    registry.promote("2", "a release to judge")  # v2 champion, v1 before it
    state_file = workdir / "reports" / "controller" / "state.json"
    promoted(0.5).write(state_file)
    before, state_before = _snapshot(workdir), state_file.read_text()

    degraded = summary(arms={("champion", "2"): (0.9, 200)}, breaches=[DECAY])
    actions = control(ws, degraded, POLICY, dry_run=True, retrain_overrides=[])

    assert kinds(actions) == ["rollback"]
    assert _snapshot(workdir) == before and registry.alias(CHAMPION) == "2"
    assert state_file.read_text() == state_before
    [logged] = [
        json.loads(line) for line in (workdir / "reports" / "controller" / "actions.jsonl").read_text().splitlines()
    ]
    assert (logged["kind"], logged["applied"], logged["detail"]) == ("rollback", False, "dry run")

    # the same cycle for real moves the champion back at once
    actions = control(ws, degraded, POLICY, dry_run=False, retrain_overrides=[])
    assert kinds(actions) == ["rollback"] and registry.alias(CHAMPION) == "1"
    assert ControllerState.read(state_file).windows_since_promotion is None


@pytest.mark.integration
def test_a_failed_retraining_is_retried_later_not_awaited_forever(released_workdir) -> None:
    from cd4ml.monitoring.loop import Workspace, control

    workdir: Path = released_workdir("failed-retrain")
    ws = Workspace(workdir, f"sqlite:///{workdir / 'predictions.db'}", f"sqlite:///{workdir / 'feedback.db'}")
    ws.registry.move("challenger", None, "no candidate yet")
    state_file = workdir / "reports" / "controller" / "state.json"
    ControllerState(decaying_windows=1).write(state_file)
    decaying = summary(arms={("champion", "1"): (0.9, 300)}, breaches=[DRIFT, DECAY])

    actions = control(ws, decaying, POLICY, dry_run=False, retrain_overrides=["model.nope=1"])

    assert kinds(actions) == ["retrain"]
    [logged] = [
        json.loads(line) for line in (workdir / "reports" / "controller" / "actions.jsonl").read_text().splitlines()
    ]
    assert logged["applied"] is False and logged["detail"].startswith("retraining exited")
    state = ControllerState.read(state_file)
    assert (state.retrain_pending, state.decaying_windows) == (False, 0)


@pytest.mark.integration
def test_the_origin_moves_through_the_last_day_with_complete_actuals(released_workdir) -> None:
    """Days with actuals for every series move the serving origin; a day with half of them
    holds it back (missing actuals are not zeros), and a dry run only records the move."""
    from datetime import timedelta

    from cd4ml.monitoring.feedback import FeedbackStore
    from cd4ml.monitoring.loop import Workspace, advance_origin
    from cd4ml.registry import CHAMPION
    from cd4ml.scoring import SeriesData

    workdir: Path = released_workdir("origin")
    ws = Workspace(workdir, f"sqlite:///{workdir / 'predictions.db'}", f"sqlite:///{workdir / 'feedback.db'}")
    champion = ws.registry.alias(CHAMPION)
    data = SeriesData.read(ws.bundle(ws.registry.name, champion))
    keys = ["store_nbr", "item_nbr"]
    series = data.series[keys].to_dict("records")
    store = FeedbackStore(ws.feedback_url)
    days = [data.last_date + timedelta(days=n) for n in (1, 2, 3)]
    for day, reported in zip(days, [series, series, series[: len(series) // 2]], strict=True):
        store.add_actuals(keys, [{**s, "date": day.isoformat()} for s in reported], [3.0] * len(reported))

    planned = advance_origin(ws, ws.registry.name, champion, 0.95, dry_run=True)
    assert planned is not None and planned.evidence == {"from": data.last_date, "to": days[1]}
    assert store.complete_through() is None

    advance_origin(ws, ws.registry.name, champion, 0.95, dry_run=False)
    assert store.complete_through() == days[1]
    assert advance_origin(ws, ws.registry.name, champion, 0.95, dry_run=False) is None  # day 3 is half reported
    assert advance_origin(ws, ws.registry.name, champion, 0.4, dry_run=False).evidence["to"] == days[2]
    logged = [
        json.loads(line) for line in (workdir / "reports" / "controller" / "actions.jsonl").read_text().splitlines()
    ]
    assert [(r["kind"], r["applied"]) for r in logged] == [("advance_origin", False)] + [("advance_origin", True)] * 2
