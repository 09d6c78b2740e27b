"""Forecast metrics for unit sales, headed by Favorita's NWRMSLE.

Log-error metrics judge relative accuracy across items selling 1 or 10,000 units; the
absolute ones (MAE, WAPE, bias, R²) keep the business view of units and systematic
over- or under-stocking. Every metric refuses silently bad input (NaN, misaligned arrays).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

PERISHABLE_WEIGHT = 1.25
METRICS = ("nwrmsle", "rmsle", "mae", "wape", "bias", "r2")


def favorita_weights(perishable: ArrayLike) -> np.ndarray:
    """Favorita scores perishable items 1.25x: spoiled stock costs more than a missed sale."""
    flags = np.asarray(perishable)
    if flags.size and not np.isin(flags, [0, 1]).all():
        raise ValueError("perishable must hold only 0/1 or booleans")
    return np.where(flags.astype(bool), PERISHABLE_WEIGHT, 1.0)


def nwrmsle(actual: ArrayLike, predicted: ArrayLike, weights: ArrayLike) -> float:
    """Favorita's competition metric; negatives are clipped because returns are not demand."""
    a, p, w = _validated(actual, predicted, weights)
    return _nwrmsle(a, p, w)


def rmsle(actual: ArrayLike, predicted: ArrayLike) -> float:
    """NWRMSLE with equal weights, for datasets without a perishable flag."""
    a, p, _ = _validated(actual, predicted)
    return _nwrmsle(a, p, np.ones_like(a))


def mae(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Mean absolute error in units sold."""
    a, p, _ = _validated(actual, predicted)
    return float(np.mean(np.abs(a - p)))


def wape(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Total absolute error as a share of total sales; NaN when nothing sold (undefined)."""
    a, p, _ = _validated(actual, predicted)
    return _relative(np.sum(np.abs(a - p)), a)


def bias(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Net over- (positive) or under-forecast (negative) as a share of total sales."""
    a, p, _ = _validated(actual, predicted)
    return _relative(np.sum(p - a), a)


def r2(actual: ArrayLike, predicted: ArrayLike) -> float:
    """1 - SS_res/SS_tot; NaN for a constant actual unless the forecast is perfect."""
    a, p, _ = _validated(actual, predicted)
    return _r2(a, p)


def evaluate(actual: ArrayLike, predicted: ArrayLike, weights: ArrayLike) -> dict[str, float]:
    """All metrics at once, validating the inputs a single time."""
    a, p, w = _validated(actual, predicted, weights)
    return {
        "nwrmsle": _nwrmsle(a, p, w),
        "rmsle": _nwrmsle(a, p, np.ones_like(a)),
        "mae": float(np.mean(np.abs(a - p))),
        "wape": _relative(np.sum(np.abs(a - p)), a),
        "bias": _relative(np.sum(p - a), a),
        "r2": _r2(a, p),
    }


def evaluate_slices(
    frame: pd.DataFrame,
    slice_columns: list[str],
    actual: str = "actual",
    predicted: str = "prediction",
    weight: str = "weight",
) -> pd.DataFrame:
    """Metrics per value of each slice column, so a good average cannot hide a bad family.

    Tiny slices are kept; the rows column says how far to trust them. Missing slice values
    form their own slice rather than disappearing.
    """
    required = [actual, predicted, weight, *slice_columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"evaluate_slices: frame has no column(s) {missing}")
    if frame.empty:
        raise ValueError("evaluate_slices: frame is empty")

    records = []
    for column in slice_columns:
        for value, group in frame.groupby(column, dropna=False, sort=True, observed=True):
            scores = evaluate(group[actual], group[predicted], group[weight])
            records.append({"slice": column, "value": value, "rows": len(group), **scores})
    return pd.DataFrame(records, columns=["slice", "value", "rows", *METRICS])


def _validated(
    actual: ArrayLike, predicted: ArrayLike, weights: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Fail loudly: a NaN or misaligned array would otherwise yield a plausible wrong score."""
    arrays = {"actual": actual, "predicted": predicted}
    if weights is not None:
        arrays["weights"] = weights
    converted = {}
    for name, values in arrays.items():
        array = np.asarray(values, dtype=float)
        if array.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
        if array.size == 0:
            raise ValueError(f"{name} is empty")
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(f"{name} has {bad} NaN or infinite value(s)")
        converted[name] = array
    lengths = {name: array.size for name, array in converted.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    w = converted.get("weights")
    if w is not None and ((w < 0).any() or w.sum() == 0):
        raise ValueError("weights must be non-negative with a positive sum")
    return converted["actual"], converted["predicted"], w


def _nwrmsle(a: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    log_error = np.log1p(np.clip(p, 0, None)) - np.log1p(np.clip(a, 0, None))
    return float(np.sqrt(np.sum(w * log_error**2) / np.sum(w)))


def _relative(total: float, a: np.ndarray) -> float:
    scale = np.sum(np.abs(a))
    return float(total / scale) if scale > 0 else float("nan")


def _r2(a: np.ndarray, p: np.ndarray) -> float:
    ss_res = float(np.sum((a - p) ** 2))
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    if ss_tot == 0:
        return 1.0 if ss_res == 0 else float("nan")
    return 1.0 - ss_res / ss_tot
