"""The model bundle: the contract between training and everything after it.

model.onnx, native/          the model, portable and native
feature_spec.json            how features are computed (categories, windows, horizon)
input_schema.json            pandera schema of the rows it scores
history/series/holidays      the data features are computed from (SeriesData)
reference_profile.json       training feature distribution (drift detection)
reference_sample.parquet     a sample of training features (drift reports)
holdout.parquet, metrics.json   holdout rows, predictions and metrics (for `verify`)
lineage.json                 data hash, params, git commit, dvc.lock hashes, run id
dataset.json                 the dataset's spec and ingest report (its column names, date format)
"""

from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cd4ml.features import FeatureSpec
from cd4ml.scoring import Predictor, RowFormat, Scorer, SeriesData

REFERENCE_ROWS = 20_000


def history_span_days(fs: FeatureSpec) -> int:
    """Days of history the series state looks back, so a bundle carries no more than needed."""
    longest = max([*fs.windows, fs.season_length, *(w * 7 // fs.period_days for w in fs.weekday_weeks)])
    return longest * fs.period_days


def series_data(table: Path, holidays: pd.DataFrame, fs: FeatureSpec, from_origin: date) -> SeriesData:
    """Recent history (enough for the state at `from_origin` and later), attributes, holidays —
    read out of core from the canonical table, which may not fit in memory."""
    import duckdb

    from cd4ml.sql import quote_ident, quote_idents, quote_literal

    start = from_origin - timedelta(days=history_span_days(fs))
    keys = quote_idents(fs.series_keys)
    covariates = "".join(f", {quote_ident(c)}" for c in fs.covariates)
    # weight rides along for monitoring (NWRMSLE on live actuals); features never read it
    attributes = "".join(f", {quote_ident(a)}" for a in [*fs.attributes, "weight"])
    source = f"read_parquet({quote_literal(table)})"
    with duckdb.connect() as con:
        history = con.execute(
            f"SELECT CAST(date AS TIMESTAMP) AS date, {keys}, sales{covariates} FROM {source} "
            f"WHERE date > DATE '{start.isoformat()}' ORDER BY {keys}, date"
        ).df()
        series = con.execute(f"SELECT DISTINCT ON ({keys}) {keys}{attributes} FROM {source} ORDER BY {keys}").df()
    return SeriesData(history, series, holidays)


def reference_features(table: Path, columns: list[str], rows: int = 200_000) -> pd.DataFrame:
    """An evenly spaced sample of training feature rows, read batch by batch."""
    import pyarrow.parquet as pq

    source = pq.ParquetFile(table)
    step = max(1, source.metadata.num_rows // rows)
    parts, seen = [], 0
    for batch in source.iter_batches(columns=columns, batch_size=500_000):
        frame = batch.to_pandas()
        parts.append(frame.iloc[(-seen) % step :: step])
        seen += len(frame)
    return pd.concat(parts, ignore_index=True)


def reference_profile(X: pd.DataFrame) -> dict[str, Any]:
    """Per feature: deciles, mean, sd, range — enough to compute drift without the raw data."""
    profile = {}
    for column in X.columns:
        values = X[column].to_numpy(np.float64)
        profile[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "deciles": np.quantile(values, np.linspace(0, 1, 11)).tolist(),
        }
    return {"rows": len(X), "features": profile}


def write_bundle(
    directory: Path,
    model_dir: Path,
    data: SeriesData,
    train_features: pd.DataFrame,
    holdout: pd.DataFrame,
    holdout_origin: date,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    input_schema_json: str,
    dataset: dict[str, Any] | None = None,
) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shutil.copytree(model_dir, directory / "native", ignore=shutil.ignore_patterns("model.onnx", "feature_spec.json"))
    shutil.copyfile(model_dir / "model.onnx", directory / "model.onnx")
    shutil.copyfile(model_dir / "feature_spec.json", directory / "feature_spec.json")
    (directory / "input_schema.json").write_text(input_schema_json)
    data.write(directory)
    sample = train_features.sample(min(REFERENCE_ROWS, len(train_features)), random_state=0)  # for drift reports
    sample.to_parquet(directory / "reference_sample.parquet", index=False)
    (directory / "reference_profile.json").write_text(json.dumps(reference_profile(train_features)))
    holdout.to_parquet(directory / "holdout.parquet", index=False)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if dataset is not None:
        (directory / "dataset.json").write_text(json.dumps(dataset, indent=2, default=str))
    (directory / "lineage.json").write_text(
        json.dumps(lineage | {"holdout_origin": holdout_origin.isoformat()}, indent=2, default=str)
    )
    return directory


def dataset_spec(directory: Path) -> dict[str, Any] | None:
    """The ingest stage's dataset description the bundle was trained on ({"spec", "attributes",
    "report"}), or None for bundles written before bundles carried it."""
    path = directory / "dataset.json"
    return json.loads(path.read_text()) if path.exists() else None


def row_format(directory: Path) -> RowFormat:
    """How the bundle's dataset names and writes its rows; older bundles: `date`, ISO, `prediction`.

    A covariate is optional when training never saw a value for it: empty in every ingested
    row, or 0 in every row of the training feature profile (a sample of at most 200,000 rows).
    """
    dataset = dataset_spec(directory)
    if dataset is None:
        return RowFormat()
    spec, report = dataset["spec"], dataset.get("report", {})
    empty = {c for c, n in report.get("empty_covariates_filled", {}).items() if n and n == report.get("rows_read")}
    profile = json.loads((directory / "reference_profile.json").read_text())["features"]
    zero = {c for c in spec["covariates"] if c in profile and profile[c]["min"] == profile[c]["max"] == 0}
    return RowFormat(
        date_column=spec["date_column"],
        # a spec without a format had one detected at ingest: that is how its dates are written
        date_format=spec.get("date_format") or report.get("date_format") or None,
        target=spec["target"],
        optional_covariates=frozenset(empty | zero),
    )


def holdout_origin(directory: Path) -> date:
    return date.fromisoformat(json.loads((directory / "lineage.json").read_text())["holdout_origin"])


def scorer(directory: Path, origin: date | None = None) -> Scorer:
    """A scorer for a bundle directory, forecasting from `origin` (default: its last actuals)."""
    return Scorer(Predictor.read(directory), SeriesData.read(directory), origin)


def recorded_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "metrics.json").read_text())


def rescore_holdout(directory: Path) -> dict[str, float]:
    """Re-score the bundled holdout through the serving path, from the bundle alone."""
    from cd4ml.metrics import evaluate

    holdout = pd.read_parquet(directory / "holdout.parquet")
    score = scorer(directory, holdout_origin(directory))
    rows = holdout[["date", *score.spec.series_keys, *score.spec.covariates]]
    return evaluate(holdout["sales"], score.predict(rows), holdout["weight"])


def verify(directory: Path, tolerance: float = 1e-9) -> list[tuple[str, float, float, bool]]:
    """(metric, recorded, re-scored, matches) for every recorded holdout metric."""
    metrics = recorded_metrics(directory)
    recorded = metrics.get("shipped", metrics["model"])  # bundles before the refit shipped the gated model
    rescored = rescore_holdout(directory)
    return [
        (
            name,
            recorded[name],
            rescored[name],
            bool(np.isclose(recorded[name], rescored[name], rtol=tolerance, atol=tolerance, equal_nan=True)),
        )
        for name in recorded
    ]
