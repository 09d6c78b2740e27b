"""The time-based split: disjoint target periods, holdout at the very end, loud on short data."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cd4ml.data.split import Split, plan_split
from cd4ml.data.validation import DataValidationError


def targets(origin: date, split: Split) -> set[date]:
    """The periods forecast from `origin`."""
    step = timedelta(days=split.period_days)
    return {origin + h * step for h in range(1, split.horizon + 1)}


@pytest.mark.parametrize(
    ("first", "last", "horizon", "period_days"),
    [(date(2015, 1, 1), date(2016, 12, 31), 16, 1), (date(2012, 1, 6), date(2016, 12, 30), 8, 7)],
    ids=["daily", "weekly"],
)
def test_parts_do_not_overlap_and_holdout_is_the_last_horizon(
    first: date, last: date, horizon: int, period_days: int
) -> None:
    split = plan_split(first, last, horizon, period_days, train_origins=12, origin_stride=7, min_history=56)
    step = timedelta(days=period_days)
    train = set().union(*(targets(o, split) for o in split.train_origins))
    valid, holdout = targets(split.valid_origin, split), targets(split.holdout_origin, split)

    assert not train & valid and not train & holdout and not valid & holdout
    assert max(train) <= split.valid_origin and max(valid) <= split.holdout_origin
    assert holdout == {last - k * step for k in range(horizon)}
    assert len(split.train_origins) == 12
    assert split.train_origins == sorted(split.train_origins)
    assert split.train_origins[0] >= first + 56 * step


def test_origins_without_enough_history_are_dropped() -> None:
    first, last = date(2016, 1, 1), date(2016, 6, 10)
    split = plan_split(first, last, horizon=16, period_days=1, train_origins=12, origin_stride=7, min_history=56)
    assert 0 < len(split.train_origins) < 12
    assert min(split.train_origins) >= first + timedelta(days=56)


def test_too_short_history_raises_data_validation_error() -> None:
    first, last = date(2016, 1, 1), date(2016, 3, 31)  # 91 days < 56 + 3 x 16
    with pytest.raises(DataValidationError) as raised:
        plan_split(
            first,
            last,
            horizon=16,
            period_days=1,
            train_origins=12,
            origin_stride=7,
            min_history=56,
        )
    assert "104 periods of history" in str(raised.value)
