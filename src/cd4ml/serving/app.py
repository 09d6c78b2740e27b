"""The gateway's app factory: `create_app(settings)` builds an isolated, fully wired gateway."""

import asyncio
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from cd4ml.monitoring.database import StoreUnavailable
from cd4ml.monitoring.feedback import DuplicateFeedback, FeedbackStore, OriginError, ServedIndex, SplitRequest
from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.monitoring.sinks import open_sink
from cd4ml.routing import Routing, load_routing, save_routing
from cd4ml.serving.arms import Arms, registry_handle
from cd4ml.serving.audit import record_routing
from cd4ml.serving.fastpath import FastPredict
from cd4ml.serving.guards import Guard
from cd4ml.serving.online import register_snapshot
from cd4ml.serving.predicting import Predictions, learn_online
from cd4ml.serving.requests import (
    AlertmanagerWebhook,
    FeedbackRequest,
    OriginRequest,
    PredictResponse,
    request_models,
)
from cd4ml.serving.settings import GatewaySettings
from cd4ml.serving.telemetry import Telemetry

log = logging.getLogger("cd4ml.gateway")


class JSON(Response):
    """orjson-encoded JSON: the gateway's responses are plain dicts and lists of floats."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


class Gateway(FastAPI):
    """FastAPI behind a thin ASGI front: the body limit and request metrics (Guard), then the
    POST /predict fast path; everything else goes on to FastAPI's own middleware and routes."""

    front = None  # set by create_app once the routes exist

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.front is not None:
            return await self.front(scope, receive, send)
        await super().__call__(scope, receive, send)

    async def framework(self, scope, receive, send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: GatewaySettings, make_handle=registry_handle) -> Gateway:
    telemetry = Telemetry()
    routing_file = settings.resolved_routing_file()
    feedback_store = FeedbackStore(settings.resolved_feedback())
    arms = Arms(settings, load_routing(routing_file), make_handle, store=feedback_store)
    champion = arms.champion.current
    keys = champion.spec.series_keys
    _, PredictRequest = request_models(champion.spec, champion.key_kinds(), settings.max_rows)
    served = ServedIndex(log_url=settings.resolved_log())
    predictions = Predictions(arms, settings, telemetry, served)
    snapshots = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-snapshot")
    sink = open_sink(settings.resolved_log())  # opened here: a store that cannot be reached stops the start

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictions.log = PredictionLogger(sink, settings.log_queue_size, on_drop=telemetry.log_dropped.inc)
        watcher = asyncio.create_task(watch_routing()) if settings.poll_seconds > 0 else None
        yield
        if watcher:
            watcher.cancel()
        arms.stop()
        predictions.close()
        snapshots.shutdown(wait=True)
        predictions.log.close()

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
            await follow_origin()

    async def follow_origin() -> None:
        """Serve from the store's complete-through date once another process recorded a later one."""
        try:
            await run_in_threadpool(arms.follow_store)
        except StoreUnavailable as exc:
            log.warning("feedback store unavailable, origin unchanged: %s", exc)

    app = Gateway(
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

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request, exc: StoreUnavailable):
        """A store outage is the server's trouble, said plainly: retry later."""
        return JSON({"detail": str(exc)}, status_code=503)

    def require_admin(authorization: str | None = Header(None)) -> None:
        expected = settings.admin_token
        scheme, _, given = (authorization or "").strip().partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""  # RFC 7235: schemes ignore case
        if not expected:
            raise HTTPException(
                401,
                "admin is disabled: this gateway was started without CD4ML_ADMIN_TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(
                401,
                "admin endpoints need 'Authorization: Bearer <CD4ML_ADMIN_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.post("/predict", response_model=PredictResponse, responses={413: {"description": "body too large"}})
    def predict(
        request: PredictRequest,
        explain: bool = Query(False, description="add top feature contributions"),
        x_client_id: str | None = Header(None, description="sticky assignment key for canary/A-B"),
    ):
        """Forecasts for one row or a batch. (Well-formed requests are answered by the ASGI fast
        path, serving/fastpath.py, with the same `Predictions.answer`.)"""
        return JSON(predictions.answer(request, explain, x_client_id))

    @app.post("/feedback")
    def feedback(body: FeedbackRequest):
        """Observed sales (`actual`) and/or a user reward in [0, 1] for a served request.
        (A plain `def`: FastAPI runs it in its thread pool, so store I/O never blocks the loop.)"""
        try:
            known = served.get(body.request_id)
        except SplitRequest as exc:
            raise HTTPException(409, str(exc)) from None
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
            feedback_store.record_all(body.request_id, fresh, known)
        except DuplicateFeedback as exc:
            raise HTTPException(409, str(exc)) from None
        if actual is not None:
            feedback_store.add_actuals(keys, known.rows, actual)
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
                try:
                    arms.bandit().reward(known.arm, body.reward)
                except StoreUnavailable as exc:  # kept in the feedback store; the bandit misses it
                    arms.bandit_fallbacks += 1
                    log.warning("bandit store unavailable, reward not applied: %s", exc)
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
        depth = predictions.log.depth if predictions.log else 0
        monitored = settings.workdir / "reports" / "monitor" / "monitor.prom"  # the latest `cd4ml monitor`
        extra = monitored.read_bytes() if monitored.exists() else b""
        return Response(telemetry.render(arms, depth) + extra, media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", dependencies=[Depends(require_admin)])
    async def reload():
        """Re-read routing.yaml, the registry aliases and the recorded origin now. Observed sales
        alone never move the origin: see POST /admin/origin."""
        await sync_routing()
        await follow_origin()
        results = {arm: await run_in_threadpool(h.reload) for arm, h in arms.handles.items()}
        return {
            "changed": any(c for c, _ in results.values()),
            "message": "; ".join(f"{a}: {m}" for a, (_, m) in results.items()),
            "live": arms.champion.describe(),
            "arms": arms.live(),
        }

    @app.post("/admin/origin", dependencies=[Depends(require_admin)])
    async def advance_origin(body: OriginRequest):
        """Record that actuals are complete through a date and forecast from it, every arm."""
        try:
            await run_in_threadpool(arms.advance, body.complete_through, "POST /admin/origin")
        except OriginError as exc:
            raise HTTPException(409, str(exc)) from None
        except StoreUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        failed = {arm: h.last_error for arm, h in arms.handles.items() if h.last_error}
        if failed:
            raise HTTPException(500, f"origin recorded, but not every arm could load at it: {failed}")
        return {"origin": arms.origin().isoformat(), "arms": arms.live()}

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
            before = arms.routing
            try:
                live = await run_in_threadpool(arms.apply, routing)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            save_routing(routing_file, routing)
            routing_seen["stamp"] = routing_file.stat().st_mtime_ns
        history = await run_in_threadpool(record_routing, settings, before, routing)
        return {"strategy": routing.strategy, "arms": live, "history": history}

    from cd4ml.serving.web import add_web

    add_web(app, arms)
    app.front = Guard(FastPredict(app.framework, predictions, PredictRequest), settings.max_body_bytes, telemetry)
    return app


def app_from_env() -> Gateway:
    """Factory for `uvicorn --factory` workers: settings come from CD4ML_* variables. A store
    that cannot be reached ends the process with its message, not a traceback."""
    try:
        return create_app(GatewaySettings.from_env())
    except StoreUnavailable as exc:
        raise SystemExit(f"error: the gateway cannot start: {exc}") from None
