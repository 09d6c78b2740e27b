"""A tracking server is the shared store: `cd4ml run` against a real `mlflow server` (PostgreSQL
backend, `--artifacts-destination`) keeps runs and models in the server's artifact store, so
another work directory — with the trainer's folder gone — verifies, predicts with and serves the
champion."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import TRAINED_SAMPLE, MlflowServer, holdout_predictions

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("mlflow-server")]

CLI = Callable[..., subprocess.CompletedProcess[str]]
WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}
CHAMPION = "models:/sales-forecaster@champion"


def test_a_second_work_directory_uses_the_champion_from_the_servers_artifact_store(
    mlflow_server: MlflowServer,
    require_service: Callable[..., None],
    run_cd4ml: CLI,
    start_gateway: Callable[..., object],
    tmp_path: Path,
) -> None:
    from cd4ml.bundle import holdout_origin

    require_service(f"mlflow server on {mlflow_server.url}", mlflow_server.wait_ready)
    env = WIDE | {"CD4ML_TRACKING_URI": mlflow_server.url}
    trainer, other = tmp_path / "trainer", tmp_path / "other"
    trained = run_cd4ml("run", "-w", str(trainer), *TRAINED_SAMPLE, env=env)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    assert not (trainer / "mlartifacts").exists()
    stored = {p.relative_to(mlflow_server.artifacts).parts[-1] for p in mlflow_server.artifacts.rglob("*")}
    assert {"model.onnx", "feature_spec.json", "MLmodel"} <= stored, sorted(stored)
    bundle = trainer / "models" / "bundle"
    rows = pd.read_parquet(bundle / "holdout.parquet")
    spec = json.loads((bundle / "feature_spec.json").read_text())
    rows = rows[["date", *spec["series_keys"], *spec["covariates"]]].assign(date=lambda f: f["date"].astype(str))
    expected, origin = holdout_predictions(bundle), holdout_origin(bundle)
    shutil.rmtree(trainer)  # nothing of the training machine is left to read from

    other.mkdir()
    verified = run_cd4ml("verify", CHAMPION, "-w", str(other), env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("match") == 6 and "DIFFERS" not in verified.stdout

    rows.to_csv(other / "rows.csv", index=False)
    predicted = run_cd4ml(
        "predict", "-i", str(other / "rows.csv"), "-o", str(other / "forecast.csv"), "--origin", origin.isoformat(),
        "-m", CHAMPION, "-w", str(other), env=env,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    written = pd.read_csv(other / "forecast.csv", float_precision="round_trip")
    assert np.array_equal(written["unit_sales"].to_numpy(), np.asarray(expected))

    gateway = start_gateway(other, env=env)  # the registry's champion, followed by its alias
    version = httpx.get(f"{gateway.url}/version", timeout=10).json()
    assert version["version"] == "1", version
    catalog = httpx.get(f"{gateway.url}/api/catalog", timeout=10).json()
    store, item = (int(v) for v in catalog["series"][0].split("|"))
    row = {"store_nbr": store, "item_nbr": item, "date": catalog["dates"]["min"], "onpromotion": 0}
    answer = httpx.post(f"{gateway.url}/predict", json={"rows": [row]}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"name": "sales-forecaster", "version": "1"}


def test_artifacts_go_to_the_server_unless_a_location_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cd4ml.config import artifact_location

    monkeypatch.delenv("CD4ML_ARTIFACT_LOCATION", raising=False)
    monkeypatch.delenv("CD4ML_TRACKING_URI", raising=False)
    assert artifact_location(tmp_path) == (tmp_path / "mlartifacts").resolve().as_uri()
    monkeypatch.setenv("CD4ML_TRACKING_URI", "https://mlflow.example:5000")
    assert artifact_location(tmp_path) is None  # the server's default artifact root
    monkeypatch.setenv("CD4ML_ARTIFACT_LOCATION", "s3://bucket/cd4ml")
    assert artifact_location(tmp_path) == "s3://bucket/cd4ml"


def test_an_existing_experiment_with_a_local_artifact_root_is_warned_about(
    mlflow_server: MlflowServer, require_service: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from cd4ml import tracking

    require_service(f"mlflow server on {mlflow_server.url}", mlflow_server.wait_ready)
    name = f"laptop-{uuid.uuid4().hex[:8]}"
    local = (tmp_path / "mlartifacts").as_uri()
    mlflow.MlflowClient(mlflow_server.url).create_experiment(name, artifact_location=local)
    monkeypatch.setenv("CD4ML_TRACKING_URI", mlflow_server.url)
    monkeypatch.delenv("CD4ML_ARTIFACT_LOCATION", raising=False)
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.warns(UserWarning, match=f"keeps its artifacts in {local}, which only this machine can read"):
            tracking.connect(tmp_path, name)
    finally:
        mlflow.set_tracking_uri(previous)
