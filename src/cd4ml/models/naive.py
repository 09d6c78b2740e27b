"""Seasonal naive: the same period one season ago (last week's same weekday for daily data)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from cd4ml.models.base import write_family
from cd4ml.target import to_sales


class SeasonalNaive:
    family: ClassVar[str] = "seasonal_naive"

    def __init__(self, column: str = "seasonal_naive_log"):
        self.column = column

    def fit(self, X: pd.DataFrame, y: np.ndarray, weight=None, valid=None) -> Self:
        self.column_index_ = X.columns.get_loc(self.column)
        return self

    def unstopped(self) -> Self:
        return type(self)(self.column)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return to_sales(X[self.column].to_numpy())

    def to_onnx(self, n_features: int) -> bytes:
        from onnx import TensorProto, helper, numpy_helper

        index = numpy_helper.from_array(np.array([self.column_index_], dtype=np.int64), "index")
        graph = helper.make_graph(
            [helper.make_node("Gather", ["input", "index"], ["variable"], axis=1)],
            "seasonal_naive",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
            [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
            initializer=[index],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()

    def save(self, directory: Path) -> None:
        write_family(directory, self.family)
        (directory / "column.txt").write_text(f"{self.column}\n{self.column_index_}\n")

    @classmethod
    def load(cls, directory: Path) -> Self:
        column, index = (directory / "column.txt").read_text().split()
        model = cls(column)
        model.column_index_ = int(index)
        return model
