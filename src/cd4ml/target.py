"""The target scale: models learn log1p(sales), what Favorita's NWRMSLE scores; ONNX graphs
output it. Kept free of model libraries so serving imports stay light."""

from __future__ import annotations

import numpy as np
import pandas as pd


def to_log(sales: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(np.asarray(sales, dtype=np.float64), 0, None))


def to_sales(log_sales: np.ndarray) -> np.ndarray:
    # np.maximum, not np.clip: same values at a third of the cost on the request path
    return np.maximum(np.expm1(np.asarray(log_sales, dtype=np.float64).ravel()), 0.0)


def onnx_predict(session, X: pd.DataFrame) -> np.ndarray:  # session: onnxruntime.InferenceSession
    """Sales predicted by an exported model."""
    name = session.get_inputs()[0].name
    return to_sales(session.run(None, {name: X.to_numpy(dtype=np.float32)})[0])
