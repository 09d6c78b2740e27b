"""Model handles: a loaded, warmed model version, and the holder that swaps versions atomically.

The model is data: the handle watches a registry alias (and accepts explicit reloads), loads a
new version in the background, warms it, and swaps one reference. A request reads that
reference once, so it finishes on the model it started with; a failed load keeps the old one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cd4ml.scoring import FeatureTable, Scorer

log = logging.getLogger("cd4ml.gateway")


@dataclass
class LoadedModel:
    name: str
    version: str
    uri: str
    scorer: Scorer
    table: FeatureTable
    bundle: Path
    loaded_at: float = field(default_factory=time.time)

    @property
    def spec(self):
        return self.scorer.spec

    def predict(self, X: np.ndarray) -> np.ndarray:
        from cd4ml.models import to_sales

        session = self.scorer.predictor.session
        raw = session.run(None, {session.get_inputs()[0].name: X})[0]
        return to_sales(raw)

    def contributions(self, X: np.ndarray) -> np.ndarray | None:
        """Per-feature contributions (log-sales) from the tree model itself; None if unsupported."""
        booster = self._booster
        if booster is None:
            return None
        return booster.predict(X, pred_contrib=True)

    @property
    def _booster(self):
        if not hasattr(self, "_booster_cache"):
            native = self.bundle / "native" / "model.txt"
            if native.exists():
                import lightgbm

                self._booster_cache = lightgbm.Booster(model_file=str(native))
            else:
                self._booster_cache = None
        return self._booster_cache


def load(uri: str, name: str, version: str, bundle: Path) -> LoadedModel:
    """Load a bundle and warm it: build the feature table and run one prediction."""
    from cd4ml.bundle import scorer

    score = scorer(bundle)
    table = FeatureTable(score)
    model = LoadedModel(name, version, uri, score, table, bundle)
    model.predict(table.matrix[:1])
    model.contributions(table.matrix[:1])
    return model


class ModelHandle:
    """The live model of one alias; reloads when the alias moves."""

    def __init__(self, resolve, fetch, poll_seconds: float):
        self._resolve = resolve  # () -> (uri, name, version) the alias points at now
        self._fetch = fetch  # uri -> local bundle folder
        self.poll_seconds = poll_seconds
        self.target = ""  # the alias or version this handle follows
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self) -> tuple[bool, str]:
        """Load the alias' version if it differs from the live one; (changed, message)."""
        with self._lock:
            try:
                uri, name, version = self._resolve()
                if self.current and self.current.version == version and self.current.uri == uri:
                    return False, f"{name} v{version} already live"
                model = load(uri, name, version, self._fetch(uri))
            except Exception as exc:  # a bad version must never take the live one down
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.failures += 1
                log.error("model load failed, keeping %s: %s", self.describe(), self.last_error)
                return False, self.last_error
            previous = self.describe()
            self.current = model
            self.last_error = None
            self.reloads += 1
            log.info("model swapped: %s → %s v%s", previous, name, version)
            return True, f"{previous} → {name} v{version}"

    def describe(self) -> str:
        return f"{self.current.name} v{self.current.version}" if self.current else "none"

    def start_watching(self) -> None:
        if self.poll_seconds <= 0 or self._thread:
            return
        self._thread = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.reload()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
