"""Release operations on a work directory: routing changes and promotions, with history.

Routing lives in `<workdir>/routing.yaml`; running gateways pick up a change within one poll
interval. Every change is recorded in the registry's alias history (alias `routing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cd4ml.registry import CHAMPION, AliasMove, Registry
from cd4ml.routing import CHAMPION_ARM, Routing, load_routing, save_routing


def routing_path(workdir: Path) -> Path:
    return workdir / "routing.yaml"


def describe(routing: Routing) -> str:
    arms = ", ".join(f"{a}={t}" for a, t in routing.arms.items())
    extra = {
        "canary": f" share={routing.share:g}",
        "ab": f" shares={routing.ab_shares()}",
        "bandit": f" policy={routing.bandit.policy}",
    }.get(routing.strategy, "")
    return f"{routing.strategy} [{arms}]{extra}"


@dataclass(frozen=True)
class ReleaseOptions:
    """What `cd4ml release set` was told; everything not given takes its default."""

    strategy: str
    arms: dict[str, str] = field(default_factory=dict)
    share: float | None = None
    shares: dict[str, float | str] = field(default_factory=dict)
    policy: str | None = None
    segment: dict[str, Any] | None = None
    sticky_by: str | None = None


def new_routing(options: ReleaseOptions, current: Routing) -> Routing:
    """The whole routing for a `release set`: a change replaces the strategy's arms, shares and
    segment, so nothing of an earlier strategy (e.g. A/B shares naming an arm that is gone) can
    survive into the next one. Only deployment settings carry over: the hash salt (clients keep
    their bucket) and where bandit state lives. Raises ValueError (pydantic's) on a bad routing."""
    arms = dict(options.arms)
    if not arms and options.strategy != "single":
        arms = {"challenger": "challenger"}
    fields: dict[str, Any] = {
        "strategy": options.strategy,
        "arms": {CHAMPION_ARM: "champion", **arms},
        "shares": options.shares,
        "segment": options.segment,
        "salt": current.salt,
        "bandit": {"state": current.bandit.state, **({"policy": options.policy} if options.policy else {})},
    }
    if options.share is not None:
        fields["share"] = options.share
    if options.sticky_by:
        fields["sticky_by"] = options.sticky_by
    return Routing.model_validate(fields)


def change_routing(workdir: Path, registry: Registry, routing: Routing, why: str) -> AliasMove:
    """Validate, write and record a routing change."""
    path = routing_path(workdir)
    before = describe(load_routing(path))
    save_routing(path, routing)
    return registry.record("routing", before, describe(routing), why)


def unknown_arms(registry: Registry, routing: Routing) -> list[str]:
    """`arm=target` for each arm whose version or alias this model does not have (targets naming
    another model, `name@alias` or `name/7`, are left to the gateway)."""
    known = {str(v.version) for v in registry.versions()} | set(registry.aliases())
    return [
        f"{arm}={target}"
        for arm, target in routing.arms.items()
        if "@" not in target and "/" not in target and target not in known
    ]


def promote(workdir: Path, registry: Registry, version: str, why: str) -> AliasMove | None:
    """Champion → version; a canary, A/B test, shadow or bandit trying that version ends (traffic
    back to one arm). A release of another version goes on. None when `version` already is the
    champion: nothing moves, so the history gets no entry."""
    aliases = registry.aliases()  # before the promotion moves them
    if aliases.get(CHAMPION) == version:
        return None
    move = registry.promote(version, why)
    routing = load_routing(routing_path(workdir))
    trying = [
        arm for arm, target in routing.arms.items() if arm != CHAMPION_ARM and version in {target, aliases.get(target)}
    ]
    if routing.strategy in {"canary", "ab", "shadow", "bandit"} and trying:
        change_routing(workdir, registry, Routing(), f"v{version} promoted: release ended")
    return move
