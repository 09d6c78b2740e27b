"""`cd4ml monitor`: what the prediction log and the actuals say about a window of traffic.

- drift: features the live model computed for logged rows, and its predictions, against the
  bundle's holdout (the most recent data the model was judged on), with Evidently and column
  types declared explicitly; calendar columns are left out (they move by design);
- training-serving skew: logged rows re-scored offline through the batch path; any difference
  from the logged prediction means serving computed something training would not;
- quality: NWRMSLE, WAPE and bias per model version, arm, slice and day, once actuals arrive;
- operations: request count, latency, and — from the gateway's /metrics — errors and drops.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from cd4ml.metrics import bias, nwrmsle, wape

CALENDAR = {
    "horizon",
    "dayofweek",
    "day",
    "month",
    "weekofyear",
    "dayofyear",
    "paydays",
    "since_payday",
    "holiday_national",
    "holiday_local",
    "history",
}


class MonitorPolicy(BaseModel):
    """Bounds a healthy window stays within; a breach makes `cd4ml monitor` exit non-zero."""

    model_config = ConfigDict(extra="forbid")

    max_drift_share: float = 0.3  # share of monitored columns drifting (Evidently's per-column tests)
    max_quality_decay: float = 0.2  # live NWRMSLE may exceed the holdout's by this share
    max_skew: float = 1e-6  # max |log1p(logged) − log1p(re-scored)|
    max_error_rate: float = 0.05
    max_p99_ms: float = 250.0
    min_rows: int = 100  # rows with actuals needed to judge quality
    min_drift_rows: int = 100  # distinct series-days a window needs before drift is judged


@dataclass
class Window:
    requests: pd.DataFrame  # one row per logged request
    rows: pd.DataFrame  # one row per predicted row: request fields, keys, date, covariates, prediction


def read_log(url: str, since: float | None = None, until: float | None = None) -> pd.DataFrame:
    """Logged requests between two UNIX times from a SQLite or PostgreSQL prediction log."""
    where = " AND ".join(c for c in ("ts >= :since" if since else "", "ts < :until" if until else "") if c)
    query = "SELECT * FROM predictions" + (f" WHERE {where}" if where else "") + " ORDER BY ts"
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise FileNotFoundError(f"no prediction log at {path}: serve some traffic first")
        with sqlite3.connect(path) as db:
            return pd.read_sql_query(query, db, params={"since": since, "until": until})
    if url.startswith(("postgresql:", "postgres:")):
        import psycopg2

        with psycopg2.connect(url) as db:
            return pd.read_sql_query(
                query.replace(":since", "%(since)s").replace(":until", "%(until)s"),
                db,
                params={"since": since, "until": until},
            )
    raise ValueError(f"{url}: monitoring reads SQLite or PostgreSQL logs (a Fluentd stream is read in its own stack)")


def explode(requests: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted row, with its request's id, time, arm, version and origin."""
    frames = []
    for record in requests.itertuples(index=False):
        rows = pd.DataFrame(_json(record.rows))
        rows["prediction"] = _json(record.predictions)
        for column in ("request_id", "ts", "model_version", "arm", "origin", "latency_ms"):
            rows[column] = getattr(record, column)
        frames.append(rows)
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    rows["date"] = pd.to_datetime(rows["date"])
    return rows


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def attach_actuals(rows: pd.DataFrame, actuals: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if rows.empty or actuals.empty:
        return rows.assign(actual=np.nan)
    observed = actuals.rename(columns={"sales": "actual"})
    observed = observed.astype({k: rows[k].dtype for k in keys}).drop_duplicates([*keys, "date"], keep="last")
    return rows.merge(observed[[*keys, "date", "actual"]], on=[*keys, "date"], how="left")


def quality(rows: pd.DataFrame, by: list[str]) -> list[dict[str, Any]]:
    """NWRMSLE, WAPE and bias of rows with actuals, per group."""
    known = rows.dropna(subset=["actual"])
    results = []
    for group, part in known.groupby(by, observed=True) if by else [((), known)]:
        if part.empty:
            continue
        values = group if isinstance(group, tuple) else (group,)
        a, p, w = part["actual"].to_numpy(), part["prediction"].to_numpy(), part["weight"].to_numpy()
        results.append(
            {
                **dict(zip(by, map(_plain, values), strict=True)),
                "rows": len(part),
                "nwrmsle": nwrmsle(a, p, w),
                "wape": wape(a, p),
                "bias": bias(a, p),
            }
        )
    return results


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    return value.item() if hasattr(value, "item") else value


def drift(reference: pd.DataFrame, current: pd.DataFrame, categorical: list[str], html: Path | None) -> dict:
    """Per-column drift scores and the share of drifting columns (Evidently, types declared)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [c for c in reference.columns if c in current.columns]
    numerical = [c for c in columns if c not in categorical]
    definition = DataDefinition(
        numerical_columns=numerical, categorical_columns=[c for c in columns if c in categorical]
    )
    result = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    if html:
        html.parent.mkdir(parents=True, exist_ok=True)
        result.save_html(str(html))
    share, scores = 0.0, {}
    for metric in result.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config["type"].endswith("ValueDrift"):
            scores[config["column"]] = {
                "score": float(metric["value"]),
                "method": config["method"],
                "threshold": float(config["threshold"]),
            }
    drifted = sorted(c for c, s in scores.items() if _drifted(s))
    return {
        "share": share,
        "drifted": drifted,
        "columns": scores,
        "prediction": scores.get("prediction", {}).get("score"),
    }


def too_few_for_drift(served: pd.DataFrame, keys: list[str], policy: MonitorPolicy) -> dict[str, Any] | None:
    """A drift result saying "not enough requests" when the window holds fewer distinct
    series-days than the policy needs: a handful of repeated requests is no distribution, and
    Evidently would call every column of it drifted."""
    distinct = len(served.drop_duplicates([*keys, "date"]))
    if distinct >= policy.min_drift_rows:
        return None
    note = (
        f"not enough requests to judge: {distinct} distinct series-days in the window, "
        f"{policy.min_drift_rows} needed (monitor.min_drift_rows)"
    )
    return {"share": None, "drifted": [], "columns": {}, "prediction": None, "note": note}


def _drifted(score: dict) -> bool:
    """Distances drift above the threshold; p-value tests drift below it."""
    if "p_value" in score["method"].lower() or "test" in score["method"].lower():
        return score["score"] < score["threshold"]
    return score["score"] >= score["threshold"]


@dataclass
class Summary:
    window: dict[str, Any]
    operations: dict[str, Any]
    quality: dict[str, list[dict[str, Any]]]
    drift: dict[str, Any] | None
    skew: dict[str, Any] | None
    reference: dict[str, Any]
    breaches: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=_plain)


def operations(requests: pd.DataFrame, gateway_metrics: dict[str, float] | None) -> dict[str, Any]:
    served = requests[~requests["arm"].astype(str).str.startswith("shadow:")] if len(requests) else requests
    latency = served["latency_ms"].to_numpy() if len(served) else np.array([])
    ops = {
        "requests": len(served),
        "p50_ms": float(np.percentile(latency, 50)) if len(latency) else None,
        "p99_ms": float(np.percentile(latency, 99)) if len(latency) else None,
        "by_arm": served.groupby("arm").size().to_dict() if len(served) else {},
    }
    if gateway_metrics:
        total = gateway_metrics.get("requests", 0) or 0
        ops |= {
            "errors": gateway_metrics.get("errors", 0),
            "dropped": gateway_metrics.get("dropped", 0),
            "error_rate": gateway_metrics.get("errors", 0) / total if total else 0.0,
        }
    return ops


def gateway_counters(url: str) -> dict[str, float]:
    """Request, 5xx-error and dropped-log counts from a gateway's Prometheus endpoint."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10).text
    counts = {"requests": 0.0, "errors": 0.0, "dropped": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cd4ml_requests_total" and sample.labels.get("path") == "/predict":
                counts["requests"] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    counts["errors"] += sample.value
            elif sample.name == "cd4ml_log_dropped_total":
                counts["dropped"] += sample.value
    return counts


def breaches(summary: Summary, policy: MonitorPolicy) -> list[str]:
    found = []
    if summary.drift and (summary.drift["share"] or 0) > policy.max_drift_share:
        found.append(
            f"drift: {summary.drift['share']:.0%} of columns drifted "
            f"({', '.join(summary.drift['drifted'][:5])}) > {policy.max_drift_share:.0%}"
        )
    holdout = summary.reference.get("holdout_nwrmsle")
    for q in summary.quality.get("by_version", []):
        if holdout and q["rows"] >= policy.min_rows and q["nwrmsle"] > holdout * (1 + policy.max_quality_decay):
            found.append(
                f"quality: v{q['model_version']} NWRMSLE {q['nwrmsle']:.3f} > holdout {holdout:.3f} "
                f"+ {policy.max_quality_decay:.0%}"
            )
    if summary.skew and summary.skew["max"] > policy.max_skew:
        found.append(f"skew: serving differs from batch by {summary.skew['max']:.2e} > {policy.max_skew:g}")
    ops = summary.operations
    if ops.get("error_rate", 0) > policy.max_error_rate:
        found.append(f"errors: {ops['error_rate']:.1%} > {policy.max_error_rate:.0%}")
    if ops.get("p99_ms") and ops["p99_ms"] > policy.max_p99_ms:
        found.append(f"latency: p99 {ops['p99_ms']:.1f} ms > {policy.max_p99_ms:g} ms")
    return found


def summary_gauges(summary: Summary) -> str:
    """The key figures in Prometheus text format (for a textfile collector or the gateway)."""
    lines = ["# TYPE cd4ml_monitor_breaches gauge", f"cd4ml_monitor_breaches {len(summary.breaches)}"]
    if summary.drift and summary.drift["share"] is not None:
        lines += ["# TYPE cd4ml_monitor_drift_share gauge", f"cd4ml_monitor_drift_share {summary.drift['share']}"]
    if summary.skew:
        lines += ["# TYPE cd4ml_monitor_skew gauge", f"cd4ml_monitor_skew {summary.skew['max']}"]
    lines.append("# TYPE cd4ml_monitor_nwrmsle gauge")
    for q in summary.quality.get("by_arm_version", []):
        lines.append(f'cd4ml_monitor_nwrmsle{{arm="{q["arm"]}",version="{q["model_version"]}"}} {q["nwrmsle"]}')
    return "\n".join(lines) + "\n"


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def day_of(ts: float) -> date:
    return pd.Timestamp(ts, unit="s").date()
