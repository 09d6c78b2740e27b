"""The real `cd4ml run`: DVC re-runs only what changed, MLflow records what was used.

Two small sample projects run once per module, side by side: a plain folder, then changed step
by step as a user would (each test checks only what its change must and must not re-run
relative to the settled state before it, so the tests hold in any order), and a git checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import yaml

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run as TrackedRun

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("pipeline")]

BIN = Path(sys.executable).parent
EXPERIMENT = "cd4ml-sales"
DATA_STAGES = ["ingest", "validate", "split", "featurize"]
MODEL_STAGES = ["train", "evaluate"]
SMALL = [
    "data.sample.stores=5",
    "data.sample.items=20",
    "data.sample.days=300",
    # later runs change the model on purpose; the gates' champion checks are tested elsewhere
    "gates.champion_tolerance=1.0",
    "gates.slice_tolerance=1.0",
]
STATUS_ROW = re.compile(r"^[│|]\s*(\w+)\s*[│|]\s*(ran|up to date)\s*[│|]", re.MULTILINE)


@dataclass
class Run:
    """One `cd4ml run` in a subprocess: exit code, wall time, output and each stage's status."""

    returncode: int
    seconds: float
    output: str
    status: dict[str, str]

    def stages(self, status: str) -> set[str]:
        return {stage for stage, s in self.status.items() if s == status}


def environment() -> dict[str, str]:
    """The user's environment without settings that would send tracking elsewhere."""
    dropped = {"MLFLOW_TRACKING_URI", "FORCE_COLOR"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_") and k not in dropped}
    wide_plain_text = {"COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    return env | wide_plain_text | {"DVC_NO_ANALYTICS": "1"}


class PendingRun:
    """`cd4ml run` started in the background; its output goes to files, so no pipe can fill up."""

    def __init__(self, workdir: Path, *overrides: str):
        args = [str(BIN / "cd4ml"), "run", "--workdir", str(workdir)]
        args += [part for override in overrides for part in ("--set", override)]
        workdir.parent.mkdir(parents=True, exist_ok=True)
        self.logs = [workdir.parent / f"{workdir.name}.{stream}" for stream in ("out", "err")]
        with self.logs[0].open("w") as out, self.logs[1].open("w") as err:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(args, env=environment(), stdout=out, stderr=err)

    def wait(self) -> Run:
        try:
            returncode = self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        seconds = time.perf_counter() - self.started
        stdout, stderr = (log.read_text() for log in self.logs)
        return Run(returncode, seconds, f"{stdout}\n{stderr}", dict(STATUS_ROW.findall(stdout)))


def cd4ml_run(workdir: Path, *overrides: str) -> Run:
    return PendingRun(workdir, *overrides).wait()


def succeeded(run: Run) -> Run:
    assert run.returncode == 0, run.output[-4000:]
    assert run.status, f"no stage table in the output:\n{run.output[-4000:]}"
    return run


def dvc(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=workdir,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def client(workdir: Path) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def mlflow_runs(workdir: Path) -> list[TrackedRun]:
    """Every run of the experiment, newest first."""
    tracking = client(workdir)
    experiment = tracking.get_experiment_by_name(EXPERIMENT)
    return tracking.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])


def new_run(workdir: Path, before: list[TrackedRun]) -> TrackedRun:
    """The one MLflow run created since `before` was listed."""
    known = {r.info.run_id for r in before}
    created = [r for r in mlflow_runs(workdir) if r.info.run_id not in known]
    assert len(created) == 1, f"expected one new MLflow run, got {len(created)}"
    return created[0]


def artifact_paths(workdir: Path, run_id: str, path: str = "") -> set[str]:
    tracking, found = client(workdir), set()
    for item in tracking.list_artifacts(run_id, path):
        found |= artifact_paths(workdir, run_id, item.path) if item.is_dir else {item.path}
    return found


def lock(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "dvc.lock").read_text())["stages"]


