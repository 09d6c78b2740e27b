"""Holdout accuracy of cd4ml's default model against the baselines it has to beat.

One sample data set is generated, ingested, split and featurized by cd4ml's own stage functions,
so every method reads the same canonical table and is scored on the same holdout rows: the last
`horizon` days of every series with history at the holdout origin. The competitors:

- cd4ml: LightGBM with params.yaml's parameters on cd4ml's direct multi-horizon features;
- seasonal naive: the same day last week (cd4ml's own baseline);
- the CD4ML workshop: date parts, label-encoded keys and attributes and `onpromotion`, a
  10-tree random forest on raw unit sales (returns set to 0), no lags;
- Nixtla mlforecast: LightGBM on lags 7/14/28 and rolling means of log1p sales, forecasting
  recursively with the known promotions.

Run: `.venv/bin/python bench/accuracy.py [--stores 20 --items 100 --days 730]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from cd4ml.config import Paths, apply_overrides, init_project, load_params
from cd4ml.data.split import Split
from cd4ml.metrics import evaluate
from cd4ml.models import make_model
from cd4ml.models.naive import SeasonalNaive
from cd4ml.pipeline.stages import STAGES, feature_spec, load_part

console = Console(width=None if sys.stdout.isatty() else 120)
SERIES_KEYS = ["store_nbr", "item_nbr"]
ATTRIBUTES = ["family", "class", "perishable", "city", "state", "type", "cluster"]
CODED = [*SERIES_KEYS, *ATTRIBUTES]


@dataclass
class Bench:
    """What every method may read, and the holdout rows all of them are scored on."""

    paths: Paths
    plan: Split
    sales: pd.DataFrame  # cd4ml's canonical table
    holdout: pd.DataFrame  # labels of the holdout rows: date, keys, sales, weight, ...
    stage_seconds: dict[str, float]


@dataclass
class Result:
    method: str
    predicted: np.ndarray  # aligned with Bench.holdout
    seconds: float
    trained_on: str
    load: float  # 1-minute load average when it finished: above 2 cores, times are inflated


def prepare(workdir: Path, stores: int, items: int, days: int, seed: int) -> Bench:
    """Sample data → canonical table → split → features, by cd4ml's own stage functions."""
    init_project(workdir)
    sample = {"stores": stores, "items": items, "days": days, "seed": seed}
    apply_overrides(workdir / "params.yaml", [f"data.sample.{k}={v}" for k, v in sample.items()])
    seconds = {}
    for stage in ("ingest", "split", "featurize"):
        with console.status(f"cd4ml stage {stage}"):
            started = time.perf_counter()
            summary = STAGES[stage](workdir)
            seconds[stage] = time.perf_counter() - started
        console.print(f"[green]✓[/] {stage} ({seconds[stage]:.1f} s): {summary}", highlight=False)
    paths = Paths(workdir)
    sales = pd.read_parquet(paths.ingested / "sales.parquet")
    sales["date"] = pd.to_datetime(sales["date"])
    _, holdout = load_part(paths, "holdout", feature_spec(paths).columns)
    holdout["date"] = pd.to_datetime(holdout["date"])
    plan = Split.model_validate_json(paths.split.read_text())
    return Bench(paths, plan, sales, holdout.reset_index(drop=True), seconds)


def _timed(method: str, trained_on: str, run: Callable[[], np.ndarray]) -> Result:
    with console.status(method):
        started = time.perf_counter()
        predicted = run()
        seconds = time.perf_counter() - started
    console.print(f"[green]✓[/] {method} ({seconds:.1f} s)", highlight=False)
    return Result(method, predicted, seconds, trained_on, os.getloadavg()[0])


def cd4ml_default(bench: Bench) -> tuple[Result, int]:
    """params.yaml's LightGBM on cd4ml's features; returns the result and its boosting rounds."""
    params = load_params(bench.paths.params).model
    columns = feature_spec(bench.paths).columns
    X, train = load_part(bench.paths, "train", columns)
    Xv, valid = load_part(bench.paths, "valid", columns)
    Xh, _ = load_part(bench.paths, "holdout", columns)
    model = make_model("lightgbm", params.lightgbm)

    def run() -> np.ndarray:
        model.fit(
            X,
            train["sales"].to_numpy(),
            train["weight"].to_numpy(),
            valid=(Xv, valid["sales"].to_numpy()),
        )
        return model.predict(Xh)

    trained_on = (
        f"params.yaml; {len(X):,} feature rows from {len(bench.plan.train_origins)} origins "
        f"≤ {bench.plan.train_origins[-1]}, early stopping on {len(Xv):,} validation rows"
    )
    result = _timed("cd4ml LightGBM", trained_on, run)
    return result, model.booster_.best_iteration or params.lightgbm.get("n_estimators", 500)


