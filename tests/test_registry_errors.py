""" "Absent" is not "unknown": only MLflow's RESOURCE_DOES_NOT_EXIST means no champion. Any
other registry error fails the stage with a clear message, and nothing is registered or promoted."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tracking_faults import NO_RETRIES, SECRET, failing_tracking_server
from typer.testing import CliRunner

from cd4ml.cli import app
from cd4ml.config import Paths, tracking_uri
from cd4ml.registry import CHAMPION, Registry


@pytest.fixture(scope="module")
def failing_tracking_uri() -> Iterator[str]:
    with failing_tracking_server() as uri:
        yield uri


@pytest.fixture
def workdir(trained_workdir: Path, tmp_path: Path) -> Path:
    """A copy of the trained work directory: v1 champion, the gate's bundle logged, not registered again."""
    copy = tmp_path / "work"
    shutil.copytree(trained_workdir, copy)
    return copy


def registered(workdir: Path) -> tuple[list[str], dict[str, str]]:
    registry = Registry(tracking_uri(workdir), "sales-forecaster")
    return [str(v.version) for v in registry.versions()], registry.aliases()


def test_a_model_not_registered_yet_is_absent(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "never-registered")
    assert registry.alias(CHAMPION) is None and registry.aliases() == {}


@pytest.mark.integration
def test_a_tracking_error_in_register_fails_the_stage_and_promotes_nothing(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry works, but reading an alias fails (a locked database, a 500 from a proxy):
    read as "no champion", register would have made the new model champion without the gate
    that compares it with the champion."""

    def unreadable(*args: object, **kwargs: object) -> None:
        raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    before = registered(workdir)
    assert before == (["1"], {CHAMPION: "1"})
    (workdir / "models" / "registered.json").unlink()
    with monkeypatch.context() as patched:
        for read in ("get_registered_model", "get_model_version_by_alias"):
            patched.setattr(MlflowClient, read, unreadable)
        result = CliRunner().invoke(app, ["stage", "register", "-w", str(workdir)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    message = " ".join(result.stderr.split())
    assert "cannot read its aliases" in message and "database is locked" in message
    assert "nothing was promoted" in message
    assert registered(workdir) == before
    assert not (workdir / "models" / "registered.json").exists()
    failure = json.loads(Paths(workdir).failure.read_text())
    assert failure["stage"] == "register" and "database is locked" in failure["message"]


@pytest.mark.integration
def test_a_failing_tracking_server_is_a_clear_cli_error_without_credentials(
    workdir: Path, failing_tracking_uri: str, run_cd4ml: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = run_cd4ml(
        "stage", "register", "-w", str(workdir), env={"CD4ML_TRACKING_URI": failing_tracking_uri, **NO_RETRIES}
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:")
    port = failing_tracking_uri.rsplit(":", 1)[1]
    assert f"http://***@127.0.0.1:{port}" in result.stderr and "nothing was promoted" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert registered(workdir) == (["1"], {CHAMPION: "1"})