def out_hashes(workdir: Path, stage: str) -> dict[str, str]:
    return {out["path"]: out["md5"] for out in lock(workdir)[stage].get("outs", [])}


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def git_checkout(repo: Path) -> str:
    """A fresh git repository with one commit; returns the HEAD sha."""
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("forecasting project\n")
    for args in (
        ["init", "-q"],
        ["config", "user.email", "ci@example.com"],
        ["config", "user.name", "CI"],
        ["add", "README.md"],
        ["commit", "-q", "-m", "initial"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Project:
    workdir: Path
    first: Run
    head: str = "none"  # the git commit of the checkout, as the git_commit tag names it


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Project]:
    """First runs of two fresh projects, side by side so both cores work: a plain folder with
    the default model, and a git checkout training a random forest (~20 s on 2 idle cores)."""
    plain = tmp_path_factory.mktemp("pipeline") / "work"
    repo = tmp_path_factory.mktemp("git") / "repo"
    head = git_checkout(repo)
    in_git = PendingRun(repo, *SMALL, "model.type=random_forest")
    first = cd4ml_run(plain, *SMALL)
    return {"plain": Project(plain, first), "git": Project(repo, in_git.wait(), head)}


@pytest.fixture(scope="module")
def project(first_runs: dict[str, Project]) -> Project:
    """The plain project, changed step by step by the tests below."""
    return first_runs["plain"]


def test_first_run_runs_every_stage_and_tracks_it_in_mlflow(project: Project, tmp_path: Path) -> None:
    workdir, run = project.workdir, succeeded(project.first)
    assert run.stages("ran") >= {*DATA_STAGES, *MODEL_STAGES}
    assert "DVC initialised without git" in run.output  # /tmp is no git work tree
    [tracked] = mlflow_runs(workdir)
    params, metrics, tags = tracked.data.params, tracked.data.metrics, tracked.data.tags

    assert params["model.type"] == "lightgbm"
    assert params["model.num_leaves"] == "63"
    assert params["split.horizon"] == "16"
    assert params["data.sample.items"] == "20"  # the --set value, not the default 50
    assert params["features.windows"] == "[7, 14, 28, 56, 112]"

    reported = json.loads((workdir / "reports" / "metrics.json").read_text())
    for name in ("nwrmsle", "rmsle", "mae", "wape", "bias", "r2"):
        assert metrics[f"holdout.{name}"] == pytest.approx(reported["model"][name])
        assert metrics[f"baseline.{name}"] == pytest.approx(reported["baseline"][name])
    assert metrics["holdout.nwrmsle"] < metrics["baseline.nwrmsle"]
    for column in ("family", "type", "cluster", "perishable"):
        assert any(m.startswith(f"slice.{column}.") and m.endswith(".nwrmsle") for m in metrics)

    inputs = {f"dvc.{stage}:{path}": md5 for stage in DATA_STAGES for path, md5 in out_hashes(workdir, stage).items()}
    assert inputs and inputs.items() <= tags.items()
    assert tags["data_hash"] == out_hashes(workdir, "ingest")["data/ingested"]
    assert tags["git_commit"] == "none"

    artifacts = artifact_paths(workdir, tracked.info.run_id)
    plots = {f"plots/{name}.png" for name in ("forecast_vs_actual", "residuals", "feature_importance")}
    logged = {"native_model/family.txt", "reports/metrics.json", "data/dataset.json"}
    assert plots | logged | {"lineage/dvc.lock"} <= artifacts
    copy = client(workdir).download_artifacts(tracked.info.run_id, "reports/metrics.json", str(tmp_path))
    assert json.loads(Path(copy).read_text()) == reported


def test_second_run_with_nothing_changed_reruns_nothing(project: Project) -> None:
    """(How long such a no-op run takes is measured by bench/pipeline.py, not asserted here.)"""
    succeeded(project.first)
    workdir = project.workdir
    lock_before, runs_before = (workdir / "dvc.lock").read_text(), mlflow_runs(workdir)

    run = succeeded(cd4ml_run(workdir))

    assert run.stages("ran") == set()
    assert run.stages("up to date") >= {*DATA_STAGES, *MODEL_STAGES, "backtest", "gate", "register"}
    assert (workdir / "dvc.lock").read_text() == lock_before
    assert len(mlflow_runs(workdir)) == len(runs_before)


def test_model_hyperparameter_change_retrains_without_touching_the_data(project: Project) -> None:
    succeeded(project.first)
    workdir = project.workdir
    features_before, runs_before = out_hashes(workdir, "featurize"), mlflow_runs(workdir)

    run = succeeded(cd4ml_run(workdir, "model.lightgbm.num_leaves=15"))

    assert run.stages("ran") >= set(MODEL_STAGES)
    assert run.stages("up to date") >= set(DATA_STAGES)
    assert out_hashes(workdir, "featurize") == features_before
    tracked = new_run(workdir, runs_before)
    assert tracked.data.params["model.num_leaves"] == "15"
    assert tracked.data.params["model.type"] == "lightgbm"
    assert "holdout.nwrmsle" in tracked.data.metrics  # evaluate logged into the new run


def test_horizon_change_resplits_without_reingesting(project: Project) -> None:
    succeeded(project.first)
    workdir = project.workdir
    ingested_before, runs_before = out_hashes(workdir, "ingest"), mlflow_runs(workdir)

    run = succeeded(cd4ml_run(workdir, "split.horizon=8"))

    assert run.stages("up to date") >= {"ingest", "validate"}
    assert run.stages("ran") >= {"split", "featurize", *MODEL_STAGES}
    assert out_hashes(workdir, "ingest") == ingested_before
    holdout = pd.read_parquet(workdir / "reports" / "holdout.parquet")
    last = pd.Timestamp(json.loads((workdir / "data" / "split.json").read_text())["last_date"])
    last_8_days = pd.date_range(end=last, periods=8, freq="D")
    assert sorted(pd.to_datetime(holdout["date"]).unique()) == list(last_8_days)
    assert new_run(workdir, runs_before).data.params["split.horizon"] == "8"


def test_dvc_push_and_pull_restore_the_data(project: Project, tmp_path: Path) -> None:
    succeeded(project.first)
    workdir = project.workdir
    copy, remote = tmp_path / "work", tmp_path / "remote"
    shutil.copytree(workdir, copy, symlinks=True)  # DVC data only; the shared project stays intact
    tracked = ["data/ingested", "data/features"]
    before = {path: file_hashes(copy / path) for path in tracked}

    dvc(copy, "remote", "add", "-d", "local", str(remote))
    dvc(copy, "push")
    for path in [*tracked, ".dvc/cache"]:
        shutil.rmtree(copy / path)
    dvc(copy, "pull")

    assert any(remote.rglob("*")), "nothing was pushed"
    assert {path: file_hashes(copy / path) for path in tracked} == before
    assert "up to date" in dvc(copy, "status")


def test_runs_inside_a_git_checkout_and_records_the_commit(first_runs: dict[str, Project]) -> None:
    repo, run = first_runs["git"].workdir, succeeded(first_runs["git"].first)
    assert "DVC initialised in git" in run.output
    assert "/ingested" in (repo / "data" / ".gitignore").read_text()  # DVC keeps data out of git
    [tracked] = mlflow_runs(repo)
    assert tracked.data.tags["git_commit"] == first_runs["git"].head


def test_random_forest_is_trained_and_recorded(first_runs: dict[str, Project]) -> None:
    """`--set model.type=random_forest` (the git checkout's run) switches the model family."""
    repo, run = first_runs["git"].workdir, succeeded(first_runs["git"].first)
    assert run.stages("ran") >= {*DATA_STAGES, *MODEL_STAGES}
    assert (repo / "models" / "model" / "family.txt").read_text().strip() == "random_forest"
    [tracked] = mlflow_runs(repo)
    assert tracked.data.params["model.type"] == "random_forest"
    assert tracked.data.params["model.n_estimators"] == "60"  # params.yaml's random_forest section
    assert "model.num_leaves" not in tracked.data.params  # only the chosen family's params
    assert tracked.data.tags["model_family"] == "random_forest"
    assert tracked.data.metrics["holdout.nwrmsle"] < tracked.data.metrics["baseline.nwrmsle"]
    assert "native_model/model.skops" in artifact_paths(repo, tracked.info.run_id)
