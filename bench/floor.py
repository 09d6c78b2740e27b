"""The HTTP floor for bench/serving.py: a FastAPI endpoint that answers a constant.

It runs under the gateway's own uvicorn settings (uvloop, httptools with TCP_NODELAY set per
connection, no access log), so the gap between it and `cd4ml serve` is what the gateway itself
costs. `--plain` uses uvicorn's stock httptools protocol and `--loop asyncio` the standard event
loop: with several workers the two leave Nagle's algorithm on (asyncio sets TCP_NODELAY only on
sockets whose proto is IPPROTO_TCP, and uvicorn's shared listening socket has proto 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from cd4ml.serving.server import NoDelayHttpToolsProtocol

app = FastAPI()


@app.post("/predict")
async def predict() -> dict[str, float]:
    return {"prediction": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="uvicorn's own httptools protocol")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    uvicorn.run(
        "floor:app",
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        http="httptools" if args.plain else NoDelayHttpToolsProtocol,
        loop=args.loop,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
