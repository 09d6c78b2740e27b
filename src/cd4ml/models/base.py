"""The interface every model family honours, and the ONNX inference shared by all consumers."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, Self

import numpy as np
import pandas as pd


class Forecaster(Protocol):
    family: ClassVar[str]

    def fit(self, X: pd.DataFrame, y: np.ndarray, weight: np.ndarray | None = None,
            valid: tuple[pd.DataFrame, np.ndarray] | None = None) -> Self: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...

    def to_onnx(self, n_features: int) -> bytes: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...


def to_log(sales: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(np.asarray(sales, dtype=np.float64), 0, None))


def to_sales(log_sales: np.ndarray) -> np.ndarray:
    return np.clip(np.expm1(np.asarray(log_sales, dtype=np.float64).ravel()), 0, None)


def write_family(directory: Path, family: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "family.txt").write_text(family + "\n")


def onnx_predict(session, X: pd.DataFrame) -> np.ndarray:  # session: onnxruntime.InferenceSession
    """Sales predicted by an exported model (its output is log1p(sales))."""
    name = session.get_inputs()[0].name
    raw = session.run(None, {name: X.to_numpy(dtype=np.float32)})[0]
    return to_sales(raw)
