"""The gateway's unauthenticated answers and its log never show the tracking URI's credentials;
admin needs a Bearer token (any case of the scheme, nothing else); admin routing changes are in
the release history like `cd4ml release set`'s."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from tracking_faults import NO_RETRIES, SECRET, failing_tracking_server

from cd4ml.config import Paths
from cd4ml.registry import Registry, resolve_bundle
from cd4ml.serving.app import create_app
from cd4ml.serving.arms import registry_handle
from cd4ml.serving.models import ModelHandle
from cd4ml.serving.settings import GatewaySettings

pytestmark = pytest.mark.integration

TOKEN = "security-test-token"
NAME = "sales-forecaster"


class Outage:
    """Switches the champion's registry lookups to a tracking server answering 500."""

    def __init__(self, failing_uri: str) -> None:
        self.failing_uri, self.on = failing_uri, threading.Event()

    def make_handle(self, settings: GatewaySettings, target: str) -> ModelHandle:
        """Real handles; the champion's asks the failing server while the outage is on."""
        if target != "champion":
            return registry_handle(settings, target)
        store = settings.resolved_tracking_uri()

        def resolve() -> tuple[str, str, str]:
            version = Registry(self.failing_uri if self.on.is_set() else store, NAME).alias("champion")
            return f"models:/{NAME}/{version}", NAME, str(version)

        cache = Paths(settings.workdir).cache / "models"
        return ModelHandle(resolve, lambda uri: resolve_bundle(uri, store, cache), settings.poll_seconds)


@pytest.fixture
def gateway(
    released_workdir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, Outage, Path]]:
    for name, value in NO_RETRIES.items():
        monkeypatch.setenv(name, value)
    workdir = released_workdir("security")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())  # restored afterwards
    settings = GatewaySettings(
        workdir=workdir,
        poll_seconds=0,
        admin_token=TOKEN,
        routing_file=tmp_path / "routing.yaml",
        prediction_log="none",
        feedback_store=f"sqlite:///{tmp_path / 'feedback.db'}",
    )
    with failing_tracking_server() as failing_uri:
        outage = Outage(failing_uri)
        with TestClient(create_app(settings, make_handle=outage.make_handle)) as client:
            yield client, outage, workdir
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())  # the outage left the failing one set


def test_a_registry_outage_is_reported_without_the_tracking_credentials(
    gateway: tuple[TestClient, Outage, Path], caplog: pytest.LogCaptureFixture
) -> None:
    client, outage, _ = gateway
    outage.on.set()
    with caplog.at_level(logging.ERROR, logger="cd4ml.gateway"):
        reload = client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload.status_code == 200 and reload.json()["changed"] is False
    port = outage.failing_uri.rsplit(":", 1)[1]
    ready, version = client.get("/ready").json(), client.get("/version").json()
    error = ready["last_reload_errors"]["champion"]
    assert f"the registry at http://***@127.0.0.1:{port} answered INTERNAL_ERROR" in error
    assert version["last_reload_error"] == error and version["version"] == "1"  # still serving v1
    logged = [r.getMessage() for r in caplog.records if r.name == "cd4ml.gateway"]
    assert any(f"127.0.0.1:{port}" in line for line in logged)
    answers = [reload.text, client.get("/ready").text, client.get("/version").text, client.get("/metrics").text]
    for text in [*answers, *logged]:
        assert SECRET not in text


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER   {TOKEN} ", 200),
        (TOKEN, 401),  # no scheme
        (f"Basic {TOKEN}", 401),
        ("Bearer wrong", 401),
    ],
)
def test_admin_takes_a_bearer_token_in_any_case(
    gateway: tuple[TestClient, Outage, Path], authorization: str, status: int
) -> None:
    client, _, _ = gateway
    assert client.get("/admin/routing", headers={"Authorization": authorization}).status_code == status


def test_an_admin_routing_change_is_in_the_release_history(gateway: tuple[TestClient, Outage, Path]) -> None:
    client, _, workdir = gateway
    canary = {"strategy": "canary", "arms": {"champion": "champion", "challenger": "2"}, "share": 0.25}
    answer = client.put("/admin/routing", json=canary, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and answer.json()["history"] == "recorded"
    (move,) = Registry(f"sqlite:///{workdir / 'mlflow.db'}", NAME).history("routing")
    assert move.from_version == "single [champion=champion]"
    assert move.to_version == "canary [champion=champion, challenger=2] share=0.25"
    assert (move.who, move.why) == ("admin API", "PUT /admin/routing")
    again = client.put("/admin/routing", json=canary, headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.json()["history"] == "unchanged"
