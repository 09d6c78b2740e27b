"""The arms of a release: one model handle per arm, created and retired as routing changes."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import date

from cd4ml.monitoring.database import StoreUnavailable
from cd4ml.monitoring.feedback import FeedbackStore
from cd4ml.routing import CHAMPION_ARM, ONLINE_ARM, Routing, sticky_choice
from cd4ml.serving.bandits import BanditStore, choose, open_store
from cd4ml.serving.models import LoadedModel, ModelHandle
from cd4ml.serving.online import OnlineLearner
from cd4ml.serving.settings import GatewaySettings

log = logging.getLogger("cd4ml.gateway")
BANDIT_COOLDOWN = 2.0  # seconds the champion serves alone after the bandit store failed


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
    """Live handles per arm plus the routing that chooses among them.

    Every arm serves one origin: the later of the recorded complete-through date (`store`) and
    the champion's own last day. An arm whose bundle ends earlier is taken there with the
    observed sales; one that ends later serves from the same origin regardless."""

    def __init__(
        self,
        settings: GatewaySettings,
        routing: Routing,
        make_handle=registry_handle,
        store: FeedbackStore | None = None,
    ):
        self.settings, self.make_handle, self.store = settings, make_handle, store
        self.handles: dict[str, ModelHandle] = {}
        self.rng = random.Random()
        self._lock = threading.Lock()
        self._bandit: BanditStore | None = None
        self.bandit_fallbacks = 0  # requests served by the champion because the bandit store failed
        self._bandit_retry_at = 0.0
        self.learners: dict[str, OnlineLearner] = {}
        self.routing = routing
        self.routing_error: str | None = None
        self.fields: str | None = None  # request fields every arm's model must take
        self.complete_through = store.complete_through() if store else None
        self._champion: ModelHandle | None = None
        self.apply(routing)

    def origin(self) -> date:
        """The day every arm forecasts from."""
        return self._champion.current.scorer.origin

    def _origin_for(self, arm: str) -> Callable[[date], date]:
        if arm == CHAMPION_ARM:
            return lambda end: max(end, self.complete_through or end)
        return lambda end: self.origin()

    def _champion_swapped(self) -> None:
        """A champion with another origin takes the other arms there too."""
        for arm, handle in list(self.handles.items()):
            if arm != CHAMPION_ARM and handle.current and handle.current.scorer.origin != self.origin():
                handle.reload()

    def follow_store(self) -> dict[str, tuple[bool, str]]:
        """Serve from the store's complete-through date if it moved (e.g. `cd4ml actuals
        --complete-through`, another replica's advance): reload each arm, champion first."""
        recorded = self.store.complete_through() if self.store else None
        if recorded == self.complete_through:
            return {}
        self.complete_through = recorded
        return {arm: self.handles[arm].reload() for arm in sorted(self.handles, key=lambda a: a != CHAMPION_ARM)}

    def advance(self, through: date, source: str) -> dict[str, tuple[bool, str]]:
        """Record that actuals are complete through `through` and serve from it (OriginError if
        earlier than the recorded date)."""
        if self.store is None:
            raise ValueError("this gateway has no feedback store to record an origin in")
        self.store.mark_complete(through, source)
        return self.follow_store()

    def apply(self, routing: Routing) -> dict[str, str]:
        """Switch to `routing`: load new arms first, so a failing arm leaves the old routing live."""
        with self._lock:
            fresh: dict[str, ModelHandle] = {}
            live_champion = self._champion
            try:
                # the champion first: the first model loaded fixes the request schema and the origin
                for arm, target in sorted(routing.arms.items(), key=lambda pair: pair[0] != CHAMPION_ARM):
                    fresh[arm] = self._handle(arm, target)
                    if arm == CHAMPION_ARM:
                        self._champion = fresh[arm]
            except ValueError:
                self._champion = live_champion
                raise
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

    def _handle(self, arm: str, target: str) -> ModelHandle:
        """The arm's live handle if it follows `target` already, else a new one, loaded."""
        handle = self.handles.get(arm)
        if handle is not None and handle.target == target:
            return handle
        handle = self.make_handle(self.settings, target)
        handle.target, handle.fields = target, self.fields
        handle.origin, handle.actuals = self._origin_for(arm), self.store.actuals_frame if self.store else None
        if arm == CHAMPION_ARM:
            handle.on_swap = self._champion_swapped
        handle.reload()
        if handle.current is None:
            raise ValueError(f"arm '{arm}' ({target}) cannot be loaded: {handle.last_error}")
        if self.fields is None:
            self.fields = handle.fields = handle.current.request_fields
        return handle

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
            return self._bandit_choice(routing)
        return CHAMPION_ARM

    def _bandit_choice(self, routing: Routing) -> str:
        """The bandit's arm; the champion (counted in `bandit_fallbacks`) while its store fails,
        and for BANDIT_COOLDOWN seconds after, so an outage costs no request a timeout each."""
        if time.monotonic() < self._bandit_retry_at:
            self.bandit_fallbacks += 1
            return CHAMPION_ARM
        try:
            stats = self.bandit().stats(list(routing.arms))
        except StoreUnavailable as exc:
            self.bandit_fallbacks += 1
            self._bandit_retry_at = time.monotonic() + BANDIT_COOLDOWN
            log.warning("bandit store unavailable, serving the champion for %s s: %s", BANDIT_COOLDOWN, exc)
            return CHAMPION_ARM
        return choose(routing.bandit.policy, stats, routing.bandit.epsilon, self.rng)

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
