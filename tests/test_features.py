"""The one feature definition: no look-ahead, hand-checked values, same in training and serving."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from cd4ml.calendar_features import HOLIDAY_HORIZON_DAYS, holiday_counts
from cd4ml.features import (
    MISSING_CODE,
    FeatureSpec,
    build_feature_spec,
    encode,
    examples_at_origin,
    row_features,
    seasonal_naive,
    series_state,
)

FIRST, LAST = date(2016, 1, 1), date(2016, 5, 31)
HORIZON = 16
ORIGIN = LAST - timedelta(days=HORIZON)  # 2016-05-15, a payday; targets 05-16 .. 05-31
NATIONAL_DAY, QUITO_DAY = date(2016, 5, 24), date(2016, 5, 20)
STORES = {1: "Quito", 2: "Guayaquil"}
ITEMS = {10: "GROCERY I", 20: "DAIRY", 30: "BEVERAGES"}
KEYS = ["store_nbr", "item_nbr"]
KEEP = ["sales", "weight"]


def canonical_table(seed: int = 0) -> pd.DataFrame:
    """A canonical sales table: 2 stores x 3 items, daily, with a weekly pattern and promotions."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(FIRST, LAST, freq="D")
    rows = []
    for store, city in STORES.items():
        for item, family in ITEMS.items():
            promo = rng.random(len(dates)) < 0.2
            level = rng.uniform(2, 20) * (1 + 0.5 * (dates.weekday >= 5)) * (1 + promo)
            rows.append(
                pd.DataFrame(
                    {
                        "date": dates.date,
                        "store_nbr": store,
                        "item_nbr": item,
                        "sales": rng.poisson(level).astype(float),
                        "onpromotion": promo.astype(float),
                        "family": family,
                        "city": city,
                        "weight": 1.25 if family == "DAIRY" else 1.0,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def holidays_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.to_datetime([NATIONAL_DAY, QUITO_DAY]),
            "locale": ["", "Quito"],
            "name": ["Batalla de Pichincha", "Fiesta de Quito"],
        }
    )


def connect(table: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding `table` as relation `sales`, typed like the ingested file."""
    con = duckdb.connect()
    con.register("frame", table)
    con.execute("CREATE TABLE sales AS SELECT * REPLACE (CAST(date AS DATE) AS date) FROM frame")
    return con


def feature_spec_for(con: duckdb.DuckDBPyConnection, horizon: int = HORIZON) -> FeatureSpec:
    dataset = {
        "spec": {
            "series_keys": KEYS,
            "covariates": ["onpromotion"],
            "frequency": "daily",
            "holidays": {"local_columns": ["city"]},
        },
        "attributes": ["family", "city"],
    }
    return build_feature_spec(dataset, con, "sales", horizon, windows=[7, 14, 28], weekday_weeks=[4])


def series_of(table: pd.DataFrame) -> pd.DataFrame:
    """Each series' keys and attributes, as a bundle carries them."""
    return table[[*KEYS, "family", "city"]].drop_duplicates()


def examples(table: pd.DataFrame, origin: date = ORIGIN) -> tuple[pd.DataFrame, pd.DataFrame, FeatureSpec]:
    con = connect(table)
    fs = feature_spec_for(con)
    features, labels = examples_at_origin(con, fs, "sales", origin, holiday_counts(holidays_frame(), fs), KEEP)
    con.close()
    return features, labels, fs


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return canonical_table()


@pytest.fixture(scope="module")
def holdout(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, FeatureSpec]:
    return examples(table)


@pytest.mark.parametrize("origin", [ORIGIN, ORIGIN - timedelta(days=45)], ids=["holdout", "train"])
def test_future_sales_cannot_change_features(table: pd.DataFrame, origin: date) -> None:
    """THE leakage test: rewrite every sale after the origin; only the labels may change."""
    features, labels, _ = examples(table, origin)
    future = table["date"] > origin
    tampered = table.copy()
    rng = np.random.default_rng(1)
    tampered.loc[future, "sales"] = table.loc[future, "sales"] * 100 + rng.integers(1, 1000, future.sum())

    features_after, labels_after, _ = examples(tampered, origin)

    assert len(features) == len(STORES) * len(ITEMS) * HORIZON
    pd.testing.assert_frame_equal(features_after, features)
    pd.testing.assert_frame_equal(labels_after.drop(columns="sales"), labels.drop(columns="sales"))
    assert (labels_after["sales"].to_numpy() != labels["sales"].to_numpy()).all()


def test_series_state_is_computed_from_rows_up_to_the_origin() -> None:
    sales = [5, 0, 3, 8, 0, 0, 2, 7, 1, 0, 4, 9, 6, 3, 100, 200, 300]  # origin: the 14th value
    days = [date(2016, 3, 1) + timedelta(days=i) for i in range(len(sales))]
    tiny = pd.DataFrame(
        {
            "date": days,
            "store_nbr": 1,
            "item_nbr": 10,
            "sales": [float(s) for s in sales],
            "onpromotion": 0.0,
            "family": "DAIRY",
            "city": "Quito",
            "weight": 1.0,
        }
    )
    origin = days[13]
    known = np.array(sales[:14], dtype=float)
    con = connect(tiny)
    fs = feature_spec_for(con, horizon=3)
    features, _ = examples_at_origin(con, fs, "sales", origin, holiday_counts(holidays_frame(), fs), KEEP)
    state = series_state(con, fs, "sales", origin, series_of(tiny)).iloc[0]

    last7 = np.log1p(known[-7:])
    assert features["lmean_7"].to_numpy() == pytest.approx([last7.mean()] * 3, rel=1e-6)
    assert features["lstd_7"].iloc[0] == pytest.approx(last7.std(), rel=1e-6)
    assert features["zero_7"].iloc[0] == pytest.approx(1 / 7)  # one zero (the 10th) in the last 7
    assert features["lmean_14"].iloc[0] == pytest.approx(np.log1p(known).mean(), rel=1e-6)
    assert features["lmean_28"].iloc[0] == pytest.approx(np.log1p(known).mean(), rel=1e-6)
    assert features["history"].iloc[0] == 14
    assert features["since_sale"].iloc[0] == 0
    assert [state[f"last_{j}"] for j in range(7)] == list(known[::-1][:7])
    assert [features[f"lag_{j}"].iloc[0] for j in range(7)] == pytest.approx(np.log1p(known[::-1][:7]), rel=1e-6)


def test_group_levels_average_the_series_of_each_group(table: pd.DataFrame, holdout) -> None:
    """Each store's, item's, family's and city's level, and all series', is the mean of its
    series' own levels at the origin; every row of a series carries its groups' levels."""
    features, labels, fs = holdout
    assert fs.groups == ["", "store_nbr", "item_nbr", "family", "city"]
    rows = pd.concat([labels[KEYS], features], axis=1).merge(series_of(table), on=KEYS)
    own = rows.drop_duplicates(KEYS)
    assert rows["group_all_lmean_7"].to_numpy() == pytest.approx([own["lmean_7"].mean()] * len(rows), rel=1e-6)
    for group in ("store_nbr", "family"):
        expected = own.groupby(group)["lmean_28"].mean()
        assert rows[f"group_{group}_lmean_28"].to_numpy() == pytest.approx(
            rows[group].map(expected).to_numpy(), rel=1e-6
        )
    assert rows.groupby("family")["group_family_lmean_7"].nunique().eq(1).all()


def test_holiday_distance_counts_periods_to_the_next_and_since_the_last(holdout) -> None:
    features, labels, _ = holdout
    days = (labels["date"].dt.date - NATIONAL_DAY).map(lambda d: d.days).to_numpy()
    cap = HOLIDAY_HORIZON_DAYS  # no other national holiday in the table
    assert features["holiday_next"].to_numpy() == pytest.approx(np.where(days <= 0, -days, cap))
    assert features["holiday_last"].to_numpy() == pytest.approx(np.where(days >= 0, days, cap))


def test_seasonal_naive_repeats_last_weeks_same_weekday(table: pd.DataFrame, holdout) -> None:
    features, labels, _ = holdout
    history = table.set_index(["store_nbr", "item_nbr", "date"])["sales"]
    expected = []
    for row in labels.itertuples():
        h = (row.date.date() - ORIGIN).days
        same_weekday = row.date.date() - timedelta(days=7 * -(-h // 7))  # latest one at or before ORIGIN
        assert same_weekday <= ORIGIN < same_weekday + timedelta(days=7)
        expected.append(history[(row.store_nbr, row.item_nbr, same_weekday)])
    assert sorted(set(features["horizon"].astype(int))) == list(range(1, HORIZON + 1))
    np.testing.assert_allclose(seasonal_naive(features), expected, rtol=1e-6)


def test_horizon_runs_from_one_to_h_for_every_series(holdout) -> None:
    features, labels, _ = holdout
    per_series = features["horizon"].groupby([labels[k] for k in KEYS]).apply(lambda h: sorted(h.astype(int)))
    assert len(per_series) == len(STORES) * len(ITEMS)
    assert all(h == list(range(1, HORIZON + 1)) for h in per_series)
    days_ahead = (labels["date"] - pd.Timestamp(ORIGIN)).dt.days
    np.testing.assert_array_equal(features["horizon"].to_numpy(), days_ahead.to_numpy())


def _on(features: pd.DataFrame, labels: pd.DataFrame, day: date, store: int | None = None) -> pd.DataFrame:
    chosen = labels["date"] == pd.Timestamp(day)
    if store is not None:
        chosen &= labels["store_nbr"] == store
    return features[chosen.to_numpy()]


@pytest.mark.parametrize(
    ("origin", "day", "paydays", "since"),
    [
        (date(2016, 3, 31), date(2016, 4, 1), 0, 1),  # the day after a month end
        (date(2016, 3, 31), date(2016, 4, 14), 0, 14),
        (date(2016, 3, 31), date(2016, 4, 15), 1, 0),
        (date(2016, 3, 31), date(2016, 4, 16), 0, 1),
        (ORIGIN, date(2016, 5, 30), 0, 15),
        (ORIGIN, date(2016, 5, 31), 1, 0),
    ],
)
def test_paydays_are_the_15th_and_the_month_end(
    table: pd.DataFrame, origin: date, day: date, paydays: int, since: int
) -> None:
    features, labels, _ = examples(table, origin)
    rows = _on(features, labels, day)
    assert len(rows) == len(STORES) * len(ITEMS)
    assert (rows["paydays"] == paydays).all()
    assert (rows["since_payday"] == since).all()


def test_national_holiday_for_all_stores_local_holiday_only_in_its_city(holdout) -> None:
    features, labels, _ = holdout
    assert (_on(features, labels, NATIONAL_DAY)["holiday_national"] == 1).all()
    assert (_on(features, labels, NATIONAL_DAY)["holiday_local"] == 0).all()
    assert (_on(features, labels, QUITO_DAY, store=1)["holiday_local"] == 1).all()  # Quito
    assert (_on(features, labels, QUITO_DAY, store=2)["holiday_local"] == 0).all()  # Guayaquil
    assert (_on(features, labels, QUITO_DAY)["holiday_national"] == 0).all()
    others = ~labels["date"].isin(pd.to_datetime([NATIONAL_DAY, QUITO_DAY])).to_numpy()
    assert (features.loc[others, ["holiday_national", "holiday_local"]] == 0).all().all()


def test_unknown_categories_encode_as_missing_code(table: pd.DataFrame, holdout) -> None:
    _, _, fs = holdout
    assert list(encode(pd.Series(["DAIRY", "TOYS", "GROCERY I"]), fs.categories["family"])) == [
        fs.categories["family"].index("DAIRY"),
        MISSING_CODE,
        fs.categories["family"].index("GROCERY I"),
    ]

    con = connect(table)
    state = series_state(con, fs, "sales", ORIGIN, series_of(table))
    new_series = pd.DataFrame(
        {
            "date": [pd.Timestamp(ORIGIN + timedelta(days=1))],
            "store_nbr": [1],
            "item_nbr": [999],
            "onpromotion": [0.0],
            "family": ["TOYS"],
            "city": ["Cuenca"],
        }
    )
    row = row_features(new_series, state, ORIGIN, holiday_counts(holidays_frame(), fs), fs).iloc[0]
    assert row["store_nbr_code"] == fs.categories["store_nbr"].index("1")
    assert row["item_nbr_code"] == row["family_code"] == row["city_code"] == MISSING_CODE
    assert row["zero_7"] == 1 and row["lmean_7"] == 0 and row["history"] == 0  # no history yet


def test_serving_a_few_rows_gives_the_training_features(table: pd.DataFrame, holdout) -> None:
    """Training's batch and a request's handful of rows go through one definition, same values."""
    features, labels, fs = holdout
    con = connect(table)
    state = series_state(con, fs, "sales", ORIGIN, series_of(table))
    holidays = holiday_counts(holidays_frame(), fs)
    request = table[(table["date"] > ORIGIN)].sample(7, random_state=3)  # shuffled, mixed series
    request = request.drop(columns=["sales", "weight"]).assign(date=lambda r: r["date"].astype(str))
    batch = pd.concat([labels[["date", *KEYS]], features], axis=1)
    batch["date"] = batch["date"].dt.date.astype(str)

    served = row_features(request, state, ORIGIN, holidays, fs)
    one_by_one = pd.concat(
        [
            row_features(
                request.iloc[[i]],
                state[
                    state["store_nbr"].eq(request["store_nbr"].iloc[i])
                    & state["item_nbr"].eq(request["item_nbr"].iloc[i])
                ],
                ORIGIN,
                holidays,
                fs,
            )
            for i in range(len(request))
        ],
        ignore_index=True,
    )
    trained = request[["date", *KEYS]].merge(batch, on=["date", *KEYS], how="left")[fs.columns]

    assert list(served.columns) == fs.columns
    pd.testing.assert_frame_equal(served.reset_index(drop=True), trained)
    pd.testing.assert_frame_equal(one_by_one, trained)
