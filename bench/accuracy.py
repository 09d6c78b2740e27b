"""Rolling-origin accuracy of cd4ml against the methods it has to beat, on real and sample data.

Tasks: UCI Online Retail units per product (daily, horizons 7 and 14; weekly, horizon 8; and a
short-history cut: only the 3 weeks of daily history before each origin, horizon 7) and the
synthetic Favorita-shaped sample (horizon 16). Each task is judged at several forecast origins
(folds), stepping back one horizon each from the end of the data; every method forecasts the
same target rows at each origin from the same history, and each task reports the mean over folds.

cd4ml is scored as a user runs it: its own stage functions (ingest → validate → split →
featurize → train, with whatever the pipeline's defaults are at run time) with `data.until` at
the fold's origin, so nothing after the origin reaches them; then the model the train stage
ships (`models/shipped`: the gated settings refit on origins up to the newest data) forecasts
the fold's target rows through cd4ml's serving path (`Scorer`) from the origin, like every other
method. The same run's held-out fit (`models/model`, whose training targets end 2 × horizon
before the origin: validation and holdout) is scored on the same rows the same way, for
reference. The competitors are in `_competitors.py`.

Online Retail: Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository.
https://doi.org/10.24432/C5BW33 (CC BY 4.0), read from ../shared/data/online-retail/.

Run: `nice .venv/bin/python bench/accuracy.py [--quick] [--folds 3] [--top 500] [--tasks retail-daily-h7,…]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _competitors import METHODS, Fold
from rich.console import Console
from rich.table import Table

from cd4ml.bundle import series_data
from cd4ml.config import apply_overrides, init_project
from cd4ml.metrics import bias, rmsle, wape
from cd4ml.pipeline.stages import STAGES
from cd4ml.scoring import Predictor, Scorer, series_index

console = Console(width=None if sys.stdout.isatty() else 140)
REPO = Path(__file__).resolve().parent.parent
RETAIL = REPO.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
CD4ML = "cd4ml (shipped: refit to the origin)"
HELD_OUT = "cd4ml held-out fit"
CD4ML_MODELS = {CD4ML: "shipped", HELD_OUT: "model"}  # method → directory under the fold's models/
# after ingest; evaluate, backtest, gate and register judge a release, which the bench does itself
CD4ML_STAGES = ["validate", "split", "featurize", "train"]
FIT_STAGES = ("featurize", "train")  # cd4ml's fit+predict time: features, both fits, then scoring
SHORT_HISTORY_DAYS = 21


@dataclass(frozen=True)
class Task:
    name: str
    horizon: int
    source: str  # "sample", or an Online Retail frequency: "daily" / "weekly"
    history_days: int | None = None  # keep only this much history before each origin


@dataclass
class Outcome:
    """One method on one task: metrics per fold, or why it failed."""

    scores: list[dict[str, float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        return float(np.mean([s[metric] for s in self.scores])) if self.scores else float("nan")


TASKS = [
    Task("retail-daily-h7", 7, "daily"),
    Task("retail-daily-h14", 14, "daily"),
    Task("retail-weekly-h8", 8, "weekly"),
    Task("retail-short-h7", 7, "daily", history_days=SHORT_HISTORY_DAYS),
    Task("sample-h16", 16, "sample"),
]


def score(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {"rmsle": rmsle(actual, predicted), "wape": wape(actual, predicted), "bias": bias(actual, predicted)}


def run_stages(workdir: Path, overrides: list[str], stages: list[str]) -> dict[str, float]:
    """cd4ml's own stage functions in a work directory (made with the overrides if new); seconds per stage."""
    init_project(workdir)
    apply_overrides(workdir / "params.yaml", overrides)
    seconds = {}
    for stage in stages:
        started = time.perf_counter()
        STAGES[stage](workdir)
        seconds[stage] = time.perf_counter() - started
    return seconds


def canonical(workdir: Path) -> tuple[pd.DataFrame, dict]:
    sales = pd.read_parquet(workdir / "data" / "ingested" / "sales.parquet")
    sales["date"] = pd.to_datetime(sales["date"])
    dataset = json.loads((workdir / "data" / "ingested" / "dataset.json").read_text())
    return sales, dataset


def source_overrides(task: Task, folder: Path, args: argparse.Namespace) -> list[str]:
    """params.yaml overrides that point cd4ml at the task's data (a preset file for Online Retail)."""
    if task.source == "sample":
        return [f"data.sample.{k}={v}" for k, v in args.sample.items()]
    folder.mkdir(parents=True, exist_ok=True)
    preset = folder / f"online-retail-{task.source}.yaml"
    options = {"preset": "online-retail", "data": str(args.retail), "frequency": task.source}
    preset.write_text(yaml.safe_dump(options | {"top_products": args.top}))
    return [f"data.source={preset}"]


