"""The prediction log: one record per answered request, in every sink, across restarts.

SQLite (the default) is checked through a real `cd4ml serve` stopped with SIGTERM and started
again; PostgreSQL against the real server in a database made for the test; Fluentd through a
forward-protocol receiver written here. A stalled sink never slows a request: what does not
fit the bounded queue is dropped and counted.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import msgpack
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cd4ml.monitoring.predictionlog import PredictionLogger
from cd4ml.monitoring.sinks import SQLiteSink
from cd4ml.serving.app import create_app
from cd4ml.serving.settings import GatewaySettings

if TYPE_CHECKING:
    from conftest import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("servers")]


@dataclass
class Sent:
    """Requests answered by a gateway, to compare with what its log holds."""

    answers: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = field(default_factory=dict)

    def post(self, client: httpx.Client | TestClient, rows: list[dict[str, Any]], explain: bool) -> None:
        started = time.time()
        response = client.post("/predict", json={"rows": rows}, params={"explain": str(explain).lower()})
        assert response.status_code == 200, response.text
        body = response.json()
        self.answers[body["request_id"]] = ({"rows": rows, "started": started, "ended": time.time()}, body, explain)

    def check(self, records: list[dict[str, Any]]) -> None:
        """Every answered request has exactly one record holding what was asked and answered."""
        ids = [r["request_id"] for r in records]
        assert len(ids) == len(set(ids)), "a request was logged twice"
        assert set(ids) == set(self.answers)
        for record in records:
            request, body, explain = self.answers[record["request_id"]]
            assert request["started"] - 1 <= record["ts"] <= request["ended"] + 1
            assert (record["model_name"], record["model_version"]) == (body["model"]["name"], body["model"]["version"])
            assert record["rows"] == request["rows"]
            assert record["predictions"] == [p["prediction"] for p in body["predictions"]]
            if explain:
                assert record["contributions"] == [p["contributions"] for p in body["predictions"]]
            else:
                assert record["contributions"] is None
            # the gateway's own time for the request, inside the client's round trip
            assert 0 < record["latency_ms"] <= (request["ended"] - request["started"]) * 1000


def rows_of(catalog: dict[str, Any], n: int, count: int) -> list[dict[str, Any]]:
    series = catalog["series"]
    return [
        {
            "store_nbr": int(series[(n + k) % len(series)].split("|")[0]),
            "item_nbr": int(series[(n + k) % len(series)].split("|")[1]),
            "date": catalog["dates"]["min"],
            "onpromotion": (n + k) % 3,
        }
        for k in range(count)
    ]


def send(sent: Sent, client: httpx.Client | TestClient, requests: int, offset: int = 0) -> None:
    catalog = client.get("/api/catalog").json()
    for n in range(offset, offset + requests):
        sent.post(client, rows_of(catalog, n, 1 + n % 3), explain=n % 4 == 0)


def sqlite_records(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        records = [dict(r) for r in db.execute("SELECT * FROM predictions")]
    for record in records:
        for column in ("rows", "predictions", "contributions"):
            record[column] = json.loads(record[column])
    return records


def metric(client: TestClient, name: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


@pytest.fixture
def workdir(trained_workdir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(trained_workdir, copy)
    return copy


def test_sqlite_log_holds_every_request_across_a_graceful_restart(
    workdir: Path, start_gateway: Callable[..., GatewayProcess]
) -> None:
    sent, database = Sent(), workdir / "predictions.db"  # the default sink
    gateway = start_gateway(workdir, "--poll", "0")
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        send(sent, client, 30)
    deadline = time.monotonic() + 10  # written in the background, within moments
    while len(sqlite_records(database)) < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    sent.check(sqlite_records(database))

    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        send(sent, client, 40, offset=30)
    stop_gracefully(gateway)  # SIGTERM: everything queued is flushed
    sent.check(sqlite_records(database))

    restarted = start_gateway(workdir, "--poll", "0")
    with httpx.Client(base_url=restarted.url, timeout=30) as client:
        send(sent, client, 25, offset=70)
    stop_gracefully(restarted)
    records = sqlite_records(database)
    assert len(records) == len(sent.answers) == 95
    sent.check(records)


def stop_gracefully(gateway: GatewayProcess) -> None:
    # uvicorn re-raises the SIGTERM it handled once shut down, so -15 is a clean exit too
    assert gateway.stop() in (0, -signal.SIGTERM), gateway.log()
    assert "Application shutdown complete" in gateway.log()


@pytest.fixture
def postgres_url(postgres_database: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    with postgres_database() as url:
        yield url


def gateway_app(workdir: Path, **settings: Any) -> TestClient:
    return TestClient(create_app(GatewaySettings(workdir=workdir, poll_seconds=0, **settings)))


def test_postgres_log_holds_every_request(workdir: Path, postgres_url: str) -> None:
    import psycopg2
    from psycopg2.extras import RealDictCursor

    sent = Sent()
    with gateway_app(workdir, prediction_log=postgres_url) as client:
        send(sent, client, 40)
    # the gateway has shut down: its log was flushed and closed
    with psycopg2.connect(postgres_url) as db, db.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT * FROM predictions")
        records = [dict(r) for r in cur.fetchall()]
        cur.execute("SELECT data_type FROM information_schema.columns WHERE column_name = 'rows'")
        assert cur.fetchone()["data_type"] == "jsonb"
    db.close()
    assert len(records) == 40
    sent.check(records)


@dataclass
class ForwardReceiver:
    """A Fluentd `in_forward` stand-in: decodes Message, Forward and PackedForward modes and
    answers `chunk` options with an ack, as the forward protocol v1 specifies."""

    events: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    server: socket.socket = field(default_factory=socket.socket)

    @property
    def port(self) -> int:
        return self.server.getsockname()[1]

    def __enter__(self) -> ForwardReceiver:
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        unpacker = msgpack.Unpacker(ext_hook=event_time, raw=False, strict_map_key=False)
        with connection:
            while data := connection.recv(65536):
                unpacker.feed(data)
                for message in unpacker:
                    option = self._decode(message)
                    if isinstance(option, dict) and "chunk" in option:
                        connection.sendall(msgpack.packb({"ack": option["chunk"]}))

    def _decode(self, message: list[Any]) -> Any:
        tag, second = message[0], message[1]
        if isinstance(second, list):  # Forward: [tag, [[time, record], ...], option?]
            self.events += [(tag, t, r) for t, r in second]
            return message[2] if len(message) > 2 else None
        if isinstance(second, bytes | str):  # PackedForward: [tag, packed entries, option?]
            packed = second.encode("latin-1") if isinstance(second, str) else second
            entries = msgpack.Unpacker(ext_hook=event_time, raw=False, strict_map_key=False)
            entries.feed(packed)
            self.events += [(tag, t, r) for t, r in entries]
            return message[2] if len(message) > 2 else None
        self.events.append((tag, second, message[2]))  # Message: [tag, time, record, option?]
        return message[3] if len(message) > 3 else None


class EventTime(NamedTuple):
    """The forward protocol's sub-second time: ext type 0, seconds and nanoseconds (big-endian)."""

    seconds: int
    nanoseconds: int

    @property
    def timestamp(self) -> float:
        return self.seconds + self.nanoseconds / 1e9


