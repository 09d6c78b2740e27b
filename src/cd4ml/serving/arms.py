"""The arms of a release: one model handle per arm, created and retired as routing changes."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from cd4ml.routing import CHAMPION_ARM, ONLINE_ARM, Routing, sticky_choice
from cd4ml.serving.bandits import BanditStore, choose, open_store
from cd4ml.serving.models import LoadedModel, ModelHandle
from cd4ml.serving.online import OnlineLearner
from cd4ml.serving.settings import GatewaySettings


def registry_handle(settings: GatewaySettings, target: str) -> ModelHandle:
    """A handle following a registry alias or pinned to a version (or `settings.model`); the
    target may name another registered model, e.g. a per-segment one: `sales-produce@champion`."""
    from cd4ml.config import Paths
    from cd4ml.registry import Registry, RegistryError, resolve_bundle

    store = settings.resolved_tracking_uri()
    cache = Paths(settings.workdir.resolve()).cache / "models"

    name, _, reference = target.rpartition("@") if "@" in target else target.rpartition("/")
    name = name or settings.model_name  # "alias", "7", "other-model@alias" or "other-model/7"

    def resolve() -> tuple[str, str, str]:
        if settings.model:
            return settings.model, name, settings.model
        if reference.isdigit():
            return f"models:/{name}/{reference}", name, reference
        version = Registry(store, name).alias(reference)
        if version is None:
            raise RegistryError(f"{name} has no '{reference}' alias yet: run `cd4ml run` first")
        return f"models:/{name}/{version}", name, version

    return ModelHandle(resolve, lambda uri: resolve_bundle(uri, store, cache), settings.poll_seconds)


class Arms:
    """Live handles per arm plus the routing that chooses among them."""

    def __init__(self, settings: GatewaySettings, routing: Routing, make_handle=registry_handle, actuals=None):
        self.settings, self.make_handle, self.actuals = settings, make_handle, actuals
        self.handles: dict[str, ModelHandle] = {}
        self.rng = random.Random()
        self._lock = threading.Lock()
        self._bandit: BanditStore | None = None
        self.learners: dict[str, OnlineLearner] = {}
        self.routing = routing
        self.routing_error: str | None = None
        self.fields: str | None = None  # request fields every arm's model must take
        self.apply(routing)

    def apply(self, routing: Routing) -> dict[str, str]:
        """Switch to `routing`: load new arms first, so a failing arm leaves the old routing live."""
        with self._lock:
            fresh = {}
            # the champion first: the first model loaded fixes the request schema
            for arm, target in sorted(routing.arms.items(), key=lambda pair: pair[0] != CHAMPION_ARM):
                handle = self.handles.get(arm)
                if handle is None or handle.target != target:
                    handle = self.make_handle(self.settings, target)
                    handle.target, handle.fields = target, self.fields
                    if self.actuals:
                        handle.follow_actuals(self.actuals)
                    handle.reload()
                    if handle.current is None:
                        raise ValueError(f"arm '{arm}' ({target}) cannot be loaded: {handle.last_error}")
                    if self.fields is None:
                        self.fields = handle.fields = handle.current.request_fields
                fresh[arm] = handle
            for arm, handle in self.handles.items():
                if fresh.get(arm) is not handle:
                    handle.stop()
            self.handles, self.routing, self.routing_error = fresh, routing, None
            online = fresh.get(ONLINE_ARM) if routing.strategy == "online" else None
            if online is None:
                self.learners.clear()
            elif ONLINE_ARM not in self.learners:
                self.learners[ONLINE_ARM] = OnlineLearner(len(online.current.spec.columns))
            for handle in fresh.values():
                handle.start_watching()
            return {arm: h.describe() for arm, h in fresh.items()}

    @property
    def champion(self) -> ModelHandle:
        return self.handles[CHAMPION_ARM]

    def bandit(self) -> BanditStore:
        if self._bandit is None:
            url = self.routing.bandit.state or f"sqlite:///{(self.settings.workdir / 'bandit.db').resolve()}"
            self._bandit = open_store(url)
        return self._bandit

    def primary(self, sticky_key: Callable[[], str]) -> str:
        """The arm that answers a request (multiple routes per row instead); `sticky_key` gives
        the request's assignment key, asked only by strategies that split traffic by it."""
        routing = self.routing
        if routing.strategy in {"canary", "ab", "online"}:
            return sticky_choice(routing, sticky_key())
        if routing.strategy == "bandit":
            arms = list(routing.arms)
            return choose(routing.bandit.policy, self.bandit().stats(arms), routing.bandit.epsilon, self.rng)
        return CHAMPION_ARM

    def shadows(self, primary: str) -> list[str]:
        if self.routing.strategy != "shadow":
            return []
        return [arm for arm in self.routing.arms if arm != primary]

    def segment_arm(self, model: LoadedModel, key: tuple) -> str:
        """For `multiple`: the arm of a row's segment (e.g. its product family)."""
        segment = self.routing.segment
        value = model.scorer.attributes.loc[key, segment.column] if key in model.scorer.attributes.index else None
        return segment.arms.get(str(value), segment.default)

    def live(self) -> list[dict[str, str]]:
        return [
            {"arm": arm, "name": h.current.name, "version": h.current.version}
            for arm, h in self.handles.items()
            if h.current
        ]

    def stop(self) -> None:
        for handle in self.handles.values():
            handle.stop()