def seasonal_naive(bench: Bench) -> Result:
    Xh, _ = load_part(bench.paths, "holdout", feature_spec(bench.paths).columns)
    model = SeasonalNaive()
    return _timed(
        "seasonal naive",
        "no training: the same weekday last week",
        lambda: model.fit(Xh, np.zeros(len(Xh))).predict(Xh),
    )


def _targets(bench: Bench) -> pd.DataFrame:
    """Canonical rows of the holdout, in the holdout's row order (with covariates, attributes)."""
    rows = bench.holdout[["date", *SERIES_KEYS]].merge(
        bench.sales, on=["date", *SERIES_KEYS], how="left", validate="one_to_one"
    )
    assert rows["sales"].notna().all(), "holdout rows missing from the canonical table"
    return rows


def workshop_forest(bench: Bench, seed: int) -> Result:
    """The workshop's decision_tree.py with its random forest: no lags, raw sales."""
    valid_origin = pd.Timestamp(bench.plan.valid_origin)
    train = bench.sales[bench.sales["date"] <= valid_origin]
    targets = _targets(bench)

    def features(frame: pd.DataFrame, codes: dict[str, pd.Index]) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "year": frame["date"].dt.year,
                "month": frame["date"].dt.month,
                "day": frame["date"].dt.day,
                "dayofweek": frame["date"].dt.dayofweek,
                "onpromotion": frame["onpromotion"],
            }
        )
        for column in CODED:
            out[column] = codes[column].get_indexer(frame[column])
        return out

    def run() -> np.ndarray:
        from sklearn.ensemble import RandomForestRegressor

        # the workshop label-encodes train and validation joined, so both share one vocabulary
        codes = {c: pd.Index(pd.concat([train[c], targets[c]]).unique()) for c in CODED}
        forest = RandomForestRegressor(n_estimators=10, n_jobs=2, random_state=seed)
        forest.fit(features(train, codes), train["sales"].clip(lower=0))  # "not predicting returns"
        return forest.predict(features(targets, codes))

    return _timed(
        "workshop forest",
        f"10 trees on date parts, codes, onpromotion; {len(train):,} canonical rows "
        f"≤ {bench.plan.valid_origin}, raw unit_sales",
        run,
    )


def nixtla_mlforecast(bench: Bench, rounds: int) -> Result:
    """mlforecast's recursive LightGBM with lag features, cd4ml's LightGBM parameters."""
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean
    from mlforecast.target_transforms import GlobalSklearnTransformer
    from sklearn.preprocessing import FunctionTransformer

    origin = pd.Timestamp(bench.plan.holdout_origin)
    horizon = bench.plan.horizon
    sales = bench.sales
    history = sales[sales["date"] <= origin]
    future = sales[(sales["date"] > origin) & (sales["date"] <= origin + timedelta(days=horizon))]

    def series(frame: pd.DataFrame) -> pd.Series:
        return frame["store_nbr"].astype(str) + "_" + frame["item_nbr"].astype(str)

    params = {k: v for k, v in load_params(bench.paths.params).model.lightgbm.items() if k != "early_stopping_rounds"}
    model = lgb.LGBMRegressor(**{**params, "n_estimators": rounds, "n_jobs": 2, "verbose": -1})

    def run() -> np.ndarray:
        df = pd.DataFrame(
            {
                "unique_id": series(history),
                "ds": history["date"],
                "y": history["sales"].clip(lower=0),
                "onpromotion": history["onpromotion"],
                "weight": history["weight"],
            }
        )
        for column in CODED:
            df[column] = pd.factorize(history[column], sort=True)[0]
        forecaster = MLForecast(
            models={"lgbm": model},
            freq="D",
            lags=[7, 14, 28],
            lag_transforms={
                7: [RollingMean(7), RollingMean(28)],
                14: [RollingMean(7)],
                28: [RollingMean(28)],
            },
            date_features=["dayofweek", "month"],
            target_transforms=[GlobalSklearnTransformer(FunctionTransformer(np.log1p, np.expm1))],
            num_threads=2,
        )
        forecaster.fit(
            df,
            id_col="unique_id",
            time_col="ds",
            target_col="y",
            static_features=CODED,
            weight_col="weight",
        )
        known = pd.DataFrame(
            {
                "unique_id": series(future),
                "ds": future["date"],
                "onpromotion": future["onpromotion"],
            }
        )
        known = known[known["unique_id"].isin(df["unique_id"].unique())]
        forecast = forecaster.predict(horizon, X_df=known)
        wanted = pd.DataFrame({"unique_id": series(bench.holdout), "ds": bench.holdout["date"]})
        scored = wanted.merge(forecast, on=["unique_id", "ds"], how="left", validate="one_to_one")
        assert scored["lgbm"].notna().all(), "mlforecast skipped some holdout rows"
        return scored["lgbm"].clip(lower=0).to_numpy()

    return _timed(
        "mlforecast LightGBM",
        f"{len(history):,} canonical rows ≤ {bench.plan.holdout_origin}, log1p target, "
        f"cd4ml's params with its {rounds} early-stopped rounds",
        run,
    )


