"""Time-based split by forecast origin: train origins, then validation, then the holdout.

Each part forecasts `horizon` periods after its origin. The holdout's targets are the last
`horizon` periods of the data (Favorita: 16 days) and no other part's targets reach into them.
Validation (early stopping) forecasts the `horizon` periods before the holdout; training origins
end where validation's targets begin, or — on a history too short for that — at the validation
origin, so their targets may share validation's periods but never the holdout's. (Validation
from several origins whose targets overlap training's was tried: calendar features let the
model recognise those periods, early stopping never stopped, and the holdout got worse.)

After the gates have judged the model trained this way, it is refit with the same settings on the
`refit_origins` as well: the newest origins, up to the holdout's, so the shipped model has seen the
newest data.
"""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel

MIN_HISTORY = {1: 56, 7: 13}  # automatic `split.min_history` by period length: 8 weeks, a quarter


class HistoryTooShort(ValueError):
    """The data holds too few periods for the horizon; the message names the parameter to change."""


class Split(BaseModel):
    first_date: date
    last_date: date
    horizon: int
    period_days: int
    holdout_origin: date
    valid_origin: date
    train_origins: list[date]
    refit_origins: list[date]  # newer than every train origin, up to the holdout origin
    min_history: int  # periods of data before every training origin, at least
    notes: list[str]  # what was chosen automatically, and why


def periods_between(first: date, last: date, period_days: int) -> int:
    """Periods from `first` to `last`, both included."""
    return (last - first).days // period_days + 1


def plan_split(
    first_date: date,
    last_date: date,
    horizon: int,
    period_days: int,
    train_origins: int,
    origin_stride: int,
    min_history: int | None = None,
) -> Split:
    """Origins going back from the end of the data; raises HistoryTooShort below 2 × horizon + 1 periods."""
    step = timedelta(days=period_days)
    present, needed = periods_between(first_date, last_date, period_days), 2 * horizon + 1
    if present < needed:
        raise HistoryTooShort(
            f"split.horizon={horizon} needs at least {needed} periods of history (2 × horizon + 1), "
            f"the data has {present} ({first_date}..{last_date}); "
            f"set split.horizon to at most {(present - 1) // 2}"
        )
    holdout = last_date - horizon * step
    valid = holdout - horizon * step
    notes = []
    latest = valid - horizon * step
    if latest < first_date:
        latest = valid
        notes.append("history too short for separate validation periods: training targets may share them")
    available = (latest - first_date).days // period_days  # periods before the latest train origin
    wanted = MIN_HISTORY.get(period_days, 1) if min_history is None else min_history
    history = min(wanted, available, max(1, available // 2))  # short data: half history, half origins
    if history < wanted:
        notes.append(f"min_history {wanted} → {history} periods: the data holds {present}")
    earliest = first_date + history * step
    stride = origin_stride * step
    origins = [latest - k * stride for k in range(train_origins)]
    origins = sorted(o for o in origins if o >= earliest)
    if len(origins) < train_origins:
        notes.append(f"{len(origins)} of {train_origins} train origins have {history} periods of history")
    refit = sorted(holdout - k * stride for k in range((holdout - latest) // stride))  # ends on the holdout
    return Split(
        first_date=first_date,
        last_date=last_date,
        horizon=horizon,
        period_days=period_days,
        holdout_origin=holdout,
        valid_origin=valid,
        train_origins=origins,
        refit_origins=refit,
        min_history=history,
        notes=notes,
    )
