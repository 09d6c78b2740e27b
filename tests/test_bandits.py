"""Bandits: the real policies on simulated Bernoulli traffic with the real SQLite store, the
three stores (SQLite, Redis, PostgreSQL) against one reference arithmetic, and rewards that
arrive through /feedback of a real gateway."""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import httpx
import pytest
from conftest import GatewayProcess

from cd4ml.routing import Routing, save_routing
from cd4ml.serving.bandits import (
    DISCOUNT,
    PostgresBanditStore,
    RedisBanditStore,
    SQLiteBanditStore,
    choose,
    open_store,
)

REDIS_URL = os.environ.get("CD4ML_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POLICIES = ["thompson", "ucb1", "epsilon_greedy"]
EPSILON = 0.1
SEEDS = {"thompson": 11, "ucb1": 12, "epsilon_greedy": 13}


def play(store, policy: str, rates: dict[str, float], steps: int, rng: random.Random) -> list[str]:
    """`steps` requests: the policy picks an arm, the arm earns a Bernoulli reward at its rate."""
    picks = []
    for _ in range(steps):
        arm = choose(policy, store.stats(list(rates)), EPSILON, rng)
        store.reward(arm, float(rng.random() < rates[arm]))
        picks.append(arm)
    return picks


def steps_to_majority(picks: list[str], arm: str, window: int = 100) -> int | None:
    """Steps until `arm` first has most of a `window`-step stretch (None: never)."""
    return next(
        (i for i in range(len(picks) - window + 1) if picks[i : i + window].count(arm) > window / 2),
        None,
    )


def reference(rewards: list[tuple[str, float]], discount: float) -> dict[str, tuple[float, float]]:
    """The documented arithmetic: on each reward of an arm, n ← g·n + 1 and s ← g·s + r."""
    stats: dict[str, tuple[float, float]] = {}
    for arm, value in rewards:
        n, s = stats.get(arm, (0.0, 0.0))
        stats[arm] = (n * discount + 1, s * discount + value)
    return stats


# ---------------------------------------------------------------- policies on simulated traffic


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_finds_the_better_arm_and_recovers_when_they_swap(policy: str, tmp_path: Path) -> None:
    store = SQLiteBanditStore(tmp_path / "bandit.db")
    rng = random.Random(SEEDS[policy])
    first = play(store, policy, {"a": 0.3, "b": 0.6}, 2000, rng)
    second = play(store, policy, {"a": 0.6, "b": 0.3}, 3000, rng)
    before = first[-500:].count("b") / 500
    after = second[-500:].count("a") / 500
    recovered = steps_to_majority(second, "a")
    print(
        f"\n{policy:>14} (discount {DISCOUNT}): better arm b got {before:.1%} of steps 1501-2000, "
        f"b got {first.count('b') / 2000:.1%} of all 2000; after the swap a got {after:.1%} of the "
        f"last 500 of 3000 and a majority of a 100-step window after {recovered} steps"
    )
    assert before > 0.75
    assert after > 0.75


def test_without_discount_greedy_stays_on_the_stale_arm(tmp_path: Path) -> None:
    """The control for the recovery test above: with no forgetting (discount 1), 2000 steps of
    evidence for arm b outweigh 3000 steps of it being worse, and epsilon-greedy never leaves it."""
    store = SQLiteBanditStore(tmp_path / "bandit.db", discount=1.0)
    rng = random.Random(0)
    play(store, "epsilon_greedy", {"a": 0.3, "b": 0.6}, 2000, rng)
    second = play(store, "epsilon_greedy", {"a": 0.6, "b": 0.3}, 3000, rng)
    after = second[-500:].count("a") / 500
    print(f"\nepsilon_greedy without discount: a got {after:.1%} of the last 500 after the swap")
    assert after < 0.5


def test_untried_arms_are_tried_first_and_ucb_explores() -> None:
    rng = random.Random(1)
    fresh = {"champion": (0.0, 0.0), "challenger": (0.0, 0.0)}
    assert {choose(p, fresh, 0.0, rng) for p in ("ucb1", "epsilon_greedy") for _ in range(50)} == set(fresh)
    one_tried = {"champion": (10.0, 9.0), "challenger": (0.0, 0.0)}
    assert choose("epsilon_greedy", one_tried, 0.0, rng) == "challenger"
    # a little evidence for a worse mean still earns a bonus big enough to be tried
    assert choose("ucb1", {"champion": (150.0, 90.0), "challenger": (2.0, 1.0)}, 0.0, rng) == "challenger"


# ---------------------------------------------------------------- the stores


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def store_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    require_service: Callable[[str, Callable[[], object]], None],
    postgres_database: Callable[[], AbstractContextManager[str]],
) -> Iterator[Callable[..., object]]:
    """`open_(discount=DISCOUNT)`: a new store object on this test's own state (a file, a Redis
    key prefix, a fresh PostgreSQL database), as a restarted gateway or another replica sees it."""
    with ExitStack() as cleanup:
        if request.param == "sqlite":

            def make(discount: float = DISCOUNT) -> object:
                return SQLiteBanditStore(tmp_path / "bandit.db", discount)

        elif request.param == "redis":
            import redis

            require_service("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
            prefix = f"cd4ml-test:{uuid.uuid4().hex}:"

            def make(discount: float = DISCOUNT) -> object:
                return RedisBanditStore(REDIS_URL, discount, prefix=prefix)

            def forget() -> None:
                client = redis.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(f"{prefix}*"))
                if keys:
                    client.delete(*keys)
                client.close()

            cleanup.callback(forget)
        else:
            url = cleanup.enter_context(postgres_database())

            def make(discount: float = DISCOUNT) -> object:
                store = PostgresBanditStore(url, discount)
                cleanup.callback(store.db.close)  # closed before the database is dropped
                return store

        yield make


