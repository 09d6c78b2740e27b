"""Fuzzing the gateway over real HTTP: no input may produce a server error.

schemathesis generates requests from the gateway's own OpenAPI (valid and invalid) for every
operation; a Hypothesis test then sends rows that are well-formed and known to the model, with
arbitrary dates, covariates and batch sizes, which must all be answered.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

if TYPE_CHECKING:
    from conftest import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("servers")]

# bounded and repeatable; no example database left in the work tree
FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@pytest.fixture(scope="module")
def fuzzed_gateway(
    trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory, start_gateway: Callable[..., GatewayProcess]
) -> GatewayProcess:
    workdir = tmp_path_factory.mktemp("fuzz") / "work"
    shutil.copytree(trained_workdir, workdir)
    return start_gateway(workdir, "--poll", "0", "--prediction-log", "none")


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway: GatewayProcess) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_gateway.url}/openapi.json")


@pytest.fixture(scope="module")
def client(fuzzed_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzzed_gateway.url, timeout=30) as session:
        yield session


def test_no_operation_answers_with_a_server_error(
    gateway_schema: schemathesis.schemas.BaseSchema, subtests: pytest.Subtests
) -> None:
    """Every operation of /openapi.json, with schema-valid and schema-violating requests.

    (schemathesis' own `@schema.parametrize()` over `pytest.from_fixture` needs the private
    `Node._nodeid` that pytest 9.2 removed, so each operation's strategy is driven here.)
    """
    operations = [result.ok() for result in gateway_schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    assert {"/predict", "/health", "/ready", "/version", "/metrics"} <= paths
    for operation, mode in itertools.product(operations, GenerationMode):
        with subtests.test(operation=operation.label, mode=mode.value):

            @FUZZ
            @given(case=operation.as_strategy(mode))
            def no_server_error(case: schemathesis.Case) -> None:
                case.call_and_validate(checks=[not_a_server_error])

            try:
                no_server_error()
            except Unsatisfiable:
                # nothing in this operation can be made schema-invalid (e.g. one optional header)
                assert mode is GenerationMode.NEGATIVE


@pytest.fixture(scope="module")
def catalog(client: httpx.Client) -> dict:
    return client.get("/api/catalog").json()


def test_known_rows_with_any_covariates_are_answered(client: httpx.Client, catalog: dict) -> None:
    """Rows the model knows, on any servable date, with any covariate within ±1e30 (the bound that
    keeps it finite as float32); beyond it, a 422 names the field."""
    series = [tuple(int(v) for v in s.split("|")) for s in catalog["series"]]
    first, last = (date.fromisoformat(catalog["dates"][k]) for k in ("min", "max"))
    covariate = st.one_of(st.integers(0, 10**6), st.floats(min_value=-1e30, max_value=1e30))
    row = st.fixed_dictionaries(
        {"series": st.sampled_from(series), "date": st.dates(first, last), "onpromotion": covariate}
    ).map(
        lambda r: {
            "store_nbr": r["series"][0],
            "item_nbr": r["series"][1],
            "date": r["date"].isoformat(),
            "onpromotion": r["onpromotion"],
        }
    )

    @FUZZ
    @given(rows=st.lists(row, min_size=1, max_size=40), explain=st.booleans())
    def answered(rows: list[dict], explain: bool) -> None:
        response = client.post("/predict", json={"rows": rows}, params={"explain": str(explain).lower()})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == len(rows)
        assert all(math.isfinite(p["prediction"]) and p["prediction"] >= 0 for p in predictions)
        assert all(("contributions" in p) == explain for p in predictions)

    answered()
    row = {"store_nbr": series[0][0], "item_nbr": series[0][1], "date": first.isoformat(), "onpromotion": 1e39}
    too_big = client.post("/predict", json={"rows": [row]})
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"][-1] == "onpromotion"
    assert client.get("/ready").status_code == 200


def test_an_endless_streamed_body_is_cut_off_with_413(client: httpx.Client) -> None:
    """Chunked, without Content-Length: the limit (4 MiB) is enforced while reading, over HTTP."""
    row = json.dumps({"store_nbr": 1, "item_nbr": 1, "date": "2017-01-01", "onpromotion": 0}) + ","

    def body() -> Iterator[bytes]:
        yield b'{"rows": ['
        for _ in range(5_000):  # ~300 MiB if nobody stopped reading
            yield row.encode() * 1_000

    response = client.post("/predict", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["type"] == "too_large"
    sent = response.request.headers
    assert sent.get("transfer-encoding") == "chunked" and "content-length" not in sent
    assert client.get("/ready").status_code == 200
