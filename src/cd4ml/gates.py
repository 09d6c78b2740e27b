"""Promotion gates: the checks a careful team would run by hand before a model reaches users.

Each check is a plain function returning `Check`s; `cd4ml.pipeline.stages.gate` gathers the
inputs (holdout, baseline, champion re-scored on the same holdout) and writes the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cd4ml.config import GateParams
from cd4ml.metrics import nwrmsle

EXIT_GATE_FAILED = 3


@dataclass
class Check:
    name: str
    value: float | str
    threshold: str
    passed: bool
    detail: str = ""


class GateFailed(Exception):
    def __init__(self, failed: list[Check]):
        self.failed = failed
        super().__init__("; ".join(f"{c.name}: {c.value} (needs {c.threshold}) {c.detail}".strip() for c in failed))


def absolute(metrics: dict[str, float], p: GateParams) -> list[Check]:
    """The workshop's absolute bounds; an NWRMSLE bound is data-specific, so it is off unless set."""
    value = round(metrics["nwrmsle"], 4)
    if p.max_nwrmsle is None:
        bound = Check("holdout NWRMSLE", value, "no bound", True, "set gates.max_nwrmsle for one (Favorita: 0.8)")
    else:
        bound = Check("holdout NWRMSLE", value, f"≤ {p.max_nwrmsle}", metrics["nwrmsle"] <= p.max_nwrmsle)
    return [bound, Check("holdout R²", round(metrics["r2"], 4), f"> {p.min_r2}", metrics["r2"] > p.min_r2)]


def relative_gain(model: float, reference: float) -> float:
    """How much lower the model's error is, as a share of the reference error."""
    return (reference - model) / reference if reference > 0 else 0.0


def beats_baseline(model: float, baseline: float, folds: int, p: GateParams) -> Check:
    """Mean NWRMSLE over the backtest's folds against seasonal naive's on the same rows."""
    gain = relative_gain(model, baseline)
    return Check(
        "gain over seasonal naive",
        f"{gain:.2%}",
        f"≥ {p.min_gain_over_baseline:.0%}",
        gain >= p.min_gain_over_baseline,
        f"mean NWRMSLE over {folds} fold(s) {model:.4f} vs {baseline:.4f}",
    )


@dataclass
class ChampionScore:
    """This run's model and the current champion on the same holdout rows (no champion: None)."""

    model: float
    version: str | None = None
    champion: float | None = None
    predictions: np.ndarray | None = None  # the champion's, for `rows` of the holdout
    rows: np.ndarray | None = None
    detail: str = ""


def not_worse_than_champion(score: ChampionScore, p: GateParams) -> Check:
    if score.champion is None:
        return Check("vs champion", "no champion", "-", True, "first model")
    gain = relative_gain(score.model, score.champion)
    return Check(
        "vs champion",
        f"{gain:+.2%}",
        f"≥ -{p.champion_tolerance:.0%}",
        gain >= -p.champion_tolerance,
        f"NWRMSLE {score.model:.4f} vs champion v{score.version} {score.champion:.4f}, {score.detail}",
    )


def slice_degradation(holdout: pd.DataFrame, slices: list[str], reference: str, label: str, p: GateParams) -> Check:
    """Worst slice's relative NWRMSLE loss against `reference` predictions (fairness across slices)."""
    worst: list[tuple[float, str]] = []
    for column in slices:
        for value, rows in holdout.groupby(column, observed=True):
            if len(rows) < p.slice_min_rows:
                continue
            a, w = rows["sales"].to_numpy(), rows["weight"].to_numpy()
            model, ref = nwrmsle(a, rows["prediction"], w), nwrmsle(a, rows[reference], w)
            worst.append((relative_gain(model, ref), f"{column}={value} ({model:.3f} vs {ref:.3f})"))
    worst.sort()
    failing = [name for gain, name in worst if gain < -p.slice_tolerance]
    value = f"{worst[0][0]:+.1%}" if worst else "no slice large enough"
    named = ", ".join(failing[:3]) if failing else (f"worst: {worst[0][1]}" if worst else "")
    return Check(f"slices vs {label}", value, f"≥ -{p.slice_tolerance:.0%} each", not failing, named)


def onnx_parity(native: np.ndarray, onnx: np.ndarray, p: GateParams) -> Check:
    gap = float(np.max(np.abs(np.log1p(native) - np.log1p(onnx)))) if len(native) else 0.0
    return Check(
        "ONNX parity",
        f"{gap:.2e}",
        f"≤ {p.onnx_tolerance:g}",
        gap <= p.onnx_tolerance,
        "max |log1p(native) − log1p(onnx)| on the holdout",
    )


def data_valid(status: str) -> Check:
    return Check("input data validation", status, "passed", status == "passed")


def contract(pipeline_features: pd.DataFrame, serving_features: pd.DataFrame, path: str = "serving") -> Check:
    """A serving feature path (`path`: batch scoring, the gateway's table) reproduces the
    pipeline's features for the holdout rows."""
    same_columns = list(pipeline_features.columns) == list(serving_features.columns)
    same_rows = len(pipeline_features) == len(serving_features)
    gap = (
        float(np.max(np.abs(pipeline_features.to_numpy() - serving_features.to_numpy())))
        if same_columns and same_rows
        else float("inf")
    )
    detail = "" if same_rows else f"{len(serving_features):,} of {len(pipeline_features):,} rows served"
    if not same_columns:
        detail = "column lists differ"
    return Check(f"feature contract ({path} = training)", f"{gap:.1e}", "= 0", gap == 0.0, detail)


def report(checks: list[Check]) -> dict:
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]}
