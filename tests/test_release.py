"""Release operations as a user runs them: `cd4ml release set|show`, `cd4ml promote` ending a
canary, and `cd4ml rollback` reaching a running gateway (by polling and by /admin/reload)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import GatewayProcess

from cd4ml.config import tracking_uri
from cd4ml.registry import Registry
from cd4ml.routing import Routing, load_routing, save_routing

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("release")]

POLL = 0.5
TOKEN = "release-test-token"
WIDE = {"COLUMNS": "250"}  # Rich wraps tables at 80 columns when not on a terminal
CANARY = Routing(strategy="canary", arms={"champion": "champion", "challenger": "challenger"}, share=0.5)


def registry(workdir: Path) -> Registry:
    return Registry(tracking_uri(workdir), "sales-forecaster")


def routing_history(workdir: Path) -> list[tuple[str | None, str | None, str]]:
    return [(m.from_version, m.to_version, m.why) for m in registry(workdir).history("routing")]


def cli(run_cd4ml: Callable[..., Any], *args: str) -> Any:
    """A cd4ml command that must succeed; its completed process."""
    result = run_cd4ml(*args, env=WIDE)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def test_release_set_writes_routing_and_records_history(
    released_workdir: Callable[[str], Path], run_cd4ml: Callable[..., Any]
) -> None:
    workdir = released_workdir("release-set")
    w = ("-w", str(workdir))
    result = cli(run_cd4ml, "release", "set", "canary", "--share", "0.2", "--reason", "try v2", *w)
    assert (
        "routing: single [champion=champion] → canary [champion=champion, challenger=challenger] "
        "share=0.2" in result.stdout.replace("\n", " ").replace("  ", " ")
    )
    routing = load_routing(workdir / "routing.yaml")
    assert (routing.strategy, routing.share) == ("canary", 0.2)
    assert routing.arms == {"champion": "champion", "challenger": "challenger"}
    cli(
        run_cd4ml,
        "release",
        "set",
        "ab",
        "--arm",
        "challenger=2",
        "--arm",
        "v3=3",
        "--shares",
        "champion=0.5",
        "--shares",
        "challenger=0.3",
        "--shares",
        "v3=0.2",
        *w,
    )
    routing = load_routing(workdir / "routing.yaml")
    assert routing.strategy == "ab" and routing.arms == {"champion": "champion", "challenger": "2", "v3": "3"}
    assert routing.shares == {"champion": 0.5, "challenger": 0.3, "v3": 0.2}
    shown = cli(run_cd4ml, "release", "show", *w).stdout
    assert "ab [champion=champion, challenger=2, v3=3]" in shown
    assert [why for *_, why in routing_history(workdir)] == ["try v2", "changed by hand"]
    history = cli(run_cd4ml, "models", "--history", *w).stdout
    routing_rows = [line for line in history.splitlines() if "│ routing" in line]
    assert len(routing_rows) == 2 and "try v2" in routing_rows[0], history


@pytest.fixture(scope="module")
def canary_workdir(released_workdir: Callable[[str], Path]) -> Path:
    """One work directory with a canary running, for all the invalid-input cases."""
    workdir = released_workdir("release-invalid")
    save_routing(workdir / "routing.yaml", CANARY)
    return workdir


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["canary", "--share", "1.5"], "less than or equal to 1"),
        (["ab", "--shares", "champion=0.5", "--shares", "challenger=0.6"], "ab shares must add up to 1"),
        (["ab", "--shares", "champion=lots", "--shares", "challenger=0.5"], "shares.champion"),
        (["ab", "--shares", "champion"], "--shares 'champion': expected NAME=VALUE"),
        (["canary", "--arm", "challenger"], "--arm 'challenger': expected NAME=VALUE"),
        (["multiple"], "strategy 'multiple' needs a segment"),
        (["multiple", "--segment", "family"], "expected COLUMN:VALUE=ARM"),
        (["multiple", "--segment", "family:PRODUCE=fresh"], "segment routes to unknown arms: fresh"),
        (["blue-green"], "strategy"),
        (["bandit", "--policy", "greedy"], "policy"),
        (["canary", "--arm", "challenger=99"], "has no version or alias for challenger=99"),
        (["shadow", "--arm", "challenger=nightly"], "has no version or alias for challenger=nightly"),
    ],
)
def test_invalid_routing_exits_2_naming_the_problem_and_keeps_the_file(
    canary_workdir: Path, run_cd4ml: Callable[..., Any], args: list[str], problem: str
) -> None:
    workdir = canary_workdir
    before = (workdir / "routing.yaml").read_bytes()
    result = run_cd4ml("release", "set", *args, "-w", str(workdir), env=WIDE)
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "error:" in message and problem in message, message
    assert "Traceback" not in result.stderr
    assert (workdir / "routing.yaml").read_bytes() == before
    assert routing_history(workdir) == []


def test_promote_ends_the_canary_of_that_version_only(
    released_workdir: Callable[[str], Path], run_cd4ml: Callable[..., Any]
) -> None:
    from cd4ml.release import promote

    workdir = released_workdir("release-promote")
    save_routing(workdir / "routing.yaml", CANARY)  # the challenger alias is on v2
    promote(workdir, registry(workdir), "3", "some other version")  # the canary of v2 goes on
    assert load_routing(workdir / "routing.yaml") == CANARY
    assert registry(workdir).aliases() == {"champion": "3", "challenger": "2"}
    cli(run_cd4ml, "promote", "2", "--reason", "canary looked good", "-w", str(workdir))
    assert load_routing(workdir / "routing.yaml") == Routing()
    assert registry(workdir).aliases() == {"champion": "2"}
    assert routing_history(workdir)[-1][2] == "v2 promoted: release ended"
    # an A/B test pinned to a version number ends when exactly that version is promoted
    save_routing(workdir / "routing.yaml", Routing(strategy="ab", arms={"champion": "champion", "candidate": "1"}))
    promote(workdir, registry(workdir), "1", "the candidate won")
    assert load_routing(workdir / "routing.yaml") == Routing()


class Observer:
    """Polls /version every 20 ms in a thread: (wall time, strategy, champion version)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, str, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                answer = client.get("/version").json()
                self.seen.append((time.time(), answer["strategy"], answer["version"]))
                time.sleep(0.02)

    def __enter__(self) -> Observer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def entered(self, state: tuple[str, str], until: float = float("inf")) -> float:
        """When the gateway entered `state` (strategy, version), which then held up to `until`."""
        for n, (when, *_) in enumerate(self.seen):
            later = [(strategy, version) for at, strategy, version in self.seen[n:] if at <= until]
            if later and all(seen == state for seen in later):
                return when
        pytest.fail(f"the gateway did not settle on {state}; seen {sorted({s[1:] for s in self.seen})}")

    def wait(self, state: tuple[str, str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.seen or self.seen[-1][1:] != state:
            assert time.monotonic() < deadline, f"not {state} after {timeout} s: {self.seen[-1:]}"
            time.sleep(0.05)


def test_promote_and_rollback_reach_a_polling_gateway(
    released_workdir: Callable[[str], Path],
    run_cd4ml: Callable[..., Any],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """The gateway follows a promotion (routing back to single, champion v2) and a rollback
    (champion v1 again) by itself: each within one poll interval plus loading the model."""
    workdir = released_workdir("release-poll")
    save_routing(workdir / "routing.yaml", CANARY)
    gateway = start_gateway(workdir, "--poll", str(POLL))
    with Observer(gateway.url) as observer:
        observer.wait(("canary", "1"))
        cli(run_cd4ml, "promote", "2", "-w", str(workdir))
        observer.wait(("single", "2"))
        promoted = registry(workdir).history("champion")[-1].when
        ended = (workdir / "routing.yaml").stat().st_mtime
        cli(run_cd4ml, "rollback", "--reason", "test", "-w", str(workdir))
        observer.wait(("single", "1"))
        rolled_back = registry(workdir).history("champion")[-1].when
        time.sleep(2 * POLL)  # and it stays there
    to_v2 = observer.entered(("single", "2"), until=rolled_back) - max(promoted, ended)
    to_v1 = observer.entered(("single", "1")) - rolled_back
    print(
        f"\nlive in the gateway after the alias moved: promotion {to_v2:.2f} s, rollback {to_v1:.2f} s "
        f"(poll {POLL} s, then the version is loaded)"
    )
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        catalog = client.get("/api/catalog").json()
        store, item = (int(v) for v in catalog["series"][0].split("|"))
        row = {"store_nbr": store, "item_nbr": item, "date": catalog["dates"]["min"], "onpromotion": 0}
        answers = [
            client.post("/predict", json={"rows": [row]}, headers={"X-Client-Id": f"c{i}"}).json() for i in range(20)
        ]
    assert {(a["arm"], a["model"]["version"]) for a in answers} == {("champion", "1")}
    assert to_v2 < POLL + 3 and to_v1 < POLL + 3


def test_rollback_is_immediate_with_admin_reload(
    released_workdir: Callable[[str], Path],
    run_cd4ml: Callable[..., Any],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    workdir = released_workdir("release-reload")
    registry(workdir).promote("2", "v2 is champion before the gateway starts")
    gateway = start_gateway(workdir, "--poll", "0", env={"CD4ML_ADMIN_TOKEN": TOKEN})
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        assert client.get("/version").json()["version"] == "2"
        cli(run_cd4ml, "rollback", "-w", str(workdir))
        assert client.get("/version").json()["version"] == "2"  # no polling: nothing moved yet
        assert client.post("/admin/reload").status_code == 401
        started = time.monotonic()
        reload = client.post("/admin/reload", headers=admin)
        took = time.monotonic() - started
        assert reload.status_code == 200, reload.text
        assert reload.json()["changed"] and reload.json()["live"] == "sales-forecaster v1"
        assert client.get("/version").json()["version"] == "1"
        catalog = client.get("/api/catalog").json()
        store, item = (int(v) for v in catalog["series"][0].split("|"))
        answer = client.post(
            "/predict",
            json={"rows": [{"store_nbr": store, "item_nbr": item, "date": catalog["dates"]["min"], "onpromotion": 0}]},
        )
        assert answer.json()["model"]["version"] == "1"
        again = client.post("/admin/reload", headers=admin).json()
        assert not again["changed"] and "already live" in again["message"]
    print(f"\n/admin/reload answered with v1 live after {took:.2f} s")
