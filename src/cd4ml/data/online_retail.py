"""UCI Online Retail invoice lines → units sold per product and day (or week), every drop counted.

Chen, D. (2015). *Online Retail* [Dataset]. UCI Machine Learning Repository.
https://doi.org/10.24432/C5BW33 — licensed CC BY 4.0.

The file lists invoice lines, not demand. Each line gets exactly one outcome, first rule first:

1. a non-product stock code (postage, fees, discounts, manual lines, vouchers: anything not
   `^\\d{5}[A-Za-z]{0,2}$`) is dropped, whatever its invoice;
2. a cancellation (invoice `C…`) is never negative demand. If it cancels, on the same day, an
   order line of the same customer, product and quantity, that order was entered in error and is
   voided too (the 74,215- and 80,995-unit order/cancel pairs would otherwise be the two largest
   "sales" in the file). Any other cancellation returns goods ordered earlier: the order was real
   demand on its day, so only the cancellation is dropped;
3. an exact duplicate of an earlier line (a double scan) is dropped, as cd4ml's ingest does;
4. a line with quantity or price ≤ 0 outside cancellations is a stock adjustment or a free item,
   not a sale, and is dropped;
5. what remains are sales, summed per product and day (or per Monday-based week; the partial
   first and last weeks are dropped, since a part-week would read as a fall in demand).

Trading days with no sale of a product (Saturdays, the Christmas shutdown, bank holidays)
become zero-sales days in cd4ml's canonical table, as any day without sales does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

PRODUCT_CODE = r"\d{5}[A-Za-z]{0,2}"
COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
TARGET = "units"
KEY = "StockCode"
FORMAT_VERSION = 1  # bump when the rules above change, so cached tables are rebuilt
Frequency = Literal["daily", "weekly"]


@dataclass
class Preparation:
    """Where every invoice line went; `notes()` is what the ingest report shows."""

    rows_read: int = 0
    non_product_rows: dict[str, int] = field(default_factory=dict)  # per stock code, any invoice
    cancellation_lines: int = 0  # 'C' invoices in the file, non-product codes included
    product_cancellations: int = 0
    voiding_cancellations: int = 0  # cancelled a same-day order of the same customer, product, quantity
    voided_units: int = 0
    duplicate_rows: int = 0
    adjustment_rows: int = 0
    sale_lines: int = 0  # after voiding
    partial_week_lines: int = 0
    products: int = 0
    products_kept: int = 0
    other_product_lines: int = 0  # sale lines of products outside the top N
    periods: int = 0
    first_date: str = ""
    last_date: str = ""

    def notes(self) -> list[str]:
        codes = sorted(self.non_product_rows.items(), key=lambda item: (-item[1], item[0]))
        shown = ", ".join(f"{code} {n:,}" for code, n in codes[:6])
        notes = [
            f"{sum(self.non_product_rows.values()):,} lines of {len(codes)} non-product stock codes dropped "
            f"({shown}, …)",
            f"{self.cancellation_lines:,} cancellation lines ('C' invoices), "
            f"{self.cancellation_lines - self.product_cancellations:,} of them on non-product codes: never "
            f"negative demand; {self.voiding_cancellations:,} voided a same-day order of the same customer, "
            f"product and quantity ({self.voided_units:,} units dropped with it), "
            f"{self.product_cancellations - self.voiding_cancellations:,} returns of earlier orders dropped",
            f"{self.duplicate_rows:,} exact duplicate lines dropped",
            f"{self.adjustment_rows:,} stock adjustments and free items dropped (quantity or price ≤ 0)",
        ]
        if self.partial_week_lines:
            notes.append(f"{self.partial_week_lines:,} sale lines in the partial first and last weeks dropped")
        if self.products_kept < self.products:
            notes.append(
                f"top {self.products_kept:,} of {self.products:,} products by units kept "
                f"({self.other_product_lines:,} sale lines of the others dropped)"
            )
        return notes


def read_lines(raw: Path) -> pd.DataFrame:
    """Every line with codes kept as text (`pd.read_csv` would turn '71053' into a number)."""
    lines = pd.read_csv(raw, dtype=str, keep_default_na=False, usecols=COLUMNS)
    lines["Quantity"] = pd.to_numeric(lines["Quantity"])
    lines["UnitPrice"] = pd.to_numeric(lines["UnitPrice"])
    lines["InvoiceDate"] = pd.to_datetime(lines["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
    return lines


def units_sold(lines: pd.DataFrame, frequency: Frequency, top_products: int | None) -> tuple[pd.DataFrame, Preparation]:
    """(date, StockCode, units) rows with positive units, and where every line went."""
    report = Preparation(rows_read=len(lines))
    cancellation = lines["InvoiceNo"].str.startswith("C")
    report.cancellation_lines = int(cancellation.sum())
    product = lines["StockCode"].str.fullmatch(PRODUCT_CODE)
    report.non_product_rows = {k: int(v) for k, v in lines.loc[~product, "StockCode"].value_counts().items()}
    lines = lines[product]
    cancellations, lines = lines[cancellation[product]], lines[~cancellation[product]]
    report.product_cancellations = len(cancellations)
    duplicate = lines.duplicated()
    report.duplicate_rows = int(duplicate.sum())
    lines = lines[~duplicate]
    sale = (lines["Quantity"] > 0) & (lines["UnitPrice"] > 0)
    report.adjustment_rows = int((~sale).sum())
    voided = _voided_orders(lines[sale], cancellations)
    report.voiding_cancellations, report.voided_units = len(voided), int(lines.loc[voided, "Quantity"].sum())
    sales = lines[sale].drop(index=voided)
    report.sale_lines = len(sales)
    period = sales["InvoiceDate"].dt.normalize()
    if frequency == "weekly":
        period, complete = _weeks(period)
        report.partial_week_lines = int((~complete).sum())
        sales, period = sales[complete], period[complete]
    table = sales.groupby([period.rename("date"), sales[KEY]])["Quantity"].sum().rename(TARGET).reset_index()
    volume = table.groupby(KEY)[TARGET].sum().sort_index().sort_values(ascending=False, kind="stable")
    report.products = len(volume)
    kept = volume.index[:top_products] if top_products else volume.index
    report.products_kept = len(kept)
    report.other_product_lines = int((~sales[KEY].isin(kept)).sum())
    table = table[table[KEY].isin(kept)].sort_values([KEY, "date"], ignore_index=True)
    report.periods = table["date"].nunique()
    report.first_date, report.last_date = str(table["date"].min().date()), str(table["date"].max().date())
    return table, report


def _voided_orders(orders: pd.DataFrame, cancellations: pd.DataFrame) -> pd.Index:
    """Order lines that a same-day cancellation of the same customer, product and quantity undoes.

    Each cancellation takes the latest such order at or before its time, and each order is
    voided at most once.
    """
    match = ["CustomerID", KEY, "units", "day"]

    def keyed(frame: pd.DataFrame, sign: int) -> pd.DataFrame:
        return frame.assign(units=sign * frame["Quantity"], day=frame["InvoiceDate"].dt.normalize()).sort_values(
            "InvoiceDate"
        )

    pairs = pd.merge_asof(
        keyed(cancellations, -1)[[*match, "InvoiceDate"]],
        keyed(orders, 1)[[*match, "InvoiceDate"]].assign(order=lambda f: f.index),
        on="InvoiceDate",
        by=match,
        direction="backward",
    )
    return pd.Index(pairs["order"].dropna().astype(orders.index.dtype).drop_duplicates())


def _weeks(day: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The Monday of each day's week, and whether that week lies wholly inside the file's days."""
    monday = day - pd.to_timedelta(day.dt.dayofweek, unit="D")
    complete = (monday >= day.min()) & (monday + pd.Timedelta(days=6) <= day.max())
    return monday, complete


def prepare(raw: Path, cache_dir: Path, frequency: Frequency, top_products: int | None) -> tuple[Path, Preparation]:
    """The units table as a CSV in the cache (built once per file, rules and options).

    The fingerprint is the file's size and modification time: hashing 7.5 MB on every run would
    cost more than the check is worth for a file that is replaced, not edited.
    """
    stat = raw.stat()
    fingerprint = hashlib.sha256(
        f"{raw.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT_VERSION}".encode()
    ).hexdigest()[:12]
    folder = cache_dir / "online-retail" / f"{frequency}-top{top_products or 'all'}-{fingerprint}"
    table, notes = folder / "sales.csv", folder / "preparation.json"
    if table.exists() and notes.exists():
        return table, Preparation(**json.loads(notes.read_text()))
    sales, report = units_sold(read_lines(raw), frequency, top_products)
    folder.mkdir(parents=True, exist_ok=True)
    for path, write in [
        (table, lambda p: sales.to_csv(p, index=False, date_format="%Y-%m-%d")),
        (notes, lambda p: p.write_text(json.dumps(asdict(report), indent=2))),
    ]:
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        write(partial)
        os.replace(partial, path)  # a concurrent or interrupted run never sees half a file
    return table, report
