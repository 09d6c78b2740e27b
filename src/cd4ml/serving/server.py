"""Running the gateway under uvicorn, with TCP_NODELAY on every connection.

uvicorn with several workers has been seen to leave Nagle's algorithm on for accepted
sockets, which adds ~40 ms to small keep-alive responses; setting TCP_NODELAY in the protocol
makes it independent of how the listening socket was created.
"""

from __future__ import annotations

import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def serve(host: str, port: int, workers: int) -> None:
    """Serve `app_from_env`: settings travel to the workers as CD4ML_* variables."""
    import uvicorn

    uvicorn.run(
        "cd4ml.serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=NoDelayHttpToolsProtocol,
        loop="uvloop",
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
