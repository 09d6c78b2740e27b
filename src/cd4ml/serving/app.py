"""The gateway's app factory: `create_app(settings)` builds an isolated, fully wired gateway."""


import secrets
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, Response
from fastapi.concurrency import run_in_threadpool

from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.serving.guards import Guard
from cd4ml.serving.models import LoadedModel, ModelHandle
from cd4ml.serving.requests import PredictResponse, request_models
from cd4ml.serving.settings import GatewaySettings
from cd4ml.serving.telemetry import Telemetry


def registry_handle(settings: GatewaySettings) -> ModelHandle:
    """A handle following `settings.alias` in the registry (or pinned to `settings.model`)."""
    from cd4ml.config import Paths
    from cd4ml.registry import Registry, RegistryError, resolve_bundle

    uri_of_store = settings.resolved_tracking_uri()
    cache = Paths(settings.workdir.resolve()).cache / "models"

    def resolve() -> tuple[str, str, str]:
        if settings.model:
            return settings.model, settings.model_name, settings.model
        version = Registry(uri_of_store, settings.model_name).alias(settings.alias)
        if version is None:
            raise RegistryError(f"{settings.model_name} has no '{settings.alias}' alias yet: run `cd4ml run` first")
        return f"models:/{settings.model_name}/{version}", settings.model_name, version

    return ModelHandle(resolve, lambda uri: resolve_bundle(uri, uri_of_store, cache), settings.poll_seconds)


def _key_kinds(model: LoadedModel) -> dict[str, type]:
    index = model.scorer.attributes.index
    return {k: int if index.get_level_values(k).dtype.kind in "iu" else str for k in model.spec.series_keys}


def _problem(model: LoadedModel, i: int, key: tuple, day) -> dict:
    """Why a row is not servable: which key is unknown, or the date's range."""
    spec, table = model.spec, model.table
    known = model.scorer.attributes.index
    if key not in known:
        unknown = [k for n, k in enumerate(spec.series_keys) if key[n] not in known.get_level_values(k)]
        fields = unknown or spec.series_keys
        named = ", ".join(f"{k}={v}" for k, v in zip(spec.series_keys, key, strict=True))
        return {"loc": ["body", "rows", i, fields[0]], "type": "unknown_series",
                "msg": f"unknown {'/'.join(fields)} ({named})"}
    first = model.scorer.origin.toordinal() + spec.period_days
    return {"loc": ["body", "rows", i, "date"], "type": "date_out_of_range",
            "msg": f"{day} outside the servable range {type(day).fromordinal(first)}..{model.scorer.last_servable}"
                   + (" (weekly data: dates fall on one weekday)" if spec.period_days > 1 else "")}


def create_app(settings: GatewaySettings, handle: ModelHandle | None = None) -> FastAPI:
    telemetry = Telemetry()
    handle = handle or registry_handle(settings)
    changed, message = handle.reload()
    if handle.current is None:
        raise RuntimeError(f"no model to serve: {message}")
    Row, PredictRequest = request_models(handle.current.spec, _key_kinds(handle.current), settings.max_rows)
    state: dict[str, PredictionLogger] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["log"] = PredictionLogger.from_url(settings.resolved_log(), settings.log_queue_size,
                                                 on_drop=telemetry.log_dropped.inc)
        handle.start_watching()
        yield
        handle.stop()
        state.pop("log").close()

    app = FastAPI(title="cd4ml gateway", version="1", lifespan=lifespan, default_response_class=ORJSONResponse,
                  description="Sales forecasts from the registry's champion, with hot reload and a prediction log.")
    app.state.handle, app.state.telemetry, app.state.settings = handle, telemetry, settings

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        """422 naming each field and reason; the offending input is not echoed (it may be NaN)."""
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return ORJSONResponse({"detail": detail}, status_code=422)

    def require_admin(authorization: str | None = Header(None)) -> None:
        expected = settings.admin_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "admin endpoints need 'Authorization: Bearer <CD4ML_ADMIN_TOKEN>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.post("/predict", response_model=PredictResponse, responses={413: {"description": "body too large"}})
    async def predict(request: PredictRequest, explain: bool = Query(False, description="add top feature contributions")):
        started = time.perf_counter()
        model = handle.current  # read once: this request finishes on this model
        spec, table = model.spec, model.table
        positions, problems = [], []
        for i, row in enumerate(request.rows):
            key = tuple(getattr(row, k) for k in spec.series_keys)
            position = table.row(key, row.date)
            if position is None:
                problems.append(_problem(model, i, key, row.date))
            positions.append(position)
        if problems:
            raise RequestValidationError(problems)
        covariates = np.array([[getattr(r, c) for c in spec.covariates] for r in request.rows], dtype=np.float32)
        X = table.gather(positions, covariates)
        values = model.predict(X).tolist()
        contributions = _top_contributions(model, X, settings.top_contributions) if explain else None
        request_id = uuid.uuid4().hex
        predictions = [{"prediction": v} for v in values] if contributions is None else [
            {"prediction": v, "contributions": c} for v, c in zip(values, contributions, strict=True)]
        latency = (time.perf_counter() - started) * 1000
        state["log"].log({
            "request_id": request_id, "ts": time.time(), "model_name": model.name, "model_version": model.version,
            "arm": "champion", "rows": [r.model_dump(mode="json") for r in request.rows], "predictions": values,
            "contributions": contributions, "latency_ms": latency,
        })
        telemetry.predictions.labels(model.version).inc(len(values))
        return ORJSONResponse({"request_id": request_id, "model": {"name": model.name, "version": model.version},
                               "predictions": predictions})

    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        if handle.current is None:
            return ORJSONResponse({"ready": False, "error": handle.last_error}, status_code=503)
        return {"ready": True, "model": handle.describe(), "last_reload_error": handle.last_error}

    @app.get("/version")
    async def version():
        model = handle.current
        return {"name": model.name, "version": model.version, "uri": model.uri, "loaded_at": model.loaded_at,
                "origin": model.scorer.origin.isoformat(), "servable_until": model.scorer.last_servable.isoformat(),
                "reloads": handle.reloads, "last_reload_error": handle.last_error}

    @app.get("/metrics")
    async def metrics():
        depth = state["log"].depth if "log" in state else 0
        return Response(telemetry.render(handle, depth), media_type="text/plain; version=0.0.4")

    @app.post("/admin/reload", dependencies=[Depends(require_admin)])
    async def reload():
        changed, message = await run_in_threadpool(handle.reload)
        return {"changed": changed, "message": message, "live": handle.describe()}

    from cd4ml.serving.web import add_web

    add_web(app, handle)
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes, telemetry=telemetry)
    return app


def _top_contributions(model: LoadedModel, X: np.ndarray, top: int) -> list[list[dict]] | None:
    raw = model.contributions(X)
    if raw is None:
        return None
    names = model.spec.columns
    result = []
    for row in raw:
        order = np.argsort(-np.abs(row[:-1]))[:top]
        result.append([{"feature": names[j], "value": round(float(row[j]), 5)} for j in order]
                      + [{"feature": "(base value)", "value": round(float(row[-1]), 5)}])
    return result


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` workers: settings come from CD4ML_* variables."""
    import os

    return create_app(GatewaySettings.from_env(
        workdir=Path(os.environ.get("CD4ML_WORKDIR", ".")),
        model=os.environ.get("CD4ML_MODEL") or None,
        model_name=os.environ.get("CD4ML_MODEL_NAME") or None,
    ))
