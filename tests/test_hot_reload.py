"""Hot reload over real HTTP: `cd4ml serve` (uvicorn) follows the champion alias under load.

Moving the alias never fails a request, every response names the version that answered it and
carries that version's forecasts (the three versions are different models),
a broken version is refused while the old one keeps serving, and reloading by hand needs the
admin token.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
import pytest
from conftest import forecasts
from prometheus_client.parser import text_string_to_metric_families

from cd4ml.config import tracking_uri
from cd4ml.registry import Registry, log_bundle

if TYPE_CHECKING:
    from conftest import GatewayProcess

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("servers")]

TOKEN = "hot-reload-admin-token"
MODEL = "sales-forecaster"


@dataclass
class Served:
    gateway: GatewayProcess
    registry: Registry
    workdir: Path
    rows: list[dict[str, Any]]
    client: httpx.Client

    def version(self) -> dict[str, Any]:
        return self.client.get("/version").json()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60, what: str = "") -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                state = f"/version: {self.version()}\n{self.gateway.log()}"
                pytest.fail(f"after {timeout} s still not {what}; {state}")
            time.sleep(0.1)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def served(released_workdir: Callable[[str], Path], start_gateway: Callable[..., GatewayProcess]) -> Iterator[Served]:
    workdir = released_workdir("hot-reload")  # v1 champion, v2 challenger, v3: three different models
    gateway = start_gateway(workdir, "--poll", "0.5", env={"CD4ML_ADMIN_TOKEN": TOKEN})
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        catalog = client.get("/api/catalog").json()
        rows = [
            {"store_nbr": int(s), "item_nbr": int(i), "date": catalog["dates"]["min"], "onpromotion": n % 2}
            for n, (s, i) in enumerate(p.split("|") for p in catalog["series"][:3])
        ]
        yield Served(gateway, Registry(tracking_uri(workdir), MODEL), workdir, rows, client)


@dataclass
class Load:
    """Threads posting /predict on keep-alive connections until stopped; every outcome kept."""

    url: str
    body: dict[str, Any]
    threads: int = 8
    outcomes: list[tuple[float, int, dict | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._hammer, name=f"load-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def _hammer(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json=self.body)
                    outcome: dict | str = response.json() if response.status_code == 200 else response.text
                    self.outcomes.append((time.monotonic(), response.status_code, outcome))
                except Exception as exc:  # a refused or reset connection is a failed request too
                    self.outcomes.append((time.monotonic(), 0, f"{type(exc).__name__}: {exc}"))

    def versions_since(self, moment: float) -> set[str]:
        return {o["model"]["version"] for t, status, o in list(self.outcomes) if t > moment and status == 200}


def metric(served: Served, name: str) -> float:
    for family in text_string_to_metric_families(served.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def test_moving_the_champion_under_load_fails_no_request(served: Served) -> None:
    expected = {v: forecasts(served.workdir, v, served.rows) for v in ("1", "2", "3")}
    moves = ["2", "3", "1"] * 3 + ["2"]
    switch_seconds = []
    with Load(served.gateway.url, {"rows": served.rows}) as load:
        served.wait_for(lambda: len(load.outcomes) >= 50, what="under load")
        for version in moves:
            moved_at = time.monotonic()
            served.registry.promote(version, "hot reload test")
            switch_seconds.append(
                served.wait_for(lambda v=version, t=moved_at: v in load.versions_since(t), what=f"serving v{version}")
            )
        time.sleep(0.5)
    failures = [(status, outcome) for _, status, outcome in load.outcomes if status != 200]
    assert not failures, f"{len(failures)} of {len(load.outcomes)} requests failed, e.g. {failures[:3]}"
    answers = [outcome for _, _, outcome in load.outcomes]
    assert len(answers) >= 200, "the load must be continuous"
    assert {a["model"]["name"] for a in answers} == {MODEL}
    assert {a["model"]["version"] for a in answers} == {"1", "2", "3"}
    # each answer carries the forecasts of the version it names, never another's
    wrong = [a for a in answers if [p["prediction"] for p in a["predictions"]] != expected[a["model"]["version"]]]
    assert not wrong, f"{len(wrong)} answers with another version's forecasts, e.g. {wrong[0]}"
    assert served.version()["version"] == "2"
    assert metric(served, "cd4ml_model_swaps") >= 1 + len(moves)
    slowest, fastest = max(switch_seconds), min(switch_seconds)
    print(f"{len(answers)} requests, alias move to first answer {fastest:.2f}..{slowest:.2f} s")


def test_reloading_by_hand_needs_the_admin_token(served: Served) -> None:
    assert served.client.post("/admin/reload").status_code == 401
    wrong = served.client.post("/admin/reload", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    target = "3" if served.version()["version"] != "3" else "1"
    served.registry.promote(target, "reloaded by hand")
    reloaded = served.client.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert reloaded.status_code == 200, reloaded.text
    assert served.version()["version"] == target  # done when the call returns, watcher or not


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(served: Served) -> None:
    live = served.version()["version"]
    failures_before = metric(served, "cd4ml_model_load_failures")
    broken = register_broken_bundle(served)
    served.registry.promote(broken, "a bundle without model.onnx")
    served.wait_for(lambda: served.version()["last_reload_error"] is not None, what="reporting the failed load")
    version = served.version()
    assert version["version"] == live
    assert "model.onnx" in version["last_reload_error"]
    ready = served.client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "model.onnx" in str(ready.json())
    assert metric(served, "cd4ml_model_load_failures") > failures_before
    answer = served.client.post("/predict", json={"rows": served.rows})
    assert answer.status_code == 200 and answer.json()["model"]["version"] == live

    good = "1" if live != "1" else "2"
    served.registry.promote(good, "back to a good version")
    served.wait_for(lambda: served.version()["version"] == good, what=f"serving v{good} again")
    assert served.version()["last_reload_error"] is None


def test_a_version_taking_other_request_fields_is_refused(served: Served) -> None:
    """The request schema is built at start-up: a version whose rows carry another covariate
    would be fed the wrong fields, so it is refused (restart to serve it) and the old one serves."""
    live = served.version()["version"]
    renamed = register_bundle(served, "renamed", rename_covariate)
    served.registry.promote(renamed, "a model with a renamed covariate")
    served.wait_for(lambda: served.version()["last_reload_error"] is not None, what="refusing the new fields")
    version = served.version()
    assert version["version"] == live
    assert "promo: float" in version["last_reload_error"] and "restart the gateway" in version["last_reload_error"]
    failures = metric(served, "cd4ml_model_load_failures")
    time.sleep(2.5)  # five polls of the alias: the refused version is not loaded again
    assert metric(served, "cd4ml_model_load_failures") == failures
    answer = served.client.post("/predict", json={"rows": served.rows})
    assert answer.status_code == 200 and answer.json()["model"]["version"] == live

    served.registry.promote(live, "back to the live version")
    served.wait_for(lambda: served.version()["last_reload_error"] is None, what="clearing the refusal")


def rename_covariate(bundle: Path) -> None:
    """onpromotion → promo in the bundle's feature spec and history: a valid model with other fields."""
    spec = bundle / "feature_spec.json"
    spec.write_text(spec.read_text().replace('"onpromotion"', '"promo"'))
    history = pd.read_parquet(bundle / "history.parquet")
    history.rename(columns={"onpromotion": "promo"}).to_parquet(bundle / "history.parquet")


def register_broken_bundle(served: Served) -> str:
    """A new version whose bundle lacks model.onnx."""
    return register_bundle(served, "broken", lambda bundle: (bundle / "model.onnx").unlink())


def register_bundle(served: Served, name: str, change: Callable[[Path], object]) -> str:
    """A new version: the champion's bundle changed by `change`, logged under the work directory."""
    bundle = served.workdir / f"{name}-bundle" / "bundle"  # logged under its folder's name
    shutil.copytree(served.workdir / "models" / "bundle", bundle)
    change(bundle)
    client = served.registry.client
    experiment = client.create_experiment(name, artifact_location=(served.workdir / name).as_uri())
    run_id = client.create_run(experiment).info.run_id
    return served.registry.register(log_bundle(run_id, bundle, None), run_id, {"gate": "passed"})
