"""The UCI Online Retail preset on the real file (../shared/data/online-retail, not in the repo):
every invoice line accounted for, the counts match the data set's README, the key stays text."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cd4ml.data import online_retail
from cd4ml.data.ingest import IngestReport, ingest
from cd4ml.data.online_retail import Preparation, read_lines, units_sold
from cd4ml.data.sources import resolve_source

RETAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
# from the data set's README.md ("Known quirks of the raw data")
README_NON_PRODUCT_ROWS = {
    "POST": 1256, "DOT": 710, "C2": 144, "D": 77, "S": 63, "BANK CHARGES": 37, "AMAZONFEE": 34, "CRUK": 16,
    "PADS": 4, "B": 3,
}  # fmt: skip
README_MANUAL_ROWS = 572  # `M`/`m`
README_NON_PRODUCT_CODES = 33
README_ROWS = 541_909
README_CANCELLATION_LINES = 9_288
README_HUGE_PAIRS_UNITS = 74_215 + 80_995  # 541431 / C541433 and 581483 / C581484


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    if not RETAIL.is_file():
        reason = f"{RETAIL} not found: the Online Retail data lives beside the repository, in ../shared"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return read_lines(RETAIL)


def accounted(report: Preparation) -> int:
    """Lines given an outcome: each is dropped for one reason, voided, or a sale."""
    return (
        sum(report.non_product_rows.values())
        + report.product_cancellations
        + report.duplicate_rows
        + report.adjustment_rows
        + report.voiding_cancellations  # the orders they voided are no longer sale lines
        + report.sale_lines
    )


def test_daily_units_drop_what_is_not_demand_and_count_it(lines: pd.DataFrame) -> None:
    table, report = units_sold(lines, "daily", top_products=None)

    assert report.rows_read == README_ROWS
    assert accounted(report) == README_ROWS
    assert {code: report.non_product_rows[code] for code in README_NON_PRODUCT_ROWS} == README_NON_PRODUCT_ROWS
    assert report.non_product_rows["M"] + report.non_product_rows["m"] == README_MANUAL_ROWS
    assert len(report.non_product_rows) == README_NON_PRODUCT_CODES
    assert report.cancellation_lines == README_CANCELLATION_LINES
    assert report.voided_units >= README_HUGE_PAIRS_UNITS
    assert table["StockCode"].str.fullmatch(r"\d{5}[A-Za-z]{0,2}").all()
    assert (table["units"] > 0).all()
    assert table["units"].max() < 74_215  # neither cancelled giant order is left as a sale
    assert table.groupby(["date", "StockCode"]).size().max() == 1
    assert (table["date"].dt.dayofweek != 5).all()  # no trading on Saturdays
    assert (table["date"].min(), table["date"].max()) == (pd.Timestamp("2010-12-01"), pd.Timestamp("2011-12-09"))


def test_weekly_units_keep_only_whole_weeks(lines: pd.DataFrame) -> None:
    table, report = units_sold(lines, "weekly", top_products=50)

    assert (table["date"].dt.dayofweek == 0).all()
    # 2010-11-29 lacks its Monday and Tuesday, 2011-12-05 its Friday afternoon and Sunday
    assert (table["date"].min(), table["date"].max()) == (pd.Timestamp("2010-12-06"), pd.Timestamp("2011-11-28"))
    assert report.partial_week_lines > 0
    assert table["StockCode"].nunique() == report.products_kept == 50


def test_preset_file_ingests_with_a_text_key_and_reports_the_drops(lines: pd.DataFrame, tmp_path: Path) -> None:
    preset = tmp_path / "retail.yaml"
    preset.write_text(f"preset: online-retail\ndata: {RETAIL.parent}\nfrequency: daily\ntop_products: 2\n")

    spec = resolve_source(str(preset), tmp_path / "cache")
    report = ingest(spec, tmp_path / "ingested", tmp_path / "cache")

    key = pq.read_schema(tmp_path / "ingested" / "sales.parquet").field("StockCode").type
    sales = pd.read_parquet(tmp_path / "ingested" / "sales.parquet")
    codes = set(sales["StockCode"])
    assert codes == {"22197", "84077"}  # the two best sellers: digits only, so the key is text by the spec
    assert key == pa.string()
    assert report.series == 2
    notes = IngestReport(**json.loads((tmp_path / "ingested" / "dataset.json").read_text())["report"]).notes()
    assert notes[0].startswith("2,995 lines of 33 non-product stock codes dropped (POST 1,256, DOT 710")
    assert notes[1].startswith("9,288 cancellation lines ('C' invoices), 584 of them on non-product codes")
    assert "top 2 of 3,899 products by units kept" in " ".join(notes)


def test_the_file_and_its_folder_are_recognised(
    lines: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[tuple[Path, str, int | None]] = []

    def prepare(raw: Path, cache_dir: Path, frequency: str, top_products: int | None) -> tuple[Path, Preparation]:
        prepared.append((raw, frequency, top_products))  # what is prepared is tested above
        return tmp_path / "sales.csv", Preparation()

    monkeypatch.setattr(online_retail, "prepare", prepare)
    by_file = resolve_source(str(RETAIL), tmp_path / "cache")
    by_folder = resolve_source(str(RETAIL.parent), tmp_path / "cache")

    assert prepared == [(RETAIL, "daily", None), (RETAIL, "daily", None)]
    assert by_file.name == by_folder.name == "online-retail-daily"
    assert by_file.series_keys == by_file.text_keys == ["StockCode"]
