"""The backtest stage: the pipeline's model settings judged at several forecast origins.

Fold 0 is the run's own holdout, scored by `evaluate`. Fold k forecasts the `horizon` periods that
end k horizons before the data does, trained exactly as the pipeline trains — the same split
rules, features, row budget and model — on the data before them. Seasonal naive is scored on the
same rows, and so are the extra families of `backtest.models`. The gates judge the mean over
folds, so one lucky or unlucky holdout decides nothing (like mlforecast's `cross_validation`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from cd4ml.config import Paths, load_params
from cd4ml.pipeline.stages.data import connect_sales, examples, train_share
from cd4ml.pipeline.stages.workdir import feature_spec, read_dataset, write_json

BASELINE = "seasonal_naive"


def backtest(root: Path) -> str:
    import mlflow

    from cd4ml import plots, tracking
    from cd4ml.calendar_features import holiday_counts
    from cd4ml.data.split import HistoryTooShort, Split, plan_split

    paths, params = Paths(root), load_params(Paths(root).params)
    plan = Split.model_validate_json(paths.split.read_text())
    fs = feature_spec(paths)
    dataset = read_dataset(paths)
    families = list(dict.fromkeys([params.model.type, *params.backtest.models]))
    evaluated = json.loads((paths.reports / "metrics.json").read_text())
    folds = [_fold(0, plan, {params.model.type: evaluated["model"], BASELINE: evaluated["baseline"]})]
    extra = [f for f in families if f != params.model.type]
    con = connect_sales(root, params.data.memory_limit)
    holidays = holiday_counts(pd.read_parquet(paths.ingested / "holidays.parquet"), fs)
    notes = []
    try:
        for k in range(params.backtest.folds):
            step = timedelta(days=k * plan.horizon * plan.period_days)
            try:
                fold_plan = (
                    plan
                    if k == 0
                    else plan_split(
                        plan.first_date,
                        plan.last_date - step,
                        plan.horizon,
                        plan.period_days,
                        params.split.train_origins,
                        params.split.origin_stride,
                        params.split.min_history,
                    )
                )
            except HistoryTooShort:
                notes.append(f"{params.backtest.folds - k} fold(s) dropped: too little history before them")
                break
            wanted = extra if k == 0 else families
            if wanted:
                scored = _score_fold(con, fs, holidays, dataset, fold_plan, params, wanted)
                if k == 0:
                    folds[0]["metrics"] |= scored
                else:
                    folds.append(_fold(k, fold_plan, scored))
    finally:
        con.close()
    report = {"family": params.model.type, "folds": folds, "mean": _means(folds), "notes": notes}
    write_json(paths.reports / "backtest.json", report)
    plots.backtest(folds, paths.reports / "backtest.png")
    with tracking.run(root, params.tracking.experiment, tracking.read_run(paths.run)["run_id"]):
        for family, metrics in report["mean"].items():
            mlflow.log_metrics({tracking.metric_name("backtest", family, m): v for m, v in metrics.items()})
        mlflow.log_artifact(str(paths.reports / "backtest.json"), "reports")
        mlflow.log_artifact(str(paths.reports / "backtest.png"), "reports")
    mean = report["mean"]
    return f"{len(folds)} folds: mean NWRMSLE " + ", ".join(f"{f} {m['nwrmsle']:.4f}" for f, m in mean.items())


def _fold(k: int, plan, metrics: dict[str, dict[str, float]]) -> dict:
    return {"fold": k, "origin": str(plan.holdout_origin), "metrics": metrics}


def _score_fold(con, fs, holidays, dataset: dict, plan, params, families: list[str]) -> dict[str, dict[str, float]]:
    """Train each family as the pipeline would at this fold's split; score its holdout."""
    from cd4ml.features import seasonal_naive
    from cd4ml.metrics import evaluate
    from cd4ml.models import make_model

    share = train_share(dataset, plan, params.split.max_train_rows)
    keep = ["sales", "weight"]

    def part(origins: list, fraction: float, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        frames = list(examples(con, fs, holidays, keep, origins, fraction, name, dataset["report"]["series"]))
        return pd.concat([f for f, _ in frames], ignore_index=True), pd.concat(
            [y for _, y in frames], ignore_index=True
        )

    X, train = part(plan.train_origins, share, "train")
    Xv, valid = part([plan.valid_origin], 1.0, "valid")
    Xh, holdout = part([plan.holdout_origin], 1.0, "holdout")
    actual, weight = holdout["sales"].to_numpy(), holdout["weight"].to_numpy()
    scored = {BASELINE: evaluate(actual, seasonal_naive(Xh), weight)}
    for family in families:
        model = make_model(family, getattr(params.model, family))
        model.fit(X, train["sales"].to_numpy(), train["weight"].to_numpy(), valid=(Xv, valid["sales"].to_numpy()))
        scored[family] = evaluate(actual, model.predict(Xh), weight)
    return scored


def _means(folds: list[dict]) -> dict[str, dict[str, float]]:
    """Each method's metrics averaged over the folds that scored it."""
    methods = dict.fromkeys(m for fold in folds for m in fold["metrics"])
    return {
        method: {
            metric: float(np.nanmean([f["metrics"][method][metric] for f in folds if method in f["metrics"]]))
            for metric in next(f["metrics"][method] for f in folds if method in f["metrics"])
        }
        for method in methods
    }
