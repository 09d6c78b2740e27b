"""The controller: turns a monitoring summary into release actions, per a policy file.

    monitor:    {max_drift_share: 0.5, max_quality_decay: 0.25, ...}      (see MonitorPolicy)
    controller: {release: canary, canary_start: 0.25, canary_step: 0.25, min_rows: 100,
                 challenger_margin: 0.0, retrain_after: 2, rollback_within: 5}

Rules, in order: a release that breaches quality, errors or latency soon after it became
champion is rolled back; a canary whose challenger is better with enough evidence steps up
(and is promoted at 100%), one that is worse is ended; drift or quality decay that persists
for `retrain_after` windows triggers retraining; a fresh challenger is canaried (or promoted
at once with `release: immediate`). Every action is recorded with its evidence.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cd4ml.monitoring.monitor import MonitorPolicy, Summary


class ControllerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: Literal["canary", "immediate"] = "canary"
    canary_start: float = 0.25
    canary_step: float = 0.25
    min_rows: int = 100  # rows with actuals each arm needs before the canary is judged
    challenger_margin: float = 0.0  # challenger must beat the champion by this share of NWRMSLE
    retrain_after: int = 2  # consecutive windows with drift or quality decay
    rollback_within: int = 5  # windows after a promotion during which a breach rolls it back
    # the serving origin moves past a day once this share of the champion's series have actuals
    # for it (and for every day before it); 0 leaves the origin to `cd4ml actuals --complete-through`
    origin_coverage: float = Field(0.95, ge=0, le=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monitor: MonitorPolicy = MonitorPolicy()
    controller: ControllerPolicy = ControllerPolicy()


def load_policy(path: Path | None) -> Policy:
    """The policy in `path`; built-in defaults only when no path is given (a mistyped path must
    not silently run the controller on thresholds nobody chose)."""
    if path is None:
        return Policy()
    if not path.is_file():
        raise FileNotFoundError(f"--policy {path}: no such file (leave --policy out for the built-in policy)")
    try:
        return Policy.model_validate(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"--policy {path} is not valid YAML: {exc}") from None


@dataclass
class Action:
    kind: Literal["rollback", "step_canary", "promote", "end_canary", "retrain", "start_canary", "advance_origin"]
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class ControllerState:
    """What the controller remembers between windows."""

    decaying_windows: int = 0
    windows_since_promotion: int | None = None
    retrain_pending: bool = False
    quality_before_release: float | None = None  # the replaced champion's NWRMSLE when promoted

    @classmethod
    def read(cls, path: Path) -> ControllerState:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))


def _arm_quality(summary: Summary, arm: str) -> dict[str, Any] | None:
    rows = [q for q in summary.quality.get("by_arm_version", []) if q["arm"] == arm]
    return max(rows, key=lambda q: q["rows"]) if rows else None


def decide(
    summary: Summary,
    routing,
    champion: str | None,
    challenger: str | None,
    previous: str | None,
    state: ControllerState,
    policy: Policy,
) -> list[Action]:
    """The actions this window calls for (at most one release move)."""
    p = policy.controller
    recent = state.windows_since_promotion is not None and state.windows_since_promotion <= p.rollback_within
    if recent and previous:
        worse = _worse_than_before(summary, champion, state, policy)
        operational = [b for b in summary.breaches if b.startswith(("errors", "latency"))]
        if worse or operational:
            return [
                Action(
                    "rollback",
                    f"v{champion} is worse than what it replaced: {worse or '; '.join(operational)}",
                    {"breaches": operational, "before": state.quality_before_release, "to": previous},
                )
            ]
    if routing.strategy == "canary" and challenger:
        champ, chall = _arm_quality(summary, "champion"), _arm_quality(summary, "challenger")
        if champ and chall and min(champ["rows"], chall["rows"]) >= p.min_rows:
            evidence = {"champion": champ, "challenger": chall, "share": routing.share}
            if chall["nwrmsle"] <= champ["nwrmsle"] * (1 - p.challenger_margin):
                if routing.share + p.canary_step >= 1:
                    return [
                        Action(
                            "promote",
                            f"challenger v{challenger} better at {routing.share:.0%}: "
                            f"NWRMSLE {chall['nwrmsle']:.3f} vs {champ['nwrmsle']:.3f}",
                            evidence,
                        )
                    ]
                return [
                    Action(
                        "step_canary",
                        f"challenger v{challenger} better: NWRMSLE {chall['nwrmsle']:.3f} vs {champ['nwrmsle']:.3f}",
                        evidence | {"to": routing.share + p.canary_step},
                    )
                ]
            return [
                Action(
                    "end_canary",
                    f"challenger v{challenger} worse: NWRMSLE {chall['nwrmsle']:.3f} vs {champ['nwrmsle']:.3f}",
                    evidence,
                )
            ]
        return []
    if challenger and routing.strategy == "single" and state.retrain_pending:
        if p.release == "immediate":
            return [Action("promote", f"new challenger v{challenger} released at once (release: immediate)")]
        return [
            Action(
                "start_canary",
                f"new challenger v{challenger}: canary at {p.canary_start:.0%}",
                {"share": p.canary_start},
            )
        ]
    decaying = [b for b in summary.breaches if b.startswith(("drift", "quality"))]
    if decaying and state.decaying_windows + 1 >= p.retrain_after and not state.retrain_pending:
        return [
            Action(
                "retrain",
                f"drift or decay for {state.decaying_windows + 1} windows: {'; '.join(decaying)}",
                {"breaches": decaying},
            )
        ]
    return []


def _version_quality(summary: Summary, version: str | None) -> dict[str, Any] | None:
    return next((q for q in summary.quality.get("by_version", []) if str(q["model_version"]) == str(version)), None)


def _worse_than_before(summary: Summary, champion: str | None, state: ControllerState, policy: Policy) -> str:
    """Why the champion's live error exceeds its predecessor's at release time, or ''."""
    now = _version_quality(summary, champion)
    before = state.quality_before_release
    if not now or before is None or now["rows"] < policy.controller.min_rows:
        return ""
    if now["nwrmsle"] > before * (1 + policy.monitor.max_quality_decay):
        return f"NWRMSLE {now['nwrmsle']:.3f} vs {before:.3f} before the release"
    return ""


def advance(
    state: ControllerState, summary: Summary, actions: list[Action], champion: str | None = None
) -> ControllerState:
    """The state after this window and its actions."""
    decaying = any(b.startswith(("drift", "quality")) for b in summary.breaches)
    state.decaying_windows = state.decaying_windows + 1 if decaying else 0
    if state.windows_since_promotion is not None:
        state.windows_since_promotion += 1
    for action in actions:
        if action.kind == "promote":
            state.windows_since_promotion, state.retrain_pending, state.decaying_windows = 0, False, 0
            before = _version_quality(summary, champion)
            state.quality_before_release = before["nwrmsle"] if before else None
        elif action.kind in {"rollback", "end_canary"}:
            state.windows_since_promotion, state.retrain_pending = None, False
        elif action.kind == "retrain":
            state.retrain_pending, state.decaying_windows = True, 0
    return state


def record(path: Path, action: Action, applied: bool, detail: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(
            json.dumps({"ts": time.time(), "applied": applied, "detail": detail, **asdict(action)}, default=str) + "\n"
        )
