"""The release history of changes made through the gateway's admin API."""

from __future__ import annotations

from pathlib import Path

from cd4ml.registry import Registry, RegistryError
from cd4ml.release import describe
from cd4ml.routing import Routing
from cd4ml.serving.settings import GatewaySettings

ADMIN_API = "admin API"  # who made the change, in the history


def record_routing(settings: GatewaySettings, before: Routing, after: Routing) -> str:
    """Record `PUT /admin/routing` in the alias history (alias 'routing'), as `cd4ml release set`
    records its changes. The change is live already: a registry that cannot record it does not
    undo it, and the answer says it was not recorded."""
    if before == after:
        return "unchanged"
    if settings.model and Path(settings.model).expanduser().exists():  # no registry to create one in
        return "not recorded: the gateway serves a local bundle, without a registry"
    try:
        registry = Registry(settings.resolved_tracking_uri(), settings.model_name)
        registry.record("routing", describe(before), describe(after), "PUT /admin/routing", ADMIN_API)
    except RegistryError as exc:
        return f"not recorded: {exc}"
    return "recorded"
