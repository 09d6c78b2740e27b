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


# v2 and v3 of `released_workdir`: LightGBM refit on the trained work directory's features with
# other trees, leaves and seeds than v1 (the pipeline's model), so every version forecasts
# differently and an answer from the wrong model cannot pass for the right one
VARIANTS = {
    "2": {"n_estimators": 40, "num_leaves": 7, "learning_rate": 0.1, "seed": 2},
    "3": {"n_estimators": 80, "num_leaves": 15, "learning_rate": 0.08, "feature_fraction": 0.6, "seed": 3},
}


def _variant_bundle(trained: Path, params: dict, into: Path) -> Path:
    """The trained bundle with its model replaced by a LightGBM fit with `params` (its shipped
    metrics re-scored, so `cd4ml verify` holds for it too)."""
    import shutil

    from cd4ml.bundle import recorded_metrics, rescore_holdout
    from cd4ml.config import Paths
    from cd4ml.models.lightgbm_model import LightGBMForecaster
    from cd4ml.pipeline.stages import feature_spec, load_part

    paths = Paths(trained)
    fs = feature_spec(paths)
    X, labels = load_part(paths, "train", fs.columns, labels=["sales", "weight"])
    model = LightGBMForecaster(**params).fit(X, labels["sales"].to_numpy(), labels["weight"].to_numpy())
    bundle = into / "bundle"  # MLflow keeps the folder's name; readers expect artifacts/bundle
    shutil.copytree(trained / "models" / "bundle", bundle)
    shutil.rmtree(bundle / "native")
    model.save(bundle / "native")
    (bundle / "model.onnx").write_bytes(model.to_onnx(len(fs.columns)))
    metrics = recorded_metrics(bundle) | {"shipped": rescore_holdout(bundle)}
    (bundle / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return bundle


def holdout_predictions(bundle: Path) -> list[float]:
    """What a bundle forecasts for its own holdout rows, through the serving path."""
    from cd4ml.bundle import holdout_origin, scorer

    score = scorer(bundle, holdout_origin(bundle))
    holdout = pd.read_parquet(bundle / "holdout.parquet")
    return score.predict(holdout[["date", *score.spec.series_keys, *score.spec.covariates]]).tolist()


def forecasts(workdir: Path, version: str, rows: list[dict]) -> list[float]:
    """What version `version` of the work directory's model forecasts for request rows, computed
    here from its bundle (not by a gateway): what a gateway answering as that version must say."""
    from cd4ml.bundle import scorer
    from cd4ml.config import Paths, tracking_uri
    from cd4ml.registry import resolve_bundle

    bundle = resolve_bundle(
        f"models:/sales-forecaster/{version}", tracking_uri(workdir), Paths(workdir).cache / "models"
    )
    return scorer(bundle).predict(pd.DataFrame(rows)).tolist()


@pytest.fixture(scope="session")
def variant_bundles(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """version → bundle folder of VARIANTS, built once per session (per xdist worker)."""
    root = tmp_path_factory.mktemp("variants")
    bundles = {v: _variant_bundle(trained_workdir, params, root / f"v{v}") for v, params in VARIANTS.items()}
    shipped = [holdout_predictions(b) for b in [trained_workdir / "models" / "bundle", *bundles.values()]]
    for n, one in enumerate(shipped):
        for other in shipped[n + 1 :]:
            assert sum(a != b for a, b in zip(one, other, strict=True)) > len(one) // 2, "variants must differ"
    return bundles


@pytest.fixture(scope="session")
def released_workdir(
    trained_workdir: Path, variant_bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """`released_workdir(name)`: a fresh copy of the trained work directory holding three
    different models — v1 champion (the pipeline's), v2 challenger and v3 without an alias
    (VARIANTS). Logging two bundles costs a few seconds instead of two ~40 s `cd4ml run`s."""
    import shutil

    from mlflow.models import get_model_info

    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry, log_bundle

    def make(name: str) -> Path:
        workdir = tmp_path_factory.mktemp(name) / "work"
        shutil.copytree(trained_workdir, workdir)
        registered = json.loads((workdir / "models" / "registered.json").read_text())
        registry = Registry(tracking_uri(workdir), registered["name"])
        experiment = registry.client.create_experiment("variants", artifact_location=(workdir / "variants").as_uri())
        model_signature = get_model_info(registered["model_uri"]).signature  # v1's: same request rows
        for version, bundle in variant_bundles.items():
            run_id = registry.client.create_run(experiment, run_name=f"variant v{version}").info.run_id
            registry.client.log_dict(run_id, VARIANTS[version], "variant.json")
            assert registry.register(log_bundle(run_id, bundle, model_signature), run_id, {"gate": "passed"}) == version
        registry.move("challenger", "2", "a release candidate for the tests")
        return workdir

    return make


@dataclass
class MlflowServer:
    """An `mlflow server` subprocess on a fresh PostgreSQL database, proxying artifacts."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    artifacts: Path  # its --artifacts-destination

    def wait_ready(self, timeout: float = 180) -> None:
        """Return once /health answers; raise saying why it never did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited with {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"no answer on /health after {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120, every: float = 0.1) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` s (generous: it
    catches something that never happens, not something slow — timings belong in bench/)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: Callable[[], AbstractContextManager[str]]
) -> Iterator[MlflowServer]:
    """A session's `mlflow server` on a fresh PostgreSQL database (skipped, or failed under
    CI=true, without PostgreSQL). Started, not yet waited for: it boots while the trained work
    directory is built; call `require_service(..., server.wait_ready)` before using it."""
    from sqlalchemy.engine import make_url

    with postgres_database() as url:
        # SQLAlchemy >= 2.1 maps postgresql:// to psycopg 3; MLflow's documented driver is psycopg2
        backend = make_url(url).set(drivername="postgresql+psycopg2")
        folder, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
        # one uvicorn worker (default 4) and no job runner: half the boot time on 2 cores
        command = [str(Path(sys.executable).parent / "mlflow"), "server",
                   "--backend-store-uri", backend.render_as_string(hide_password=False),
                   "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        with (folder / "server.log").open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )  # fmt: skip
        server = MlflowServer(f"http://127.0.0.1:{port}", process, folder / "server.log", folder / "artifacts")
        try:
            yield server
        finally:
            server.stop()
