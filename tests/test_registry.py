"""The model registry through the CLI: promote, rollback, models, verify — on the default local
SQLite store and on a real `mlflow server` backed by PostgreSQL, with the same assertions.

Versions are registered directly with `cd4ml.registry` from the bundle of one pipeline run, so
no test here runs the pipeline; each test gets its own registered model (v1 champion,
v2 challenger, v3) and its own work directory.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import MlflowServer

from cd4ml.registry import CHALLENGER, CHAMPION, Registry, log_bundle, signature

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("mlflow-server")]

CLI = Callable[..., subprocess.CompletedProcess[str]]
WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}  # Rich tables unwrapped, so output can be searched


@dataclass
class Store:
    """A tracking store holding one logged bundle, and how a CLI subprocess reaches it."""

    uri: str | None  # None: the work directory's default SQLite file
    template: Path | None  # SQLite: a database to copy into each work directory
    model_uri: str

    def tracking_uri(self, workdir: Path) -> str:
        return self.uri or f"sqlite:///{workdir / 'mlflow.db'}"

    def env(self, **extra: str) -> dict[str, str]:
        return WIDE | ({"CD4ML_TRACKING_URI": self.uri} if self.uri else {}) | extra


def _log_trained_bundle(tracking_uri: str, bundle: Path, artifacts: str | None) -> str:
    from cd4ml.features import FeatureSpec
    from cd4ml.registry import client

    spec = FeatureSpec.model_validate_json((bundle / "feature_spec.json").read_text())
    series = pd.read_parquet(bundle / "series.parquet", columns=spec.series_keys)
    mlflow = client(tracking_uri)
    experiment = mlflow.create_experiment("cd4ml-registry-tests", artifact_location=artifacts)
    run = mlflow.create_run(experiment)
    key_types = {k: str(series[k].dtype) for k in spec.series_keys}
    model_uri = log_bundle(run.info.run_id, bundle, signature(key_types, spec.covariates))
    mlflow.set_terminated(run.info.run_id)
    return model_uri


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, require_service: Callable) -> Store:
    """The bundle of the trained work directory, logged once per store. The server is started
    before that work directory is awaited, so its boot overlaps the pipeline run."""
    if request.param == "postgres":
        server: MlflowServer = request.getfixturevalue("mlflow_server")
    bundle = request.getfixturevalue("trained_workdir") / "models" / "bundle"
    if request.param == "postgres":
        require_service(f"mlflow server on {server.url}", server.wait_ready)
        return Store(server.url, None, _log_trained_bundle(server.url, bundle, None))
    folder = tmp_path_factory.mktemp("sqlite-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    model_uri = _log_trained_bundle(uri, bundle, (folder / "artifacts").as_uri())
    return Store(None, folder / "mlflow.db", model_uri)


@dataclass
class Project:
    """A work directory whose params.yaml names this test's registered model."""

    workdir: Path
    registry: Registry
    store: Store


@pytest.fixture
def project(store: Store, tmp_path: Path) -> Project:
    """v1 champion (as the first `cd4ml run` leaves it), v2 challenger (the second), v3 new."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    name = f"forecaster-{uuid.uuid4().hex[:8]}"
    (workdir / "params.yaml").write_text(f"registry:\n  model_name: {name}\n")
    if store.template:
        shutil.copyfile(store.template, workdir / "mlflow.db")
    registry = Registry(store.tracking_uri(workdir), name)
    for _ in range(3):
        registry.register(store.model_uri, "", {"gate": "passed"})
    registry.move(CHAMPION, "1", "passed all gates in cd4ml run", who="pipeline")
    registry.move(CHALLENGER, "2", "passed all gates in cd4ml run", who="pipeline")
    return Project(workdir, registry, store)


def cli(run_cd4ml: CLI, project: Project, *args: str) -> tuple[int, str]:
    """`cd4ml ARGS -w <project>` as user alice: (exit code, stdout + stderr)."""
    result = run_cd4ml(*args, "-w", str(project.workdir), env=project.store.env(CD4ML_USER="alice"))
    return result.returncode, result.stdout + result.stderr


def test_promote_moves_champion_and_records_who_when_from_to_why(project: Project, run_cd4ml: CLI) -> None:
    started = time.time()
    code, output = cli(run_cd4ml, project, "promote", "2", "--reason", "better on new weeks")
    assert code == 0, output
    assert "champion: v1 → v2" in output
    assert project.registry.aliases() == {CHAMPION: "2"}  # the challenger it was is cleared
    move = project.registry.history(CHAMPION)[-1]
    assert (move.from_version, move.to_version) == ("1", "2")
    assert (move.who, move.why) == ("alice", "better on new weeks")
    assert started - 1 <= move.when <= time.time() + 1
    cleared = project.registry.history(CHALLENGER)[-1]
    assert (cleared.from_version, cleared.to_version, cleared.who) == ("2", None, "alice")

    code, output = cli(run_cd4ml, project, "models")
    assert code == 0, output
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if line.count("│") > 5}
    assert set(rows) >= {"1", "2", "3"}
    assert "champion" in rows["2"] and "champion" not in rows["1"] + rows["3"]
    assert "passed" in rows["3"]

    code, output = cli(run_cd4ml, project, "models", "--history")
    assert code == 0, output
    moves = [line for line in output.splitlines() if "│" in line]
    assert any("better on new weeks" in m and "alice" in m and "champion" in m for m in moves)
    assert any("passed all gates" in m and "pipeline" in m for m in moves)


def test_rollback_walks_back_one_champion_at_a_time_then_refuses(project: Project, run_cd4ml: CLI) -> None:
    project.registry.promote("3", "v3 by hand", who="bob")
    project.registry.promote("2", "v2 after all", who="bob")  # champions so far: v1, v3, v2

    code, output = cli(run_cd4ml, project, "rollback", "--reason", "v2 over-forecasts")
    assert code == 0, output
    assert "champion: v2 → v3 (rollback)" in output
    assert project.registry.alias(CHAMPION) == "3"

    code, output = cli(run_cd4ml, project, "rollback")
    assert code == 0, output
    assert project.registry.alias(CHAMPION) == "1"

    code, output = cli(run_cd4ml, project, "rollback")
    assert code == 2, output
    assert "no earlier champion to roll back to" in output
    assert project.registry.alias(CHAMPION) == "1"
    rollbacks = [m for m in project.registry.history(CHAMPION) if m.why.startswith("rollback:")]
    assert [(m.from_version, m.to_version, m.who) for m in rollbacks] == [("2", "3", "alice"), ("3", "1", "alice")]
    assert rollbacks[0].why == "rollback: v2 over-forecasts"


def test_promoting_an_unknown_version_fails_with_exit_2_and_changes_nothing(project: Project, run_cd4ml: CLI) -> None:
    moves = len(project.registry.history())
    code, output = cli(run_cd4ml, project, "promote", "99")
    assert code == 2, output
    assert f"{project.registry.name} has no version 99 (versions: 3, 2, 1)" in output
    assert project.registry.aliases() == {CHAMPION: "1", CHALLENGER: "2"}
    assert len(project.registry.history()) == moves


def test_verify_rescores_the_registered_champion_from_the_store(project: Project, run_cd4ml: CLI) -> None:
    code, output = cli(run_cd4ml, project, "verify", f"models:/{project.registry.name}@champion")
    assert code == 0, output
    assert output.count("match") == 6 and "DIFFERS" not in output
