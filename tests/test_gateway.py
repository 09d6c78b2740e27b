"""The gateway's HTTP contract, in process (FastAPI TestClient on `create_app`).

Bad input of every kind is a 422 (or 413) naming the field and the reason, never a 500, and
leaves the gateway as it was; what /predict serves equals what `cd4ml predict` writes.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cd4ml.serving.app import create_app
from cd4ml.serving.fastpath import FastPredict
from cd4ml.serving.settings import GatewaySettings

MAX_ROWS = 100
MAX_BODY = 64 * 1024

pytestmark = pytest.mark.integration


@dataclass
class Gateway:
    client: TestClient
    workdir: Path
    catalog: dict[str, Any]
    version: dict[str, Any]

    def row(self, n: int = 0, day: int = 0, promo: float = 0) -> dict[str, Any]:
        """The n-th known series on the day-th servable date."""
        store, item = (int(v) for v in self.catalog["series"][n].split("|"))
        first = pd.Timestamp(self.catalog["dates"]["min"]) + pd.Timedelta(days=day)
        return {"store_nbr": store, "item_nbr": item, "date": first.date().isoformat(), "onpromotion": promo}

    def predict(self, rows: list[dict[str, Any]], **params: str) -> dict[str, Any]:
        response = self.client.post("/predict", json={"rows": rows}, params=params)
        assert response.status_code == 200, response.text
        return response.json()


def metric(client: TestClient, name: str, /, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def gateway(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway") / "work"
    shutil.copytree(trained_workdir, workdir)
    settings = GatewaySettings(workdir=workdir, poll_seconds=0, max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Gateway(client, workdir, client.get("/api/catalog").json(), client.get("/version").json())


def test_one_row_names_request_model_and_prediction(gateway: Gateway) -> None:
    body = gateway.predict([gateway.row()])
    assert re.fullmatch("[0-9a-f]{32}", body["request_id"]), body["request_id"]
    assert body["model"] == {"name": "sales-forecaster", "version": "1"}
    [prediction] = body["predictions"]
    assert isinstance(prediction["prediction"], float) and prediction["prediction"] >= 0
    assert "contributions" not in prediction
    assert gateway.predict([gateway.row()])["request_id"] != body["request_id"]


def test_batch_answers_each_row_in_order_as_if_alone(gateway: Gateway) -> None:
    rows = [gateway.row(n, day=n % 16, promo=n % 3) for n in range(0, 60, 3)]
    batch = [p["prediction"] for p in gateway.predict(rows)["predictions"]]
    alone = [gateway.predict([row])["predictions"][0]["prediction"] for row in rows]
    assert batch == alone
    assert len(set(batch)) > len(batch) // 2, "different series and days should differ"


def test_explanations_add_up_to_the_log_prediction(gateway: Gateway) -> None:
    rows = [gateway.row(n, day=n % 16, promo=n % 2) for n in range(0, 80, 4)]
    explained = gateway.predict(rows, explain="true")["predictions"]
    plain = gateway.predict(rows)["predictions"]
    for with_why, without in zip(explained, plain, strict=True):
        assert with_why["prediction"] == without["prediction"]
        contributions = with_why["contributions"]
        features = [c["feature"] for c in contributions]
        assert features[-1] == "(base value)" and len(set(features)) == len(features)
        total = sum(c["value"] for c in contributions)
        if with_why["prediction"] > 0:  # predictions are clipped at 0 sales
            # LightGBM's pred_contrib is exact; the served number comes from the float32 ONNX graph
            assert total == pytest.approx(math.log1p(with_why["prediction"]), abs=1e-5)
        else:
            assert total <= 1e-5


def test_health_ready_and_version(gateway: Gateway) -> None:
    client = gateway.client
    assert client.get("/health").json() == {"status": "alive"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    version = gateway.version
    assert (version["name"], version["version"], version["last_reload_error"]) == ("sales-forecaster", "1", None)
    assert version["servable_until"] == gateway.catalog["dates"]["max"]
    assert pd.Timestamp(version["origin"]) + pd.Timedelta(days=1) == pd.Timestamp(gateway.catalog["dates"]["min"])


def test_metrics_count_requests_latency_model_and_log(gateway: Gateway) -> None:
    client = gateway.client
    counted = [
        ("cd4ml_requests_total", {"path": "/predict", "status": "200"}),
        ("cd4ml_request_seconds_count", {"path": "/predict"}),
        ("cd4ml_request_seconds_bucket", {"path": "/predict", "le": "+Inf"}),
    ]
    before = [metric(client, name, **labels) for name, labels in counted]
    gateway.predict([gateway.row()])
    gateway.predict([gateway.row(1)])
    assert [metric(client, name, **labels) for name, labels in counted] == [n + 2 for n in before]
    assert metric(client, "cd4ml_model_info", name="sales-forecaster", version="1") == 1
    text = client.get("/metrics").text
    for name in ("cd4ml_log_queue_depth", "cd4ml_log_dropped_total", "cd4ml_model_load_failures"):
        assert f"\n{name} " in text, name
    assert metric(client, "cd4ml_log_dropped_total") == 0


def test_docs_and_openapi(gateway: Gateway) -> None:
    docs = gateway.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = gateway.client.get("/openapi.json").json()
    assert "post" in schema["paths"]["/predict"]
    row = schema["components"]["schemas"]["Row"]
    assert set(row["required"]) == {"store_nbr", "item_nbr", "date", "onpromotion"}
    assert row["additionalProperties"] is False


def _unknown_combination(gateway: Gateway) -> dict[str, Any]:
    series = set(gateway.catalog["series"])
    stores = [o["value"] for o in gateway.catalog["keys"][0]["options"]]
    items = [o["value"] for o in gateway.catalog["keys"][1]["options"]]
    missing = next((s, i) for s in stores for i in items if f"{s}|{i}" not in series)
    return gateway.row() | {"store_nbr": missing[0], "item_nbr": missing[1]}


def _day_after(day: str) -> str:
    return (pd.Timestamp(day) + pd.Timedelta(days=1)).date().isoformat()


def _raw_row(gateway: Gateway, promotion: str) -> bytes:
    row = json.dumps(gateway.row() | {"onpromotion": 0}).replace('"onpromotion": 0', f'"onpromotion": {promotion}')
    return f'{{"rows": [{row}]}}'.encode()


def _streamed(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 4096):
        yield body[start : start + 4096]


def _oversized(gateway: Gateway) -> bytes:
    return json.dumps({"rows": [gateway.row()] * (MAX_BODY // 60)}).encode()


# name → (request body: JSON value, raw bytes or a generator, from the gateway's catalog;
#         status, the field the error names (last element of loc), words of the reason)
BAD_INPUT = {
    "unknown store": (lambda g: {"rows": [g.row() | {"store_nbr": 9999}]}, 422, "store_nbr", "unknown store_nbr"),
    "unknown item": (lambda g: {"rows": [g.row() | {"item_nbr": 1}]}, 422, "item_nbr", "unknown item_nbr"),
    "unknown combination": (lambda g: {"rows": [_unknown_combination(g)]}, 422, "store_nbr", "unknown"),
    "date after range": (
        lambda g: {"rows": [g.row() | {"date": _day_after(g.catalog["dates"]["max"])}]},
        422,
        "date",
        "outside the servable range",
    ),
    "date at origin": (lambda g: {"rows": [g.row() | {"date": g.version["origin"]}]}, 422, "date", "outside"),
    "date not a date": (lambda g: {"rows": [g.row() | {"date": "abc"}]}, 422, "date", "valid date"),
    "string store": (lambda g: {"rows": [g.row() | {"store_nbr": "one"}]}, 422, "store_nbr", "valid integer"),
    "numeric string store": (lambda g: {"rows": [g.row() | {"store_nbr": "1"}]}, 422, "store_nbr", "valid integer"),
    "boolean store": (lambda g: {"rows": [g.row() | {"store_nbr": True}]}, 422, "store_nbr", "valid integer"),
    "fractional item": (lambda g: {"rows": [g.row() | {"item_nbr": 1.5}]}, 422, "item_nbr", "valid integer"),
    "string covariate": (lambda g: {"rows": [g.row() | {"onpromotion": "lots"}]}, 422, "onpromotion", "number"),
    "missing field": (
        lambda g: {"rows": [{k: v for k, v in g.row().items() if k != "item_nbr"}]},
        422,
        "item_nbr",
        "required",
    ),
    "extra field in row": (lambda g: {"rows": [g.row() | {"price": 1}]}, 422, "price", "not permitted"),
    "extra top-level field": (lambda g: {"rows": [g.row()], "model": "2"}, 422, "model", "not permitted"),
    "NaN": (lambda g: _raw_row(g, "NaN"), 422, "onpromotion", "finite"),
    "Infinity": (lambda g: _raw_row(g, "Infinity"), 422, "onpromotion", "finite"),
    "-Infinity": (lambda g: _raw_row(g, "-Infinity"), 422, "onpromotion", "finite"),
    "overflowing number": (lambda g: _raw_row(g, "1e999"), 422, "onpromotion", "finite"),
    "null covariate": (lambda g: {"rows": [g.row() | {"onpromotion": None}]}, 422, "onpromotion", "valid number"),
    "null key": (lambda g: {"rows": [g.row() | {"store_nbr": None}]}, 422, "store_nbr", "valid integer"),
    "null rows": (lambda g: {"rows": None}, 422, "rows", "valid list"),
    "null body": (lambda g: b"null", 422, "body", "dictionary"),
    "rows not a list": (lambda g: {"rows": g.row()}, 422, "rows", "valid list"),
    "empty rows": (lambda g: {"rows": []}, 422, "rows", "at least 1"),
    "too many rows": (lambda g: {"rows": [g.row()] * (MAX_ROWS + 1)}, 422, "rows", f"at most {MAX_ROWS}"),
    "not JSON": (lambda g: b"rows=1&store=2", 422, None, "JSON"),
    "truncated JSON": (lambda g: json.dumps({"rows": [g.row()]}).encode()[:-3], 422, None, "JSON"),
    "empty body": (lambda g: b"", 422, "body", "required"),
    "oversized, Content-Length": (_oversized, 413, "body", "larger than the limit"),
    "oversized, streamed": (lambda g: _streamed(_oversized(g)), 413, "body", "larger than the limit"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_rejected_by_field_and_changes_nothing(gateway: Gateway, case: str) -> None:
    make_body, status, field, reason = BAD_INPUT[case]
    client, good = gateway.client, [gateway.row(2, day=3, promo=1)]
    expected = gateway.predict(good)["predictions"]
    rejected_before = metric(client, "cd4ml_requests_total", path="/predict", status=str(status))
    body = make_body(gateway)
    if isinstance(body, dict):
        response = client.post("/predict", json=body)
    else:
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    if field is not None:
        assert any(d["loc"][-1] == field for d in detail), detail
    assert any(reason.lower() in d["msg"].lower() for d in detail), detail
    assert metric(client, "cd4ml_requests_total", path="/predict", status=str(status)) == rejected_before + 1
    assert metric(client, "cd4ml_requests_total", path="/predict", status="500") == 0
    assert gateway.predict(good)["predictions"] == expected
    assert client.get("/ready").json()["ready"] is True


def test_bad_rows_are_all_named_in_one_answer(gateway: Gateway) -> None:
    rows = [
        gateway.row(0),
        gateway.row(1) | {"store_nbr": 9999},
        gateway.row(2),
        gateway.row(3) | {"date": "2001-01-01"},
    ]
    response = gateway.client.post("/predict", json={"rows": rows})
    assert response.status_code == 422
    assert [(d["loc"][2], d["loc"][3]) for d in response.json()["detail"]] == [(1, "store_nbr"), (3, "date")]


def test_served_predictions_equal_batch_predictions(
    gateway: Gateway, tmp_path: Path, run_cd4ml: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """`cd4ml predict` (batch, the CLI) and /predict score the same rows to the same floats."""
    rows = [
        gateway.row(n, day=(5 * n) % 16, promo=(0, 1, 2.5, 7)[n % 4]) for n in range(len(gateway.catalog["series"]))
    ]
    served = [p["prediction"] for p in gateway.predict(rows)["predictions"]]
    source, target = tmp_path / "rows.csv", tmp_path / "predicted.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    result = run_cd4ml("predict", "-i", str(source), "-o", str(target), "-w", str(gateway.workdir))
    assert result.returncode == 0, result.stdout + result.stderr
    batch = pd.read_csv(target, float_precision="round_trip")
    assert batch[["store_nbr", "item_nbr"]].to_dict("records") == [
        {"store_nbr": r["store_nbr"], "item_nbr": r["item_nbr"]} for r in rows
    ]
    assert batch["unit_sales"].tolist() == served  # batch writes under the data's target name


# ------------------------------------------------------- the /predict fast path


def test_fast_path_and_route_answer_alike(gateway: Gateway) -> None:
    """What the ASGI fast path answers (plain JSON, explain=true) equals what FastAPI's route
    answers for the same rows (reached with `explain=1` and a charset in the content type)."""
    rows = [gateway.row(n, day=n % 16, promo=n % 2) for n in range(0, 40, 4)]
    fast = gateway.predict(rows, explain="true")
    routed = gateway.client.post(
        "/predict",
        params={"explain": "1"},
        content=json.dumps({"rows": rows}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert routed.status_code == 200, routed.text
    routed = routed.json()
    assert fast["request_id"] != routed["request_id"]
    assert {k: v for k, v in fast.items() if k != "request_id"} == {
        k: v for k, v in routed.items() if k != "request_id"
    }


def test_fast_path_answers_well_formed_requests_and_passes_on_the_rest(gateway: Gateway) -> None:
    """The fast path answers a well-formed request itself; anything else reaches the app behind
    it (FastAPI's route, in the gateway) with the body intact."""
    fast_path = gateway.client.app.front.app  # Guard → FastPredict → FastAPI
    passed_on: list[tuple[str, str, bytes]] = []

    async def behind(scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        passed_on.append((scope["method"], scope["query_string"].decode(), body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(FastPredict(behind, fast_path.predictions, fast_path.request_model))
    good = json.dumps({"rows": [gateway.row(1, day=2)]}).encode()
    unknown = json.dumps({"rows": [gateway.row() | {"store_nbr": 9999}]}).encode()
    for query in ("", "?explain=true", "?explain=false"):
        answer = client.post(f"/predict{query}", content=good, headers={"content-type": "application/json"})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
        assert ("contributions" in answer.json()["predictions"][0]) is (query == "?explain=true")
    assert passed_on == []
    client.post("/predict?explain=1", content=good, headers={"content-type": "application/json"})
    client.post("/predict", content=good, headers={"content-type": "text/plain"})
    client.post("/predict", content=unknown, headers={"content-type": "application/json"})
    client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    client.get("/predict")
    assert passed_on == [
        ("POST", "explain=1", good),
        ("POST", "", good),
        ("POST", "", unknown),
        ("POST", "", b"{not json"),
        ("GET", "", b""),
    ]


def test_a_client_that_leaves_mid_request_is_not_a_server_error(gateway: Gateway) -> None:
    """A client gone before its body arrived gets no answer and counts as 499, not 500: 5xx
    rates drive automatic rollbacks."""
    front = gateway.client.app.front  # Guard → FastPredict → FastAPI
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    sent: list[dict] = []

    async def leave() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    counted = {s: metric(gateway.client, "cd4ml_requests_total", path="/predict", status=s) for s in ("499", "500")}
    asyncio.run(front(scope, leave, send))
    assert sent == []
    assert metric(gateway.client, "cd4ml_requests_total", path="/predict", status="499") == counted["499"] + 1
    assert metric(gateway.client, "cd4ml_requests_total", path="/predict", status="500") == counted["500"]


def test_request_ids_sort_by_time(gateway: Gateway) -> None:
    """Time-ordered ids keep the prediction log's request-id index appending at its end."""
    ids = []
    for _ in range(3):
        ids.append(gateway.predict([gateway.row()])["request_id"])
        time.sleep(0.003)
    assert ids == sorted(ids) and len(set(ids)) == 3
