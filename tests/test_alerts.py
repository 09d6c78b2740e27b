"""POST /admin/alerts: Alertmanager's webhook (payload version 4) rolls the champion back.

Only a firing alert labelled action=rollback acts; it needs the admin token; an alert already
handled (same fingerprint and start) is not acted on twice, however often Alertmanager resends it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cd4ml.config import tracking_uri
from cd4ml.registry import CHAMPION, Registry
from cd4ml.serving.app import create_app
from cd4ml.serving.settings import GatewaySettings

pytestmark = pytest.mark.integration

TOKEN = "alerts-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
STARTED = "2026-11-02T10:15:00.000Z"


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """The body Alertmanager's webhook receiver posts (as of Alertmanager 0.2x, version "4")."""
    return {
        "version": "4",
        "groupKey": '{}/{action="rollback"}:{alertname="ForecastQualityDecay"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "cd4ml-gateway",
        "groupLabels": {"alertname": "ForecastQualityDecay"},
        "commonLabels": {"alertname": "ForecastQualityDecay", "severity": "page"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": list(alerts),
    }


def alert(
    fingerprint: str = "3f1c2b9a0d4e5f67",
    status: str = "firing",
    action: str | None = "rollback",
    starts_at: str = STARTED,
) -> dict[str, Any]:
    labels = {"alertname": "ForecastQualityDecay", "severity": "page", "job": "cd4ml-gateway"}
    if action is not None:
        labels["action"] = action
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "live NWRMSLE 40% above the holdout's"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-02T11:00:00.000Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=cd4ml_monitor_breaches+%3E+0",
        "fingerprint": fingerprint,
    }


@dataclass
class Gateway:
    client: TestClient
    registry: Registry
    settings: GatewaySettings

    def post(self, body: dict[str, Any], headers: dict[str, str] | None = ADMIN) -> Any:
        return self.client.post("/admin/alerts", json=body, headers=headers or {})

    def live(self) -> str:
        return self.client.get("/version").json()["version"]


@pytest.fixture
def gateway(released_workdir) -> Iterator[Gateway]:
    """v1 then v2 champion (v2 promoted over v1), served in process with an admin token."""
    workdir: Path = released_workdir("alerts")
    registry = Registry(tracking_uri(workdir), "sales-forecaster")
    registry.promote("2", "release under test")
    settings = GatewaySettings(workdir=workdir, poll_seconds=0, admin_token=TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        served = Gateway(client, registry, settings)
        assert (registry.alias(CHAMPION), served.live()) == ("2", "2")
        yield served


def test_needs_the_admin_token(gateway: Gateway) -> None:
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN + "x"}):
        response = gateway.post(webhook(alert()), headers=headers)
        assert response.status_code == 401, response.text
    assert (gateway.registry.alias(CHAMPION), gateway.live()) == ("2", "2")


def test_a_firing_rollback_alert_rolls_back_once(gateway: Gateway) -> None:
    response = gateway.post(webhook(alert()))
    assert response.status_code == 200, response.text
    assert response.json()["actions"] == ["rollback v2 → v1"]
    assert (gateway.registry.alias(CHAMPION), gateway.live()) == ("1", "1")
    [move] = [m for m in gateway.registry.history(CHAMPION) if m.to_version == "1"][-1:]
    assert move.who == "alertmanager" and "ForecastQualityDecay" in move.why

    # Alertmanager resends a firing alert every repeat_interval: the same alert acts once
    for _ in range(2):
        again = gateway.post(webhook(alert()))
        assert again.status_code == 200 and again.json()["actions"] == []
    # ... also to another worker, or after a restart: the registry's history remembers
    with TestClient(create_app(gateway.settings)) as restarted:
        again = restarted.post("/admin/alerts", json=webhook(alert()), headers=ADMIN)
        assert again.status_code == 200 and again.json()["actions"] == []
    assert gateway.registry.alias(CHAMPION) == "1"


def test_alerts_that_do_not_ask_for_a_rollback_change_nothing(gateway: Gateway) -> None:
    bodies = [
        webhook(alert(status="resolved"), status="resolved"),
        webhook(alert(action=None)),
        webhook(alert(action="page")),
        webhook(),
    ]
    for body in bodies:
        response = gateway.post(body)
        assert response.status_code == 200, response.text
        assert response.json()["actions"] == []
    assert (gateway.registry.alias(CHAMPION), gateway.live()) == ("2", "2")


def test_one_rollback_for_a_group_of_firing_alerts(gateway: Gateway) -> None:
    group = webhook(alert("aaaa000000000001"), alert("aaaa000000000002"), alert(action=None))
    response = gateway.post(group)
    assert response.json()["actions"] == ["rollback v2 → v1"]
    assert gateway.registry.alias(CHAMPION) == "1"


