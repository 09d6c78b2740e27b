"""The gateway's app factory: `create_app(settings)` builds an isolated, fully wired gateway."""

import asyncio
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path

import numpy as np
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from cd4ml.monitoring.feedback import DuplicateFeedback, FeedbackStore, Served, ServedIndex
from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.routing import Routing, load_routing, save_routing
from cd4ml.serving.arms import Arms, registry_handle
from cd4ml.serving.guards import Guard
from cd4ml.serving.models import LoadedModel
from cd4ml.serving.online import OnlineLearner, register_snapshot
from cd4ml.serving.requests import AlertmanagerWebhook, FeedbackRequest, PredictResponse, request_models
from cd4ml.serving.settings import GatewaySettings
from cd4ml.serving.telemetry import Telemetry


class JSON(Response):
    """orjson-encoded JSON: the gateway's responses are plain dicts and lists of floats."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def _key_kinds(model: LoadedModel) -> dict[str, type]:
    index = model.scorer.attributes.index
    return {k: int if index.get_level_values(k).dtype.kind in "iu" else str for k in model.spec.series_keys}


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
    """(index, row) pairs as the JSON the log and the feedback index keep."""
    return [r.model_dump(mode="json") for _, r in rows]


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


def create_app(settings: GatewaySettings, make_handle=registry_handle) -> FastAPI:
    telemetry = Telemetry()
    routing_file = settings.resolved_routing_file()
    feedback_store = FeedbackStore(settings.resolved_feedback())
    keys: list[str] = []
    arms = Arms(
        settings,
        load_routing(routing_file),
        make_handle,
        actuals=lambda: feedback_store.actuals_frame(keys) if keys else None,
    )
    champion = arms.champion.current
    keys.extend(champion.spec.series_keys)
    _, PredictRequest = request_models(champion.spec, _key_kinds(champion), settings.max_rows)
    served = ServedIndex(log_url=settings.resolved_log())
    state: dict = {}
    shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
    snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-snapshot")
    shadow_slots = threading.BoundedSemaphore(settings.shadow_queue)  # atomic across the loop and shadow threads

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["log"] = PredictionLogger.from_url(
            settings.resolved_log(), settings.log_queue_size, on_drop=telemetry.log_dropped.inc
        )
        state["feedback"] = feedback_store
        watcher = asyncio.create_task(watch_routing()) if settings.poll_seconds > 0 else None
        yield
        if watcher:
            watcher.cancel()
        arms.stop()
        shadow_pool.shutdown(wait=True, cancel_futures=True)  # queued shadow calls must not delay a stop
        snapshots.shutdown(wait=True)
        state.pop("log").close()

    routing_seen = {"stamp": routing_file.stat().st_mtime_ns if routing_file.exists() else 0}
    routing_lock = asyncio.Lock()  # file → arms and PUT → arms → file, one at a time, in order

    async def sync_routing() -> None:
        """Apply an edit of routing.yaml (e.g. by `cd4ml release` or the controller)."""
        async with routing_lock:
            stamp = routing_file.stat().st_mtime_ns if routing_file.exists() else 0
            if stamp == routing_seen["stamp"]:
                return
            routing_seen["stamp"] = stamp
            try:
                await run_in_threadpool(arms.apply, load_routing(routing_file))
            except (ValueError, OSError) as exc:
                telemetry.routing_errors.inc()
                arms.routing_error = str(exc)

    async def watch_routing() -> None:
        while True:
            await asyncio.sleep(settings.poll_seconds)
            await sync_routing()

    app = FastAPI(
        title="cd4ml gateway",
        version="1",
        lifespan=lifespan,
        default_response_class=JSON,
        description="Sales forecasts from the registry, with release strategies, hot reload, "
        "feedback and a prediction log.",
    )
    app.state.arms, app.state.telemetry, app.state.settings = arms, telemetry, settings

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        """422 naming each field and reason; the offending input is not echoed (it may be NaN)."""
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSON({"detail": detail}, status_code=422)

    def require_admin(authorization: str | None = Header(None)) -> None:
        expected = settings.admin_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(
                401,
                "admin endpoints need 'Authorization: Bearer <CD4ML_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def log(
        request_id: str, arm: str, model: LoadedModel, dumped: list[dict], values, contributions, started: float
    ) -> None:
        state["log"].log(
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

    def shadow(request_id: str, arm: str, rows) -> None:
        started = time.perf_counter()
        try:
            model = arms.handles[arm].current
            values, _ = score(model, rows, False, settings.top_contributions)
            log(request_id, f"shadow:{arm}", model, dump(rows), values, None, started)
        except Exception:  # a shadow never affects the response, but its failures are counted
            telemetry.shadow_failures.inc()
        finally:
            shadow_slots.release()

    @app.post("/predict", response_model=PredictResponse, responses={413: {"description": "body too large"}})
    async def predict(
        request: PredictRequest,
        explain: bool = Query(False, description="add top feature contributions"),
        x_client_id: str | None = Header(None, description="sticky assignment key for canary/A-B"),
    ):
        started = time.perf_counter()
        rows = list(enumerate(request.rows))
        routing = arms.routing
        request_id = os.urandom(16).hex()  # as unique as uuid4, without its object on the hot path
        if routing.strategy == "multiple":
            groups: dict[str, list] = {}
            base = arms.champion.current
            for i, row in rows:
                groups.setdefault(
                    arms.segment_arm(base, tuple(getattr(row, k) for k in base.spec.series_keys)), []
                ).append((i, row))
        else:
            first = rows[0][1]
            sticky = (
                x_client_id
                if (x_client_id and routing.sticky_by == "header")
                else "|".join(str(getattr(first, k)) for k in arms.champion.current.spec.series_keys)
            )
            groups = {arms.primary(sticky): rows}
        predictions: list[dict] = [{} for _ in rows]
        answered = []
        for arm, members in groups.items():
            model = arms.handles[arm].current  # read once: this request finishes on this model
            values, contributions = score(model, members, explain, settings.top_contributions, arms.learners.get(arm))
            for n, (i, _) in enumerate(members):
                predictions[i] = {"prediction": values[n], "arm": arm, "version": model.version}
                if contributions is not None:
                    predictions[i]["contributions"] = contributions[n]
            dumped = dump(members)  # once: the log and the feedback index share it
            log(request_id, arm, model, dumped, values, contributions, started)
            served.remember(request_id, Served(arm, model.version, values, dumped))
            telemetry.predictions.labels(arm, model.version).inc(len(values))
            answered.append((arm, model))
        for arm in arms.shadows(answered[0][0]):
            if not shadow_slots.acquire(blocking=False):
                telemetry.shadow_skipped.inc()
                continue
            asyncio.get_running_loop().run_in_executor(shadow_pool, shadow, request_id, arm, rows)
        arm, model = answered[0]
        return JSON(
            {
                "request_id": request_id,
                "arm": arm,
                "model": {"name": model.name, "version": model.version},
                "predictions": predictions,
            }
        )

    @app.post("/feedback")
    async def feedback(body: FeedbackRequest):
        """Observed sales (`actual`) and/or a user reward in [0, 1] for a served request."""
        known = served.get(body.request_id)
        if known is None:
            raise HTTPException(
                404,
                f"unknown request_id {body.request_id}: not served (or not yet logged: "
                "the log is written within a second)",
            )
        recorded = []
        actual = body.actual if body.actual is None or isinstance(body.actual, list) else [body.actual]
        if actual is not None and len(actual) != len(known.predictions):
            raise RequestValidationError(
                [
                    {
                        "loc": ["body", "actual"],
                        "type": "length",
                        "msg": f"expected {len(known.predictions)} actual(s), one per row",
                    }
                ]
            )
        fresh = {kind: value for kind, value in (("actual", actual), ("reward", body.reward)) if value is not None}
        try:  # every kind in one insert: a duplicate reward must not let a new actual in (or back)
            state["feedback"].record_all(body.request_id, fresh, known)
        except DuplicateFeedback as exc:
            raise HTTPException(409, str(exc)) from None
        if actual is not None:
            state["feedback"].add_actuals(keys, known.rows, actual)
            recorded.append("actual")
            learner = arms.learners.get(known.arm)
            if learner is not None:
                before = learner.updates // arms.routing.snapshot_every
                learn_online(arms.handles[known.arm].current, learner, known.rows, actual)
                if learner.updates // arms.routing.snapshot_every > before:
                    snapshots.submit(register_snapshot, settings, arms.handles[known.arm].current, learner)
        if body.reward is not None:
            recorded.append("reward")
            if arms.routing.strategy == "bandit":
                arms.bandit().reward(known.arm, body.reward)
        telemetry.feedback.labels(known.arm).inc()
        return {
            "request_id": body.request_id,
            "arm": known.arm,
            "model_version": known.model_version,
            "recorded": recorded,
        }

    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        missing = [arm for arm, h in arms.handles.items() if h.current is None]
        if missing:
            return JSON({"ready": False, "missing": missing}, status_code=503)
        return {
            "ready": True,
            "arms": arms.live(),
            "last_reload_errors": {a: h.last_error for a, h in arms.handles.items() if h.last_error},
        }

    @app.get("/version")
    async def version():
        handle = arms.champion
        model = handle.current
        return {
            "name": model.name,
            "version": model.version,
            "uri": model.uri,
            "loaded_at": model.loaded_at,
            "origin": model.scorer.origin.isoformat(),
            "servable_until": model.scorer.last_servable.isoformat(),
            "reloads": handle.reloads,
            "last_reload_error": handle.last_error,
            "strategy": arms.routing.strategy,
            "arms": arms.live(),
        }

    @app.get("/metrics")
    async def metrics():
        depth = state["log"].depth if "log" in state else 0
        monitored = settings.workdir / "reports" / "monitor" / "monitor.prom"  # the latest `cd4ml monitor`
        extra = monitored.read_bytes() if monitored.exists() else b""
        return Response(telemetry.render(arms, depth) + extra, media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", dependencies=[Depends(require_admin)])
    async def reload():
        """Re-read routing.yaml and the registry aliases now, and fold in new actuals."""
        await sync_routing()
        results = {arm: await run_in_threadpool(h.reload) for arm, h in arms.handles.items()}
        return {
            "changed": any(c for c, _ in results.values()),
            "message": "; ".join(f"{a}: {m}" for a, (_, m) in results.items()),
            "live": arms.champion.describe(),
            "arms": arms.live(),
        }

    alert_lock = asyncio.Lock()

    @app.post("/admin/alerts", dependencies=[Depends(require_admin)])
    async def alerts(payload: AlertmanagerWebhook):
        """Alertmanager webhook: a firing alert labelled action=rollback rolls the champion back.

        Alertmanager resends a firing alert every repeat_interval, maybe to another worker or
        after a restart: an incident already named in the champion's history is not acted on."""
        from cd4ml.registry import CHAMPION, Registry, RegistryError

        firing = [a for a in payload.alerts if a.status == "firing" and a.labels.get("action") == "rollback"]
        if not firing:
            return {"actions": [], "message": "no firing alert asks for a rollback"}
        registry = Registry(settings.resolved_tracking_uri(), settings.model_name)
        async with alert_lock:  # one check-and-roll-back at a time
            handled = " ".join(m.why for m in await run_in_threadpool(registry.history, CHAMPION))
            firing = [a for a in firing if not (a.incident and a.incident in handled)]
            if not firing:
                return {"actions": [], "message": "these alerts were already acted on"}
            names = ", ".join(a.labels.get("alertname", "alert") for a in firing)
            why = f"Alertmanager: {names} [{' '.join(a.incident for a in firing)}]"
            try:
                move = await run_in_threadpool(registry.rollback, why, "alertmanager")
            except RegistryError as exc:
                raise HTTPException(409, str(exc)) from None
            await run_in_threadpool(arms.champion.reload)
        return {"actions": [f"rollback v{move.from_version} → v{move.to_version}"], "live": arms.champion.describe()}

    @app.get("/admin/routing", dependencies=[Depends(require_admin)])
    async def get_routing():
        return arms.routing.model_dump(mode="json")

    @app.put("/admin/routing", dependencies=[Depends(require_admin)])
    async def put_routing(request: Request):
        try:
            routing = Routing.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            raise HTTPException(422, f"invalid routing: {exc}") from None
        async with routing_lock:  # else the watcher may apply the file's older routing after this one
            try:
                live = await run_in_threadpool(arms.apply, routing)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            save_routing(routing_file, routing)
            routing_seen["stamp"] = routing_file.stat().st_mtime_ns
        return {"strategy": routing.strategy, "arms": live}

    from cd4ml.serving.web import add_web

    add_web(app, arms)
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, telemetry=telemetry)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` workers: settings come from CD4ML_* variables."""
    import os

    return create_app(
        GatewaySettings.from_env(
            workdir=Path(os.environ.get("CD4ML_WORKDIR", ".")),
            model=os.environ.get("CD4ML_MODEL") or None,
            model_name=os.environ.get("CD4ML_MODEL_NAME") or None,
        )
    )
