"""A/B report: per-arm sample sizes, errors with confidence intervals, and a significance test.

Errors are per-row log errors, log1p(prediction) − log1p(actual), the quantity NWRMSLE
squares. Two arms are compared with Welch's t-test on squared log errors; a winner is
declared only when both arms have enough rows and the difference is significant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ArmResult:
    arm: str
    requests: int
    rows: int
    rmsle: float
    mean_squared_log_error: float
    ci95: tuple[float, float]
    mean_reward: float | None
    rewards: int


@dataclass
class Decision:
    arms: list[ArmResult]
    p_value: float | None
    winner: str | None
    verdict: str


def squared_log_errors(feedback: list[dict]) -> dict[str, np.ndarray]:
    errors: dict[str, list[float]] = {}
    for record in feedback:
        if record["kind"] != "actual":
            continue
        predicted = np.asarray(json.loads(record["predictions"]), dtype=float)
        actual = np.clip(np.asarray(json.loads(record["value"]), dtype=float), 0, None)
        errors.setdefault(record["arm"], []).extend((np.log1p(predicted) - np.log1p(actual)) ** 2)
    return {arm: np.asarray(values) for arm, values in errors.items()}


def report(feedback: list[dict], min_rows: int = 100, alpha: float = 0.05) -> Decision:
    from scipy import stats

    errors = squared_log_errors(feedback)
    rewards: dict[str, list[float]] = {}
    requests: dict[str, set] = {}
    for record in feedback:
        requests.setdefault(record["arm"], set()).add(record["request_id"])
        if record["kind"] == "reward":
            rewards.setdefault(record["arm"], []).append(float(json.loads(record["value"])))
    results = []
    for arm in sorted(requests):
        e = errors.get(arm, np.array([]))
        mean = float(e.mean()) if len(e) else math.nan
        half = 1.96 * float(e.std(ddof=1)) / math.sqrt(len(e)) if len(e) > 1 else math.nan
        r = rewards.get(arm, [])
        results.append(
            ArmResult(
                arm,
                len(requests[arm]),
                len(e),
                math.sqrt(mean) if len(e) else math.nan,
                mean,
                (mean - half, mean + half),
                float(np.mean(r)) if r else None,
                len(r),
            )
        )
    measured = [a for a in results if a.rows > 1]
    if len(measured) < 2:
        return Decision(results, None, None, "not yet: need actuals for at least two arms")
    a, b = sorted(measured, key=lambda x: x.mean_squared_log_error)[:2]
    p = float(stats.ttest_ind(errors[a.arm], errors[b.arm], equal_var=False).pvalue)
    short = [x.arm for x in (a, b) if x.rows < min_rows]
    if short:
        return Decision(results, p, None, f"not yet: {', '.join(short)} below {min_rows} rows with actuals")
    if not p < alpha:  # also NaN: identical, constant errors are no evidence for either arm
        return Decision(results, p, None, f"no significant difference yet (p = {p:.3f} ≥ {alpha})")
    return Decision(results, p, a.arm, f"{a.arm} wins: lower squared log error, p = {p:.4f} < {alpha}")
