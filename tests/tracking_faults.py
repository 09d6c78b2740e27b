"""A tracking server that fails: a real HTTP server on a free port answering 500 to every call,
as an MLflow server does when its database is down."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "s3cret-pw"  # the password in its URI: no answer, message or log line may show it
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


class Failing(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps({"error_code": "INTERNAL_ERROR", "message": "database is locked"}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def failing_tracking_server() -> Iterator[str]:
    """`with failing_tracking_server() as uri:` http://cd4ml:SECRET@127.0.0.1:<port>."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://cd4ml:{SECRET}@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
