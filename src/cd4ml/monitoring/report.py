"""Run a monitoring window end to end: read, re-score, measure, judge, write the report."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cd4ml.bundle import holdout_origin
from cd4ml.monitoring import monitor
from cd4ml.monitoring.feedback import FeedbackStore
from cd4ml.scoring import Predictor, Scorer, SeriesData


def offline_scorer(bundle: Path, actuals: pd.DataFrame, origin) -> Scorer:
    """The batch-path scorer a logged request would get: bundle history + actuals up to its origin."""
    predictor = Predictor.read(bundle)
    data = SeriesData.read(bundle)
    day = pd.Timestamp(origin).date()
    if len(actuals):
        data = data.with_actuals(actuals, predictor.spec.series_keys, day)
    return Scorer(predictor, data, day)


def reference_frame(bundle: Path) -> pd.DataFrame:
    """Features and predictions of the bundle's holdout: what the model was judged on."""
    holdout = pd.read_parquet(bundle / "holdout.parquet")
    score = Scorer(Predictor.read(bundle), SeriesData.read(bundle), holdout_origin(bundle))
    rows = holdout[["date", *score.spec.series_keys, *score.spec.covariates]]
    return score.features(score.validate(rows)).assign(prediction=holdout["prediction"].to_numpy())


def rescore(rows: pd.DataFrame, bundles: dict[str, Path], actuals: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Offline features of logged rows and the skew between logged and re-scored predictions."""
    features, gaps = [], []
    for (version, origin), part in rows.groupby(["model_version", "origin"]):
        score = offline_scorer(bundles[version], actuals, origin)
        inputs = part[["date", *score.spec.series_keys, *score.spec.covariates]]
        X = score.features(score.validate(inputs))
        predicted = score.predictor.predict_features(X)
        gaps.append(np.abs(np.log1p(predicted) - np.log1p(part["prediction"].to_numpy())))
        features.append(X.assign(prediction=part["prediction"].to_numpy()).set_index(part.index))
    gap = np.concatenate(gaps) if gaps else np.array([0.0])
    return pd.concat(features).sort_index(), {"max": float(gap.max()), "mean": float(gap.mean()), "rows": int(gap.size)}


def run_monitor(
    log_url: str,
    feedback: FeedbackStore,
    bundles: dict[str, Path],
    champion_bundle: Path,
    since: float | None,
    until: float | None,
    policy: monitor.MonitorPolicy,
    out_dir: Path,
    gateway_url: str | None = None,
) -> monitor.Summary:
    """Measure one window of traffic; writes summary.json, monitor.prom and report.html to out_dir."""
    requests = monitor.read_log(log_url, since, until)
    rows = monitor.explode(requests)
    spec = Predictor.read(champion_bundle).spec
    keys = spec.series_keys
    actuals = feedback.actuals_frame(keys)
    holdout_metrics = json.loads((champion_bundle / "metrics.json").read_text())["model"]
    reference = {"holdout_nwrmsle": holdout_metrics["nwrmsle"], "bundle": str(champion_bundle)}
    drift = skew = None
    quality: dict[str, list] = {}
    served = rows[~rows["arm"].astype(str).str.startswith("shadow:")] if len(rows) else rows
    if len(served):
        served = served[served["model_version"].isin(bundles)]
        series = SeriesData.read(champion_bundle).series
        served = served.merge(series, on=keys, how="left")
        served = monitor.attach_actuals(served, actuals, keys)
        slices = [c for c in ("family", "type", "perishable") if c in served.columns]
        quality = {
            "by_version": monitor.quality(served, ["model_version"]),
            "by_arm_version": monitor.quality(served, ["arm", "model_version"]),
            "by_day": monitor.quality(served.assign(day=served["date"].dt.date.astype(str)), ["day", "arm"]),
            "by_slice": [q | {"slice": s} for s in slices for q in monitor.quality(served, [s])],
        }
        current, skew = rescore(served, bundles, actuals)
        # a group's level is one value repeated over all its series' rows: a per-column test
        # counts it hundreds of times and flags any ordinary day-to-day move as drift
        monitored = [
            c
            for c in [*spec.state_columns, *spec.covariates, "seasonal_naive_log", "prediction"]
            if c in current.columns and c not in monitor.CALENDAR and c not in spec.group_columns
        ]
        monitored += [c for c in current.columns if c.startswith("dow_lmean")]
        drift = monitor.too_few_for_drift(served, keys, policy) or monitor.drift(
            reference_frame(champion_bundle)[monitored], current[monitored], [], out_dir / "drift.html"
        )
    counters = monitor.gateway_counters(gateway_url) if gateway_url else None
    summary = monitor.Summary(
        window={"since": since, "until": until or time.time(), "requests": len(requests), "rows": len(rows)},
        operations=monitor.operations(requests, counters) if len(requests) else {"requests": 0},
        quality=quality,
        drift=drift,
        skew=skew,
        reference=reference,
    )
    summary.breaches = monitor.breaches(summary, policy)
    write(summary, out_dir)
    return summary


def write(summary: monitor.Summary, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(summary.to_json())
    (out_dir / "monitor.prom").write_text(monitor.summary_gauges(summary))
    (out_dir / "report.html").write_text(page(summary))


def page(summary: monitor.Summary) -> str:
    """A one-page HTML report; the Evidently drift report sits beside it as drift.html."""

    def table(rows: list[dict]) -> str:
        if not rows:
            return "<p>no rows with actuals yet</p>"
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    breaches = "".join(f"<li>{html.escape(b)}</li>" for b in summary.breaches) or "<li>none</li>"
    drift = summary.drift or {}
    return f"""<!doctype html><meta charset="utf-8"><title>cd4ml monitor</title>
<style>body{{font-family:system-ui;margin:24px}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
<h1>cd4ml monitor</h1><h2>Policy breaches</h2><ul>{breaches}</ul>
<h2>Operations</h2>{table([summary.operations | {"by_arm": json.dumps(summary.operations.get("by_arm", {}))}])}
<h2>Quality by model version</h2>{table(summary.quality.get("by_version", []))}
<h2>Quality by arm</h2>{table(summary.quality.get("by_arm_version", []))}
<h2>Quality by slice</h2>{table(summary.quality.get("by_slice", []))}
<h2>Drift</h2>{_drift_paragraph(drift)}
<h2>Training-serving skew</h2>{table([summary.skew] if summary.skew else [])}"""


def _drift_paragraph(drift: dict) -> str:
    if drift.get("note"):
        return f"<p>{html.escape(drift['note'])}</p>"
    return f"""<p>{drift.get("share", 0):.0%} of monitored columns drifted:
{html.escape(", ".join(drift.get("drifted", [])))}.
Evidently's report: <a href="drift.html">drift.html</a></p>"""


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
