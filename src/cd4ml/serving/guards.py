"""The gateway's outermost ASGI layer: body size limit (413) and request metrics for every
request, without Starlette's slower BaseHTTPMiddleware."""

from __future__ import annotations

import time

from starlette.exceptions import HTTPException

from cd4ml.serving.telemetry import Telemetry

CLIENT_CLOSED = 499
TOO_LARGE = b'{"detail":[{"loc":["body"],"msg":"request body larger than the limit","type":"too_large"}]}'


class Guard:
    def __init__(self, app, max_body_bytes: int, telemetry: Telemetry):
        self.app, self.limit, self.telemetry = app, max_body_bytes, telemetry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status: dict[str, int | None] = {"code": None}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send)
            self.telemetry.observe(scope["path"], 413, time.perf_counter() - started)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        returned = False
        try:
            await self.app(scope, limited_receive, tracking_send)
            returned = True
        except BodyTooLarge:
            await self._reject(send)
            status["code"], returned = 413, True
        finally:  # an error that escapes the app is the 500 the server answers; no answer at all,
            # the client went away first (499, as nginx counts it): not a server error
            code = status["code"] if status["code"] is not None else (CLIENT_CLOSED if returned else 500)
            self.telemetry.observe(scope["path"], code, time.perf_counter() - started)

    @staticmethod
    async def _reject(send) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": TOO_LARGE})


class BodyTooLarge(HTTPException):
    """A streamed body went past the limit. An HTTPException, because FastAPI turns any other
    error raised while it reads the body into a 400 "error parsing the body"."""

    def __init__(self):
        super().__init__(
            413, detail=[{"loc": ["body"], "msg": "request body larger than the limit", "type": "too_large"}]
        )
