"""Feedback joined to served predictions: observed sales (actuals) and user rewards.

Each request's arm, model version and predictions are remembered when it is served (a bounded
in-memory index, backed by the prediction log when it is readable), so feedback can be
attributed to the arm that earned it. Feedback is stored once per request and kind; a
duplicate or an unknown request id changes nothing. Actuals are also kept by series and date,
with the date through which they are complete: the origin gateways on this store forecast from.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from cd4ml.monitoring.database import SQLITE_BUSY_TIMEOUT, open_database

RECENT = 200_000


@dataclass
class Served:
    arm: str
    model_version: str
    predictions: list[float]
    rows: list[dict[str, Any]]


class UnknownRequest(KeyError):
    pass


class DuplicateFeedback(ValueError):
    pass


class SplitRequest(LookupError):
    """A request served by several arms, known only from the log: its row order is lost."""


class ServedIndex:
    """request id → what was served: recent requests in memory, older ones (or another worker's)
    from the prediction log when it can be read.

    An entry is a tuple of strings (rows and predictions as JSON), not lists and dicts: the
    garbage collector skips such tuples, so remembered requests add nothing to its full passes.
    As dicts, 200,000 of them added ~85 ms to each full pass (a pause on the request path) and
    took 40% more memory. (Strings, not orjson's bytes: those keep a much larger allocation.)"""

    def __init__(self, capacity: int = RECENT, log_url: str | None = None):
        self.capacity, self.log_url = capacity, log_url
        self._items: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, request_id: str, served: Served) -> None:
        predictions, rows = orjson.dumps(served.predictions).decode(), orjson.dumps(served.rows).decode()
        entry = (served.arm, served.model_version, predictions, rows)
        with self._lock:
            self._items[request_id] = entry
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> Served | None:
        entry = self._items.get(request_id)
        if entry is None:
            return self._logged(request_id)
        arm, version, predictions, rows = entry
        return Served(arm, version, orjson.loads(predictions), orjson.loads(rows))

    def _logged(self, request_id: str) -> Served | None:
        if not self.log_url or not self.log_url.startswith("sqlite:"):
            return None
        path = Path(self.log_url.removeprefix("sqlite:///"))
        if not path.exists():
            return None
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT) as db:
            found = db.execute(
                "SELECT arm, model_version, predictions, rows FROM predictions WHERE request_id = ? "
                "AND arm NOT LIKE 'shadow:%'",
                (request_id,),
            ).fetchall()
        if len(found) > 1:  # the log keeps each arm's rows, not where they stood in the request
            raise SplitRequest(
                f"request {request_id} was split across arms ({', '.join(f[0] for f in found)}) and is no longer "
                "in this gateway's memory: send its actuals with `cd4ml actuals` (by series and date)"
            )
        return Served(found[0][0], found[0][1], json.loads(found[0][2]), json.loads(found[0][3])) if found else None


class OriginError(ValueError):
    """An origin that cannot be recorded: it would move the serving origin back."""


class FeedbackStore:
    """Feedback (one row per request id and kind), observed sales by series and date, and the
    serving origin: the date through which actuals are complete. SQLite (default) or PostgreSQL."""

    def __init__(self, url: str):
        self.db = open_database(url)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS feedback (request_id TEXT, kind TEXT, value TEXT, arm TEXT, "
            "model_version TEXT, predictions TEXT, rows TEXT, ts DOUBLE PRECISION, PRIMARY KEY (request_id, kind))"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS actuals (series TEXT, date TEXT, sales DOUBLE PRECISION, "
            "PRIMARY KEY (series, date))"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS origin (complete_through TEXT, ts DOUBLE PRECISION, source TEXT)")

    def _execute(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self.db.execute(sql, args)

    def complete_through(self) -> date | None:
        """The recorded serving origin: the newest date through which actuals are complete."""
        (newest,) = self._execute("SELECT max(complete_through) FROM origin")[0]
        return date.fromisoformat(newest) if newest else None

    def mark_complete(self, through: date, source: str) -> date:
        """Record that actuals are complete through `through` (the origin every gateway on this
        store then serves from); the same date again changes nothing, an earlier one is refused."""
        current = self.complete_through()
        if current is not None and through < current:
            raise OriginError(f"actuals are already complete through {current}: the origin never moves back")
        if current != through:
            self._execute("INSERT INTO origin VALUES (?, ?, ?)", (through.isoformat(), time.time(), source))
        return through

    def complete_until(self, after: date, series: int, share: float, period_days: int = 1) -> date | None:
        """The newest period end D after `after` such that every period from the next one up to D
        has actuals for at least `share` of `series` series (None: the next one has not)."""
        rows = self._execute("SELECT date, count(*) FROM actuals WHERE date > ? GROUP BY date", (after.isoformat(),))
        counts = {str(day)[:10]: n for day, n in rows}
        step, newest = timedelta(days=period_days), None
        day = after + step
        while counts.get(day.isoformat(), 0) >= share * series:
            newest, day = day, day + step
        return newest

    def record(self, request_id: str, kind: str, value: Any, served: Served) -> None:
        self.record_all(request_id, {kind: value}, served)

    def record_all(self, request_id: str, values: dict[str, Any], served: Served) -> None:
        """Feedback of several kinds (kind → value) in one INSERT: all of it, or on a duplicate none."""
        rows = [
            (
                request_id,
                kind,
                json.dumps(value),
                served.arm,
                served.model_version,
                json.dumps(served.predictions),
                json.dumps(served.rows),
                time.time(),
            )
            for kind, value in values.items()
        ]
        marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        try:
            self._execute(f"INSERT INTO feedback VALUES {marks}", tuple(v for row in rows for v in row))
        except Exception as exc:
            if "UNIQUE" in str(exc) or "duplicate key" in str(exc):
                kinds = " and ".join(values)
                raise DuplicateFeedback(f"{kinds} for request {request_id}: already recorded") from exc
            raise

    def add_actuals(self, keys: list[str], rows: list[dict[str, Any]], values: list[float]) -> int:
        """Observed sales by series and date; returns how many were new (known ones are kept)."""
        conflict = "ON CONFLICT (series, date) DO NOTHING"
        added = 0
        for row, value in zip(rows, values, strict=True):
            series = json.dumps([str(row[k]) for k in keys])
            before = self._execute(
                "SELECT count(*) FROM actuals WHERE series = ? AND date = ?", (series, str(row["date"]))
            )
            self._execute(f"INSERT INTO actuals VALUES (?, ?, ?) {conflict}", (series, str(row["date"]), float(value)))
            added += before[0][0] == 0
        return added

    def actuals_frame(self, keys: list[str], after: date | None = None) -> pd.DataFrame:
        """Observed sales as (keys…, date, sales): all, or those dated after `after`."""
        since = "" if after is None else " WHERE date > ?"
        rows = self._execute(f"SELECT series, date, sales FROM actuals{since}", () if after is None else (str(after),))
        frame = pd.DataFrame([[*json.loads(s), d, v] for s, d, v in rows], columns=[*keys, "date", "sales"])
        frame["date"] = pd.to_datetime(frame["date"])
        return frame

    def all(self) -> list[dict[str, Any]]:
        columns = ["request_id", "kind", "value", "arm", "model_version", "predictions", "rows", "ts"]
        rows = self._execute("SELECT request_id, kind, value, arm, model_version, predictions, rows, ts FROM feedback")
        return [dict(zip(columns, r, strict=True)) for r in rows]
