"""pandera schemas for the canonical sales table and the feature table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.errors
import pandera.pandas as pa

from cd4ml.data.validation import DataValidationError, problems_from_pandera
from cd4ml.features import FeatureSpec


def _finite(s: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(s.to_numpy(dtype=np.float64)), index=s.index)


def sales_schema(series_keys: list[str], covariates: list[str], attributes: list[str]) -> pa.DataFrameSchema:
    """The canonical table every reader produces."""
    columns = {
        "date": pa.Column("datetime64[ns]", nullable=False, coerce=True),
        "sales": pa.Column(float, pa.Check(_finite, name="finite"), nullable=False),
        "weight": pa.Column(float, pa.Check.gt(0), nullable=False),
    }
    columns |= {k: pa.Column(nullable=False) for k in series_keys}
    columns |= {c: pa.Column(float, [pa.Check(_finite, name="finite"), pa.Check.ge(0)], nullable=False)
                for c in covariates}
    columns |= {a: pa.Column(str, nullable=False) for a in attributes}
    return pa.DataFrameSchema(columns, strict=True, unique=["date", *series_keys])


def feature_schema(fs: FeatureSpec) -> pa.DataFrameSchema:
    """Model inputs: every column present, float32 and finite; horizons inside the forecast range."""
    checks = [pa.Check(_finite, name="finite")]
    columns = {c: pa.Column(np.float32, checks, nullable=False) for c in fs.columns}
    columns["horizon"] = pa.Column(np.float32, [*checks, pa.Check.in_range(1, fs.horizon)], nullable=False)
    return pa.DataFrameSchema(columns, strict=True, ordered=True)


def check(schema: pa.DataFrameSchema, frame: pd.DataFrame, file: str, first_line: int = 0) -> None:
    """Validate lazily; every failure is reported with its column, check and a few rows."""
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        raise DataValidationError(problems_from_pandera(exc.failure_cases, frame, file, first_line)) from exc


def input_schema(fs: FeatureSpec, key_dtypes: dict[str, str]) -> pa.DataFrameSchema:
    """The request-row contract a bundle serves: series keys, the date, known covariates."""
    columns = {"date": pa.Column("datetime64[ns]", nullable=False, coerce=True)}
    columns |= {k: pa.Column(key_dtypes[k], nullable=False, coerce=True) for k in fs.series_keys}
    bounded = [pa.Check.ge(0), pa.Check.lt(float("inf"))]  # built-in checks serialise with the bundle
    columns |= {c: pa.Column(float, bounded, nullable=False, coerce=True) for c in fs.covariates}
    return pa.DataFrameSchema(columns, strict="filter", name="request rows")
