"""The interface every model family honours."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol, Self

import numpy as np
import pandas as pd


class Forecaster(Protocol):
    family: ClassVar[str]

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        valid: tuple[pd.DataFrame, np.ndarray] | None = None,
    ) -> Self: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...

    def unstopped(self) -> Self:
        """An unfitted copy that trains as long as this fit did, with no validation set: the refit
        on the newest data, which leaves nothing to stop early on."""
        ...

    def to_onnx(self, n_features: int) -> bytes: ...

    def save(self, directory: Path) -> None: ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...


def write_family(directory: Path, family: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "family.txt").write_text(family + "\n")
