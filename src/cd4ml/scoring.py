"""Scoring rows with a model bundle: the one serving path for batch prediction, `verify`,
the gates' champion re-scoring and the gateway.

Rows hold the series keys, the date and the known covariates. Their features come from
`cd4ml.features` — the same definition training used — fed by the series history carried in
the bundle (and, in the gateway, by actuals that arrive later).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from cd4ml.calendar_features import holiday_counts
from cd4ml.features import FeatureSpec, row_features, seasonal_naive, series_state


class InputError(ValueError):
    """Rows that cannot be scored; each problem names the row, the field and the reason."""

    def __init__(self, problems: list[tuple[int, str, str]], unit: str = "row"):
        self.problems = problems
        shown = "\n".join(f"  {unit} {r}: {f}: {why}" for r, f, why in problems[:5])
        more = f"\n  … and {len(problems) - 5} more" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} problem(s):\n{shown}{more}")


@dataclass(frozen=True)
class RowFormat:
    """How a dataset's own rows look: its date column and format, its forecast column, and the
    covariates rows may leave out because training only ever saw them empty (read as 0)."""

    date_column: str = "date"
    date_format: str | None = None  # strftime; None: ISO 8601 only
    target: str = "prediction"
    optional_covariates: frozenset[str] = frozenset()

    def parse_dates(self, values: pd.Series) -> pd.Series:
        """Dates in the dataset's format; ISO 8601 is always understood too (never ambiguous with it)."""
        iso = pd.to_datetime(values, errors="coerce", format="ISO8601")
        if self.date_format is None:
            return iso
        return pd.to_datetime(values, errors="coerce", format=self.date_format).fillna(iso)

    @property
    def date_hint(self) -> str:
        return f"{self.date_format} or YYYY-MM-DD" if self.date_format else "YYYY-MM-DD"


def series_index(frame: pd.DataFrame, keys: list[str]) -> pd.Index:
    """The series keys of rows, comparable with `frame.set_index(keys).index` (plain for one key)."""
    return pd.MultiIndex.from_frame(frame[keys]) if len(keys) > 1 else pd.Index(frame[keys[0]])


def _covariate(values: pd.Series, optional: bool) -> pd.Series:
    """Numbers as ingest reads them (true/false words are 1/0); an optional covariate's empty cells are 0."""
    numbers = values.astype(np.float64) if values.dtype == bool else pd.to_numeric(values, errors="coerce")
    words = numbers.isna() & values.notna()
    if words.any():
        from cd4ml.data.schemas import to_number

        numbers = numbers.astype(np.float64)
        numbers[words] = to_number(values[words].astype("string")).astype(np.float64)
    return numbers.fillna(0.0) if optional else numbers


@dataclass
class SeriesData:
    """What features are computed from: recent history, series attributes, holidays."""

    history: pd.DataFrame  # date, series keys, sales, covariates
    series: pd.DataFrame  # series keys + attributes
    holidays: pd.DataFrame  # date, locale, name

    @classmethod
    def read(cls, directory: Path) -> SeriesData:
        return cls(*(pd.read_parquet(directory / f"{n}.parquet") for n in ("history", "series", "holidays")))

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("history", "series", "holidays"):
            getattr(self, name).to_parquet(directory / f"{name}.parquet", index=False)

    @property
    def last_date(self) -> date:
        return pd.Timestamp(self.history["date"].max()).date()

    def with_actuals(self, actuals: pd.DataFrame, keys: list[str], through: date) -> SeriesData:
        """History with the observed sales dated after it and up to `through` appended.

        Only what was observed is added: a series without an actual for a day has no row for it,
        and the features average the days that are known. (Filling such cells with 0 sales
        would collapse the rolling means of every series nobody reported on.) Covariates the
        actuals do not carry stay empty, which the features' averages skip likewise.
        """
        when = pd.to_datetime(actuals["date"])
        newer = actuals[(when > pd.Timestamp(self.last_date)) & (when <= pd.Timestamp(through))]
        if newer.empty:
            return self
        observed = (
            newer.assign(date=pd.to_datetime(newer["date"]))
            .astype({k: self.series[k].dtype for k in keys})
            .drop_duplicates([*keys, "date"], keep="last")
            .reindex(columns=self.history.columns)
        )
        history = pd.concat(
            [self.history.assign(date=pd.to_datetime(self.history["date"])), observed], ignore_index=True
        )
        return SeriesData(history, self.series, self.holidays)


