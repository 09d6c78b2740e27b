"""The target period's calendar as features: date parts, paydays, holidays and how far they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from cd4ml.features import FeatureSpec

HOLIDAY_HORIZON_DAYS = 56  # farther holidays all read as this far


def calendar_features(
    dates: pd.Series, frame: pd.DataFrame, holidays: tuple[pd.Series, pd.Series], fs: FeatureSpec
) -> dict[str, np.ndarray]:
    """Calendar columns of target rows (`frame` holds their attributes, for local holidays)."""
    columns = {
        "dayofweek": dates.dt.weekday.to_numpy(),
        "day": dates.dt.day.to_numpy(),
        "month": dates.dt.month.to_numpy(),
        "weekofyear": dates.dt.isocalendar().week.astype(int).to_numpy(),
        "dayofyear": dates.dt.dayofyear.to_numpy(),
    }
    columns["paydays"], columns["since_payday"] = _paydays(dates, fs.period_days)
    columns["holiday_national"], columns["holiday_local"] = holiday_counts_lookup(dates, frame, holidays, fs)
    if fs.holiday_distance:
        columns["holiday_next"], columns["holiday_last"] = holiday_distances(dates, holidays[0].index, fs)
    return columns


def _period_end(dates: pd.Series, fs: FeatureSpec) -> pd.Series:
    """The period a calendar day falls in, named by the period's last day."""
    shift = (fs.anchor_weekday - dates.dt.weekday) % fs.period_days
    return dates + pd.to_timedelta(shift, unit="D")


def holiday_counts(holidays: pd.DataFrame, fs: FeatureSpec) -> tuple[pd.Series, pd.Series]:
    """Holidays per period: national by period end, local by (period end, locale)."""
    ends = _period_end(pd.to_datetime(holidays["date"]), fs)
    national = holidays["locale"] == ""
    nat = ends[national].value_counts()
    local = pd.Series(1, index=pd.MultiIndex.from_arrays([ends[~national], holidays["locale"][~national]]))
    return nat, local.groupby(level=[0, 1]).sum()


def _paydays(dates: pd.Series, period_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Paydays (the 15th and the month's last day) in each period, and days since the last one."""
    count = np.zeros(len(dates))
    for back in range(period_days):
        day = dates - pd.Timedelta(days=back)
        count += ((day.dt.day == 15) | day.dt.is_month_end).to_numpy()
    d = dates.dt.day.to_numpy()
    since = np.where(dates.dt.is_month_end | (d == 15), 0, np.where(d > 15, d - 15, d))
    return count, since


def holiday_counts_lookup(
    dates: pd.Series, frame: pd.DataFrame, holidays: tuple[pd.Series, pd.Series], fs: FeatureSpec
) -> tuple[np.ndarray, np.ndarray]:
    national, local = holidays
    nat = dates.map(national).fillna(0).to_numpy(dtype=np.float32)
    loc = np.zeros(len(frame), dtype=np.float32)
    if len(local):
        for column in fs.local_columns:
            index = pd.MultiIndex.from_arrays([dates, frame[column].astype(str)])
            # a city and its province may share a name: count a local holiday once
            loc = np.maximum(loc, local.reindex(index).fillna(0).to_numpy(dtype=np.float32))
    return nat, loc


HOLIDAY_HORIZON_DAYS = 56  # farther holidays all read as this far


def holiday_distances(dates: pd.Series, national: pd.Index, fs: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Periods from each date to the next national holiday (0: its own period) and since the last."""
    cap = HOLIDAY_HORIZON_DAYS // fs.period_days
    days = np.sort(pd.DatetimeIndex(national).to_numpy().astype("datetime64[D]"))
    at = dates.to_numpy().astype("datetime64[D]")
    if not len(days):
        return np.full(len(at), cap, np.float32), np.full(len(at), cap, np.float32)
    after = np.searchsorted(days, at, side="left")
    before = np.searchsorted(days, at, side="right") - 1
    ahead = (days[np.minimum(after, len(days) - 1)] - at).astype(np.int64) / fs.period_days
    behind = (at - days[np.maximum(before, 0)]).astype(np.int64) / fs.period_days
    ahead = np.where(after < len(days), ahead, cap)
    behind = np.where(before >= 0, behind, cap)
    return np.minimum(ahead, cap).astype(np.float32), np.minimum(behind, cap).astype(np.float32)
