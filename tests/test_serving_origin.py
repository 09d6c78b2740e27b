"""The serving origin: actuals move it only to an explicit complete-through date, every arm
serves it, and a restarted gateway serves it again. Real gateways (the app factory on a copy of
a trained work directory), real bundles, the batch path as the reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from cd4ml.routing import Routing, save_routing
from cd4ml.scoring import Predictor, Scorer, SeriesData
from cd4ml.serving.app import create_app
from cd4ml.serving.settings import GatewaySettings

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("origin")]

TOKEN = "origin-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def gateway(workdir: Path) -> Iterator[TestClient]:
    settings = GatewaySettings(workdir=workdir, poll_seconds=0, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def workdir(released_workdir: Callable[[str], Path]) -> Path:
    """v1 champion, v2 challenger; a canary, so two arms serve."""
    workdir = released_workdir("origin")
    save_routing(
        workdir / "routing.yaml",
        Routing(strategy="canary", share=0.5, arms={"champion": "champion", "challenger": "challenger"}),
    )
    return workdir


def series_rows(client: TestClient, day: date) -> list[dict[str, Any]]:
    """One row per series the champion knows, for `day`."""
    model = client.app.state.arms.champion.current
    keys = model.spec.series_keys
    frame = model.scorer.attributes.index.to_frame(index=False)
    return [
        {**dict(zip(keys, (int(v) for v in row), strict=True)), "date": day.isoformat(), "onpromotion": 0.0}
        for row in frame[keys].itertuples(index=False)
    ]


def forecasts(client: TestClient, rows: list[dict[str, Any]], client_id: str = "c") -> list[float]:
    response = client.post("/predict", json={"rows": rows}, headers={"X-Client-Id": client_id})
    assert response.status_code == 200, response.text
    return [p["prediction"] for p in response.json()["predictions"]]


def origin(client: TestClient) -> date:
    return date.fromisoformat(client.get("/version").json()["origin"])


def batch_forecast(bundle: Path, rows: list[dict[str, Any]], origin_day: date, actuals: pd.DataFrame) -> list[float]:
    """The batch path's forecast: the bundle's history plus only the given actuals, at the origin."""
    predictor = Predictor.read(bundle)
    data = SeriesData.read(bundle).with_actuals(actuals, predictor.spec.series_keys, origin_day)
    return Scorer(predictor, data, origin_day).predict(pd.DataFrame(rows)).tolist()


def test_partial_actuals_and_a_reload_leave_every_other_forecast_alone(workdir: Path) -> None:
    with gateway(workdir) as client:
        start = origin(client)
        rows = series_rows(client, start + timedelta(days=2))
        before = forecasts(client, rows)
        first = client.post("/predict", json={"rows": [rows[0] | {"date": (start + timedelta(days=1)).isoformat()}]})
        sent = client.post("/feedback", json={"request_id": first.json()["request_id"], "actual": 40.0})
        assert sent.status_code == 200, sent.text
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        assert origin(client) == start
        assert forecasts(client, rows) == before


def test_complete_through_moves_every_arm_and_missing_stays_missing(workdir: Path) -> None:
    with gateway(workdir) as client:
        start = origin(client)
        day = start + timedelta(days=1)
        rows = series_rows(client, day + timedelta(days=1))
        reported = rows[0] | {"date": day.isoformat()}
        served = client.post("/predict", json={"rows": [reported]}).json()
        client.post("/feedback", json={"request_id": served["request_id"], "actual": 40.0}).raise_for_status()

        moved = client.post("/admin/origin", json={"complete_through": day.isoformat()}, headers=ADMIN)
        assert moved.status_code == 200, moved.text
        assert moved.json()["origin"] == day.isoformat()
        arms = client.app.state.arms
        assert {arm: h.current.scorer.origin for arm, h in arms.handles.items()} == {
            "champion": day,
            "challenger": day,
        }
        keys = arms.champion.current.spec.series_keys
        actual = pd.DataFrame([{**{k: reported[k] for k in keys}, "date": pd.Timestamp(day), "sales": 40.0}])
        for arm in ("champion", "challenger"):  # each arm against its own bundle (v1, v2: other models)
            bundle = arms.handles[arm].current.bundle
            expected = batch_forecast(bundle, rows, day, actual)
            got = [forecasts(client, [row], client_id=_client_for(client, arm))[0] for row in rows]
            assert got == pytest.approx(expected, rel=1e-5)
        zero_filled = batch_forecast(bundle, rows, day, _zeros(rows, keys, day, actual))
        assert expected[1:] != pytest.approx(zero_filled[1:], rel=1e-3)  # the test can tell the two apart


def _zeros(rows: list[dict[str, Any]], keys: list[str], day: date, actual: pd.DataFrame) -> pd.DataFrame:
    """The old behaviour: every unreported series counted as zero sales on `day`."""
    others = pd.DataFrame([{**{k: r[k] for k in keys}, "date": pd.Timestamp(day), "sales": 0.0} for r in rows[1:]])
    return pd.concat([actual, others], ignore_index=True)


def _client_for(client: TestClient, arm: str) -> str:
    """An X-Client-Id the canary assigns to `arm`."""
    from cd4ml.routing import sticky_choice

    routing = client.app.state.arms.routing
    return next(f"client-{n}" for n in range(1000) if sticky_choice(routing, f"client-{n}") == arm)


def test_a_restarted_gateway_serves_the_origin_it_had(workdir: Path) -> None:
    with gateway(workdir) as client:
        day = origin(client) + timedelta(days=3)
        assert (
            client.post("/admin/origin", json={"complete_through": day.isoformat()}, headers=ADMIN).status_code == 200
        )
        rows = series_rows(client, day + timedelta(days=1))
        before = forecasts(client, rows)
    with gateway(workdir) as client:
        assert origin(client) == day
        assert {h.current.scorer.origin for h in client.app.state.arms.handles.values()} == {day}
        assert forecasts(client, rows) == before


def test_the_origin_never_moves_back_and_needs_the_admin_token(workdir: Path) -> None:
    with gateway(workdir) as client:
        start = origin(client)
        later = (start + timedelta(days=2)).isoformat()
        assert client.post("/admin/origin", json={"complete_through": later}).status_code == 401
        assert client.post("/admin/origin", json={"complete_through": later}, headers=ADMIN).status_code == 200
        back = client.post("/admin/origin", json={"complete_through": start.isoformat()}, headers=ADMIN)
        assert back.status_code == 409
        assert "never moves back" in back.json()["detail"]
        assert origin(client) == start + timedelta(days=2)


def test_cli_complete_through_moves_a_running_gateway_at_its_reload(
    workdir: Path, run_cd4ml: Callable[..., Any], tmp_path: Path
) -> None:
    with gateway(workdir) as client:
        day = origin(client) + timedelta(days=1)
        row = series_rows(client, day)[0]
        observed = tmp_path / "observed.csv"
        pd.DataFrame([{k: v for k, v in row.items() if k != "onpromotion"} | {"sales": 3.0}]).to_csv(
            observed, index=False
        )
        stored = run_cd4ml("actuals", str(observed), "-w", str(workdir))
        assert stored.returncode == 0, stored.stderr
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        assert origin(client) == day - timedelta(days=1)  # stored, not complete: nothing moves
        done = run_cd4ml("actuals", str(observed), "-w", str(workdir), "--complete-through", day.isoformat())
        assert done.returncode == 0, done.stderr
        assert f"complete through {day}" in done.stdout
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        assert origin(client) == day
        back = run_cd4ml("actuals", str(observed), "-w", str(workdir), "--complete-through", "2000-01-01")
        assert back.returncode == 2
        assert "never moves back" in back.stderr
        assert "Traceback" not in back.stderr


def test_a_new_champion_loads_at_the_recorded_origin(workdir: Path) -> None:
    from cd4ml.config import tracking_uri
    from cd4ml.registry import Registry

    with gateway(workdir) as client:
        day = origin(client) + timedelta(days=2)
        assert (
            client.post("/admin/origin", json={"complete_through": day.isoformat()}, headers=ADMIN).status_code == 200
        )
        Registry(tracking_uri(workdir), "sales-forecaster").move("champion", "3", "a new champion for the test")
        assert client.post("/admin/reload", headers=ADMIN).status_code == 200
        arms = client.app.state.arms
        assert arms.champion.current.version == "3"
        assert {arm: h.current.scorer.origin for arm, h in arms.handles.items()} == {
            "champion": day,
            "challenger": day,
        }
