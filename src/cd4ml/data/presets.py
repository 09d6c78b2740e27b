"""Dataset specs for the layouts cd4ml reads without a spec file."""

from __future__ import annotations

from pathlib import Path

from cd4ml.data.spec import DatasetSpec, Holidays, SideTable, Weights

FAVORITA_SLICES = ["family", "type", "cluster", "perishable"]
STORE_COLUMNS = ["city", "state", "type", "cluster"]  # stores.csv in Favorita and Store Sales
STORE47_COLUMNS = [
    "id", "date", "item_nbr", "unit_sales", "family", "class", "perishable", "transactions",
    "year", "month", "day", "dayofweek", "days_til_end_of_data", "dayoff",
]  # fmt: skip


def favorita(directory: Path) -> DatasetSpec:
    """Kaggle 'Corporación Favorita Grocery Sales Forecasting' (and cd4ml's sample data)."""
    return DatasetSpec(
        name="favorita",
        sales="train.csv",
        series_keys=["store_nbr", "item_nbr"],
        target="unit_sales",
        covariates=["onpromotion"],
        drop_columns=["id"],
        side_tables=[
            SideTable(path="items.csv", on=["item_nbr"], columns=["family", "class", "perishable"]),
            SideTable(path="stores.csv", on=["store_nbr"], columns=STORE_COLUMNS),
        ],
        holidays=Holidays(events_file="holidays_events.csv", local_columns=["city", "state"]),
        slices=FAVORITA_SLICES,
        weights=Weights(column="perishable"),
        base=str(directory.resolve()),
    )


def store_sales(directory: Path) -> DatasetSpec:
    """Kaggle 'Store Sales - Time Series Forecasting' (sales per store and product family)."""
    return DatasetSpec(
        name="store-sales",
        sales="train.csv",
        series_keys=["store_nbr", "family"],
        target="sales",
        covariates=["onpromotion"],
        drop_columns=["id"],
        side_tables=[SideTable(path="stores.csv", on=["store_nbr"], columns=STORE_COLUMNS)],
        holidays=Holidays(events_file="holidays_events.csv", local_columns=["city", "state"]),
        slices=["family", "type", "cluster"],
        base=str(directory.resolve()),
    )


def store47(sales: str) -> DatasetSpec:
    """The CD4ML workshop's single file: one store (47, Quito), items with their attributes."""
    return DatasetSpec(
        name="store47",
        sales=sales,
        series_keys=["item_nbr"],
        target="unit_sales",
        covariates=["dayoff"],
        attributes=["family", "class", "perishable"],
        # transactions is only known after the day ends; the rest are derived date parts
        drop_columns=[
            "id",
            "transactions",
            "year",
            "month",
            "day",
            "dayofweek",
            "days_til_end_of_data",
        ],
        holidays=Holidays(country="EC"),
        slices=["family", "perishable"],
        weights=Weights(column="perishable"),
    )
