"""LightGBM, the default: one global gradient-boosted model over all series and horizons,
as in the Favorita and M5 winning solutions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Self

# OpenMP threads that spin while they wait make LightGBM 3-10x slower as soon as another process
# wants the same cores (parallel tests, a busy laptop); sleeping threads cost almost nothing.
# It only takes effect if set before LightGBM's OpenMP runtime loads, i.e. before this import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import numpy as np
import pandas as pd

from cd4ml.models.base import write_family
from cd4ml.target import to_log, to_sales


class LightGBMForecaster:
    family: ClassVar[str] = "lightgbm"

    def __init__(self, early_stopping_rounds: int = 50, **params):
        self.early_stopping_rounds = early_stopping_rounds
        self.params = {"objective": "regression", "verbose": -1, "n_jobs": 2, **params}

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
    ) -> Self:
        params = dict(self.params)
        rounds = params.pop("n_estimators", 500)
        # a leaf needs min_child_samples rows: on a small table (a short history, few series) the
        # default 50 allows no split at all, and the model is one constant
        params["min_child_samples"] = min(params.get("min_child_samples", 20), max(5, len(X) // 20))
        train = lgb.Dataset(
            X.to_numpy(np.float32), to_log(y), weight=weight, feature_name=list(X.columns), free_raw_data=True
        )
        callbacks, sets = [], []
        if valid is not None:
            sets = [lgb.Dataset(valid[0].to_numpy(np.float32), to_log(valid[1]), reference=train)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        self.booster_ = lgb.train(params, train, num_boost_round=rounds, valid_sets=sets, callbacks=callbacks)
        return self

    def unstopped(self) -> Self:
        rounds = self.booster_.best_iteration or self.booster_.current_iteration()
        return type(self)(self.early_stopping_rounds, **(self.params | {"n_estimators": rounds}))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return to_sales(
            self.booster_.predict(X.to_numpy(np.float32), num_iteration=self.booster_.best_iteration or None)
        )

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """Per-feature contributions in log-sales (TreeSHAP, computed by LightGBM itself)."""
        return self.booster_.predict(
            X.to_numpy(np.float32), pred_contrib=True, num_iteration=self.booster_.best_iteration or None
        )

    def feature_importances(self) -> np.ndarray:
        return self.booster_.feature_importance(importance_type="gain")

    def to_onnx(self, n_features: int) -> bytes:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        booster = self.booster_
        if booster.best_iteration:
            best = booster.model_to_string(num_iteration=booster.best_iteration)
            booster = lgb.Booster(model_str=best)
        inputs = [("input", FloatTensorType([None, n_features]))]
        onx = convert_lightgbm(booster, initial_types=inputs, target_opset=15)
        _round_thresholds_down(onx, booster)
        return onx.SerializeToString()

    def save(self, directory: Path) -> None:
        write_family(directory, self.family)
        self.booster_.save_model(str(directory / "model.txt"), num_iteration=self.booster_.best_iteration or None)

    @classmethod
    def load(cls, directory: Path) -> Self:
        model = cls()
        model.booster_ = lgb.Booster(model_file=str(directory / "model.txt"))
        return model


def _round_thresholds_down(onx, booster: lgb.Booster) -> None:
    """Make ONNX's float32 split thresholds compare like LightGBM's float64 ones.

    LightGBM splits at `x <= t` with t a double midway between two feature values; the ONNX
    tree stores float32(t), which rounds *up* onto the upper value about half the time, so rows
    holding exactly that value go left in ONNX and right in LightGBM. Rounding every such
    threshold down to the previous float32 restores identical decisions for float32 inputs.
    """
    import numpy as np

    doubles: dict[tuple[int, float], float] = {}

    def collect(node: dict) -> None:
        if "split_feature" in node:
            key = (node["split_feature"], float(np.float32(node["threshold"])))
            doubles[key] = min(doubles.get(key, node["threshold"]), node["threshold"])
            collect(node["left_child"])
            collect(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        collect(tree["tree_structure"])
    ensemble = next(n for n in onx.graph.node if n.op_type == "TreeEnsembleRegressor")
    attributes = {a.name: a for a in ensemble.attribute}
    values = list(attributes["nodes_values"].floats)
    features = attributes["nodes_featureids"].ints
    for i, (value, feature) in enumerate(zip(values, features, strict=True)):
        threshold = doubles.get((feature, float(np.float32(value))))
        if threshold is not None and float(np.float32(value)) > threshold:
            values[i] = float(np.nextafter(np.float32(value), np.float32(-np.inf)))
    attributes["nodes_values"].floats[:] = values
