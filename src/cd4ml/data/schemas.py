"""pandera schemas: raw sales rows, the canonical sales table, the feature table, requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.errors
import pandera.pandas as pa

from cd4ml.data.spec import DatasetSpec
from cd4ml.data.validation import DataValidationError, problems_from_pandera
from cd4ml.features import FeatureSpec

TRUE_WORDS = {"true": 1.0, "false": 0.0, "t": 1.0, "f": 0.0, "yes": 1.0, "no": 0.0}


def _finite(s: pd.Series) -> pd.Series:
    return pd.Series(np.isfinite(s.to_numpy(dtype=np.float64)), index=s.index)


def to_number(values: pd.Series) -> pd.Series:
    """Numbers, and the true/false words flags are written with (covariates only)."""
    words = values.str.strip().str.lower().map(TRUE_WORDS)
    return words.fillna(pd.to_numeric(values, errors="coerce"))


def to_target(values: pd.Series) -> pd.Series:
    """A finite number; 'true', 'nan' or 'inf' are not sales."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    return numbers.where(np.isfinite(numbers))


def raw_schema(spec: DatasetSpec, date_format: str) -> pa.DataFrameSchema:
    """Checks on the raw text of each sales row, before anything is converted."""

    def parses_as_date(s: pd.Series) -> pd.Series:
        return pd.to_datetime(s, format=date_format, errors="coerce").notna()

    def is_number(s: pd.Series) -> pd.Series:
        return to_number(s).notna() | s.isna()

    def is_finite_number(s: pd.Series) -> pd.Series:
        return to_target(s).notna() | s.isna()  # an empty target fails 'not_nullable' instead

    date = pa.Check(parses_as_date, name=f"date format {date_format}")
    target = pa.Check(is_finite_number, name="is a finite number")
    covariate = pa.Check(is_number, name="is a number or true/false")
    columns = {
        spec.date_column: pa.Column(str, date, nullable=False),
        spec.target: pa.Column(str, target, nullable=False),
    }
    columns |= {key: pa.Column(str, nullable=False) for key in spec.series_keys}
    columns |= {cov: pa.Column(str, covariate, nullable=True) for cov in spec.covariates}
    columns |= {attr: pa.Column(str, nullable=True) for attr in spec.attributes}
    return pa.DataFrameSchema(columns, strict=False)


def sales_schema(series_keys: list[str], covariates: list[str], attributes: list[str]) -> pa.DataFrameSchema:
    """The canonical table every reader produces."""
    columns = {
        "date": pa.Column("datetime64[ns]", nullable=False, coerce=True),
        "sales": pa.Column(float, pa.Check(_finite, name="finite"), nullable=False),
        "weight": pa.Column(float, pa.Check.gt(0), nullable=False),
    }
    columns |= {k: pa.Column(nullable=False) for k in series_keys}
    known_ahead = [pa.Check(_finite, name="finite")]
    columns |= {c: pa.Column(float, known_ahead, nullable=False) for c in covariates}
    columns |= {a: pa.Column(str, nullable=False) for a in attributes}
    return pa.DataFrameSchema(columns, strict=True, unique=["date", *series_keys])


def feature_schema(fs: FeatureSpec) -> pa.DataFrameSchema:
    """Model inputs: every column present, float32 and finite; horizons in the forecast range."""
    checks = [pa.Check(_finite, name="finite")]
    columns = {c: pa.Column(np.float32, checks, nullable=False) for c in fs.columns}
    in_range = [*checks, pa.Check.in_range(1, fs.horizon)]
    columns["horizon"] = pa.Column(np.float32, in_range, nullable=False)
    return pa.DataFrameSchema(columns, strict=True, ordered=True)


def check(schema: pa.DataFrameSchema, frame: pd.DataFrame, file: str, first_line: int = 0) -> None:
    """Validate lazily; every failure is reported with its column, check and a few rows."""
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        problems = problems_from_pandera(exc.failure_cases, frame, file, first_line)
        raise DataValidationError(problems) from exc


def input_schema(fs: FeatureSpec, key_dtypes: dict[str, str]) -> pa.DataFrameSchema:
    """The request-row contract a bundle serves: series keys, the date, known covariates."""
    columns = {"date": pa.Column("datetime64[ns]", nullable=False, coerce=True)}
    columns |= {k: pa.Column(key_dtypes[k], nullable=False, coerce=True) for k in fs.series_keys}
    # built-in checks serialise with the bundle
    bounded = [pa.Check.gt(float("-inf")), pa.Check.lt(float("inf"))]
    columns |= {c: pa.Column(float, bounded, nullable=False, coerce=True) for c in fs.covariates}
    return pa.DataFrameSchema(columns, strict="filter", name="request rows")
