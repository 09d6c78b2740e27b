"""Synthetic Favorita data: Kaggle's file layout, and demand with learnable structure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pytest

from cd4ml.data.sample import SampleConfig, write_sample

FILES = [
    "train.csv",
    "items.csv",
    "stores.csv",
    "holidays_events.csv",
    "oil.csv",
    "transactions.csv",
]
PERISHABLE = {"PRODUCE", "DAIRY", "BREAD/BAKERY", "POULTRY", "MEATS", "DELI", "EGGS", "SEAFOOD"}


@dataclass
class Sample:
    path: Path
    counts: dict[str, int]
    progress: list[tuple[int, int]]
    train: pd.DataFrame  # every column as text, empty cells as ""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    path = tmp_path_factory.mktemp("sample")
    calls: list[tuple[int, int]] = []
    counts = write_sample(path, SampleConfig(), lambda done, total: calls.append((done, total)))
    train = pd.read_csv(path / "train.csv", dtype=str, keep_default_na=False)
    return Sample(path, counts, calls, train)


@pytest.fixture(scope="module")
def sales(sample: Sample) -> pd.DataFrame:
    """train.csv typed, with the item attributes joined."""
    train = sample.train.assign(
        date=pd.to_datetime(sample.train["date"], format="%Y-%m-%d"),
        store_nbr=sample.train["store_nbr"].astype(int),
        item_nbr=sample.train["item_nbr"].astype(int),
        unit_sales=sample.train["unit_sales"].astype(float),
    )
    return train.merge(pd.read_csv(sample.path / "items.csv"), on="item_nbr", how="left")


def daily_totals(sales: pd.DataFrame) -> pd.Series:
    return sales.groupby("date")["unit_sales"].sum()


def test_same_config_writes_byte_identical_files(sample: Sample, tmp_path: Path) -> None:
    write_sample(tmp_path, SampleConfig())
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (sample.path / name).read_bytes(), name


def test_a_store_rows_do_not_depend_on_how_many_stores_are_generated(sample: Sample, tmp_path: Path) -> None:
    write_sample(tmp_path, SampleConfig(stores=3))
    small = (tmp_path / "train.csv").read_bytes()
    assert (sample.path / "train.csv").read_bytes().startswith(small)
    assert small.count(b"\n") < sample.counts["train.csv"]


def test_a_different_seed_gives_different_sales(sample: Sample, tmp_path: Path) -> None:
    write_sample(tmp_path, SampleConfig(stores=1, seed=7))
    assert (tmp_path / "train.csv").read_bytes() not in (sample.path / "train.csv").read_bytes()


def test_files_have_the_favorita_columns_and_reported_row_counts(sample: Sample) -> None:
    headers = {
        "train.csv": "id,date,store_nbr,item_nbr,unit_sales,onpromotion",
        "items.csv": "item_nbr,family,class,perishable",
        "stores.csv": "store_nbr,city,state,type,cluster",
        "holidays_events.csv": "date,type,locale,locale_name,description,transferred",
        "oil.csv": "date,dcoilwtico",
        "transactions.csv": "date,store_nbr,transactions",
    }
    for name, header in headers.items():
        lines = (sample.path / name).read_text(encoding="utf-8").splitlines()
        assert lines[0] == header, name
        assert len(lines) - 1 == sample.counts[name], name
    assert sorted(sample.counts) == sorted(FILES)


def test_progress_is_reported_after_each_store(sample: Sample) -> None:
    assert sample.progress == [(done, 10) for done in range(1, 11)]


def test_train_rows_use_the_original_text_formats(sample: Sample) -> None:
    train = sample.train
    assert (train["id"].astype(int) == np.arange(len(train))).all()
    assert train["date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert train["unit_sales"].str.fullmatch(r"-?\d+\.\d{1,3}").all()  # 7.0, 2.638
    assert set(train["onpromotion"]) == {"", "True", "False"}


def test_zero_sales_rows_are_absent(sales: pd.DataFrame) -> None:
    assert (sales["unit_sales"] != 0).all()
    cells = sales["store_nbr"].nunique() * sales["item_nbr"].nunique() * sales["date"].nunique()
    assert len(sales) < 0.8 * cells  # slow items have many zero days


def test_rows_are_ordered_by_store_date_item(sales: pd.DataFrame) -> None:
    keys = sales[["store_nbr", "date", "item_nbr"]]
    assert keys.equals(keys.sort_values(["store_nbr", "date", "item_nbr"]))
    assert not sales.duplicated(["store_nbr", "date", "item_nbr"]).any()


def test_weekends_sell_more_than_midweek(sales: pd.DataFrame) -> None:
    totals = daily_totals(sales)
    weekday = totals.index.dayofweek
    assert totals[weekday >= 5].mean() > 1.2 * totals[weekday.isin([1, 2, 3])].mean()


def test_paydays_sell_more(sales: pd.DataFrame) -> None:
    totals = daily_totals(sales)
    totals = totals[totals.index.month != 12]  # keep the Christmas peak out of both groups
    day = totals.index.day
    payday = (day == 15) | totals.index.is_month_end
    ordinary = ~payday & ~day.isin([1, 16])
    assert totals[payday].mean() > 1.08 * totals[ordinary].mean()


def test_the_run_up_to_christmas_sells_more_than_november(sales: pd.DataFrame) -> None:
    totals = daily_totals(sales)
    month, day = totals.index.month, totals.index.day
    run_up = totals[(month == 12) & (day >= 17) & (day <= 23)]
    november = totals[(month == 11) & (day >= 17) & (day <= 23)]
    assert run_up.mean() > 1.15 * november.mean()


def test_promoted_rows_sell_more_for_the_same_series(sales: pd.DataFrame) -> None:
    recorded = sales[sales["onpromotion"] != ""]
    means = recorded.pivot_table(
        index=["store_nbr", "item_nbr"], columns="onpromotion", values="unit_sales", aggfunc="mean"
    ).dropna()
    assert len(means) > 100
    assert (means["True"] / means["False"]).median() > 1.3


def test_onpromotion_is_empty_for_the_first_fifth_of_history(sales: pd.DataFrame) -> None:
    empty = sales["onpromotion"] == ""
    last_empty, first_recorded = sales.loc[empty, "date"].max(), sales.loc[~empty, "date"].min()
    assert last_empty < first_recorded
    share = (first_recorded - sales["date"].min()).days / 730
    assert 0.15 < share < 0.25
    assert 0.02 < (sales["onpromotion"] == "True").sum() / (~empty).sum() < 0.2


def test_perishable_families_are_flagged_and_item_numbers_look_real(sample: Sample) -> None:
    items = pd.read_csv(sample.path / "items.csv")
    assert items["item_nbr"].is_unique and items["item_nbr"].min() >= 90_000
    assert (items["perishable"] == items["family"].isin(PERISHABLE).astype(int)).all()
    assert items["perishable"].sum() >= 3
    assert {"GROCERY I", "BEVERAGES", "PRODUCE", "DAIRY"} <= set(items["family"])


def test_only_perishable_items_sell_fractional_units(sales: pd.DataFrame) -> None:
    fractional = sales["unit_sales"] != sales["unit_sales"].round()
    assert fractional.any()
    assert (sales.loc[fractional, "perishable"] == 1).all()


def test_returns_are_present_but_rare(sales: pd.DataFrame) -> None:
    returns = (sales["unit_sales"] < 0).mean()
    assert 0 < returns < 0.002


def test_a_store_opening_mid_history_has_no_earlier_rows(sample: Sample, sales: pd.DataFrame) -> None:
    opened = sales.groupby("store_nbr")["date"].min()
    late = opened[opened > pd.Timestamp("2015-02-01")]
    assert 0 < len(late) < len(opened)
    transactions = pd.read_csv(sample.path / "transactions.csv", parse_dates=["date"])
    first_ticket = transactions.groupby("store_nbr")["date"].min()
    for store, first in late.items():
        assert first_ticket[store] == first
        days = sales.loc[sales["store_nbr"] == store, "date"].nunique()
        assert days > 0.95 * (pd.Timestamp("2016-12-30") - first).days  # open every day after


def test_stores_close_on_christmas_and_mostly_on_new_year(sales: pd.DataFrame) -> None:
    dates = sales["date"]
    assert not ((dates.dt.month == 12) & (dates.dt.day == 25)).any()
    assert (dates == "2016-01-01").sum() < 0.3 * (dates == "2016-01-02").sum()


def test_stores_are_ecuadorian_with_favorita_types_and_clusters(sample: Sample) -> None:
    stores = pd.read_csv(sample.path / "stores.csv")
    assert stores["store_nbr"].tolist() == list(range(1, 11))
    assert set(stores["type"]) <= set("ABCDE")
    assert stores["cluster"].between(1, 17).all()
    known = {("Quito", "Pichincha"), ("Guayaquil", "Guayas"), ("Cuenca", "Azuay")}
    assert known & set(zip(stores["city"], stores["state"], strict=True))


def test_holidays_hold_ecuador_national_holidays(sample: Sample) -> None:
    events = pd.read_csv(sample.path / "holidays_events.csv", dtype=str)
    national = events[events["locale"] == "National"]
    assert (national["locale_name"] == "Ecuador").all()
    expected = holidays.country_holidays("EC", years=[2015, 2016], language="es", observed=False)
    holiday_rows = national[national["type"] == "Holiday"]
    assert set(zip(holiday_rows["date"], holiday_rows["description"], strict=True)) >= {
        (day.isoformat(), name) for day, name in expected.items()
    }
    new_year = events[events["date"] == "2015-01-01"].iloc[0]
    assert (new_year["type"], new_year["locale"], new_year["description"]) == (
        "Holiday",
        "National",
        expected[date(2015, 1, 1)],
    )


def test_holidays_have_local_regional_and_transferred_days(sample: Sample) -> None:
    events = pd.read_csv(sample.path / "holidays_events.csv", dtype=str)
    local = events[events["locale"] == "Local"]
    assert "Quito" in set(local["locale_name"]) and "Guayaquil" in set(local["locale_name"])
    assert (events["locale"] == "Regional").any()
    moved = events[events["transferred"] == "True"]
    transfers = events[events["type"] == "Transfer"]
    assert len(moved) == len(transfers) > 0
    for _, holiday in moved.iterrows():
        target = transfers[transfers["description"] == f"Traslado {holiday['description']}"]
        gaps = (pd.to_datetime(target["date"]) - pd.Timestamp(holiday["date"])).dt.days.abs()
        assert (gaps <= 3).any()


def test_transactions_follow_store_sales(sample: Sample, sales: pd.DataFrame) -> None:
    transactions = pd.read_csv(sample.path / "transactions.csv", parse_dates=["date"])
    totals = sales.groupby(["date", "store_nbr"])["unit_sales"].sum().rename("units")
    joined = transactions.join(totals, on=["date", "store_nbr"], how="inner")
    correlations = joined.groupby("store_nbr")[["units", "transactions"]].corr().xs("units", level=1)
    assert (correlations["transactions"] > 0.5).all()
    assert transactions["date"].dt.strftime("%m-%d").ne("12-25").all()


def test_oil_is_a_weekday_series_with_gaps(sample: Sample) -> None:
    oil = pd.read_csv(sample.path / "oil.csv", parse_dates=["date"])
    assert (oil["date"].dt.dayofweek < 5).all()
    assert 0 < oil["dcoilwtico"].isna().sum() < 0.1 * len(oil)
    assert (oil["dcoilwtico"].dropna() > 0).all()


def test_config_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        SampleConfig(items=0)
