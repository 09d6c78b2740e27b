"""The gateway's SQL stores (feedback, actuals, serving origin, bandit statistics): one small
interface over a SQLite file or a PostgreSQL pool, with timeouts on every wait.

PostgreSQL goes through psycopg_pool: each connection is checked before it is handed out (a
round trip), so a server restart costs the statements in flight, not every later one — a
broken connection is replaced instead of failing each request until the gateway restarts.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

CONNECT_TIMEOUT = 5  # seconds to reach the server (also the wait for a free pooled connection)
STATEMENT_TIMEOUT_MS = 5_000  # the server cancels a statement that runs longer
SQLITE_BUSY_TIMEOUT = 10  # seconds a writer waits for another one's lock


class StoreUnavailable(RuntimeError):
    """The store could not be reached or did not answer in time; the message names it."""


class Database(Protocol):
    postgres: bool

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]: ...

    def close(self) -> None: ...


class SQLiteDatabase:
    """One WAL-mode connection shared by the gateway's threads, one statement at a time."""

    postgres = False

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # small commits on the /feedback path: with WAL, NORMAL skips the fsync per commit
        # (~5 ms → ~0.05 ms) and still survives a crash of the gateway (not of the machine)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def close(self) -> None:
        self.db.close()


class PostgresDatabase:
    """A psycopg connection pool in autocommit; `?` placeholders are rewritten to `%s`."""

    postgres = True

    def __init__(self, url: str, max_size: int = 4):
        import psycopg
        from psycopg_pool import ConnectionPool, PoolTimeout

        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            check=ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": CONNECT_TIMEOUT,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
            open=False,
            name="cd4ml",
        )
        self.where = _where(url)
        try:  # one direct connection first: its error says why (the pool's only that it timed out)
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT).close()
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT)
        except (psycopg.Error, PoolTimeout) as exc:
            self.pool.close()
            reason = " ".join(str(exc).split())
            raise StoreUnavailable(f"PostgreSQL at {self.where} unreachable: {reason}") from None

    def execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._cursor() as cur:
            cur.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        """One statement per row, in one transaction (psycopg pipelines them: one round trip)."""
        with self._cursor(transaction=True) as cur:
            cur.executemany(sql, rows)

    @contextmanager
    def _cursor(self, transaction: bool = False) -> Iterator:
        """A cursor on a checked connection; StoreUnavailable when none comes within the timeout
        or the connection breaks (the pool then discards it)."""
        from psycopg import OperationalError
        from psycopg_pool import PoolTimeout

        try:
            with self.pool.connection() as db, db.transaction() if transaction else nullcontext(), db.cursor() as cur:
                yield cur
        except PoolTimeout as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: no connection within {CONNECT_TIMEOUT} s") from exc
        except OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL at {self.where}: {str(exc).strip()}") from exc

    def close(self) -> None:
        self.pool.close()


def _where(url: str) -> str:
    """host:port/database of a URL, without its credentials (for messages and logs)."""
    parsed = urlparse(url)
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 5432}{parsed.path}"


def open_database(url: str) -> Database:
    """sqlite:///path or postgresql://user@host/db."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SQLiteDatabase(Path(url.removeprefix("sqlite:///")))
    if scheme in {"postgresql", "postgres"}:
        return PostgresDatabase(url)
    raise ValueError(f"store {url!r}: use sqlite:///path or postgresql://user@host/db")