@dataclass
class Predictor:
    """A model as the serving side sees it: its feature spec and its ONNX graph."""

    spec: FeatureSpec
    onnx: bytes

    @classmethod
    def read(cls, directory: Path) -> Predictor:
        spec = FeatureSpec.model_validate_json((directory / "feature_spec.json").read_text())
        return cls(spec, (directory / "model.onnx").read_bytes())

    @cached_property
    def session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])

    @cached_property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def predict_features(self, X: pd.DataFrame) -> np.ndarray:
        from cd4ml.target import onnx_predict

        return onnx_predict(self.session, X)


class Scorer:
    """Validates rows, computes their features at a forecast origin and predicts sales."""

    def __init__(self, predictor: Predictor, data: SeriesData, origin: date | None = None):
        self.predictor, self.data = predictor, data
        self.spec = predictor.spec
        self.origin = origin or data.last_date
        self.state = self._state()
        self.attributes = data.series.set_index(self.spec.series_keys)
        self.holidays = holiday_counts(data.holidays, self.spec)

    def _state(self) -> pd.DataFrame:
        con = duckdb.connect()
        try:
            con.register("history", self.data.history)
            return series_state(con, self.spec, "history", self.origin, self.data.series)
        finally:
            con.close()

    @property
    def last_servable(self) -> date:
        return self.origin + timedelta(days=self.spec.horizon * self.spec.period_days)

    def validate(self, rows: pd.DataFrame, form: RowFormat = RowFormat(), unknown_ok: bool = False) -> pd.DataFrame:
        """Typed rows (dates in a `date` column), or InputError naming every row, field and reason.

        With `unknown_ok`, rows of series the model does not know pass (see `known`)."""
        spec = self.spec
        problems: list[tuple[int, str, str]] = []
        required = [
            form.date_column,
            *spec.series_keys,
            *(c for c in spec.covariates if c not in form.optional_covariates),
        ]
        missing = [c for c in required if c not in rows.columns]
        if missing:
            raise InputError([(0, c, "missing column") for c in missing])
        typed = rows.reset_index(drop=True)
        typed = typed.drop(columns="date", errors="ignore") if form.date_column != "date" else typed.copy()
        typed["date"] = form.parse_dates(typed[form.date_column])
        for c in spec.covariates:
            if c not in typed.columns:  # optional: training saw only empty values, read as 0
                typed[c] = 0.0
        for r in np.flatnonzero(typed["date"].isna()):
            problems.append((int(r), form.date_column, f"not a date ({form.date_hint})"))
        step = pd.Timedelta(days=spec.period_days)
        first, last = pd.Timestamp(self.origin) + step, pd.Timestamp(self.last_servable)
        outside = typed["date"].notna() & ((typed["date"] < first) | (typed["date"] > last))
        for r in np.flatnonzero(outside):
            problems.append(
                (
                    int(r),
                    form.date_column,
                    f"{typed['date'][r].date()} outside the servable range "
                    f"{first.date()}..{last.date()} (origin {self.origin}, horizon {spec.horizon})",
                )
            )
        if spec.period_days > 1:  # weekly rows name a period by its last day, as training did
            misaligned = typed["date"].notna() & (
                (typed["date"] - pd.Timestamp(self.origin)).dt.days % spec.period_days > 0
            )
            for r in np.flatnonzero(misaligned & ~outside):
                day = typed["date"][r].date()
                problems.append(
                    (int(r), form.date_column, f"{day} is not a period end (periods end on {self.origin:%A}s)")
                )
        for c in spec.covariates:
            typed[c] = _covariate(typed[c], optional=c in form.optional_covariates)
            for r in np.flatnonzero(~np.isfinite(typed[c].to_numpy(dtype=np.float64, na_value=np.nan))):
                problems.append((int(r), c, "not a number (nor true/false)"))
        for k in spec.series_keys:
            kind = self.attributes.index.get_level_values(k).dtype
            if kind.kind in "iu":
                typed[k] = pd.to_numeric(typed[k], errors="coerce")
                for r in np.flatnonzero(typed[k].isna()):
                    problems.append((int(r), k, "not an integer"))
        if not problems and not unknown_ok:
            for r in np.flatnonzero(~self.known(typed.astype(self._key_types()))):
                key = ", ".join(f"{k}={typed[k][r]}" for k in spec.series_keys)
                problems.append((int(r), "/".join(spec.series_keys), f"unknown series ({key})"))
        if problems:
            raise InputError(problems)
        return typed.astype(self._key_types())

    def known(self, rows: pd.DataFrame) -> np.ndarray:
        """Which validated rows belong to a series the model knows (has attributes for)."""
        return series_index(rows, self.spec.series_keys).isin(self.attributes.index)

    def seasonal_naive(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(forecast, has history) of validated rows by the seasonal-naive rule the baseline uses
        (the same period one season before, from the bundle's history): the fallback for rows
        the model cannot score. A series without history in the bundle gets 0."""
        keys = self.spec.series_keys
        has_history = series_index(rows, keys).isin(series_index(self.state, keys))
        return seasonal_naive(self.features(rows)), np.asarray(has_history)

    def _key_types(self) -> dict[str, object]:
        levels = self.attributes.index
        return {k: levels.get_level_values(k).dtype for k in self.spec.series_keys}

    def features(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Features of validated rows (see `validate`)."""
        targets = rows.join(self.attributes, on=self.spec.series_keys)
        return row_features(targets, self.state, self.origin, self.holidays, self.spec)

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        return self.predictor.predict_features(self.features(self.validate(rows)))


class FeatureTable:
    """Features of every servable (series, date), computed once with `row_features` at load.

    A request then only gathers its rows and writes its own covariates: the per-request cost is
    a dict lookup per row, with features identical to `Scorer.features` for the same rows.
    """

    def __init__(self, scorer: Scorer):
        spec = scorer.spec
        series = scorer.attributes.index.to_frame(index=False)
        step = pd.Timedelta(days=spec.period_days)
        dates = pd.date_range(pd.Timestamp(scorer.origin) + step, pd.Timestamp(scorer.last_servable), freq=step)
        grid = series.merge(pd.DataFrame({"date": dates}), how="cross")
        for c in spec.covariates:
            grid[c] = 0.0
        self.matrix = np.ascontiguousarray(scorer.features(grid).to_numpy(np.float32))
        keys = [grid[k].tolist() for k in spec.series_keys]
        ordinals = [d.toordinal() for d in grid["date"].dt.date]
        self.index = {(*key, day): i for i, (*key, day) in enumerate(zip(*keys, ordinals, strict=True))}
        columns = [spec.columns.index(c) for c in spec.covariates]
        contiguous = columns and columns == list(range(columns[0], columns[0] + len(columns)))
        # a slice writes a request's covariates in a third of the time a list of columns takes
        self.covariate_columns = slice(columns[0], columns[-1] + 1) if contiguous else columns

    def row(self, key: tuple, day: date) -> int | None:
        return self.index.get((*key, day.toordinal()))

    def gather(self, positions: list[int], covariates: np.ndarray) -> np.ndarray:
        """Feature rows for table positions, with each row's covariates (rows × covariates)."""
        X = self.matrix.take(positions, axis=0)
        if covariates.shape[1]:
            X[:, self.covariate_columns] = covariates
        return X
