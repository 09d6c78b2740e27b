"""Evaluation plots logged with every run: forecast vs actual, residuals, feature importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cd4ml.features import FeatureSpec


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (10, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(rows, cols, figsize=size, squeeze=False)


def forecast_vs_actual(holdout: pd.DataFrame, keys: list[str], count: int, path: Path) -> Path:
    """The highest-volume series: actual, model and seasonal-naive over the holdout."""
    volume = holdout.groupby(keys)["sales"].sum().nlargest(count)
    plt, fig, axes = _figure(len(volume) or 1, 1, (10, 2.2 * max(len(volume), 1)))
    for ax, series in zip(axes[:, 0], volume.index, strict=False):
        values = series if isinstance(series, tuple) else (series,)
        rows = holdout[np.logical_and.reduce([holdout[k] == v for k, v in zip(keys, values, strict=True)])]
        rows = rows.sort_values("date")
        ax.plot(rows["date"], rows["sales"], "k.-", label="actual")
        ax.plot(rows["date"], rows["prediction"], "C0-", label="model")
        ax.plot(rows["date"], rows["baseline"], "C1--", label="seasonal naive")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)), fontsize=9)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def residuals(holdout: pd.DataFrame, path: Path) -> Path:
    """Log-scale residuals (what NWRMSLE squares) by size and by horizon day."""
    plt, fig, axes = _figure(1, 2)
    error = np.log1p(holdout["prediction"]) - np.log1p(holdout["sales"].clip(lower=0))
    axes[0, 0].hist(error, bins=60, color="C0")
    axes[0, 0].set_title("log1p(prediction) − log1p(actual)", fontsize=9)
    by_day = error.groupby(holdout["date"]).agg(["mean", "std"])
    axes[0, 1].errorbar(by_day.index, by_day["mean"], yerr=by_day["std"], fmt="o-", ms=3)
    axes[0, 1].axhline(0, color="k", lw=0.5)
    axes[0, 1].set_title("mean log residual per holdout day (± sd)", fontsize=9)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def feature_importance(model, fs: FeatureSpec, path: Path, top: int = 20) -> Path | None:
    if not hasattr(model, "feature_importances"):
        return None
    importance = pd.Series(model.feature_importances(), index=fs.columns).nlargest(top)[::-1]
    plt, fig, axes = _figure(1, 1, (7, 0.3 * len(importance) + 1))
    axes[0, 0].barh(importance.index, importance.values, color="C2")
    axes[0, 0].set_title("feature importance", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def all_plots(holdout: pd.DataFrame, model, fs: FeatureSpec, directory: Path, series: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = [
        forecast_vs_actual(holdout, fs.series_keys, series, directory / "forecast_vs_actual.png"),
        residuals(holdout, directory / "residuals.png"),
        feature_importance(model, fs, directory / "feature_importance.png"),
    ]
    return [p for p in made if p is not None]


def backtest(folds: list[dict], path: Path) -> Path:
    """NWRMSLE of every method at every backtest fold's origin."""
    plt, fig, axes = _figure(size=(8, 3.5))
    ax = axes[0, 0]
    origins = [f["origin"] for f in reversed(folds)]
    for method in dict.fromkeys(m for f in folds for m in f["metrics"]):
        values = [f["metrics"].get(method, {}).get("nwrmsle", np.nan) for f in reversed(folds)]
        ax.plot(origins, values, "o-", label=method)
    ax.set(xlabel="forecast origin", ylabel="NWRMSLE", title="backtest: error at each origin (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
