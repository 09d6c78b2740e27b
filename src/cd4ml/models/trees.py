"""The CD4ML workshop's models: a decision tree and a random forest (scikit-learn).

Saved with skops, which loads only allow-listed types, so a model file is never an
arbitrary pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor
from sklearn.tree import DecisionTreeRegressor

from cd4ml.models.base import write_family
from cd4ml.target import to_log, to_sales

# Beyond what skops trusts by default (scikit-learn's estimators, numpy arrays), a tree or a
# forest needs only this; a file asking for anything else is refused, whatever module it names.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


class _SklearnForecaster:
    family: ClassVar[str]
    estimator_class: ClassVar[type]

    def __init__(self, **params):
        self.params = params

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
    ) -> Self:
        self.estimator_ = self.estimator_class(**self.params)
        self.estimator_.fit(X.to_numpy(np.float32), to_log(y), sample_weight=weight)
        return self

    def unstopped(self) -> Self:
        return type(self)(**self.params)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return to_sales(self.estimator_.predict(X.to_numpy(np.float32)))

    def to_onnx(self, n_features: int) -> bytes:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        onx = convert_sklearn(
            self.estimator_,
            initial_types=[("input", FloatTensorType([None, n_features]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        return onx.SerializeToString()

    def feature_importances(self) -> np.ndarray:
        return self.estimator_.feature_importances_

    def save(self, directory: Path) -> None:
        import skops.io

        write_family(directory, self.family)
        skops.io.dump(self.estimator_, directory / "model.skops")

    @classmethod
    def load(cls, directory: Path) -> Self:
        import skops.io
        from skops.io.exceptions import UntrustedTypesFoundException

        path = directory / "model.skops"
        model = cls()
        try:
            model.estimator_ = skops.io.load(path, trusted=TRUSTED_TYPES)
        except UntrustedTypesFoundException as exc:
            raise ValueError(f"{path}: refused, it asks for types a tree model never holds ({exc})") from None
        if not isinstance(model.estimator_, cls.estimator_class):
            raise ValueError(f"{path}: holds a {type(model.estimator_).__name__}, not a {cls.estimator_class.__name__}")
        return model


class DecisionTreeForecaster(_SklearnForecaster):
    family = "decision_tree"
    estimator_class = DecisionTreeRegressor


class RandomForestForecaster(_SklearnForecaster):
    family = "random_forest"
    estimator_class = RandomForestRegressor
