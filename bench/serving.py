"""Serving throughput and latency: cd4ml's gateway vs `mlflow models serve` vs the HTTP floor.

All three serve the SAME registered model (sales-forecaster@champion of one work directory):

- `cd4ml serve`, one worker, prediction logging on (the default SQLite sink, in a scratch file);
- `mlflow models serve --env-manager local` on the same registry (its pyfunc computes features
  per request; the request body is {"dataframe_records": [...]});
- the floor: a FastAPI endpoint answering a constant (bench/floor.py) under the same uvicorn.

Load comes from `wrk` (keep-alive, POST bodies from a Lua script) at concurrency 1, 8 and 32 with
one row per request, then one 1,000-row request at a time. Servers run one after another pinned
to CPU 0 and wrk to CPU 1 (`taskset`), so the two do not fight over a core. Besides requests/s
and latency, the server's own CPU time per request is shown: it does not depend on what else
the machine runs. A last group runs with `--workers 2` (both workers on CPU 0) to show keep-alive
latency: uvicorn's stock protocol on the asyncio loop leaves Nagle's algorithm on there (~40 ms
p50); cd4ml's NoDelayHttpToolsProtocol sets TCP_NODELAY on every connection.

Run: `.venv/bin/python bench/serving.py [--workdir DIR] [--seconds 8]`; wrk: `make wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from cd4ml.config import tracking_uri

console = Console(width=None if sys.stdout.isatty() else 140)
BIN = Path(sys.executable).parent
BENCH = Path(__file__).resolve().parent
SERVER_CPU, LOAD_CPU = "0", "1"
BATCH_ROWS = 1000
BATCH = f"{BATCH_ROWS} rows"
LOADS = ("c=1", "c=8", "c=32", BATCH)  # the batch goes one request at a time
MODEL_URI = "models:/sales-forecaster@champion"
FLOOR = [sys.executable, str(BENCH / "floor.py"), "--port", "{port}"]
GOALS = {"mlflow": 10.0, "floor": 0.5}  # cd4ml's requests/s over theirs, at c=8

# wrk's Lua hooks: a fixed POST body on every request, and a JSON summary line at the end.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %%d, "seconds": %%f, "p50_us": %%f, "p99_us": %%f, "errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass
class Server:
    """One contender: how to start it, where it answers, and how it wants a request body."""

    name: str
    command: list[str]  # "{port}" is replaced by the port
    path: str
    ready: str  # answers GET with 200 once the model is loaded
    body: Callable[[list[dict]], dict]
    env: dict[str, str] | None = None


@dataclass
class Running:
    base: str
    process: psutil.Process

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its workers so far."""
        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total


@dataclass
class Result:
    server: str
    load: str
    rows_per_request: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    errors: int

    @property
    def rows_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request


def gateway_body(rows: list[dict]) -> dict:
    return {"rows": rows}


