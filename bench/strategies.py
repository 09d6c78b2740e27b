"""What a release strategy costs: /predict under single, shadow, canary (50 %) and A/B (50/50).

One `cd4ml serve` (one worker, default SQLite prediction log, no polling) on a copy of a
trained work directory in which the champion's bundle is registered a second time, so every
arm serves the SAME model and only the routing differs. The strategy is switched through
PUT /admin/routing between measurements, and the strategies take turns round after round, so a
change in machine load hits them alike. Load comes from this process: N threads, each with
one keep-alive connection, one row per request, a different X-Client-Id on every request (so
canary and A/B traffic reaches both arms). With two or more CPUs the server is pinned to CPU 0
and the client to the others, and a lowest-priority spinner keeps CPU 0 from going idle: on this
VM an idle vCPU takes long to wake, which made single (idle between requests) look 2.5× slower
than shadow (whose background work keeps the CPU awake) — 0.97 vs 0.50 ms p50 at c=1; with the
spinner both are ~0.45 ms. `--no-spinner` shows the effect.

Reported per strategy and concurrency: requests/s, p50/p99 latency, the server's own CPU time
per request (independent of what else the machine runs) and, for shadow, how many shadow calls
ran or were skipped (queue full) — each against single.

Run: `.venv/bin/python bench/strategies.py [--workdir TRAINED_DIR] [--seconds 5] [--rounds 2]`
(without --workdir a small sample is trained first, ~1 min).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 140)
BIN = Path(sys.executable).parent
TOKEN = "bench-strategies"
ARMS = {"champion": "champion", "challenger": "2"}
STRATEGIES = {
    "single": {"strategy": "single", "arms": {"champion": "champion"}},
    "shadow": {"strategy": "shadow", "arms": ARMS},
    "canary 50%": {"strategy": "canary", "arms": ARMS, "share": 0.5},
    "ab 50/50": {"strategy": "ab", "arms": ARMS, "shares": {"champion": 0.5, "challenger": 0.5}},
}


@dataclass
class Sample:
    requests: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)
    shadows_done: float = 0.0
    shadows_skipped: float = 0.0


def prepare(workdir: Path | None, scratch: Path) -> Path:
    """A scratch copy of a trained work directory whose champion bundle is also version 2."""
    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    target = scratch / "work"
    if workdir is None:
        console.print("training a small sample (cd4ml run) …")
        subprocess.run(
            [
                str(BIN / "cd4ml"),
                "run",
                "-w",
                str(target),
                "--set",
                "data.sample.items=20",
                "--set",
                "data.sample.stores=5",
            ],
            check=True,
            capture_output=True,
        )
    else:
        shutil.copytree(
            workdir,
            target,
            ignore=shutil.ignore_patterns("predictions.db*", "feedback.db*", "routing.yaml", "bandit.db*"),
        )
    registered = json.loads((target / "models" / "registered.json").read_text())
    registry = Registry(tracking_uri(target), registered["name"])
    champion = registry.client.get_model_version(registered["name"], registry.alias("champion"))
    ARMS["challenger"] = registry.register(champion.source, champion.run_id or "", {"gate": "bench copy"})
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(workdir: Path, port: int, pin: bool, nice: int) -> subprocess.Popen:
    command = [str(BIN / "cd4ml"), "serve", "-w", str(workdir), "--port", str(port), "--poll", "0"]
    if pin:
        command = ["taskset", "-c", "0", *command]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")} | {"CD4ML_ADMIN_TOKEN": TOKEN}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"cd4ml serve exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("cd4ml serve did not get ready in 120 s")


@contextmanager
def spinner(cpu: str, enabled: bool) -> Iterator[None]:
    """A nice-19 busy loop on the server's CPU (it yields to the server at once)."""
    if not enabled:
        yield
        return
    spin = subprocess.Popen(["taskset", "-c", cpu, "nice", "-n", "19", sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spin.terminate()
        spin.wait()


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    return 0.0


def shadows_logged(workdir: Path) -> int:
    import sqlite3

    with sqlite3.connect(workdir / "predictions.db", timeout=30) as db:
        return db.execute("SELECT count(*) FROM predictions WHERE arm LIKE 'shadow:%'").fetchone()[0]


def load(port: int, body: bytes, concurrency: int, seconds: float, sample: Sample) -> None:
    """`concurrency` threads send requests for `seconds`; latencies and arms go into `sample`."""
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        latencies, arms, n = [], {}, 0
        while time.perf_counter() < stop:
            n += 1
            headers = {"Content-Type": "application/json", "X-Client-Id": f"w{worker}-{n}"}
            started = time.perf_counter()
            connection.request("POST", "/predict", body, headers)
            answer = connection.getresponse().read()
            latencies.append(time.perf_counter() - started)
            arm = json.loads(answer)["arm"]
            arms[arm] = arms.get(arm, 0) + 1
        connection.close()
        with lock:
            sample.latencies.extend(latencies)
            for arm, count in arms.items():
                sample.arms[arm] = sample.arms.get(arm, 0) + count

    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sample.seconds += time.perf_counter() - started
    sample.requests = len(sample.latencies)


def measure(
    port: int, workdir: Path, server: psutil.Process, body: bytes, concurrency: int, seconds: float, rounds: int
) -> dict[str, Sample]:
    url = f"http://127.0.0.1:{port}"
    samples = {name: Sample() for name in STRATEGIES}
    for round_ in range(rounds):
        order = list(STRATEGIES.items())
        for name, routing in order if round_ % 2 == 0 else order[::-1]:  # no strategy always goes first
            answer = httpx.put(
                f"{url}/admin/routing", json=routing, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            answer.raise_for_status()
            time.sleep(0.5)  # let shadow work of the previous strategy drain
            load(port, body, concurrency, min(1.0, seconds / 2), Sample())  # warm up
            sample = samples[name]
            skipped, logged = metric(url, "cd4ml_shadow_skipped_total"), shadows_logged(workdir)
            cpu = sum(server.cpu_times()[:2])
            load(port, body, concurrency, seconds, sample)
            sample.cpu_seconds += sum(server.cpu_times()[:2]) - cpu
            time.sleep(0.5)  # shadow calls still queued finish and are logged (the log flushes every 0.2 s)
            sample.shadows_skipped += metric(url, "cd4ml_shadow_skipped_total") - skipped
            sample.shadows_done += shadows_logged(workdir) - logged
            console.print(
                f"  c={concurrency} round {round_ + 1}/{rounds} {name}: {len(sample.latencies):,} requests so far",
                highlight=False,
            )
    return samples


def table(results: dict[int, dict[str, Sample]]) -> Table:
    out = Table(title="/predict by release strategy (same model on every arm), overhead vs single")
    for column in (
        "c",
        "strategy",
        "req/s",
        "Δ req/s",
        "p50 ms",
        "Δ p50",
        "p99 ms",
        "Δ p99",
        "server CPU µs/req",
        "Δ CPU",
        "arms",
        "shadow calls run / skipped",
    ):
        out.add_column(column, justify="left" if column in {"strategy", "arms"} else "right")
    for concurrency, samples in results.items():
        base = samples["single"]
        base_rate = base.requests / base.seconds
        base_p50, base_p99 = percentile(base, 50), percentile(base, 99)
        base_cpu = base.cpu_seconds / base.requests * 1e6
        for name, s in samples.items():
            rate, p50, p99 = s.requests / s.seconds, percentile(s, 50), percentile(s, 99)
            cpu = s.cpu_seconds / s.requests * 1e6
            same = name == "single"
            shares = ", ".join(f"{a} {n / s.requests:.0%}" for a, n in sorted(s.arms.items()))
            out.add_row(
                str(concurrency),
                name,
                f"{rate:,.0f}",
                "" if same else f"{rate / base_rate - 1:+.1%}",
                f"{p50:.2f}",
                "" if same else f"{p50 - base_p50:+.2f}",
                f"{p99:.2f}",
                "" if same else f"{p99 - base_p99:+.2f}",
                f"{cpu:,.0f}",
                "" if same else f"{cpu / base_cpu - 1:+.0%}",
                shares,
                f"{s.shadows_done:,.0f} / {s.shadows_skipped:,.0f}" if name == "shadow" else "",
            )
        out.add_section()
    return out


def percentile(sample: Sample, q: int) -> float:
    """The q-th percentile of a sample's latencies, in ms."""
    return statistics.quantiles(sample.latencies, n=100)[q - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="A trained work directory (it is copied, not changed).")
    parser.add_argument("--seconds", type=float, default=5.0, help="Load per strategy, concurrency and round.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--no-spinner", action="store_true", help="Let the server's CPU go idle between requests.")
    parser.add_argument("--nice", type=int, default=0, help="Server priority, e.g. -10 on a busy machine (root).")
    args = parser.parse_args()
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    with tempfile.TemporaryDirectory(prefix="cd4ml-strategies-") as scratch:
        workdir = prepare(args.workdir, Path(scratch))
        port = free_port()
        server = start_server(workdir, port, pin, args.nice)
        try:
            catalog = httpx.get(f"http://127.0.0.1:{port}/api/catalog", timeout=30).json()
            store, item = (int(v) for v in catalog["series"][0].split("|"))
            body = json.dumps(
                {"rows": [{"store_nbr": store, "item_nbr": item, "date": catalog["dates"]["min"], "onpromotion": 0}]}
            ).encode()
            process = psutil.Process(server.pid)
            with spinner("0", pin and not args.no_spinner):
                results = {
                    c: measure(port, workdir, process, body, c, args.seconds, args.rounds)
                    for c in (int(c) for c in args.concurrency.split(","))
                }
        finally:
            server.terminate()
            server.wait(30)
    console.print(table(results))
    console.print(
        f"server pinned to CPU 0, client to the others: {pin}; spinner: {pin and not args.no_spinner}; "
        f"server nice {args.nice}; load average "
        f"{os.getloadavg()[0]:.1f} over {os.cpu_count()} CPUs",
        highlight=False,
    )


if __name__ == "__main__":
    main()
