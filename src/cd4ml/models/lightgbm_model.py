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

from cd4ml.models.base import to_log, to_sales, write_family


class LightGBMForecaster:
    family: ClassVar[str] = "lightgbm"

    def __init__(self, early_stopping_rounds: int = 50, **params):
        self.early_stopping_rounds = early_stopping_rounds
        self.params = {"objective": "regression", "verbose": -1, "n_jobs": 2, **params}

    def fit(self, X: pd.DataFrame, y: np.ndarray, weight: np.ndarray | None = None,
            valid: tuple[pd.DataFrame, np.ndarray] | None = None) -> Self:
        params = dict(self.params)
        rounds = params.pop("n_estimators", 500)
        train = lgb.Dataset(X.to_numpy(np.float32), to_log(y), weight=weight,
                            feature_name=list(X.columns), free_raw_data=True)
        callbacks, sets = [], []
        if valid is not None:
            sets = [lgb.Dataset(valid[0].to_numpy(np.float32), to_log(valid[1]), reference=train)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        self.booster_ = lgb.train(params, train, num_boost_round=rounds, valid_sets=sets,
                                  callbacks=callbacks)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return to_sales(self.booster_.predict(X.to_numpy(np.float32),
                                              num_iteration=self.booster_.best_iteration or None))

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """Per-feature contributions in log-sales (TreeSHAP, computed by LightGBM itself)."""
        return self.booster_.predict(X.to_numpy(np.float32), pred_contrib=True,
                                     num_iteration=self.booster_.best_iteration or None)

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
        return onx.SerializeToString()

    def save(self, directory: Path) -> None:
        write_family(directory, self.family)
        self.booster_.save_model(str(directory / "model.txt"),
                                 num_iteration=self.booster_.best_iteration or None)

    @classmethod
    def load(cls, directory: Path) -> Self:
        model = cls()
        model.booster_ = lgb.Booster(model_file=str(directory / "model.txt"))
        return model
