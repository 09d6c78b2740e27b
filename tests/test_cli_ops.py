"""The CLI as an operator meets it (issue 16): release commands that replace the routing, no-op
promotions, errors that name what is wrong, --json and --version, and the control loop with its
lock. Every command runs as a user runs it, as a `cd4ml` subprocess on a real work directory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MlflowServer, free_port
from fastapi.testclient import TestClient

from cd4ml.config import tracking_uri
from cd4ml.registry import Registry
from cd4ml.routing import load_routing

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("release")]

WIDE = {"COLUMNS": "250"}
CLI = Callable[..., subprocess.CompletedProcess[str]]


def ok(run_cd4ml: CLI, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cd4ml(*args, env=WIDE)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def refused(run_cd4ml: CLI, code: int, *args: str, env: dict[str, str] | None = None) -> str:
    """The stderr of a command that must exit `code` with an error, not a traceback."""
    result = run_cd4ml(*args, env=WIDE | (env or {}))
    assert result.returncode == code, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "error:" in result.stderr, result.stderr
    assert "\x1b[" not in result.stderr and "errors.pydantic.dev" not in result.stderr, result.stderr
    return " ".join(result.stderr.split())


@pytest.fixture(scope="module")
def workdir(released_workdir: Callable[[str], Path]) -> Path:
    """v1 champion, v2 challenger, v3 without alias (see conftest)."""
    return released_workdir("cli-ops")


def test_release_set_replaces_the_whole_routing(workdir: Path, run_cd4ml: CLI) -> None:
    w = ("-w", str(workdir))
    ok(run_cd4ml, "release", "set", "ab", "--shares", "champion=0.5", "--shares", "challenger=0.5", *w)
    ok(run_cd4ml, "release", "set", "multiple", "--arm", "produce=3", "--segment", "family:PRODUCE=produce", *w)
    routing = load_routing(workdir / "routing.yaml")
    assert (routing.strategy, routing.arms, routing.shares) == (
        "multiple",
        {"champion": "champion", "produce": "3"},
        {},
    )
    ok(run_cd4ml, "release", "set", "online", "--share", "0.2", "--arm", "online=champion", *w)
    routing = load_routing(workdir / "routing.yaml")
    assert (routing.strategy, routing.share, routing.segment) == ("online", 0.2, None)
    ok(run_cd4ml, "release", "set", "single", *w)
    shown = json.loads(ok(run_cd4ml, "release", "show", "--json", *w).stdout)
    assert (shown["strategy"], shown["arms"], shown["shares"], shown["share"]) == (
        "single",
        {"champion": "champion"},
        {},
        0.0,
    )


def test_release_set_help_lists_every_strategy(run_cd4ml: CLI) -> None:
    text = " ".join(ok(run_cd4ml, "release", "set", "--help").stdout.split())
    assert "single | multiple | shadow | canary | ab | bandit | online" in text


def test_promoting_the_champion_changes_nothing_and_records_nothing(workdir: Path, run_cd4ml: CLI) -> None:
    registry = Registry(tracking_uri(workdir), "sales-forecaster")
    before = len(registry.history())
    result = ok(run_cd4ml, "promote", "1", "-w", str(workdir))
    assert "v1 already is the champion: nothing changed" in result.stdout
    assert len(registry.history()) == before and registry.alias("champion") == "1"


def test_verify_names_the_missing_alias_and_the_ones_there_are(workdir: Path, run_cd4ml: CLI) -> None:
    message = refused(run_cd4ml, 2, "verify", "models:/sales-forecaster@nope", "-w", str(workdir))
    assert "sales-forecaster has no 'nope' alias; its aliases: challenger (v2), champion (v1)" in message
    assert "cd4ml run" not in message


def test_models_lists_type_and_json(workdir: Path, run_cd4ml: CLI) -> None:
    listed = json.loads(ok(run_cd4ml, "models", "--json", "-w", str(workdir)).stdout)
    assert [v["version"] for v in listed["versions"]] == ["3", "2", "1"]
    assert [v["type"] for v in listed["versions"]] == [None, None, "lightgbm"]  # v2, v3: runs without model.type
    assert listed["versions"][2]["aliases"] == ["champion"]
    table = ok(run_cd4ml, "models", "-w", str(workdir)).stdout
    assert "type" in table and "lightgbm" in table
    history = json.loads(ok(run_cd4ml, "models", "--history", "--json", "-w", str(workdir)).stdout)
    assert {"alias", "from_version", "to_version", "who", "why", "when"} <= set(history[0])


def test_version_and_ab_report_json(workdir: Path, run_cd4ml: CLI) -> None:
    from importlib.metadata import version

    assert ok(run_cd4ml, "--version").stdout.strip() == f"cd4ml {version('cd4ml')}"
    report = json.loads(ok(run_cd4ml, "ab", "report", "--json", "-w", str(workdir)).stdout)
    assert report["versions"] == [] and report["verdict"].startswith("not yet")


def test_a_missing_policy_file_is_an_error_not_the_defaults(workdir: Path, run_cd4ml: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "polcy.yaml"
    for command in ("monitor", "control"):
        message = refused(run_cd4ml, 2, command, "--policy", str(missing), "-w", str(workdir))
        assert f"--policy {missing}: no such file" in message
    wrong = tmp_path / "policy.yaml"
    wrong.write_text("controller: {min_rows: many}\n")
    message = refused(run_cd4ml, 2, "monitor", "--policy", str(wrong), "-w", str(workdir))
    assert f"--policy {wrong}: controller.min_rows: Input should be a valid integer" in message


def test_an_unknown_prediction_log_scheme_is_a_message(workdir: Path, run_cd4ml: CLI) -> None:
    message = refused(
        run_cd4ml, 2, "serve", "-w", str(workdir), env={"CD4ML_PREDICTION_LOG": "mysql://root@127.0.0.1/cd4ml"}
    )
    assert "prediction log 'mysql://root@127.0.0.1/cd4ml'" in message and "postgresql://" in message


def test_simulate_refuses_a_folder_an_earlier_simulation_used(run_cd4ml: CLI, tmp_path: Path) -> None:
    """Each scenario has its own default folder; one already used is refused at once."""
    used = tmp_path / "simulation" / "bad-release"
    used.mkdir(parents=True)
    (used / "mlflow.db").touch()
    command = [str(Path(sys.executable).parent / "cd4ml"), "simulate", "--scenario", "bad-release"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "simulation/bad-release is not empty" in " ".join(result.stderr.split())


def test_wrong_method_and_disabled_admin_on_the_gateway(workdir: Path) -> None:
    from cd4ml.serving.app import create_app
    from cd4ml.serving.settings import GatewaySettings

    with TestClient(create_app(GatewaySettings(workdir=workdir, poll_seconds=0, prediction_log="none"))) as client:
        assert client.get("/predict").status_code == 405
        answer = client.post("/admin/reload", headers={"Authorization": "Bearer guess"})
        assert answer.status_code == 401 and "admin is disabled" in answer.json()["detail"]


def _serve_repeated(workdir: Path, requests: int) -> None:
    """`requests` identical one-row requests through the gateway (a window too small for drift)."""
    import pandas as pd

    from cd4ml.serving.app import create_app
    from cd4ml.serving.settings import GatewaySettings

    series = pd.read_parquet(workdir / "models" / "bundle" / "series.parquet").iloc[0]
    with TestClient(create_app(GatewaySettings(workdir=workdir, poll_seconds=0))) as client:
        origin = client.get("/version").json()["origin"]
        day = (pd.Timestamp(origin) + pd.Timedelta(days=1)).date().isoformat()
        row = {"store_nbr": int(series["store_nbr"]), "item_nbr": int(series["item_nbr"]), "date": day}
        for _ in range(requests):
            assert client.post("/predict", json={"rows": [row | {"onpromotion": 0.0}]}).status_code == 200


@pytest.fixture(scope="module")
def served_workdir(released_workdir: Callable[[str], Path]) -> Path:
    workdir = released_workdir("cli-ops-served")
    _serve_repeated(workdir, 51)
    return workdir


def test_drift_needs_a_minimum_sample(served_workdir: Path, run_cd4ml: CLI) -> None:
    result = run_cd4ml("monitor", "--json", "-w", str(served_workdir), env=WIDE)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["window"]["requests"] == 51
    assert summary["drift"]["share"] is None and summary["drift"]["note"].startswith("not enough requests to judge")
    assert not any(b.startswith("drift") for b in summary["breaches"])


def test_control_loop_holds_the_lock_and_stops_on_sigterm(served_workdir: Path, run_cd4ml: CLI) -> None:
    command = [str(Path(sys.executable).parent / "cd4ml"), "control", "--every", "1h", "-w", str(served_workdir)]
    loop = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        while not any(line.startswith("next cycle in 1h") for line in lines):  # one whole cycle
            line = loop.stdout.readline()
            assert line, f"loop ended early: {''.join(lines)}{loop.stderr.read()}"
            lines.append(line)
        assert any(line.startswith("no action") for line in lines), lines
        message = refused(run_cd4ml, 1, "control", "-w", str(served_workdir))
        assert f"another controller (pid {loop.pid}) is acting on this work directory" in message
        loop.send_signal(signal.SIGTERM)
        output, _ = loop.communicate(timeout=60)
        assert loop.returncode == 0 and "control loop stopped after 1 cycle(s)" in output, output
    finally:
        if loop.poll() is None:
            loop.kill()
    ok(run_cd4ml, "control", "--dry-run", "-w", str(served_workdir))  # the lock went with the loop


@pytest.mark.parametrize(("every", "problem"), [("soon", "is not a duration"), ("0s", "at least one second")])
def test_control_every_needs_a_duration(workdir: Path, run_cd4ml: CLI, every: str, problem: str) -> None:
    assert problem in refused(run_cd4ml, 2, "control", "--every", every, "-w", str(workdir))


def test_the_fast_listing_reads_what_mlflow_reads(workdir: Path, tmp_path: Path) -> None:
    """`cd4ml models` reads SQLite and a tracking server without MLflow's client: the same rows."""
    import os

    from cd4ml.registry_listing import _from_client, _from_rest, _from_sqlite, _sorted

    uri = tracking_uri(workdir)
    expected = _sorted(_from_client(uri, "sales-forecaster"))
    assert [(v.version, v.aliases, v.model_type) for v in expected] == [
        ("3", [], None),
        ("2", ["challenger"], None),
        ("1", ["champion"], "lightgbm"),
    ]
    assert _sorted(_from_sqlite(workdir / "mlflow.db", "sales-forecaster")) == expected
    port, log = free_port(), tmp_path / "server.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        start_new_session=True,  # its workers too are stopped below
    )
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log, tmp_path / "mlartifacts")
    try:
        server.wait_ready()
        assert _sorted(_from_rest(server.url, "sales-forecaster")) == expected
    finally:
        server.stop()


def test_library_warnings_print_as_one_plain_line() -> None:
    """MLflow colours some warnings with raw ANSI codes; the CLI prints them plain."""
    code = (
        "import warnings, cd4ml.cli; "
        "warnings.warn('\\x1b[33mAdd type hints to the `predict` method\\x1b[0m', UserWarning)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip() == "warning: Add type hints to the `predict` method", repr(result.stderr)