def test_the_same_alert_firing_again_later_rolls_back_again(gateway: Gateway) -> None:
    """Alertmanager keeps an alert's fingerprint across incidents; a new start is a new incident."""
    assert gateway.post(webhook(alert())).json()["actions"] == ["rollback v2 → v1"]
    gateway.registry.promote("3", "the next release")
    gateway.client.post("/admin/reload", headers=ADMIN)
    assert gateway.live() == "3"
    later = alert(starts_at="2026-11-09T08:00:00.000Z")
    assert gateway.post(webhook(later)).json()["actions"] == ["rollback v3 → v1"]
    assert (gateway.registry.alias(CHAMPION), gateway.live()) == ("1", "1")


def test_nothing_to_roll_back_to_is_a_conflict(released_workdir) -> None:
    workdir: Path = released_workdir("alerts-v1-only")
    settings = GatewaySettings(workdir=workdir, poll_seconds=0, admin_token=TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/admin/alerts", json=webhook(alert()), headers=ADMIN)
        assert response.status_code == 409, response.text
        assert "no earlier champion" in response.json()["detail"]
        assert client.get("/version").json()["version"] == "1"


# --- the real pair: Prometheus scrapes the gateway, Alertmanager calls it back -----------------

PROMETHEUS, ALERTMANAGER = shutil.which("prometheus"), shutil.which("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_prometheus_and_alertmanager_roll_back_through_the_webhook(
    released_workdir, start_gateway, require_service, tmp_path: Path
) -> None:
    """A monitor breach on the gateway's /metrics fires a rule; Alertmanager posts it, with
    the bearer token, to /admin/alerts; the champion goes back to v1 once."""

    def installed() -> None:
        if not (PROMETHEUS and ALERTMANAGER):
            raise FileNotFoundError("Debian's prometheus and prometheus-alertmanager (make test installs them)")

    require_service("prometheus + alertmanager", installed)
    workdir: Path = released_workdir("alerts-real")
    registry = Registry(tracking_uri(workdir), "sales-forecaster")
    registry.promote("2", "release under test")
    gateway = start_gateway(workdir, "--poll", "1", env={"CD4ML_ADMIN_TOKEN": TOKEN})
    monitored = workdir / "reports" / "monitor" / "monitor.prom"
    monitored.parent.mkdir(parents=True, exist_ok=True)
    monitored.write_text("# TYPE cd4ml_monitor_breaches gauge\ncd4ml_monitor_breaches 1\n")

    am_port, prom_port = free_port(), free_port()
    (tmp_path / "alertmanager.yml").write_text(f"""
route: {{receiver: gateway, group_wait: 1s, group_interval: 1s, repeat_interval: 1s}}
receivers:
  - name: gateway
    webhook_configs:
      - url: {gateway.url}/admin/alerts
        send_resolved: true
        http_config: {{authorization: {{type: Bearer, credentials: {TOKEN}}}}}
""")
    (tmp_path / "rules.yml").write_text("""
groups:
  - name: cd4ml
    rules:
      - alert: ForecastQualityDecay
        expr: cd4ml_monitor_breaches > 0
        labels: {action: rollback, severity: page}
        annotations: {summary: "cd4ml monitor reports a breach"}
""")
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{tmp_path / "rules.yml"}]
alerting: {{alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]}}
scrape_configs:
  - job_name: cd4ml-gateway
    static_configs: [{{targets: ["{gateway.url.removeprefix("http://")}"]}}]
""")
    log = (tmp_path / "services.log").open("w")
    alertmanager = [
        ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}", "--cluster.listen-address=",
        f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
    ]  # fmt: skip
    prometheus = [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip
    services = [
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) for command in (alertmanager, prometheus)
    ]
    try:
        deadline = time.monotonic() + 60
        while registry.alias(CHAMPION) != "1" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert registry.alias(CHAMPION) == "1", (tmp_path / "services.log").read_text()[-3000:]
        time.sleep(4)  # Alertmanager keeps resending the firing alert (repeat_interval 1s)
    finally:
        for service in services:
            service.terminate()
            service.wait(timeout=30)
        log.close()
    rollbacks = [m for m in registry.history(CHAMPION) if m.who == "alertmanager"]
    assert [(m.from_version, m.to_version) for m in rollbacks] == [("2", "1")]
    assert "ForecastQualityDecay" in rollbacks[0].why
    assert httpx.get(f"{gateway.url}/version").json()["version"] == "1"
