"""Observed sales in bulk: stored by series and date, and joined to logged predictions.

Every logged request whose rows all have actuals gets an `actual` feedback record, so A/B
reports (and monitoring) see bulk actuals exactly like actuals sent to /feedback. Storing
actuals never moves the serving origin; `complete_through` does, explicitly: gateways on the
same feedback store then forecast from that date.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from cd4ml.monitoring.feedback import DuplicateFeedback, FeedbackStore, OriginError, Served


@dataclass
class ActualsResult:
    rows: int
    new: int
    duplicates: int
    requests_joined: int
    complete_through: date | None = None  # the origin recorded with them, if any


def _key(keys: list[str], row: dict) -> str:
    return json.dumps([str(row[k]) for k in keys])


def ingest_actuals(
    source: Path,
    keys: list[str],
    target: str,
    store: FeedbackStore,
    log_db: Path | None,
    complete_through: date | None = None,
) -> ActualsResult:
    """Store a CSV of observed sales; with `complete_through`, also record that actuals are
    complete through that date (OriginError if an earlier one is recorded: nothing is stored)."""
    current = store.complete_through()
    if complete_through is not None and current is not None and complete_through < current:
        raise OriginError(f"actuals are already complete through {current}: the origin never moves back")
    frame = pd.read_csv(source)
    missing = [c for c in [*keys, "date", target] if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)} (found {', '.join(frame.columns)})")
    frame["date"] = pd.to_datetime(frame["date"], format="ISO8601").dt.date.astype(str)
    bad = frame[pd.to_numeric(frame[target], errors="coerce").isna()]
    if len(bad):
        line = int(bad.index[0]) + 2
        raise ValueError(f"{source} line {line}: column '{target}' is not a number ({bad[target].iloc[0]!r})")
    records = frame.to_dict(orient="records")
    new = store.add_actuals(keys, records, [float(r[target]) for r in records])
    joined = _join_log(keys, store, log_db) if log_db and log_db.exists() else 0
    if complete_through is not None:
        store.mark_complete(complete_through, f"cd4ml actuals {source.name}")
    return ActualsResult(len(frame), new, len(frame) - new, joined, complete_through)


def _join_log(keys: list[str], store: FeedbackStore, log_db: Path) -> int:
    actuals = {(s, d): v for s, d, v in store._execute("SELECT series, date, sales FROM actuals")}
    done = {r for (r,) in store._execute("SELECT request_id FROM feedback WHERE kind = 'actual'")}
    log = sqlite3.connect(log_db)
    joined = 0
    for request_id, arm, version, rows, predictions in log.execute(
        "SELECT request_id, arm, model_version, rows, predictions FROM predictions WHERE arm NOT LIKE 'shadow:%'"
    ):
        if request_id in done:
            continue
        rows = json.loads(rows)
        values = [actuals.get((_key(keys, r), r["date"])) for r in rows]
        if any(v is None for v in values):
            continue
        try:
            store.record(request_id, "actual", values, Served(arm, version, json.loads(predictions), rows))
            joined += 1
        except DuplicateFeedback:
            pass
    log.close()
    return joined
