"""`cd4ml backtest`: the pipeline's model, seasonal naive and extra families at rolling origins,
and the gates judging the mean over those folds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("backtest")]

SMALL = ["data.sample.stores=3", "data.sample.items=8", "data.sample.days=240", "split.horizon=7"]


def cd4ml(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")} | {"COLUMNS": "200", "NO_COLOR": "1"}
    command = [str(Path(sys.executable).parent / "cd4ml"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def backtested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    workdir = tmp_path_factory.mktemp("backtest") / "work"
    sets = [part for override in SMALL for part in ("--set", override)]
    result = cd4ml("backtest", "-w", str(workdir), "--folds", "2", "--models", "random_forest", *sets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


def test_every_fold_scores_each_method_on_its_own_origin(backtested: tuple[Path, subprocess.CompletedProcess]) -> None:
    workdir, result = backtested
    report = json.loads((workdir / "reports" / "backtest.json").read_text())
    split = json.loads((workdir / "data" / "split.json").read_text())
    origins = [date.fromisoformat(f["origin"]) for f in report["folds"]]
    assert origins == [date.fromisoformat(split["holdout_origin"]), origins[0] - timedelta(days=7)]
    assert report["family"] == "lightgbm"
    for fold in report["folds"]:
        assert set(fold["metrics"]) == {"lightgbm", "seasonal_naive", "random_forest"}
    # fold 0 is the pipeline's own holdout, as evaluate scored it
    evaluated = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert report["folds"][0]["metrics"]["lightgbm"] == evaluated["model"]
    assert report["folds"][0]["metrics"]["seasonal_naive"] == evaluated["baseline"]
    for method, mean in report["mean"].items():
        by_fold = [f["metrics"][method]["nwrmsle"] for f in report["folds"]]
        assert mean["nwrmsle"] == pytest.approx(sum(by_fold) / 2)
    assert (workdir / "reports" / "backtest.png").read_bytes().startswith(b"\x89PNG")
    assert "mean" in result.stdout and "random_forest" in result.stdout
    assert not (workdir / "models" / "registered.json").exists()  # a backtest registers nothing


def test_the_backtest_means_are_logged_to_the_run(backtested: tuple[Path, subprocess.CompletedProcess]) -> None:
    from mlflow import MlflowClient

    workdir, _ = backtested
    report = json.loads((workdir / "reports" / "backtest.json").read_text())
    run_id = json.loads((workdir / "models" / "run.json").read_text())["run_id"]
    metrics = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id).data.metrics
    assert metrics["backtest.lightgbm.nwrmsle"] == pytest.approx(report["mean"]["lightgbm"]["nwrmsle"])
    assert metrics["backtest.random_forest.wape"] == pytest.approx(report["mean"]["random_forest"]["wape"])


def test_the_baseline_gate_judges_the_mean_over_the_folds(backtested: tuple[Path, subprocess.CompletedProcess]) -> None:
    workdir, _ = backtested
    result = cd4ml("run", "-w", str(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"backtest\s*│\s*up to date", result.stdout), result.stdout  # DVC: nothing it reads changed
    assert re.search(r"gate\s*│\s*ran", result.stdout)
    report = json.loads((workdir / "reports" / "backtest.json").read_text())
    gates = {c["name"]: c for c in json.loads((workdir / "reports" / "gates.json").read_text())["checks"]}
    mean = report["mean"]
    expected = (
        f"mean NWRMSLE over 2 fold(s) {mean['lightgbm']['nwrmsle']:.4f} vs {mean['seasonal_naive']['nwrmsle']:.4f}"
    )
    assert gates["gain over seasonal naive"]["detail"] == expected
