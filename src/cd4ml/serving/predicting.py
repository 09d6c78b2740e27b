"""Answering a prediction request: route rows to arms, score them, then log, remember and shadow.

`Predictions.answer` is shared by the FastAPI route (which documents the API) and the ASGI fast
path (which serves it): both give the same answer for the same parsed request.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_jsonable_python

from cd4ml.monitoring.feedback import Served, ServedIndex
from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.serving.arms import Arms
from cd4ml.serving.models import LoadedModel
from cd4ml.serving.online import OnlineLearner
from cd4ml.serving.settings import GatewaySettings
from cd4ml.serving.telemetry import Telemetry


def _problem(model: LoadedModel, i: int, key: tuple, day) -> dict:
    """Why a row is not servable: which key is unknown, or the date's range."""
    spec = model.spec
    known = model.scorer.attributes.index
    if key not in known:
        unknown = [k for n, k in enumerate(spec.series_keys) if key[n] not in known.get_level_values(k)]
        fields = unknown or spec.series_keys
        named = ", ".join(f"{k}={v}" for k, v in zip(spec.series_keys, key, strict=True))
        return {
            "loc": ["body", "rows", i, fields[0]],
            "type": "unknown_series",
            "msg": f"unknown {'/'.join(fields)} ({named})",
        }
    first = model.scorer.origin.toordinal() + spec.period_days
    return {
        "loc": ["body", "rows", i, "date"],
        "type": "date_out_of_range",
        "msg": f"{day} outside the servable range {type(day).fromordinal(first)}..{model.scorer.last_servable}"
        + (" (weekly data: dates fall on one weekday)" if spec.period_days > 1 else ""),
    }


def dump(rows: list) -> list[dict]:
    """(index, row) pairs as the JSON the log and the feedback index keep (one call into
    pydantic-core for the whole list: a third of the time of a model_dump per row)."""
    return to_jsonable_python([r for _, r in rows])


def score(
    model: LoadedModel, rows: list, explain: bool, top: int, learner: OnlineLearner | None = None
) -> tuple[list[float], list | None]:
    """Predictions (and contributions) for validated rows; RequestValidationError names bad rows.
    An online arm's learner adds its learned correction."""
    spec, table = model.spec, model.table
    positions, problems = [], []
    for i, row in rows:
        key = tuple(getattr(row, k) for k in spec.series_keys)
        position = table.row(key, row.date)
        if position is None:
            problems.append(_problem(model, i, key, row.date))
        positions.append(position)
    if problems:
        raise RequestValidationError(problems)
    covariates = np.array([[getattr(r, c) for c in spec.covariates] for _, r in rows], dtype=np.float32)
    X = table.gather(positions, covariates)
    values = model.predict(X, learner.correction(X) if learner else None).tolist()
    return values, _top_contributions(model, X, top) if explain else None


def learn_online(model: LoadedModel, learner: OnlineLearner, rows: list[dict], actual: list[float]) -> int:
    """Teach an online arm the log errors its base model made on rows whose actuals arrived."""
    spec = model.spec
    found = [
        (model.table.row(tuple(r[k] for k in spec.series_keys), date.fromisoformat(r["date"])), r, a)
        for r, a in zip(rows, actual, strict=True)
    ]
    found = [(p, r, a) for p, r, a in found if p is not None]
    if not found:
        return 0
    covariates = np.array([[r[c] for c in spec.covariates] for _, r, _ in found], dtype=np.float32)
    X = model.table.gather([p for p, _, _ in found], covariates)
    observed = np.log1p(np.clip([a for _, _, a in found], 0, None))
    learner.learn(X, observed - model.predict_log(X))
    return len(found)


def _top_contributions(model: LoadedModel, X: np.ndarray, top: int) -> list[list[dict]] | None:
    raw = model.contributions(X)
    if raw is None:
        return None
    names = model.spec.columns
    result = []
    for row in raw:
        order = np.argsort(-np.abs(row[:-1]))[:top]
        shown = [{"feature": names[j], "value": float(row[j])} for j in order]
        if len(order) < len(names):  # the rest in one entry, so the entries add up to log1p(prediction)
            shown.append({"feature": "(other features)", "value": float(row[:-1].sum() - row[order].sum())})
        result.append([*shown, {"feature": "(base value)", "value": float(row[-1])}])
    return result


def _whole(parts: list[tuple], rows: int) -> Served:
    """What a request was served, its rows in request order. A request `multiple` split across
    arms is one feedback unit: its arms and versions are joined by '+' (e.g. "champion+produce")."""
    if len(parts) == 1:
        arm, version, _, values, dumped = parts[0]
        return Served(arm, version, values, dumped)
    predictions, dumped_rows = [0.0] * rows, [{}] * rows
    for _, _, members, values, dumped in parts:
        for (i, _), value, row in zip(members, values, dumped, strict=True):
            predictions[i], dumped_rows[i] = value, row
    return Served("+".join(p[0] for p in parts), "+".join(p[1] for p in parts), predictions, dumped_rows)