def test_stores_keep_the_documented_discounted_statistics(
    store_factory: Callable[..., object],
) -> None:
    store = store_factory()
    rng = random.Random(3)
    rewards = [(rng.choice(["champion", "challenger"]), rng.choice([0.0, 0.25, 1.0])) for _ in range(300)]
    for arm, value in rewards:
        store.reward(arm, value)
    expected = reference(rewards, DISCOUNT)
    got = store.stats(["champion", "challenger", "never-rewarded"])
    assert got["never-rewarded"] == (0.0, 0.0)
    for arm in ("champion", "challenger"):
        assert got[arm] == pytest.approx(expected[arm], rel=1e-12)


def test_statistics_survive_a_restart_and_are_shared(store_factory: Callable[..., object]) -> None:
    first = store_factory()
    for value in (1.0, 0.0, 1.0):
        first.reward("challenger", value)
    before = first.stats(["champion", "challenger"])
    restarted = store_factory()
    assert restarted.stats(["champion", "challenger"]) == before
    restarted.reward("champion", 1.0)
    assert first.stats(["champion"])["champion"] == (1.0, 1.0)  # a replica sees it at once


@pytest.mark.parametrize("connections", ["shared", "one per thread"])
def test_concurrent_rewards_are_not_lost(store_factory: Callable[..., object], connections: str) -> None:
    """8 threads x 100 rewards of 1 on one arm: with discount g = 0.999, n must be
    (1 - g^800) / (1 - g) whatever the interleaving; one lost update costs at least g^799 ≈ 0.45."""
    discount, threads, each = 0.999, 8, 100
    shared = store_factory(discount)
    stores = [shared if connections == "shared" else store_factory(discount) for _ in range(threads)]
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def reward(store: object) -> None:
        start.wait()
        try:
            for _ in range(each):
                store.reward("challenger", 1.0)
        except BaseException as exc:  # reported below: a thread's exception would vanish
            failures.append(exc)

    workers = [threading.Thread(target=reward, args=(s,)) for s in stores]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures
    total = threads * each
    expected = (1 - discount**total) / (1 - discount)
    n, s = store_factory(discount).stats(["challenger"])["challenger"]
    assert n == pytest.approx(expected, rel=1e-9)
    assert s == pytest.approx(expected, rel=1e-9)


def test_open_store_reads_the_url(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path / 'b.db'}"), SQLiteBanditStore)
    with pytest.raises(ValueError, match="use sqlite:///path, redis://"):
        open_store("mysql://somewhere/db")


# ---------------------------------------------------------------- rewards through /feedback


@pytest.mark.integration
@pytest.mark.xdist_group("bandits")
def test_feedback_rewards_update_the_bandit_of_a_real_gateway(
    released_workdir: Callable[[str], Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """A closed loop over HTTP: the challenger always earns 1, the champion 0. The store ends
    with exactly the discounted statistics of the arms the gateway served, and traffic moves."""
    workdir = released_workdir("bandits")
    save_routing(
        workdir / "routing.yaml",
        Routing(strategy="bandit", arms={"champion": "champion", "challenger": "challenger"}),
    )
    gateway = start_gateway(workdir, "--poll", "0")
    served: list[tuple[str, float]] = []
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        row = client.get("/api/catalog").json()
        store_nbr, item_nbr = (int(v) for v in row["series"][0].split("|"))
        body = {
            "rows": [
                {
                    "store_nbr": store_nbr,
                    "item_nbr": item_nbr,
                    "date": row["dates"]["min"],
                    "onpromotion": 0,
                }
            ]
        }
        for _ in range(300):
            answer = client.post("/predict", json=body).json()
            value = 1.0 if answer["arm"] == "challenger" else 0.0
            feedback = client.post("/feedback", json={"request_id": answer["request_id"], "reward": value})
            assert feedback.status_code == 200, feedback.text
            assert feedback.json()["arm"] == answer["arm"]
            served.append((answer["arm"], value))
        stats = SQLiteBanditStore(workdir / "bandit.db").stats(["champion", "challenger"])
        duplicate = client.post("/feedback", json={"request_id": answer["request_id"], "reward": 1.0})
        assert duplicate.status_code == 409
        assert SQLiteBanditStore(workdir / "bandit.db").stats(["champion", "challenger"]) == stats
    expected = reference(served, DISCOUNT)
    for arm in ("champion", "challenger"):
        assert stats[arm] == pytest.approx(expected.get(arm, (0.0, 0.0)), rel=1e-12)
    late = [arm for arm, _ in served[-100:]]
    print(f"\nbandit over HTTP: challenger served {late.count('challenger')} of the last 100 requests")
    assert late.count("challenger") > 75
