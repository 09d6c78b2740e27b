"""Model handles: a loaded, warmed model version, and the holder that swaps versions atomically.

The model is data: the handle watches a registry alias (and accepts explicit reloads), loads a
new version in the background, warms it, and swaps one reference. A request reads that
reference once, so it finishes on the model it started with; a failed load keeps the old one.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cd4ml.redaction import redact
from cd4ml.scoring import FeatureTable, Scorer

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("cd4ml.gateway")


@dataclass
class LoadedModel:
    name: str
    version: str
    uri: str
    scorer: Scorer
    table: FeatureTable
    bundle: Path
    data_end: date  # the last day of the bundle's own history (the origin it was trained for)
    loaded_at: float = field(default_factory=time.time)

    @property
    def spec(self):
        return self.scorer.spec

    def key_kinds(self) -> dict[str, type]:
        """int or str per series key, as the model's series attributes store them."""
        index = self.scorer.attributes.index
        return {k: int if index.get_level_values(k).dtype.kind in "iu" else str for k in self.spec.series_keys}

    @property
    def request_fields(self) -> str:
        """What a request row for this model carries, sorted: "date, item_nbr: int, onpromotion:
        float, store_nbr: int"."""
        kinds = self.key_kinds()
        keys = [f"{k}: {kinds[k].__name__}" for k in self.spec.series_keys]
        return ", ".join(sorted([*keys, "date", *(f"{c}: float" for c in self.spec.covariates)]))

    def predict_log(self, X: np.ndarray) -> np.ndarray:
        """log1p(sales), the scale the model learned."""
        predictor = self.scorer.predictor
        return predictor.session.run(None, {predictor.input_name: X})[0].ravel()

    def predict(self, X: np.ndarray, correction: np.ndarray | None = None) -> np.ndarray:
        from cd4ml.target import to_sales

        raw = self.predict_log(X)
        return to_sales(raw if correction is None else raw + correction)

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


def _freeze_heap() -> None:
    """Put everything alive now, above all a model's feature index (millions of small objects),
    out of the garbage collector's reach: otherwise every full collection walks it, a ~200 ms
    pause on the request path at random. One full collection runs here instead, once per swap,
    so garbage is not frozen with it (a model still answering in-flight requests is kept)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


Actuals = Callable[[list[str], date], "pd.DataFrame"]  # (series keys, day) -> observed sales dated after it


def load(
    uri: str,
    name: str,
    version: str,
    bundle: Path,
    origin: Callable[[date], date] | None = None,
    actuals: Actuals | None = None,
) -> LoadedModel:
    """Load a bundle and warm it: build the feature table and run one prediction.

    `origin` maps the bundle's last day to the day it serves from (default: that day): a later
    one adds the observed sales up to it from `actuals`, an earlier one ignores newer history."""
    from cd4ml.scoring import Predictor, SeriesData

    predictor = Predictor.read(bundle)
    data = SeriesData.read(bundle)
    data_end = data.last_date
    served_from = origin(data_end) if origin else data_end
    if served_from > data_end and actuals is not None:
        data = data.with_actuals(
            actuals(predictor.spec.series_keys, data.last_date), predictor.spec.series_keys, served_from
        )
    score = Scorer(predictor, data, served_from)
    table = FeatureTable(score)
    model = LoadedModel(name, version, uri, score, table, bundle, data_end)
    model.predict(table.matrix[:1])
    model.contributions(table.matrix[:1])
    return model


class ModelHandle:
    """The live model of one alias; reloads when the alias moves."""

    def __init__(self, resolve, fetch, poll_seconds: float):
        self._resolve = resolve  # () -> (uri, name, version) the alias points at now
        self._fetch = fetch  # uri -> local bundle folder
        self.origin: Callable[[date], date] = lambda end: end  # a bundle's last day -> the day it serves from
        self.actuals: Actuals | None = None  # observed sales that take a bundle up to that day
        self.on_swap: Callable[[], object] = lambda: None
        self.poll_seconds = poll_seconds
        self.target = ""  # the alias or version this handle follows
        self.fields: str | None = None  # the request fields the gateway validates; others are refused
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.failures = 0
        self._failed: str | None = None  # the model URI the last failed load was for
        self._refused: str | None = None  # a URI whose request fields differ: not retried
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self) -> tuple[bool, str]:
        """Load the alias' version at the gateway's origin unless both are live already;
        (changed, message). Actuals alone never trigger a load: the origin moves only when
        someone records that a day is complete (see `FeedbackStore.mark_complete`)."""
        with self._lock:
            uri = None
            try:
                uri, name, version = self._resolve()
                current = self.current
                same_model = current and current.version == version and current.uri == uri
                if same_model and self.origin(current.data_end) == current.scorer.origin:
                    if self._failed != uri:  # the alias is back on the live version after another failed
                        self.last_error = None
                    return False, f"{name} v{version} already live (origin {current.scorer.origin})"
                if uri == self._refused:  # the same answer every poll: not loaded again until the alias moves
                    return False, self.last_error or ""
                model = load(uri, name, version, self._fetch(uri), self.origin, self.actuals)
                if self.fields is not None and model.request_fields != self.fields:
                    self._refused = uri
                    raise ValueError(
                        f"{name} v{version} takes other request fields ({model.request_fields}) than this "
                        f"gateway serves ({self.fields}): restart the gateway to serve it"
                    )
            except Exception as exc:  # a bad version must never take the live one down
                self.last_error = redact(f"{type(exc).__name__}: {exc}")  # answered by /ready and /version
                self._failed = uri
                self.failures += 1
                log.error("model load failed, keeping %s: %s", self.describe(), self.last_error)
                return False, self.last_error
            previous = self.describe()
            self.current = model
            self.last_error, self._failed, self._refused = None, None, None
            self.reloads += 1
            del current, model  # the old model only lives on in requests still using it
            _freeze_heap()
            log.info("model swapped: %s → %s v%s (origin %s)", previous, name, version, self.current.scorer.origin)
        self.on_swap()
        return True, f"{previous} → {name} v{version} (origin {self.current.scorer.origin})"

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
