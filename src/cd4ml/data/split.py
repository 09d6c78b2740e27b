"""Time-based split by forecast origin: train origins, then validation, then the holdout.

Each part forecasts `horizon` periods after its origin; the parts' target periods never overlap
and the holdout's targets are the last `horizon` periods of the data (Favorita: 16 days).
"""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel

from cd4ml.data.validation import DataValidationError, Problem


class Split(BaseModel):
    first_date: date
    last_date: date
    horizon: int
    period_days: int
    holdout_origin: date
    valid_origin: date
    train_origins: list[date]


def plan_split(
    first_date: date,
    last_date: date,
    horizon: int,
    period_days: int,
    train_origins: int,
    origin_stride: int,
    min_history: int,
) -> Split:
    """Origins going back from the end of the data; raises if history is too short."""
    step = timedelta(days=period_days)
    holdout = last_date - horizon * step
    valid = holdout - horizon * step
    earliest = first_date + min_history * step
    latest_train = valid - horizon * step
    origins = [latest_train - k * origin_stride * step for k in range(train_origins)]
    origins = [o for o in origins if o >= earliest]
    if not origins:
        needed = min_history + 3 * horizon
        raise DataValidationError(
            [
                Problem(
                    "sales",
                    "date",
                    f"at least {needed} periods of history for horizon {horizon}",
                    1,
                    [{"first_date": str(first_date), "last_date": str(last_date)}],
                )
            ]
        )
    return Split(
        first_date=first_date,
        last_date=last_date,
        horizon=horizon,
        period_days=period_days,
        holdout_origin=holdout,
        valid_origin=valid,
        train_origins=sorted(origins),
    )