def report(bench: Bench, results: list[Result]) -> None:
    """Metrics per method and their ratio to cd4ml's (ratio > 1: worse than cd4ml)."""
    actual, weight = bench.holdout["sales"].to_numpy(), bench.holdout["weight"].to_numpy()
    scores = {r.method: evaluate(actual, r.predicted, weight) for r in results}
    base, base_seconds = scores[results[0].method], results[0].seconds
    table = Table(title=f"holdout accuracy · {len(actual):,} rows, origin {bench.plan.holdout_origin}")
    for column in (
        "method",
        "NWRMSLE",
        "vs cd4ml",
        "WAPE",
        "vs cd4ml",
        "RMSLE",
        "bias",
        "fit+predict s",
        "vs cd4ml",
        "load avg",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in results:
        s = scores[r.method]
        table.add_row(
            r.method,
            f"{s['nwrmsle']:.4f}",
            f"{s['nwrmsle'] / base['nwrmsle']:.2f}",
            f"{s['wape']:.3f}",
            f"{s['wape'] / base['wape']:.2f}",
            f"{s['rmsle']:.4f}",
            f"{s['bias']:+.3f}",
            f"{r.seconds:.1f}",
            f"{r.seconds / base_seconds:.2f}",
            f"{r.load:.1f}",
        )
    console.print(table)
    console.print(
        "load avg: 1-minute load average as the method finished (2 cores: above 2, "
        "other processes competed for the CPU and times are inflated)"
    )
    for r in results:
        console.print(f"  {r.method}: {r.trained_on}", highlight=False)


def describe(bench: Bench) -> None:
    """Which rows, series and origins every method was scored on."""
    h, plan = bench.holdout, bench.plan
    all_series = len(bench.sales[SERIES_KEYS].drop_duplicates())
    first, last = h["date"].min(), h["date"].max()
    console.print(
        f"canonical table: {len(bench.sales):,} rows, {all_series:,} series, "
        f"{plan.first_date}..{plan.last_date}\n"
        f"holdout: origin {plan.holdout_origin}, {first:%Y-%m-%d}..{last:%Y-%m-%d} "
        f"(horizon {plan.horizon}), {len(h):,} rows, {len(h[SERIES_KEYS].drop_duplicates()):,} "
        f"series, {(h['sales'] == 0).mean():.1%} zero sales\n"
        f"validation origin {plan.valid_origin}; "
        f"cd4ml featurize took {bench.stage_seconds['featurize']:.1f} s, outside its fit+predict "
        "time (mlforecast's feature work is inside its time)",
        highlight=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, help="keep the work directory here (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cd4ml-accuracy-") as temp:
        workdir = (args.workdir or Path(temp)).resolve()
        bench = prepare(workdir, args.stores, args.items, args.days, args.seed)
        default, rounds = cd4ml_default(bench)
        results = [
            default,
            seasonal_naive(bench),
            workshop_forest(bench, args.seed),
            nixtla_mlforecast(bench, rounds),
        ]
        describe(bench)
        report(bench, results)


if __name__ == "__main__":
    main()