def event_time(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def test_fluentd_forward_receives_every_request(workdir: Path) -> None:
    sent = Sent()
    with ForwardReceiver() as receiver:
        with gateway_app(workdir, prediction_log=f"fluent://127.0.0.1:{receiver.port}/cd4ml") as client:
            send(sent, client, 30)
        deadline = time.monotonic() + 10
        while len(receiver.events) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(receiver.events) == 30
    assert {tag for tag, _, _ in receiver.events} == {"cd4ml.prediction"}
    for _, when, record in receiver.events:
        assert isinstance(when, EventTime), f"time must be an EventTime (or an integer), got {when!r}"
        assert abs(when.timestamp - record["ts"]) < 1e-6
    sent.check([record for _, _, record in receiver.events])


def test_a_failing_sink_loses_records_only_in_the_open(workdir: Path) -> None:
    """Nothing listens on the Fluentd port: every record is lost, and every loss is counted."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with gateway_app(workdir, prediction_log=f"fluent://127.0.0.1:{port}/cd4ml") as client:
        sent = Sent()
        send(sent, client, 5)
        deadline = time.monotonic() + 10
        while metric(client, "cd4ml_log_dropped_total") < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(client, "cd4ml_log_dropped_total") == 5


def test_a_stalled_sink_never_blocks_requests_and_drops_are_counted(workdir: Path, tmp_path: Path) -> None:
    """Another process holds the SQLite log locked: the writer waits, requests do not."""
    database, sent = tmp_path / "stalled.db", Sent()
    with gateway_app(workdir, prediction_log=f"sqlite:///{database}", log_queue_size=5) as client:
        catalog = client.get("/api/catalog").json()
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the sink's writes now wait (its busy timeout: 30 s)
        try:
            sent.post(client, rows_of(catalog, 0, 1), explain=False)
            time.sleep(0.5)  # the writer takes that record and waits on the lock
            for n in range(1, 41):
                sent.post(client, rows_of(catalog, n, 2), explain=False)
            # all 40 answered while the writer waits on the lock: the full queue drops records
            # (a request that waited on the log would have nothing to drop)
            assert metric(client, "cd4ml_log_queue_depth") == 5
            dropped = metric(client, "cd4ml_log_dropped_total")
            assert dropped >= 41 - 1 - 5
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    records = sqlite_records(database)  # the lock released, the queue was flushed at shutdown
    assert len(records) + dropped == 41
    assert {r["request_id"] for r in records} <= set(sent.answers)


def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    database = tmp_path / "flush.db"
    sink = SQLiteSink(database)
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # stall the writer, so records pile up in the queue
    logger = PredictionLogger(sink, capacity=5_000)
    records = [{"request_id": f"r{n}", "ts": float(n), "rows": [], "predictions": [n]} for n in range(1_234)]
    assert all(logger.log(r) for r in records)
    time.sleep(0.3)
    assert logger.depth > 0 and logger.written == 0
    threading.Timer(0.5, lambda: (holder.execute("ROLLBACK"), holder.close())).start()
    logger.close()
    assert (logger.written, logger.dropped, logger.depth) == (1_234, 0, 0)
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*), count(DISTINCT request_id) FROM predictions").fetchone() == (1_234, 1_234)
