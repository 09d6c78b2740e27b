"""Store outages with real services: a throwaway redis-server killed and hung under a bandit
gateway (`cd4ml serve`), and PostgreSQL connections cut under every PostgreSQL store."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from conftest import GatewayProcess
from prometheus_client.parser import text_string_to_metric_families

from cd4ml.monitoring.database import StoreUnavailable, open_database
from cd4ml.monitoring.feedback import FeedbackStore, Served
from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.monitoring.sinks import PostgresSink
from cd4ml.routing import BanditSettings, Routing, save_routing
from cd4ml.serving.bandits import PostgresBanditStore, RedisBanditStore

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("outages")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server of this test alone, without persistence: a restart starts empty."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail(f"redis-server on port {self.port} did not answer")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig == signal.SIGKILL:
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path, require_service: Callable[..., None]) -> Iterator[RedisServer]:
    require_service("redis-server (apt-get install redis-server)", lambda: shutil.which("redis-server") or 1 / 0)
    server = RedisServer(_free_port(), tmp_path)
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
        server.process.kill()
        server.process.wait()


def fallbacks(client: httpx.Client) -> float:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return next(s.value for f in families for s in f.samples if s.name == "cd4ml_bandit_fallbacks")


def test_a_redis_outage_serves_the_champion_and_is_counted(
    released_workdir: Callable[[str], Path], start_gateway: Callable[..., GatewayProcess], redis_server: RedisServer
) -> None:
    workdir = released_workdir("redis-outage")
    save_routing(
        workdir / "routing.yaml",
        Routing(
            strategy="bandit",
            arms={"champion": "champion", "challenger": "challenger"},
            bandit=BanditSettings(policy="epsilon_greedy", epsilon=0.0, state=redis_server.url),
        ),
    )
    rewarded = RedisBanditStore(redis_server.url)
    for _ in range(20):  # the challenger has earned every reward: greedy serves it
        rewarded.reward("challenger", 1.0)
        rewarded.reward("champion", 0.0)
    gateway = start_gateway(workdir, "--poll", "0")
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        catalog = client.get("/api/catalog").json()
        store_nbr, item_nbr = (int(v) for v in catalog["series"][0].split("|"))
        body = {
            "rows": [{"store_nbr": store_nbr, "item_nbr": item_nbr, "date": catalog["dates"]["min"], "onpromotion": 0}]
        }

        def predict() -> dict[str, Any]:
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        assert {predict()["arm"] for _ in range(5)} == {"challenger"}
        assert fallbacks(client) == 0

        redis_server.signal(signal.SIGKILL)
        answers = [predict() for _ in range(20)]
        assert {a["arm"] for a in answers} == {"champion"}
        assert fallbacks(client) >= 20
        reward = client.post("/feedback", json={"request_id": answers[0]["request_id"], "reward": 1.0})
        assert reward.status_code == 200, reward.text  # kept in the feedback store; the bandit misses it

        redis_server.start()  # empty again: every arm untried, so both get traffic once it is asked
        deadline = time.monotonic() + 60
        while predict()["arm"] != "challenger":
            assert time.monotonic() < deadline, f"the bandit never came back:\n{gateway.log()}"
            time.sleep(0.1)

        redis_server.signal(signal.SIGSTOP)  # hung: accepts nothing, answers nothing
        try:
            with ThreadPoolExecutor(4) as pool:
                pending = [pool.submit(predict) for _ in range(8)]
                health = client.get("/health")
                answered = [p.result() for p in pending]
            assert health.status_code == 200
            assert {a["arm"] for a in answered} == {"champion"}
        finally:
            redis_server.signal(signal.SIGCONT)


# ---------------------------------------------------------------- PostgreSQL: connections cut


def cut_connections(url: str) -> int:
    """Terminate every server process of the test database, as a server restart would."""
    database = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
        (count,) = cur.fetchone()
    admin.close()
    return count


def test_every_postgres_store_reconnects_after_its_connections_are_cut(
    postgres_database: Callable[[], AbstractContextManager[str]],
) -> None:
    with postgres_database() as url:
        feedback = FeedbackStore(url)
        bandit = PostgresBanditStore(url)
        log = PredictionLogger(PostgresSink(url))
        served = Served("champion", "1", [1.0], [{"store_nbr": 1, "item_nbr": 2, "date": "2017-01-02"}])
        try:
            feedback.record("before", "actual", [3.0], served)
            bandit.reward("champion", 1.0)
            log.log(_record("before"))
            settled(log, 1)
            assert cut_connections(url) >= 3
            feedback.record("after", "actual", [4.0], served)  # the very next statement works
            bandit.reward("champion", 0.0)
            log.log(_record("after"))
            settled(log, 2)
            assert {r["request_id"] for r in feedback.all()} == {"before", "after"}
            assert bandit.stats(["champion"])["champion"][0] > 1
            assert log.dropped == 0
            rows = open_database(url).execute("SELECT request_id FROM predictions ORDER BY request_id")
            assert rows == [("after",), ("before",)]
        finally:
            log.close()
            bandit.db.close()
            feedback.db.close()


def settled(log: PredictionLogger, records: int) -> None:
    """Wait until the writer has written or dropped `records` records."""
    deadline = time.monotonic() + 30
    while log.written + log.dropped < records:
        assert time.monotonic() < deadline, "the prediction log writer is stuck"
        time.sleep(0.05)


def _record(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts": 1.0,
        "model_name": "m",
        "model_version": "1",
        "arm": "champion",
        "rows": [{"store_nbr": 1}],
        "predictions": [1.0],
        "contributions": None,
        "latency_ms": 1.0,
        "origin": "2017-01-01",
    }


def test_an_unreachable_postgres_is_named_without_its_password() -> None:
    url = f"postgresql://cd4ml:s3cret@127.0.0.1:{_free_port()}/nowhere"
    with pytest.raises(StoreUnavailable) as caught:
        FeedbackStore(url)
    assert f"127.0.0.1:{url.split(':')[3].split('/')[0]}/nowhere" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_redis_bandit_store_errors_are_store_unavailable() -> None:
    store = RedisBanditStore(f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(StoreUnavailable, match="bandit store"):
        store.stats(["champion"])
