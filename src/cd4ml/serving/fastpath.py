"""POST /predict at the ASGI layer: the gateway's hot path without FastAPI's per-request machinery.

FastAPI solves the route's dependencies (body, query, header) on every request, which costs
more than the prediction itself. This middleware answers a well-formed request directly: one
`model_validate_json` of the body, then the same `Predictions.answer` as the route. Whatever it
would not answer exactly as the route does (another content type or query, an invalid body, an
unknown series) goes on to the route with the body replayed, so errors, OpenAPI and the docs
stay FastAPI's.
"""

from __future__ import annotations

import orjson
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from cd4ml.serving.predicting import Predictions

EXPLAIN = {b"": False, b"explain=false": False, b"explain=true": True}


class FastPredict:
    def __init__(self, app, predictions: Predictions, request_model: type[BaseModel]):
        self.app, self.predictions, self.request_model = app, predictions, request_model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/predict" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        explain = EXPLAIN.get(scope["query_string"])
        content_type, client_id = _headers(scope["headers"])
        if explain is None or content_type.split(b";")[0].strip().lower() not in (b"", b"application/json"):
            return await self.app(scope, receive, send)
        body = await _body(receive)
        if body is None:  # the client went away
            return
        try:
            request = self.request_model.model_validate_json(body)
            if self.predictions.touches_store:  # the bandit asks its store: off the event loop
                answer = await run_in_threadpool(self.predictions.answer, request, explain, client_id)
            else:  # memory only: a thread hop would cost more than the answer
                answer = self.predictions.answer(request, explain, client_id)
        except (ValidationError, RequestValidationError):
            return await self.app(scope, _replay(body, receive), send)
        content = orjson.dumps(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _headers(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, str | None]:
    """(content type, X-Client-Id): the first of each, as Starlette reads them."""
    content_type, client_id = None, None
    for name, value in headers:
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"x-client-id" and client_id is None:
            client_id = value.decode("latin-1")
    return content_type or b"", client_id


async def _body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive that gives the already-read body once, then the connection's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed
