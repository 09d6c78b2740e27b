"""Release operations on a work directory: routing changes and promotions, with history.

Routing lives in `<workdir>/routing.yaml`; running gateways pick up a change within one poll
interval. Every change is recorded in the registry's alias history (alias `routing`).
"""

from __future__ import annotations

from pathlib import Path

from cd4ml.registry import AliasMove, Registry
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


def promote(workdir: Path, registry: Registry, version: str, why: str) -> AliasMove:
    """Champion → version; a canary, A/B test, shadow or bandit trying that version ends (traffic
    back to one arm). A release of another version goes on."""
    aliases = registry.aliases()  # before the promotion moves them
    move = registry.promote(version, why)
    routing = load_routing(routing_path(workdir))
    trying = [
        arm for arm, target in routing.arms.items() if arm != CHAMPION_ARM and version in {target, aliases.get(target)}
    ]
    if routing.strategy in {"canary", "ab", "shadow", "bandit"} and trying:
        change_routing(workdir, registry, Routing(), f"v{version} promoted: release ended")
    return move
