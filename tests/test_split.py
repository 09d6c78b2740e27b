"""The time-based split: disjoint target periods, holdout at the very end, loud on short data."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from cd4ml.data.split import HistoryTooShort, Split, plan_split


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
    assert split.refit_origins[-1] == split.holdout_origin and min(split.refit_origins) > max(split.train_origins)
    assert holdout == {last - k * step for k in range(horizon)}
    assert len(split.train_origins) == 12
    assert split.train_origins == sorted(split.train_origins)
    assert split.train_origins[0] >= first + 56 * step


def test_origins_without_enough_history_are_dropped() -> None:
    first, last = date(2016, 1, 1), date(2016, 6, 10)
    split = plan_split(first, last, horizon=16, period_days=1, train_origins=12, origin_stride=7, min_history=56)
    assert 0 < len(split.train_origins) < 12
    assert min(split.train_origins) >= first + timedelta(days=56)


def test_a_history_of_two_horizons_and_one_period_still_splits_and_says_how() -> None:
    first, last = date(2016, 1, 1), date(2016, 1, 15)  # 15 days: 2 x 7 + 1
    split = plan_split(first, last, horizon=7, period_days=1, train_origins=84, origin_stride=1)
    step = timedelta(days=1)
    holdout = targets(split.holdout_origin, split)
    assert holdout == {last - k * step for k in range(7)}
    assert split.valid_origin == first and split.train_origins == [first]
    assert all(not targets(o, split) & holdout for o in split.train_origins)
    assert split.min_history == 0
    assert any("training targets may share" in note for note in split.notes)
    assert any("min_history 56 → 0" in note for note in split.notes)
    assert split.refit_origins == [first + k * step for k in range(1, 8)]


def test_a_short_history_splits_into_half_history_half_training_origins() -> None:
    first, last = date(2016, 1, 1), date(2016, 1, 20)  # 20 days, horizon 7: 5 days before the validation origin
    split = plan_split(first, last, horizon=7, period_days=1, train_origins=84, origin_stride=1)
    assert split.min_history == 2
    assert split.train_origins == [first + timedelta(days=d) for d in range(2, 6)]


def test_weekly_data_gets_weekly_defaults() -> None:
    first, last = date(2014, 1, 3), date(2016, 12, 30)
    split = plan_split(first, last, horizon=8, period_days=7, train_origins=52, origin_stride=1)
    assert split.min_history == 13 and not split.notes
    assert [b - a for a, b in zip(split.train_origins, split.train_origins[1:], strict=False)] == [timedelta(7)] * 51


def test_too_short_history_names_the_parameter_the_periods_present_and_needed() -> None:
    first, last = date(2016, 1, 1), date(2016, 2, 1)  # 32 days < 2 x 16 + 1
    with pytest.raises(HistoryTooShort) as raised:
        plan_split(first, last, horizon=16, period_days=1, train_origins=12, origin_stride=7, min_history=56)
    message = str(raised.value)
    assert "split.horizon=16" in message and "at least 33 periods" in message and "the data has 32" in message
    assert "split.horizon to at most 15" in message
