"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pandas as pd
import pytest
from filelock import FileLock

from cd4ml.data.sample import SampleConfig, write_sample
from cd4ml.data.schemas import check, sales_schema


@pytest.fixture(scope="session")
def favorita_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic Favorita folder (3 stores, 8 items, 120 days); do not modify it."""
    folder = tmp_path_factory.mktemp("favorita")
    write_sample(folder, SampleConfig(stores=3, items=8, days=120, start=date(2016, 1, 1)))
    return folder


@pytest.fixture(scope="session")
def read_canonical() -> Callable[[Path], pd.DataFrame]:
    """Read an ingest's sales.parquet after checking it against the validate stage's schema."""

    def read(out_dir: Path) -> pd.DataFrame:
        dataset = json.loads((out_dir / "dataset.json").read_text())
        spec = dataset["spec"]
        frame = pd.read_parquet(out_dir / "sales.parquet")
        schema = sales_schema(spec["series_keys"], spec["covariates"], dataset["attributes"])
        check(schema, frame, "sales.parquet")
        return frame

    return read


TRAINED_SAMPLE = ["--set", "data.sample.items=20", "--set", "data.sample.stores=5"]


def _cd4ml(*args: str) -> list[str]:
    """The `cd4ml` console script of this interpreter's environment, with arguments."""
    return [str(Path(sys.executable).parent / "cd4ml"), *args]


def _env(**extra: str) -> dict[str, str]:
    """The environment without the caller's CD4ML_* settings (they would redirect stores)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")} | extra


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory after `cd4ml run` on a small sample: v1 registered as champion.

    Built once per test run, also under xdist (the first worker builds, the others wait on a
    file lock). Treat it as read-only: tests that move aliases or start gateways (which write
    logs next to the models) work on a `shutil.copytree` of it.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by every worker of this run
    workdir, done = root / "trained", root / "trained.done"
    with FileLock(str(root / "trained.lock")):
        if not done.exists():
            result = subprocess.run(
                _cd4ml("run", "-w", str(workdir), *TRAINED_SAMPLE),
                capture_output=True,
                text=True,
                env=_env(),
                timeout=600,
            )
            if result.returncode != 0:
                output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                pytest.fail(f"cd4ml run failed ({result.returncode}):\n{output}")
            done.touch()
    return workdir


@pytest.fixture(scope="session")
def require_service() -> Callable[[str, Callable[[], object]], None]:
    """`require_service(name, probe)`: skip when `probe()` raises on a user's machine, but fail
    under CI=true, where the service is part of the machine and a skip would hide a broken test."""

    def require(name: str, probe: Callable[[], object]) -> None:
        try:
            probe()
        except Exception as exc:
            reason = f"{name} unreachable: {type(exc).__name__}: {exc}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{reason} (CI=true: the service must be running)")
            pytest.skip(reason)

    return require


POSTGRES_URL = os.environ.get("CD4ML_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_database(require_service: Callable[..., None]) -> Callable[[], AbstractContextManager[str]]:
    """`with postgres_database() as url:` a fresh database on the test PostgreSQL server
    (CD4ML_TEST_POSTGRES_URL), dropped afterwards with whatever is still connected to it."""
    import psycopg2

    def admin(statement: str) -> None:
        connection = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    @contextmanager
    def fresh() -> Iterator[str]:
        require_service(f"PostgreSQL at {POSTGRES_URL}", lambda: admin("SELECT 1"))
        name = f"cd4ml_test_{uuid.uuid4().hex[:12]}"
        admin(f'CREATE DATABASE "{name}"')
        try:
            yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
        finally:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return fresh


@pytest.fixture(scope="session")
def run_cd4ml() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_cd4ml(*args, env={})`: the CLI as a user runs it (a subprocess; output captured)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(_cd4ml(*args), capture_output=True, text=True, env=_env(**(env or {})), timeout=timeout)

    return run


@dataclass
class GatewayProcess:
    """A `cd4ml serve` subprocess (real uvicorn) on a free local port."""

    url: str
    process: subprocess.Popen[bytes]
    output: Path

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager stops it (graceful: the log is flushed); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"gateway ignored SIGTERM for {timeout} s:\n{self.log()}")
        return self.process.returncode

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., GatewayProcess]]:
    """`start_gateway(workdir, *serve_args, env={})`: `cd4ml serve` on a free port, once /ready
    answers 200; every gateway still running is stopped when the module ends."""
    started: list[GatewayProcess] = []
    logs = tmp_path_factory.mktemp("gateway-logs")

    def start(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> GatewayProcess:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        output = logs / f"gateway-{port}.log"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                _cd4ml("serve", "-w", str(workdir), "--port", str(port), *args),
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=_env(**(env or {})),
            )
        gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, output)
        started.append(gateway)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"cd4ml serve exited with {process.returncode}:\n{gateway.log()}")
            try:
                if httpx.get(f"{gateway.url}/ready", timeout=2).status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"cd4ml serve not ready after {timeout} s:\n{gateway.log()}")

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def released_workdir(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`released_workdir(name)`: a fresh copy of the trained work directory holding three
    versions of the same bundle — v1 champion, v2 challenger, v3 without an alias. Re-registering
    the logged model costs ~1 s instead of a ~40 s `cd4ml run`; versions differ only by number,
    which is all routing tests need to tell arms apart."""
    import shutil

    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    def make(name: str) -> Path:
        workdir = tmp_path_factory.mktemp(name) / "work"
        shutil.copytree(trained_workdir, workdir)
        registered = json.loads((workdir / "models" / "registered.json").read_text())
        registry = Registry(tracking_uri(workdir), registered["name"])
        for _ in range(2):
            registry.register(registered["model_uri"], "", {"gate": "passed"})
        registry.move("challenger", "2", "a release candidate for the tests")
        return workdir

    return make
