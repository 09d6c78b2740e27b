"""Dataset specs for the layouts cd4ml reads without a spec file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt

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


ONLINE_RETAIL_FILE = "online_retail.csv.gz"


class OnlineRetailOptions(BaseModel):
    """A preset file (`preset: online-retail`): which table to build from the invoice lines."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["online-retail"]
    data: str  # the raw file or its folder, relative to the preset file
    frequency: Literal["daily", "weekly"] = "daily"
    top_products: PositiveInt | None = None  # the N best sellers by units; None keeps every product


def online_retail(
    raw: Path, cache_dir: Path, frequency: Literal["daily", "weekly"] = "daily", top_products: int | None = None
) -> DatasetSpec:
    """UCI 'Online Retail': units sold per product (StockCode, a text key) and day or week.

    Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository.
    https://doi.org/10.24432/C5BW33 (CC BY 4.0). Invoice lines become a units table in the cache
    first; what was dropped and why (non-product codes, cancellations, duplicates, adjustments)
    is reported with the ingest repairs, see `online_retail.py`.
    """
    from cd4ml.data import online_retail as retail

    table, preparation = retail.prepare(raw, cache_dir, frequency, top_products)
    return DatasetSpec(
        name=f"online-retail-{frequency}" + (f"-top{top_products}" if top_products else ""),
        sales=str(table),
        series_keys=[retail.KEY],
        target=retail.TARGET,
        frequency=frequency,
        holidays=Holidays(country="GB"),  # a UK retailer: closed on bank holidays
        text_keys=[retail.KEY],
        source_notes=preparation.notes(),
    )
