"""Batch prediction: score a CSV of rows with a bundle, chunk by chunk, through the serving path.

Rows are read and written in the dataset's own language (its date column and format, its
target name; see `bundle.row_format`); rows of series the model does not know get a flagged
fallback instead of stopping the job, unless asked to.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from cd4ml.bundle import dataset_spec, history_span_days, scorer
from cd4ml.scoring import InputError, RowFormat, Scorer

CHUNK_ROWS = 250_000
FALLBACK_COLUMN = "fallback"


class UnknownSeries(StrEnum):
    """What to do with a row whose series the model never saw."""

    ERROR = "error"  # refuse the file, naming the line
    NAIVE = "naive"  # the seasonal-naive value from the bundle's history (0 without history), flagged
    ZERO = "zero"  # 0, flagged


class Fallback(StrEnum):
    """Why a row's forecast is not the model's; written in the `fallback` column."""

    SEASONAL_NAIVE = "seasonal_naive"
    ZERO = "zero"


class OriginError(ValueError):
    """A forecast origin the bundle's data cannot support; the message says which dates can."""


@dataclass
class BatchResult:
    rows: int
    seconds: float
    fallbacks: Counter[Fallback] = field(default_factory=Counter)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")

    @property
    def fallback_summary(self) -> str:
        if not self.fallbacks:
            return "no unknown series"
        kinds = ", ".join(f"{n:,} {kind.value}" for kind, n in sorted(self.fallbacks.items()))
        return f"fallback for unknown series: {sum(self.fallbacks.values()):,} rows ({kinds})"


def open_scorer(bundle: Path, origin: date | None) -> Scorer:
    """A scorer forecasting from `origin`, refused unless the bundle holds every period the
    series state at `origin` reads: missing periods would silently count as no sales."""
    score = scorer(bundle, origin)
    if origin is None:
        return score
    first, last, step = score.data.history["date"].min().date(), score.data.last_date, score.spec.period_days
    dataset = dataset_spec(bundle)
    data_starts = dataset and dataset["report"].get("first_date")
    if data_starts is None or first > date.fromisoformat(data_starts):  # history cut to the bundle's window
        first += timedelta(days=history_span_days(score.spec) - step)
    if not first <= origin <= last:
        why = f"is after the bundle's last actuals ({last})" if origin > last else "needs history the bundle lacks"
        raise OriginError(
            f"--origin {origin} {why}: this bundle forecasts from origins {first}..{last} "
            "(leave --origin out to forecast from its last actuals)"
        )
    if (last - origin).days % step:
        raise OriginError(
            f"--origin {origin} is not a period end: this {score.spec.frequency} data's periods end on "
            f"{last:%A}s (e.g. {last - timedelta(days=step)}, {last})"
        )
    return score


def predict_file(
    scorer: Scorer,
    source: Path,
    target: Path,
    form: RowFormat = RowFormat(),
    unknown: UnknownSeries = UnknownSeries.ERROR,
    progress: Callable[[int], None] | None = None,
) -> BatchResult:
    """Write every input row, in order, with the forecast under `form.target` and a `fallback`
    column (empty for the model's forecasts); a bad row stops the job naming its line."""
    started, done, fallbacks = time.perf_counter(), 0, Counter[Fallback]()
    keys = {k: str for k in scorer.spec.series_keys if scorer.attributes.index.get_level_values(k).dtype == object}
    text = keys | {c: str for c in scorer.spec.covariates}  # written back as given (TRUE stays TRUE)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    try:
        for number, chunk in enumerate(pd.read_csv(source, chunksize=CHUNK_ROWS, dtype=text)):
            try:
                rows = scorer.validate(chunk, form, unknown_ok=unknown is not UnknownSeries.ERROR)
                _free_output_columns(chunk, form)
            except InputError as exc:
                lines = [(done + r + 2, f, why) for r, f, why in exc.problems]
                raise InputError(lines, unit=f"{source.name} line") from None
            forecast, why = forecast_rows(scorer, rows, unknown)
            chunk[form.target] = forecast
            chunk[FALLBACK_COLUMN] = [f.value if f else None for f in why]
            fallbacks.update(f for f in why if f)
            chunk.to_csv(partial, mode="w" if number == 0 else "a", header=number == 0, index=False)
            done += len(chunk)
            if progress:
                progress(len(chunk))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return BatchResult(done, time.perf_counter() - started, fallbacks)


def forecast_rows(scorer: Scorer, rows: pd.DataFrame, unknown: UnknownSeries) -> tuple[np.ndarray, list]:
    """(forecast, fallback or None) per validated row: the model's for known series, `unknown`'s rule for others."""
    known = scorer.known(rows)
    forecast = np.zeros(len(rows))
    why: list[Fallback | None] = [None] * len(rows)
    if known.any():
        forecast[known] = scorer.predictor.predict_features(scorer.features(rows[known]))
    others = np.flatnonzero(~known)
    if len(others) and unknown is UnknownSeries.NAIVE:
        naive, has_history = scorer.seasonal_naive(rows.iloc[others])
        forecast[others] = naive
        for r, history in zip(others, has_history, strict=True):
            why[r] = Fallback.SEASONAL_NAIVE if history else Fallback.ZERO
    elif len(others):
        for r in others:
            why[r] = Fallback.ZERO
    return forecast, why


def _free_output_columns(chunk: pd.DataFrame, form: RowFormat) -> None:
    """Output columns may replace empty input columns (a sales file's layout), never values."""
    for column in (form.target, FALLBACK_COLUMN):
        if column in chunk.columns and chunk[column].notna().any():
            first = int(np.argmax(chunk[column].notna()))
            raise InputError([(first, column, "holds values; the forecast would overwrite them")])
