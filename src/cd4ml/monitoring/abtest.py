"""A/B report: per model version, errors with 95% intervals, a significance test and a verdict.

Versions, not arm names, are compared: an arm name (`challenger`) names different models over
time. Only feedback recorded in the experiment window counts (from the last routing change
by default). The unit of evidence is the series-day, not the request row: requests for the same
series and date get the same forecast and the same actual, so a thousand of them are one
observation. Each version's squared log errors, (log1p(prediction) − log1p(actual))² as NWRMSLE
squares them, are averaged per series-day first; the interval and Welch's t-test run on those
means, so the effective n is the number of series-days. A row without series keys or a date
is clustered with the rest of its request.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VersionResult:
    version: str
    arms: list[str]  # the arm names it was served under in the window
    requests: int
    rows: int  # rows with actuals
    series_days: int  # distinct series-days among them: the sample size
    rmsle: float
    mean_squared_log_error: float  # mean over series-days
    ci95: tuple[float, float]
    mean_reward: float | None
    rewards: int


@dataclass(frozen=True)
class Decision:
    since: float | None  # window start (epoch seconds); None: all feedback
    versions: list[VersionResult]
    p_value: float | None
    winner: str | None  # a model version
    verdict: str


def series_day_errors(feedback: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """version → mean squared log error of each series-day it forecast (one value per series-day)."""
    clusters: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in feedback:
        if record["kind"] != "actual":
            continue
        predicted = np.asarray(json.loads(record["predictions"]), dtype=float)
        actual = np.clip(np.asarray(json.loads(record["value"]), dtype=float), 0, None)
        squared = (np.log1p(predicted) - np.log1p(actual)) ** 2
        for row, error in zip(json.loads(record["rows"]), squared.tolist(), strict=True):
            clusters[record["model_version"]][_series_day(row, keys, record["request_id"])].append(error)
    return {version: np.array([np.mean(e) for e in days.values()]) for version, days in clusters.items()}


def _series_day(row: dict[str, Any], keys: Sequence[str], request_id: str) -> tuple:
    if all(k in row for k in keys) and "date" in row:
        return ("series-day", *(str(row[k]) for k in keys), str(row["date"]))
    return ("request", request_id)


def interval(means: np.ndarray) -> tuple[float, float]:
    """95% t-interval of the mean of independent series-day means (NaN below two)."""
    from scipy import stats

    if len(means) < 2:
        return (math.nan, math.nan)
    half = float(stats.t.ppf(0.975, len(means) - 1)) * float(means.std(ddof=1)) / math.sqrt(len(means))
    return (float(means.mean()) - half, float(means.mean()) + half)


def report(
    feedback: Sequence[dict[str, Any]],
    keys: Sequence[str],
    since: float | None = None,
    min_series_days: int = 100,
    alpha: float = 0.05,
) -> Decision:
    """Compare the two versions with the lowest error; a winner only when both have at least
    `min_series_days` series-days with actuals and the difference is significant."""
    from scipy import stats

    window = [r for r in feedback if since is None or r["ts"] >= since]
    errors = series_day_errors(window, keys)
    arms: dict[str, set[str]] = defaultdict(set)
    requests: dict[str, set[str]] = defaultdict(set)
    rows: dict[str, int] = defaultdict(int)
    rewards: dict[str, list[float]] = defaultdict(list)
    for record in window:
        version = record["model_version"]
        arms[version].add(record["arm"])
        requests[version].add(record["request_id"])
        if record["kind"] == "actual":
            rows[version] += len(json.loads(record["predictions"]))
        elif record["kind"] == "reward":
            rewards[version].append(float(json.loads(record["value"])))
    results = []
    for version in sorted(requests, key=_version_order):
        means = errors.get(version, np.array([]))
        mean = float(means.mean()) if len(means) else math.nan
        reward = rewards[version]
        results.append(
            VersionResult(
                version,
                sorted(arms[version]),
                len(requests[version]),
                rows[version],
                len(means),
                math.sqrt(mean) if len(means) else math.nan,
                mean,
                interval(means),
                float(np.mean(reward)) if reward else None,
                len(reward),
            )
        )
    measured = [v for v in results if v.series_days > 1]
    if len(measured) < 2:
        return Decision(since, results, None, None, "not yet: need actuals for at least two model versions")
    a, b = sorted(measured, key=lambda v: v.mean_squared_log_error)[:2]
    p = float(stats.ttest_ind(errors[a.version], errors[b.version], equal_var=False).pvalue)
    short = [f"v{v.version} has {v.series_days}" for v in (a, b) if v.series_days < min_series_days]
    if short:
        return Decision(since, results, p, None, f"not yet: {', '.join(short)} of {min_series_days} series-days")
    if not p < alpha:  # also NaN: identical, constant errors are no evidence for either version
        return Decision(since, results, p, None, f"no significant difference yet (p = {p:.3f} ≥ {alpha})")
    verdict = f"v{a.version} wins: lower squared log error per series-day, p = {p:.4f} < {alpha}"
    return Decision(since, results, p, a.version, verdict)


def _version_order(version: str) -> tuple[int, int, str]:
    """Registry versions in numeric order (v10 after v9), any other label after them."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)