def mlflow_body(rows: list[dict]) -> dict:
    return {"dataframe_records": rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(server: Server) -> Iterator[Running]:
    """Start the server pinned to SERVER_CPU; yield it once it is ready; stop it."""
    port = free_port()
    command = [
        "taskset",
        "-c",
        SERVER_CPU,
        *(a.replace("{port}", str(port)) for a in server.command),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")} | (server.env or {})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow execs `uvicorn` from PATH
    with tempfile.TemporaryFile("w+") as output:
        # a session of its own, so that stopping it stops its workers too
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while not _answers(f"{base}{server.ready}"):
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(f"{server.name} did not start:\n{output.read()[-3000:]}")
                time.sleep(0.5)
            yield Running(base, psutil.Process(process.pid))
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's session (its workers too), SIGKILL after 30 s."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def wrk(url: str, body: dict, connections: int, seconds: int, scratch: Path) -> dict:
    """One wrk run pinned to LOAD_CPU: requests, seconds, p50/p99 (µs), errors (non-2xx too)."""
    script = scratch / "post.lua"
    script.write_text(WRK_SCRIPT % json.dumps(body, separators=(",", ":")))
    command = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    command += ["--timeout", "60s", "-s", str(script), url]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(
    server: Server,
    live: Running,
    rows: list[dict],
    loads: tuple[str, ...],
    seconds: int,
    scratch: Path,
) -> list[Result]:
    """A one-second warm-up, then each load: "c=N" (one row per request) or the batch."""
    url = f"{live.base}{server.path}"
    wrk(url, server.body(rows[:1]), 8, 1, scratch)
    results = []
    for load in loads:
        sent = rows if load == BATCH else rows[:1]
        connections = 1 if load == BATCH else int(load.removeprefix("c="))
        console.print(f"  {server.name}: {load}")
        cpu = live.cpu_seconds()
        run = wrk(url, server.body(sent), connections, seconds, scratch)
        cpu = live.cpu_seconds() - cpu
        done = max(run["requests"], 1)
        results.append(
            Result(
                server.name,
                load,
                len(sent),
                run["requests"] / run["seconds"],
                run["p50_us"] / 1000,
                run["p99_us"] / 1000,
                cpu / done * 1e6,
                run["errors"],
            )
        )
    return results


def train(workdir: Path) -> None:
    console.print(f"training the champion in {workdir} (`cd4ml run`, ~1 min)")
    command = [str(BIN / "cd4ml"), "run", "--workdir", str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"cd4ml run failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def request_rows(catalog: dict) -> list[dict]:
    """BATCH_ROWS servable rows from the gateway's catalog: every series, date after date."""
    keys = [k["name"] for k in catalog["keys"]]
    dates = catalog["dates"]
    day, last = date.fromisoformat(dates["min"]), date.fromisoformat(dates["max"])
    rows: list[dict] = []
    while day <= last and len(rows) < BATCH_ROWS:
        for pair in catalog["series"][: BATCH_ROWS - len(rows)]:
            values = [int(v) if v.isdigit() else v for v in pair.split("|")]
            covariates = dict.fromkeys(catalog["covariates"], 0)
            rows.append(dict(zip(keys, values, strict=True)) | {"date": day.isoformat()} | covariates)
        day += timedelta(days=dates["step_days"])
    if len(rows) < BATCH_ROWS:
        raise SystemExit(f"the model serves {len(rows)} distinct rows; the batch needs {BATCH_ROWS}")
    return rows


def predictions(server: Server, base: str, rows: list[dict]) -> list[float]:
    """The server's answer for `rows` (checked: 200), as a list of numbers."""
    response = httpx.post(f"{base}{server.path}", json=server.body(rows), timeout=120)
    response.raise_for_status()
    return [p["prediction"] if isinstance(p, dict) else p for p in response.json()["predictions"]]


def dropped_log_records(base: str) -> float:
    """cd4ml_log_dropped from the gateway's /metrics."""
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("cd4ml_log_dropped_total"):
            return float(line.split()[-1])
    raise RuntimeError("cd4ml_log_dropped_total is not in /metrics")


def logged_records(log_db: Path) -> int:
    with sqlite3.connect(log_db) as db:
        return db.execute("SELECT count(*) FROM predictions").fetchone()[0]


def report(results: list[Result], notes: list[str]) -> None:
    table = Table(title="POST one registered model · keep-alive · servers on CPU 0, wrk on CPU 1")
    columns = (
        "server",
        "load",
        "requests/s",
        "rows/s",
        "p50 ms",
        "p99 ms",
        "server CPU µs/req",
        "errors",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("server", "load") else "right")
    for r, after in zip(results, [*results[1:], None], strict=True):
        table.add_row(
            r.server,
            r.load,
            f"{r.requests_per_s:,.0f}",
            f"{r.rows_per_s:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.cpu_us_per_request:,.0f}",
            str(r.errors),
            end_section=after is not None and after.server != r.server,
        )
    console.print(table)

    by = {(r.server, r.load): r for r in results}
    ratios = Table(title="cd4ml over the others: requests/s (batch: rows/s), and CPU per request")
    for column in ("cd4ml / …", *LOADS, "goal at c=8", "met", "c=8 by CPU/req", "met by CPU"):
        ratios.add_column(column, justify="left" if column == "cd4ml / …" else "right")
    ours = {load: by[("cd4ml", load)] for load in LOADS}
    for other, goal in GOALS.items():
        theirs = {load: by[(other, load)] for load in LOADS}
        ratio = {load: ours[load].rows_per_s / theirs[load].rows_per_s for load in LOADS}
        shown = [f"{ratio[load]:.2f}x" for load in LOADS]
        if other == "floor":
            shown[-1] = "n/a"  # the floor does no work per row
        by_cpu = theirs["c=8"].cpu_us_per_request / ours["c=8"].cpu_us_per_request
        ratios.add_row(
            other,
            *shown,
            f">= {goal}x",
            _verdict(ratio["c=8"], goal),
            f"{by_cpu:.2f}x",
            _verdict(by_cpu, goal),
        )
    console.print(ratios)
    for note in notes:
        console.print(note)


def _verdict(ratio: float, goal: float) -> str:
    return "yes" if ratio >= goal else "NO"


def contenders(workdir: Path, log_db: Path) -> tuple[Server, Server, Server]:
    """cd4ml (logging to `log_db`), mlflow and the floor, on the work directory's champion."""
    cd4ml = [str(BIN / "cd4ml"), "serve", "-w", str(workdir), "--port", "{port}"]
    cd4ml += ["--prediction-log", f"sqlite:///{log_db}"]
    mlflow = [str(BIN / "mlflow"), *f"models serve -m {MODEL_URI} --env-manager local".split()]
    mlflow += ["--host", "127.0.0.1", "--port", "{port}", "--workers", "1"]
    return (
        Server("cd4ml", cd4ml, "/predict", "/ready", gateway_body),
        Server(
            "mlflow",
            mlflow,
            "/invocations",
            "/ping",
            mlflow_body,
            {"MLFLOW_TRACKING_URI": tracking_uri(workdir)},
        ),
        Server("floor", FLOOR, "/predict", "/openapi.json", gateway_body),
    )


def two_workers(cd4ml: Server) -> list[Server]:
    """cd4ml with 2 workers, and the floor with 2 workers with and without TCP_NODELAY."""
    floors = {
        "stock uvicorn + asyncio": "--plain --loop asyncio",
        "NoDelay + asyncio": "--loop asyncio",
        "stock uvicorn + uvloop": "--plain",
    }
    return [
        Server(
            "cd4ml --workers 2",
            [*cd4ml.command, "--workers", "2"],
            "/predict",
            "/ready",
            gateway_body,
        ),
        *(
            Server(
                f"floor --workers 2, {name}",
                [*FLOOR, "--workers", "2", *flags.split()],
                "/predict",
                "/openapi.json",
                gateway_body,
            )
            for name, flags in floors.items()
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="work directory with a champion (default: train one)")
    parser.add_argument("--seconds", type=int, default=8, help="duration of each wrk run")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise SystemExit("wrk and taskset are needed: `make wrk` installs wrk")
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as temp:
        scratch = Path(temp)
        workdir = args.workdir.resolve() if args.workdir else scratch / "work"
        if not args.workdir:
            train(workdir)
        log_db = scratch / "predictions.db"
        cd4ml, mlflow, floor = contenders(workdir, log_db)
        console.print(
            f"servers pinned to CPU {SERVER_CPU}, wrk to CPU {LOAD_CPU} (taskset); one server "
            f"at a time; {args.seconds} s per load after a 1 s warm-up"
        )
        results = []
        with running(cd4ml) as live:
            rows = request_rows(httpx.get(f"{live.base}/api/catalog", timeout=30).json())
            ours = predictions(cd4ml, live.base, rows)
            results += measure(cd4ml, live, rows, LOADS, args.seconds, scratch)
            dropped = dropped_log_records(live.base)
        logged = logged_records(log_db)
        with running(mlflow) as live:
            theirs = predictions(mlflow, live.base, rows)
            results += measure(mlflow, live, rows, LOADS, args.seconds, scratch)
        with running(floor) as live:
            results += measure(floor, live, rows, LOADS, args.seconds, scratch)
        for server in two_workers(cd4ml):
            with running(server) as live:
                results += measure(server, live, rows, ("c=1", "c=8"), args.seconds, scratch)

    difference = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(ours, theirs, strict=True))
    load_after = os.getloadavg()[0]
    notes = [
        f"same model: cd4ml and mlflow differ by at most {difference:.1e} (relative) on {BATCH}",
        f"cd4ml prediction log (SQLite): {logged:,} records written, {dropped:,.0f} dropped",
        "--workers 2: both workers on CPU 0. uvloop sets TCP_NODELAY itself; the asyncio loop only "
        "on sockets made with proto=IPPROTO_TCP, which uvicorn's shared socket is not.",
        f"machine load average (other jobs too): {load_before:.1f} before, {load_after:.1f} after, "
        f"on {os.cpu_count()} CPUs",
    ]
    if max(load_before, load_after) > (os.cpu_count() or 1):
        notes.append(
            "[bold]the machine was busy: requests/s and latency depend on what else ran; CPU "
            "per request much less (contention still inflates it somewhat): judge by it[/]"
        )
    report(results, notes)


if __name__ == "__main__":
    main()
