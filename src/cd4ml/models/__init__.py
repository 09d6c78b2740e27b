"""Model families behind one interface: fit(X, y, weight) / predict(X) / to_onnx() / save / load.

Every family learns log1p(sales), the scale Favorita's NWRMSLE scores, and `predict` returns
sales. The ONNX export outputs the same log-scale value (see `cd4ml.target`).
"""

from __future__ import annotations

from pathlib import Path

from cd4ml.models.base import Forecaster
from cd4ml.models.lightgbm_model import LightGBMForecaster
from cd4ml.models.naive import SeasonalNaive
from cd4ml.models.trees import DecisionTreeForecaster, RandomForestForecaster

FAMILIES: dict[str, type[Forecaster]] = {
    "seasonal_naive": SeasonalNaive,
    "decision_tree": DecisionTreeForecaster,
    "random_forest": RandomForestForecaster,
    "lightgbm": LightGBMForecaster,
}


def make_model(kind: str, params: dict) -> Forecaster:
    if kind not in FAMILIES:
        raise ValueError(f"unknown model.type '{kind}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[kind](**params)


def load_model(directory: Path) -> Forecaster:
    kind = (directory / "family.txt").read_text().strip()
    return FAMILIES[kind].load(directory)


__all__ = ["FAMILIES", "Forecaster", "load_model", "make_model"]