def short_history_source(sales: pd.DataFrame, origin: pd.Timestamp, task: Task, folder: Path) -> list[str]:
    """A dataset spec over a copy of the sales of the `history_days` up to the origin."""
    window = sales[(sales["date"] > origin - pd.Timedelta(days=task.history_days)) & (sales["sales"] != 0)]
    window = window[window["date"] <= origin]
    folder.mkdir(parents=True, exist_ok=True)
    window[["date", "StockCode", "sales"]].rename(columns={"sales": "units"}).to_csv(
        folder / "sales.csv", index=False, date_format="%Y-%m-%d"
    )
    spec = {
        "name": "online-retail-short",
        "sales": "sales.csv",
        "series_keys": ["StockCode"],
        "text_keys": ["StockCode"],
        "target": "units",
        "holidays": {"country": "GB"},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return [f"data.source={folder / 'spec.yaml'}"]


def make_fold(history: pd.DataFrame, full: pd.DataFrame, dataset: dict, origin: pd.Timestamp, horizon: int) -> Fold:
    """History: the fold's canonical table (cd4ml's, cut at the origin); targets: the full data's
    `horizon` periods after the origin, of the series that have history."""
    spec = dataset["spec"]
    keys = spec["series_keys"]
    weekly = spec["frequency"] == "weekly"
    if history["date"].max() != origin:  # leak-free, and the origin is the last day of known sales
        raise RuntimeError(f"the fold's canonical table ends on {history['date'].max():%Y-%m-%d}, not at {origin}")
    end = origin + pd.Timedelta(days=horizon * (7 if weekly else 1))
    targets = full[(full["date"] > origin) & (full["date"] <= end)].astype({k: history[k].dtype for k in keys})
    targets = targets.merge(history[keys].drop_duplicates(), on=keys)  # a series needs history to be forecast
    return Fold(
        origin=origin,
        horizon=horizon,
        freq="W-MON" if weekly else "D",
        season=52 if weekly else 7,
        keys=keys,
        covariates=spec["covariates"],
        attributes=dataset["attributes"],
        history=history.reset_index(drop=True),
        targets=targets.sort_values([*keys, "date"], ignore_index=True),
    )


def cd4ml_forecasts(workdir: Path, fold: Fold) -> dict[str, np.ndarray]:
    """Each of the fold run's models forecasts the fold's target rows from the origin through
    cd4ml's serving path, fed as a bundle would be: the canonical table's history window before
    the origin, the series' attributes and weights, the holidays."""
    ingested = workdir / "data" / "ingested"
    holidays = pd.read_parquet(ingested / "holidays.parquet")
    origin = fold.origin.date()
    forecasts = {}
    for method, model in CD4ML_MODELS.items():
        predictor = Predictor.read(workdir / "models" / model)
        scorer = Scorer(predictor, series_data(ingested / "sales.parquet", holidays, predictor.spec, origin), origin)
        rows = scorer.validate(fold.targets[["date", *fold.keys, *fold.covariates]], unknown_ok=True)
        # the targets' series all have history in the same canonical table: an unknown one is a bench bug
        unknown = ~scorer.known(rows)
        if unknown.any():
            raise RuntimeError(f"models/{model} has no attributes for the series of {int(unknown.sum()):,} target rows")
        stateless = ~series_index(rows, fold.keys).isin(series_index(scorer.state, fold.keys))
        if stateless.any():  # forecast all the same, from the features a series without state gets
            console.print(f"  {method}: {int(stateless.sum()):,} target rows of series with no state", highlight=False)
        forecasts[method] = predictor.predict_features(scorer.features(rows))
    return forecasts


def run_task(task: Task, root: Path, args: argparse.Namespace) -> tuple[dict[str, Outcome], list[str]]:
    """Every method at every fold of one task; returns outcomes per method and what was scored."""
    base = root / task.name / "full"
    overrides = source_overrides(task, base.parent, args)
    run_stages(base, overrides, ["ingest"])
    sales, dataset = canonical(base)
    step = pd.Timedelta(days=task.horizon * (7 if dataset["spec"]["frequency"] == "weekly" else 1))
    last = sales["date"].max()
    outcomes: dict[str, Outcome] = defaultdict(Outcome)
    described = []
    for k in range(args.folds):
        origin, workdir = last - (k + 1) * step, root / task.name / f"fold{k}"
        fold_overrides = overrides
        if task.history_days:
            fold_overrides = short_history_source(sales, origin, task, root / task.name / f"source{k}")
        fold_overrides = [*fold_overrides, f"data.until={origin.date()}", f"split.horizon={task.horizon}"]
        run_stages(workdir, fold_overrides, ["ingest"])  # every method's history: cd4ml's canonical table
        history, fold_dataset = canonical(workdir)
        fold = make_fold(history, sales, fold_dataset, origin, task.horizon)
        actual = fold.targets["sales"].to_numpy()
        with console.status(f"{task.name} fold {k + 1}/{args.folds}: cd4ml"):
            try:
                seconds = run_stages(workdir, [], CD4ML_STAGES)
                started = time.perf_counter()
                forecasts = cd4ml_forecasts(workdir, fold)
                seconds["score"] = time.perf_counter() - started
            except Exception as exc:  # a crash is a result: reported, and the competitors still run
                forecasts = {}
                for method in CD4ML_MODELS:
                    outcomes[method].failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        described.append(
            f"fold {k + 1}: origin {origin:%Y-%m-%d}, {len(fold.targets):,} target rows, "
            f"{fold.targets[fold.keys].drop_duplicates().shape[0]:,} series, history from "
            f"{fold.history['date'].min():%Y-%m-%d}, {(actual == 0).mean():.0%} zero"
        )
        for method, predicted in forecasts.items():  # one run fits both models: its time is each row's
            outcomes[method].scores.append(score(actual, predicted))
            outcomes[method].seconds.append(sum(seconds[s] for s in FIT_STAGES) + seconds["score"])
        for method, forecast in METHODS.items():
            with console.status(f"{task.name} fold {k + 1}/{args.folds}: {method}"):
                started = time.perf_counter()
                try:
                    predicted = forecast(fold)
                except Exception as exc:
                    outcomes[method].failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    continue
            outcomes[method].seconds.append(time.perf_counter() - started)
            outcomes[method].scores.append(score(actual, predicted))
        console.print(f"[green]✓[/] {task.name} {described[-1]}", highlight=False)
    return outcomes, described


def percent_better(ours: float, theirs: float) -> str:
    """How much lower cd4ml's error is than the other method's (negative: cd4ml is worse)."""
    if not (np.isfinite(ours) and np.isfinite(theirs)) or theirs == 0:
        return "n/a"
    return f"{(theirs - ours) / theirs:+.1%}"


def report_task(task: Task, outcomes: dict[str, Outcome], described: list[str], folds: int) -> None:
    table = Table(title=f"{task.name} · horizon {task.horizon} · mean over {folds} rolling origins")
    for column in ("method", "RMSLE", "WAPE", "bias", "WAPE vs cd4ml", "folds", "fit+predict s / fold"):
        table.add_column(column, justify="left" if column == "method" else "right")
    ours = outcomes[CD4ML].mean("wape")
    for method in [*CD4ML_MODELS, *METHODS]:
        o = outcomes[method]
        if not o.scores:
            table.add_row(method, "failed", "", "", "", f"0/{folds}", "")
            continue
        table.add_row(
            method,
            f"{o.mean('rmsle'):.4f}",
            f"{o.mean('wape'):.3f}",
            f"{o.mean('bias'):+.3f}",
            "" if method == CD4ML else percent_better(ours, o.mean("wape")),
            f"{len(o.scores)}/{folds}",
            f"{np.mean(o.seconds):.1f}",
        )
    console.print(table)
    for line in described:
        console.print(f"  {line}", highlight=False)
    for method, o in outcomes.items():
        for failure in dict.fromkeys(o.failures):
            console.print(f"  [red]{method} failed[/]: {failure}", highlight=False)


def report_summary(results: dict[str, dict[str, Outcome]]) -> None:
    table = Table(title="cd4ml (shipped) vs mlforecast and seasonal naive (positive: cd4ml's error is lower)")
    for column in ("task", "cd4ml RMSLE", "vs mlforecast", "cd4ml WAPE", "vs mlforecast", "vs seasonal naive"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, outcomes in results.items():
        ours, ml, naive = outcomes[CD4ML], outcomes["mlforecast LightGBM"], outcomes["seasonal naive"]
        table.add_row(
            task,
            f"{ours.mean('rmsle'):.4f}" if ours.scores else "failed",
            percent_better(ours.mean("rmsle"), ml.mean("rmsle")),
            f"{ours.mean('wape'):.3f}" if ours.scores else "failed",
            percent_better(ours.mean("wape"), ml.mean("wape")),
            percent_better(ours.mean("wape"), naive.mean("wape")),
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="top 100 products, a 5 × 40 sample: a few minutes")
    parser.add_argument("--folds", type=int, default=3, help="rolling forecast origins per task")
    parser.add_argument("--top", type=int, help="Online Retail products kept, by units (default 500; quick 100)")
    parser.add_argument("--tasks", help=f"comma-separated subset of {', '.join(t.name for t in TASKS)}")
    parser.add_argument("--retail", type=Path, default=RETAIL, help="the UCI Online Retail .csv.gz")
    parser.add_argument("--workdir", type=Path, help="keep the work directories here (default: temp)")
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # one "creating tables" line per fold otherwise
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="statsforecast")  # ETS on zero-sales series
    args.top = args.top or (100 if args.quick else 500)
    stores, items = (5, 40) if args.quick else (20, 100)
    args.sample = {"stores": stores, "items": items, "days": 730, "seed": 42}
    chosen = [t for t in TASKS if not args.tasks or t.name in args.tasks.split(",")]
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="cd4ml-accuracy-") as temp:
        root = (args.workdir or Path(temp)).resolve()
        for task in chosen:
            outcomes, described = run_task(task, root, args)
            report_task(task, outcomes, described, args.folds)
            results[task.name] = outcomes
    report_summary(results)
    console.print(
        f"Online Retail: top {args.top} products by units; sample: {stores} stores × {items} items × 730 days. "
        f"Wall time {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f} (2 cores).",
        highlight=False,
    )


if __name__ == "__main__":
    main()
