"""Feedback joined to served predictions: /feedback on a real gateway (`cd4ml serve`), bulk
actuals with `cd4ml actuals`, and the verdicts of `cd4ml ab report`."""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import GatewayProcess

from cd4ml.monitoring.feedback import FeedbackStore, Served, ServedIndex, SplitRequest
from cd4ml.monitoring.sinks import SQLiteSink

TOKEN = "feedback-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ARMS = {"champion": "champion", "challenger": "challenger"}
VERSIONS = {"champion": "1", "challenger": "2"}
WIDE = {"COLUMNS": "200"}  # Rich wraps tables at 80 columns when not on a terminal


@dataclass
class Live:
    """A gateway on a released work directory with a canary at 50 %, so both arms get traffic."""

    workdir: Path
    client: httpx.Client
    catalog: dict[str, Any]
    uses: Counter = field(default_factory=Counter)

    def row(self, n: int = 0, day: int = 0) -> dict[str, Any]:
        store, item = (int(v) for v in self.catalog["series"][n].split("|"))
        first = date.fromisoformat(self.catalog["dates"]["min"])
        return {
            "store_nbr": store,
            "item_nbr": item,
            "date": (first + timedelta(days=day)).isoformat(),
            "onpromotion": 0,
        }

    def predict(self, rows: list[dict[str, Any]], arm: str | None = None) -> dict[str, Any]:
        """Serve `rows`; with `arm`, as a client that the canary assigns to that arm."""
        while True:
            self.uses["client"] += 1
            response = self.client.post(
                "/predict",
                json={"rows": rows},
                headers={"X-Client-Id": f"client-{self.uses['client']}"},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            if arm is None or body["arm"] == arm:
                return body

    def feedback(self, **body: Any) -> httpx.Response:
        return self.client.post("/feedback", json=body)

    def store(self) -> FeedbackStore:
        return FeedbackStore(f"sqlite:///{self.workdir / 'feedback.db'}")

    def records(self, request_id: str) -> dict[str, dict[str, Any]]:
        """kind → stored feedback record of one request."""
        return {r["kind"]: r for r in self.store().all() if r["request_id"] == request_id}


@pytest.fixture(scope="module")
def live(released_workdir: Callable[[str], Path], start_gateway: Callable[..., GatewayProcess]) -> Iterator[Live]:
    from cd4ml.routing import Routing, save_routing

    workdir = released_workdir("feedback")
    save_routing(workdir / "routing.yaml", Routing(strategy="canary", arms=ARMS, share=0.5))
    gateway = start_gateway(workdir, "--poll", "0", env={"CD4ML_ADMIN_TOKEN": TOKEN})
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield Live(workdir, client, client.get("/api/catalog").json())


def logged(workdir: Path, request_id: str, timeout: float = 10) -> list[tuple[str, str]]:
    """(arm, model version) of the prediction log's records of a request, once there are any."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(workdir / "predictions.db", timeout=30)) as db:
            found = db.execute(
                "SELECT arm, model_version FROM predictions WHERE request_id = ?", (request_id,)
            ).fetchall()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.parametrize("arm", ["champion", "challenger"])
@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_actual_and_reward_are_joined_to_the_served_prediction(live: Live, arm: str) -> None:
    rows = [live.row(n) for n in range(3)]
    served = live.predict(rows, arm=arm)
    response = live.feedback(request_id=served["request_id"], actual=[3.0, 0.0, 12.5], reward=1)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "request_id": served["request_id"],
        "arm": arm,
        "model_version": VERSIONS[arm],
        "recorded": ["actual", "reward"],
    }
    records = live.records(served["request_id"])
    assert sorted(records) == ["actual", "reward"]
    for record in records.values():
        assert (record["arm"], record["model_version"]) == (arm, VERSIONS[arm])
        assert json.loads(record["predictions"]) == [p["prediction"] for p in served["predictions"]]
        assert json.loads(record["rows"]) == rows
    assert json.loads(records["actual"]["value"]) == [3.0, 0.0, 12.5]
    assert json.loads(records["reward"]["value"]) == 1
    assert logged(live.workdir, served["request_id"]) == [(arm, VERSIONS[arm])]


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_one_row_takes_a_bare_actual(live: Live) -> None:
    served = live.predict([live.row(4)])
    assert live.feedback(request_id=served["request_id"], actual=7).status_code == 200
    assert json.loads(live.records(served["request_id"])["actual"]["value"]) == [7]


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_unknown_request_id_is_404_and_stores_nothing(live: Live) -> None:
    before = len(live.store().all())
    response = live.feedback(request_id="f" * 32, actual=[1.0], reward=1)
    assert response.status_code == 404 and "unknown request_id" in response.text
    assert len(live.store().all()) == before


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_duplicate_is_409_and_changes_nothing(live: Live) -> None:
    served = live.predict([live.row(5), live.row(6)])
    request_id = served["request_id"]
    assert live.feedback(request_id=request_id, reward=1).status_code == 200
    again = live.feedback(request_id=request_id, reward=0)
    assert again.status_code == 409 and "already recorded" in again.text
    assert json.loads(live.records(request_id)["reward"]["value"]) == 1
    # the actual is new but the reward is not: all or nothing, so nothing
    mixed = live.feedback(request_id=request_id, actual=[1.0, 2.0], reward=0)
    assert mixed.status_code == 409
    assert sorted(live.records(request_id)) == ["reward"]
    assert live.feedback(request_id=request_id, actual=[1.0, 2.0]).status_code == 200
    assert live.feedback(request_id=request_id, actual=[5.0, 5.0]).status_code == 409
    assert json.loads(live.records(request_id)["actual"]["value"]) == [1.0, 2.0]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"actual": [1.0, 2.0]}, "expected 3 actual(s), one per row"),
        ({"actual": [1.0, 2.0, 3.0, 4.0], "reward": 1}, "expected 3 actual(s), one per row"),
        ({}, "give an actual, a reward, or both"),
        ({"reward": 1.5}, "less than or equal to 1"),
        ({"actual": [1.0, 2.0, "many"]}, "actual"),
    ],
)
@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_malformed_feedback_is_422_and_stores_nothing(live: Live, body: dict, problem: str) -> None:
    served = live.predict([live.row(n) for n in range(3)])
    response = live.feedback(request_id=served["request_id"], **body)
    assert response.status_code == 422 and problem in response.text, response.text
    assert live.records(served["request_id"]) == {}
    assert live.feedback(request_id=served["request_id"], actual=[1.0, 2.0, 3.0]).status_code == 200


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_concurrent_feedback_is_recorded_exactly_once(live: Live) -> None:
    """Each of 150 requests gets its reward twice, from 8 threads in random order: exactly one
    of the two is accepted, and the store holds exactly one reward per request."""
    served = [live.predict([live.row(n % 10)]) for n in range(150)]
    jobs = [(s["request_id"], s["arm"]) for s in served for _ in range(2)]
    random.Random(5).shuffle(jobs)
    local = threading.local()

    def send(job: tuple[str, str]) -> tuple[str, int]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=str(live.client.base_url), timeout=30)
        request_id, arm = job
        value = 1 if arm == "challenger" else 0
        return request_id, local.client.post("/feedback", json={"request_id": request_id, "reward": value}).status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    by_request: dict[str, list[int]] = {}
    for request_id, status in answers:
        by_request.setdefault(request_id, []).append(status)
    assert all(sorted(codes) == [200, 409] for codes in by_request.values()), Counter(
        tuple(sorted(c)) for c in by_request.values()
    )
    stored = [r for r in live.store().all() if r["kind"] == "reward" and r["request_id"] in by_request]
    assert sorted(r["request_id"] for r in stored) == sorted(by_request)
    arms = {s["request_id"]: s["arm"] for s in served}
    assert all(json.loads(r["value"]) == (arms[r["request_id"]] == "challenger") for r in stored)


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_a_request_split_across_arms_takes_one_actual_per_row(live: Live) -> None:
    """Under `multiple` one request is served by several arms; its feedback is one unit, the
    actuals in request order, attributed to the arms joined by '+'."""
    items = next(k["options"] for k in live.catalog["keys"] if k["name"] == "item_nbr")
    produce = {o["value"] for o in items if o["label"].startswith("PRODUCE")}
    series = [int(s.split("|")[1]) for s in live.catalog["series"]]
    mixed = [
        next(n for n, i in enumerate(series) if i in produce),
        next(n for n, i in enumerate(series) if i not in produce),
    ]
    routing = {
        "strategy": "multiple",
        "arms": {"champion": "champion", "produce": "3"},
        "segment": {"column": "family", "arms": {"PRODUCE": "produce"}},
    }
    assert live.client.put("/admin/routing", json=routing, headers=ADMIN).status_code == 200
    try:
        rows = [live.row(n, day=1) for n in mixed]
        served = live.predict(rows)
        assert [p["arm"] for p in served["predictions"]] == ["produce", "champion"]
        response = live.feedback(request_id=served["request_id"], actual=[1.0, 2.0])
    finally:
        canary = {"strategy": "canary", "arms": ARMS, "share": 0.5}
        assert live.client.put("/admin/routing", json=canary, headers=ADMIN).status_code == 200
    assert response.status_code == 200, response.text
    assert response.json()["arm"] == "produce+champion" and response.json()["recorded"] == ["actual"]
    record = live.records(served["request_id"])["actual"]
    assert json.loads(record["value"]) == [1.0, 2.0]
    assert [r["item_nbr"] for r in json.loads(record["rows"])] == [r["item_nbr"] for r in rows]
    assert json.loads(record["predictions"]) == [p["prediction"] for p in served["predictions"]]


def test_the_log_names_a_split_request_it_cannot_order(tmp_path: Path) -> None:
    """Out of memory, a request is read back from the prediction log: one arm's record is what
    was served; several arms' records lost the request's row order, which the error says."""
    log = SQLiteSink(tmp_path / "predictions.db")
    row = {"store_nbr": 1, "item_nbr": 2, "date": "2017-01-01", "onpromotion": 0.0}
    record = {"ts": 1.0, "model_name": "m", "contributions": None, "latency_ms": 1.0, "origin": "2016-12-31"}
    served = [("one", "champion", "1", 3.0), ("two", "champion", "1", 4.0), ("two", "produce", "3", 5.0)]
    served.append(("one", "shadow:x", "2", 6.0))
    log.write(
        [
            record | {"request_id": r, "arm": a, "model_version": v, "rows": [row], "predictions": [p]}
            for r, a, v, p in served
        ]
    )
    log.close()
    index = ServedIndex(log_url=f"sqlite:///{tmp_path / 'predictions.db'}")
    assert index.get("one") == Served("champion", "1", [3.0], [row])
    assert index.get("three") is None
    with pytest.raises(SplitRequest, match=r"split across arms \(champion, produce\).*cd4ml actuals"):
        index.get("two")


# ---------------------------------------------------------------- cd4ml actuals


@pytest.mark.integration
@pytest.mark.xdist_group("feedback")
def test_cli_actuals_join_logged_requests_once(live: Live, run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    """Requests whose rows all have an observed sale get one `actual` record, attributed to the
    arm and version that served them; a request with a row still missing waits. (Other tests'
    requests may join too: actuals sent to /feedback also count for every request of that day.)"""
    complete = [
        live.predict([live.row(n, day=9), live.row(n + 1, day=9)], arm=arm)
        for n, arm in ((0, "champion"), (2, "challenger"))
    ]
    partial = live.predict([live.row(4, day=9), live.row(5, day=10)])
    for body in [*complete, partial]:
        assert logged(live.workdir, body["request_id"])
    sales = [
        {**row, "sales": 10.0 + i} for i, row in enumerate([live.row(n, day=9) for n in range(6)])
    ]  # day 10 of series 5 is not observed yet
    csv = tmp_path / "actuals.csv"
    pd.DataFrame(sales)[["store_nbr", "item_nbr", "date", "sales"]].to_csv(csv, index=False)
    actuals_before = sum(r["kind"] == "actual" for r in live.store().all())
    first = run_cd4ml("actuals", str(csv), "-w", str(live.workdir), env=WIDE)
    assert first.returncode == 0, first.stderr
    assert "6 rows: 6 new, 0 already known" in first.stdout
    joined = int(re.search(r"([\d,]+) logged requests now have actuals", first.stdout).group(1))
    assert joined >= 2
    assert sum(r["kind"] == "actual" for r in live.store().all()) == actuals_before + joined
    for body, values in zip(complete, ([10.0, 11.0], [12.0, 13.0]), strict=True):
        record = live.records(body["request_id"])["actual"]
        assert json.loads(record["value"]) == values
        assert (record["arm"], record["model_version"]) == (body["arm"], body["model"]["version"])
        assert json.loads(record["predictions"]) == [p["prediction"] for p in body["predictions"]]
    assert live.records(partial["request_id"]) == {}
    again = run_cd4ml("actuals", str(csv), "-w", str(live.workdir), env=WIDE)
    assert again.returncode == 0, again.stderr
    assert "6 rows: 0 new, 6 already known; 0 logged requests now have actuals" in again.stdout
    assert sum(r["kind"] == "actual" for r in live.store().all()) == actuals_before + joined
    assert all(len(live.records(b["request_id"])) == 1 for b in complete)


def test_cli_actuals_names_a_bad_line(run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    csv = tmp_path / "actuals.csv"
    csv.write_text("store_nbr,item_nbr,date,sales\n1,2,2017-01-01,3\n1,2,2017-01-02,lots\n")
    result = run_cd4ml("actuals", str(csv), "-w", str(tmp_path), env=WIDE)
    assert result.returncode == 2
    assert "line 3: column 'sales' is not a number" in result.stderr
    missing = tmp_path / "missing.csv"
    missing.write_text("store_nbr,item_nbr,day,sales\n1,2,2017-01-01,3\n")
    result = run_cd4ml("actuals", str(missing), "-w", str(tmp_path), env=WIDE)
    assert result.returncode == 2 and "missing column(s) date" in result.stderr


# ---------------------------------------------------------------- cd4ml ab report


def constructed_feedback(workdir: Path, rows_per_arm: int, errors: dict[str, float], seed: int = 0) -> None:
    """Feedback as if each arm served `rows_per_arm` one-row requests whose log errors have
    standard deviation `errors[arm]`, plus a reward per request."""
    store = FeedbackStore(f"sqlite:///{workdir / 'feedback.db'}")
    store.db.execute("PRAGMA synchronous=NORMAL")  # this connection only: no fsync per record
    rng = np.random.default_rng(seed)
    for arm, spread in errors.items():
        for i in range(rows_per_arm):
            actual = float(rng.uniform(1, 50))
            predicted = float(np.expm1(np.log1p(actual) + rng.normal(0, spread)))
            served = Served(arm, VERSIONS.get(arm, "3"), [predicted], [{"row": i}])
            store.record(f"{arm}-{i}", "actual", [actual], served)
            store.record(f"{arm}-{i}", "reward", float(rng.random() < 0.5), served)


def ab_report(run_cd4ml: Callable[..., Any], workdir: Path) -> tuple[str, float | None]:
    result = run_cd4ml("ab", "report", "-w", str(workdir), env=WIDE)
    assert result.returncode == 0, result.stderr
    found = re.search(r"p = ([0-9.]+(?:e-?\d+)?)", result.stdout)
    return result.stdout, float(found.group(1)) if found else None


def test_ab_report_declares_a_clearly_better_version_the_winner(run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    constructed_feedback(tmp_path, 300, {"champion": 0.6, "challenger": 0.2})
    output, p = ab_report(run_cd4ml, tmp_path)
    assert "v2 wins" in output and "all feedback" in output, output
    assert p is not None and p < 1e-6
    assert re.search(r"2\s+│\s+challenger\s+│\s+300\s+│\s+300\s+│\s+300", output), output  # requests, rows, days


def test_ab_report_says_not_yet_with_too_few_series_days(run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    constructed_feedback(tmp_path, 20, {"champion": 0.6, "challenger": 0.2})
    output, _ = ab_report(run_cd4ml, tmp_path)
    assert re.search(r"not yet: (v1 has 20, v2 has 20|v2 has 20, v1 has 20) of 100 series-days", output), output
    assert "wins" not in output


def test_ab_report_sees_no_difference_between_equal_versions(run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    constructed_feedback(tmp_path, 300, {"champion": 0.3, "challenger": 0.3})
    output, p = ab_report(run_cd4ml, tmp_path)
    assert "no significant difference yet" in output and p is not None and p >= 0.05


def repeated_series_days(store: FeedbackStore, version: str, errors: np.ndarray, repeats: int) -> None:
    """`repeats` one-row requests for each of len(errors) series-days, served by `version` as
    the challenger: every repeat of a series-day has the same forecast, actual and log error."""
    for day, error in enumerate(errors):
        row = {"store_nbr": day % 7, "item_nbr": day, "date": f"2017-08-{day % 28 + 1:02d}", "onpromotion": 0}
        for n in range(repeats):
            served = Served("challenger", version, [float(np.expm1(np.log1p(10.0) + error))], [row])
            store.record(f"v{version}-{day}-{n}", "actual", [10.0], served)


def test_ab_report_counts_series_days_not_repeated_requests(tmp_path: Path) -> None:
    """Two versions whose errors differ a little: with every series-day requested 20 times, a test
    on rows would call it significant; per series-day (the n that is really there) it is not."""
    from scipy import stats

    from cd4ml.monitoring.abtest import report

    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.db.execute("PRAGMA synchronous=NORMAL")
    rng = np.random.default_rng(1)
    errors = {"1": rng.normal(0, 0.3, 150), "2": rng.normal(0, 0.3, 150) * np.sqrt(1.1)}
    for version, log_errors in errors.items():
        repeated_series_days(store, version, log_errors, repeats=20)
    decision = report(store.all(), ["store_nbr", "item_nbr"])

    squared = {v: (np.log1p(np.expm1(np.log1p(10.0) + e)) - np.log1p(10.0)) ** 2 for v, e in errors.items()}
    for result in decision.versions:
        days = squared[result.version]
        assert (result.rows, result.series_days, result.requests) == (3000, 150, 3000)
        half = stats.t.ppf(0.975, 149) * days.std(ddof=1) / np.sqrt(150)  # by hand, on series-days
        assert result.ci95 == pytest.approx((days.mean() - half, days.mean() + half), rel=1e-9)
        rows = np.repeat(days, 20)
        naive = 1.96 * rows.std(ddof=1) / np.sqrt(len(rows))  # as if the 3000 rows were independent
        assert result.ci95[1] - result.ci95[0] > 4 * 2 * naive
    naive_p = stats.ttest_ind(np.repeat(squared["1"], 20), np.repeat(squared["2"], 20), equal_var=False).pvalue
    assert naive_p < 1e-6 and decision.p_value is not None and decision.p_value > 0.05
    assert decision.winner is None and decision.verdict.startswith("no significant difference"), decision.verdict


def test_ab_report_window_starts_at_the_last_routing_change(run_cd4ml: Callable[..., Any], tmp_path: Path) -> None:
    """Feedback recorded before the experiment (here: v2 as a terrible earlier challenger) is not
    counted; --since moves the window."""
    from cd4ml.registry import Registry

    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.db.execute("PRAGMA synchronous=NORMAL")
    repeated_series_days(store, "2", np.full(30, 2.0), repeats=1)
    move = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", "sales-forecaster").record("routing", "single", "ab", "test")
    store.db.execute("UPDATE feedback SET ts = ?", (move.when - 3600,))
    constructed_feedback(tmp_path, 120, {"champion": 0.6, "challenger": 0.2})

    result = run_cd4ml("ab", "report", "--json", "-w", str(tmp_path), env=WIDE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["since"] == pytest.approx(move.when)
    assert {v["version"]: v["series_days"] for v in report["versions"]} == {"1": 120, "2": 120}
    assert report["winner"] == "2", report["verdict"]

    earlier = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(move.when - 7200))
    result = run_cd4ml("ab", "report", "--json", "--since", earlier, "-w", str(tmp_path), env=WIDE)
    assert result.returncode == 0, result.stderr
    assert {v["version"]: v["series_days"] for v in json.loads(result.stdout)["versions"]} == {"1": 120, "2": 150}


def test_ab_report_names_no_winner_when_the_test_is_undefined(tmp_path: Path) -> None:
    """Two arms with identical, constant errors: the t-test is 0/0 (p = NaN), which is not
    evidence for either arm."""
    from cd4ml.monitoring.abtest import report

    store = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.db.execute("PRAGMA synchronous=NORMAL")
    for arm in ("champion", "challenger"):
        for i in range(150):
            store.record(f"{arm}-{i}", "actual", [5.0], Served(arm, VERSIONS[arm], [5.0], [{"row": i}]))
    decision = report(store.all(), ["store_nbr", "item_nbr"])
    assert decision.winner is None, decision.verdict
