"""Observed sales in bulk: stored by series and date, and joined to logged predictions.

Every logged request whose rows all have actuals gets an `actual` feedback record, so A/B
reports (and monitoring) see bulk actuals exactly like actuals sent to /feedback.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cd4ml.monitoring.feedback import DuplicateFeedback, FeedbackStore, Served


@dataclass
class ActualsResult:
    rows: int
    new: int
    duplicates: int
    requests_joined: int


def _key(keys: list[str], row: dict) -> str:
    return json.dumps([str(row[k]) for k in keys])


def ingest_actuals(
    source: Path, keys: list[str], target: str, store: FeedbackStore, log_db: Path | None
) -> ActualsResult:
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
    return ActualsResult(len(frame), new, len(frame) - new, joined)


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
