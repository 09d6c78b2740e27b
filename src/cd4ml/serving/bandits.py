"""Multi-armed bandits over model arms: epsilon-greedy, Thompson sampling and UCB1.

Rewards (in [0, 1], e.g. "an order was placed on this forecast") arrive later through
/feedback. Each arm keeps discounted statistics — n ← γn + 1, s ← γs + r on every reward — so
old evidence fades and the policy recovers when the better arm changes. The statistics live
in SQLite (one gateway), or Redis / PostgreSQL (replicas sharing one bandit), and survive
restarts.
"""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cd4ml.monitoring.database import PostgresDatabase, SQLiteDatabase, StoreUnavailable

DISCOUNT = 0.995


class BanditStore(Protocol):
    """Raises StoreUnavailable when the store cannot answer (the gateway then serves the champion)."""

    def stats(self, arms: list[str]) -> dict[str, tuple[float, float]]: ...  # arm → (n, reward sum)

    def reward(self, arm: str, value: float) -> None: ...


class SQLiteBanditStore:
    def __init__(self, path: Path, discount: float = DISCOUNT):
        self.discount = discount
        self.db = SQLiteDatabase(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS bandit (arm TEXT PRIMARY KEY, n REAL, s REAL)")

    def stats(self, arms: list[str]) -> dict[str, tuple[float, float]]:
        try:
            rows = {a: (n, s) for a, n, s in self.db.execute("SELECT arm, n, s FROM bandit")}
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"bandit store: {exc}") from exc
        return {arm: rows.get(arm, (0.0, 0.0)) for arm in arms}

    def reward(self, arm: str, value: float) -> None:
        g = self.discount
        try:
            self.db.execute(
                "INSERT INTO bandit VALUES (?, 1, ?) ON CONFLICT(arm) DO UPDATE SET n = n * ? + 1, s = s * ? + ?",
                (arm, value, g, g, value),
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"bandit store: {exc}") from exc


class PostgresBanditStore:
    """Through a checked connection pool: a server restart fails the statements in flight only."""

    def __init__(self, url: str, discount: float = DISCOUNT):
        self.discount = discount
        self.db = PostgresDatabase(url)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS bandit (arm TEXT PRIMARY KEY, n DOUBLE PRECISION, s DOUBLE PRECISION)"
        )

    def stats(self, arms: list[str]) -> dict[str, tuple[float, float]]:
        rows = {a: (n, s) for a, n, s in self.db.execute("SELECT arm, n, s FROM bandit")}
        return {arm: rows.get(arm, (0.0, 0.0)) for arm in arms}

    def reward(self, arm: str, value: float) -> None:
        g = self.discount
        self.db.execute(
            "INSERT INTO bandit VALUES (?, 1, ?) ON CONFLICT (arm) DO UPDATE "
            "SET n = bandit.n * ? + 1, s = bandit.s * ? + ?",
            (arm, value, g, g, value),
        )


REDIS_REWARD = """
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
redis.call('HSET', KEYS[1], 'n', n * ARGV[1] + 1, 's', s * ARGV[1] + ARGV[2])
"""
REDIS_TIMEOUT = 0.5  # seconds to connect or to answer: the store is asked on the request path


class RedisBanditStore:
    def __init__(self, url: str, discount: float = DISCOUNT, prefix: str = "cd4ml:bandit:"):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.discount, self.prefix = discount, prefix
        # one immediate retry replaces a connection a Redis restart broke; redis-py's default
        # (3 retries, backoff up to seconds) would hold every request during an outage
        self.db = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 1)
        )
        self._reward = self.db.register_script(REDIS_REWARD)
        self._errors = redis.RedisError

    def stats(self, arms: list[str]) -> dict[str, tuple[float, float]]:
        try:
            with self.db.pipeline(transaction=False) as pipe:
                for arm in arms:
                    pipe.hgetall(self.prefix + arm)
                found = pipe.execute()
        except self._errors as exc:
            raise StoreUnavailable(f"bandit store (Redis): {exc}") from exc
        return {arm: (float(v.get(b"n", 0)), float(v.get(b"s", 0))) for arm, v in zip(arms, found, strict=True)}

    def reward(self, arm: str, value: float) -> None:
        try:
            self._reward(keys=[self.prefix + arm], args=[self.discount, value])
        except self._errors as exc:
            raise StoreUnavailable(f"bandit store (Redis): {exc}") from exc


def open_store(url: str) -> BanditStore:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SQLiteBanditStore(Path(url.removeprefix("sqlite:///")))
    if scheme in {"postgresql", "postgres"}:
        return PostgresBanditStore(url)
    if scheme in {"redis", "rediss"}:
        return RedisBanditStore(url)
    raise ValueError(f"bandit state {url!r}: use sqlite:///path, redis://host:port/db or postgresql://...")


def choose(policy: str, stats: dict[str, tuple[float, float]], epsilon: float, rng: random.Random) -> str:
    """The arm to serve now, given each arm's discounted (n, reward sum)."""
    arms = list(stats)
    if policy == "thompson":
        draws = {a: rng.betavariate(1 + s, 1 + max(n - s, 0)) for a, (n, s) in stats.items()}
        return max(draws, key=draws.get)
    untried = [a for a, (n, _) in stats.items() if n < 1]
    if untried:
        return rng.choice(untried)
    means = {a: s / n for a, (n, s) in stats.items()}
    if policy == "epsilon_greedy":
        return rng.choice(arms) if rng.random() < epsilon else max(means, key=means.get)
    total = sum(n for n, _ in stats.values())
    bounds = {a: means[a] + math.sqrt(2 * math.log(total) / n) for a, (n, _) in stats.items()}
    return max(bounds, key=bounds.get)