def new_request_id() -> str:
    """Unique, unguessable and sorting by time, like UUIDv7: 48 bits of milliseconds, then 80
    random bits, as 32 hex digits. In time order the prediction log's request-id index grows at
    its end instead of dirtying random pages."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


class Predictions:
    """The gateway's answer to POST /predict, and its bookkeeping: the prediction log (opened in
    the app's lifespan), the served index for feedback, metrics, and shadow calls."""

    def __init__(self, arms: Arms, settings: GatewaySettings, telemetry: Telemetry, served: ServedIndex):
        self.arms, self.settings, self.telemetry, self.served = arms, settings, telemetry, served
        self.log: PredictionLogger | None = None
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_slots = threading.BoundedSemaphore(settings.shadow_queue)  # loop and shadow threads

    @property
    def touches_store(self) -> bool:
        """Whether answering asks a store (the bandit's statistics), not only memory."""
        return self.arms.routing.strategy == "bandit"

    def answer(self, request, explain: bool, client_id: str | None) -> dict:
        """The response body for a parsed request. Every row is scored before anything is logged:
        a 422 (RequestValidationError) leaves no trace."""
        started = time.perf_counter()
        arms = self.arms
        rows = list(enumerate(request.rows))
        scored = []
        for arm, members in self._groups(rows, client_id).items():
            model = arms.handles[arm].current  # read once: this request finishes on this model
            values, contributions = score(
                model, members, explain, self.settings.top_contributions, arms.learners.get(arm)
            )
            scored.append((arm, model, members, values, contributions))
        request_id = new_request_id()
        predictions: list[dict] = [{} for _ in rows]
        parts = []
        for arm, model, members, values, contributions in scored:
            for n, (i, _) in enumerate(members):
                predictions[i] = {"prediction": values[n], "arm": arm, "version": model.version}
                if contributions is not None:
                    predictions[i]["contributions"] = contributions[n]
            dumped = dump(members)  # once: the log and the feedback index share it
            self._log(request_id, arm, model, dumped, values, contributions, started)
            self.telemetry.predicted(arm, model.version, len(values))
            parts.append((arm, model.version, members, values, dumped))
        self.served.remember(request_id, _whole(parts, len(rows)))
        arm, model = scored[0][:2]
        for shadow in arms.shadows(arm):
            if self._shadow_slots.acquire(blocking=False):
                self._shadow_pool.submit(self._shadow, request_id, shadow, rows)
            else:
                self.telemetry.shadow_skipped.inc()
        return {
            "request_id": request_id,
            "arm": arm,
            "model": {"name": model.name, "version": model.version},
            "predictions": predictions,
        }

    def _groups(self, rows: list, client_id: str | None) -> dict[str, list]:
        """Arm → its (index, row) pairs: by segment for `multiple`, else one arm for the request."""
        arms, routing = self.arms, self.arms.routing
        base = arms.champion.current
        keys = base.spec.series_keys
        if routing.strategy == "multiple":
            groups: dict[str, list] = {}
            for i, row in rows:
                groups.setdefault(arms.segment_arm(base, tuple(getattr(row, k) for k in keys)), []).append((i, row))
            return groups
        if client_id and routing.sticky_by == "header":
            return {arms.primary(lambda: client_id): rows}
        return {arms.primary(lambda: "|".join(str(getattr(rows[0][1], k)) for k in keys)): rows}

    def _log(
        self, request_id: str, arm: str, model: LoadedModel, dumped: list[dict], values, contributions, started: float
    ) -> None:
        self.log.log(
            {
                "request_id": request_id,
                "ts": time.time(),
                "model_name": model.name,
                "model_version": model.version,
                "arm": arm,
                "rows": dumped,
                "predictions": values,
                "contributions": contributions,
                "latency_ms": (time.perf_counter() - started) * 1000,
                "origin": model.scorer.origin.isoformat(),
            }
        )

    def _shadow(self, request_id: str, arm: str, rows: list) -> None:
        started = time.perf_counter()
        try:
            model = self.arms.handles[arm].current
            values, _ = score(model, rows, False, self.settings.top_contributions)
            self._log(request_id, f"shadow:{arm}", model, dump(rows), values, None, started)
        except Exception:  # a shadow never affects the response, but its failures are counted
            self.telemetry.shadow_failures.inc()
        finally:
            self._shadow_slots.release()

    def close(self) -> None:
        """Queued shadow calls are dropped: they must not delay a stop."""
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)
