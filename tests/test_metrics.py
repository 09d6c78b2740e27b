"""Forecast metrics checked against hand arithmetic, not against themselves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import r2_score

from cd4ml.metrics import (
    bias,
    evaluate,
    evaluate_slices,
    favorita_weights,
    mae,
    nwrmsle,
    r2,
    rmsle,
    wape,
)

# The worked example: one perishable row (weight 1.25), two regular rows.
ACTUAL = np.array([2.0, 0.0, 5.0])
PREDICTED = np.array([3.0, 1.0, 5.0])
WEIGHTS = np.array([1.25, 1.0, 1.0])


def test_nwrmsle_matches_hand_computation() -> None:
    # log errors ln(p+1) - ln(a+1):
    #   row 1: ln(4) - ln(3) = ln(4/3) ~ 0.287682, squared ~ 0.082761, x 1.25 ~ 0.103451
    #   row 2: ln(2) - ln(1) = ln(2)   ~ 0.693147, squared ~ 0.480453, x 1.00
    #   row 3: ln(6) - ln(6) = 0
    # sum ~ 0.583904; / (1.25 + 1 + 1 = 3.25) ~ 0.179663; sqrt ~ 0.423867
    expected = math.sqrt((1.25 * math.log(4 / 3) ** 2 + 1.0 * math.log(2) ** 2 + 0.0) / 3.25)
    assert expected == pytest.approx(0.4238665, abs=1e-7)
    assert nwrmsle(ACTUAL, PREDICTED, WEIGHTS) == pytest.approx(expected, rel=1e-12)


def test_other_metrics_match_hand_computation() -> None:
    # rmsle: the same log errors, equal weights: sqrt((ln(4/3)^2 + ln(2)^2) / 3) ~ 0.433287
    expected_rmsle = math.sqrt((math.log(4 / 3) ** 2 + math.log(2) ** 2) / 3)
    # errors p - a = [1, 1, 0]; sum|a| = 7; mean(a) = 7/3
    # SS_res = 2; SS_tot = (1/3)^2 + (7/3)^2 + (8/3)^2 = 114/9; r2 = 1 - 18/114 = 16/19
    scores = evaluate(ACTUAL, PREDICTED, WEIGHTS)

    assert list(scores) == ["nwrmsle", "rmsle", "mae", "wape", "bias", "r2"]
    assert scores["rmsle"] == pytest.approx(expected_rmsle, rel=1e-12)
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["wape"] == pytest.approx(2 / 7)
    assert scores["bias"] == pytest.approx(2 / 7)
    assert scores["r2"] == pytest.approx(16 / 19)
    assert scores["r2"] == pytest.approx(r2_score(ACTUAL, PREDICTED))
    assert scores["rmsle"] == rmsle(ACTUAL, PREDICTED)
    assert scores["mae"] == mae(ACTUAL, PREDICTED)
    assert scores["r2"] == r2(ACTUAL, PREDICTED)


def test_negative_values_are_clipped_to_zero_before_the_log() -> None:
    # Returns (negative sales) count as 0 sold, and negative forecasts as 0 forecast.
    assert nwrmsle([-5.0, 2.0], [0.0, 2.0], [1.0, 1.0]) == 0.0
    assert rmsle([0.0, 2.0], [-3.0, 2.0]) == 0.0
    assert rmsle([-1.0], [1.0]) == pytest.approx(math.log(2))


def test_perfect_forecast_scores_zero_error_and_r2_one() -> None:
    actual = pd.Series([0.0, 1.0, 4.0, 10.0])
    scores = evaluate(actual, actual.copy(), favorita_weights([1, 0, 0, 1]))
    assert scores == {"nwrmsle": 0.0, "rmsle": 0.0, "mae": 0.0, "wape": 0.0, "bias": 0.0, "r2": 1.0}


def test_perishable_weight_raises_the_score_when_perishables_err_most() -> None:
    actual = np.array([10.0, 10.0])
    wrong_on_first = np.array([20.0, 10.0])
    perishable_first = favorita_weights([1, 0])
    perishable_second = favorita_weights([0, 1])

    unweighted = rmsle(actual, wrong_on_first)
    assert nwrmsle(actual, wrong_on_first, perishable_first) > unweighted
    assert nwrmsle(actual, wrong_on_first, perishable_second) < unweighted
    assert nwrmsle(actual, wrong_on_first, [1.0, 1.0]) == unweighted


def test_favorita_weights() -> None:
    assert favorita_weights([1, 0, True, False]).tolist() == [1.25, 1.0, 1.25, 1.0]
    assert favorita_weights(pd.Series([0, 1])).tolist() == [1.0, 1.25]
    with pytest.raises(ValueError, match="perishable"):
        favorita_weights([0, 2])


def test_wape_is_unsigned_and_bias_signed() -> None:
    actual = [10.0, 10.0]
    over, under = [12.0, 11.0], [8.0, 9.0]  # both miss by 3 units in total out of 20
    assert wape(actual, over) == pytest.approx(0.15)
    assert wape(actual, under) == pytest.approx(0.15)
    assert bias(actual, over) == pytest.approx(0.15)
    assert bias(actual, under) == pytest.approx(-0.15)
    # Offsetting errors cancel in bias but not in wape.
    assert bias(actual, [12.0, 8.0]) == 0.0
    assert wape(actual, [12.0, 8.0]) == pytest.approx(0.2)


def test_relative_metrics_are_nan_when_nothing_sold() -> None:
    assert math.isnan(wape([0.0, 0.0], [1.0, 0.0]))
    assert math.isnan(bias([0.0, 0.0], [1.0, 0.0]))
    assert math.isnan(r2([3.0, 3.0], [2.0, 3.0]))  # constant actual: R² undefined


@pytest.mark.parametrize(
    ("actual", "predicted", "weights", "message"),
    [
        ([1.0, 2.0], [1.0], [1.0, 1.0], "length mismatch"),
        ([1.0, 2.0], [1.0, 2.0], [1.0], "length mismatch"),
        ([], [], [], "actual is empty"),
        ([1.0, 2.0], [1.0, float("nan")], [1.0, 1.0], "predicted has 1 NaN"),
        ([1.0, 2.0], [1.0, 2.0], [0.0, 0.0], "positive sum"),
        ([[1.0]], [[1.0]], [[1.0]], "one-dimensional"),
    ],
)
def test_invalid_input_is_rejected(actual: list, predicted: list, weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(actual, predicted, weights)
    with pytest.raises(ValueError, match=message):
        nwrmsle(actual, predicted, weights)


def test_unweighted_metrics_validate_too() -> None:
    for metric in (rmsle, mae, wape, bias, r2):
        with pytest.raises(ValueError, match="length mismatch"):
            metric([1.0, 2.0], [1.0])
        with pytest.raises(ValueError, match="NaN"):
            metric([1.0, 2.0], [np.nan, 1.0])


def _predictions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "family": ["DAIRY", "DAIRY", "DAIRY", "BREAD", "BREAD", "EGGS"],
            "store": [1, 2, 1, 2, 1, 2],
            "actual": [3.0, 0.0, 8.0, 5.0, 2.0, 7.0],
            "prediction": [2.0, 1.0, 9.0, 5.0, 4.0, 6.0],
            "weight": [1.25, 1.25, 1.25, 1.0, 1.0, 1.25],
        }
    )


def test_evaluate_slices_equals_evaluate_on_each_subset() -> None:
    frame = _predictions()
    result = evaluate_slices(frame, ["family", "store"])

    metrics = ["nwrmsle", "rmsle", "mae", "wape", "bias", "r2"]
    assert list(result.columns) == ["slice", "value", "rows", *metrics]
    assert list(zip(result["slice"], result["value"], result["rows"], strict=True)) == [
        ("family", "BREAD", 2),
        ("family", "DAIRY", 3),
        ("family", "EGGS", 1),  # a one-row slice is still reported
        ("store", 1, 3),
        ("store", 2, 3),
    ]
    for row in result.itertuples(index=False):
        subset = frame[frame[row.slice] == row.value]
        expected = evaluate(subset["actual"], subset["prediction"], subset["weight"])
        got = {name: getattr(row, name) for name in expected}
        assert got == pytest.approx(expected, nan_ok=True)


def test_evaluate_slices_accepts_custom_column_names_and_keeps_missing_values() -> None:
    frame = _predictions().rename(columns={"actual": "sales", "prediction": "yhat"})
    frame.loc[5, "family"] = None

    result = evaluate_slices(frame, ["family"], actual="sales", predicted="yhat")

    assert result["rows"].sum() == len(frame)
    assert result["value"].isna().sum() == 1


def test_evaluate_slices_names_missing_columns_and_rejects_empty_frames() -> None:
    with pytest.raises(ValueError, match="class"):
        evaluate_slices(_predictions(), ["class"])
    with pytest.raises(ValueError, match="empty"):
        evaluate_slices(_predictions().iloc[:0], ["family"])
