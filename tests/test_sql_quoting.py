"""Names from data (CSV headers, specs) reach DuckDB's SQL as quoted identifiers: a `"` in a
header can neither end its quoting nor change what a query reads or writes."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cd4ml.calendar_features import holiday_counts
from cd4ml.data.ingest import ingest
from cd4ml.data.spec import DatasetSpec
from cd4ml.features import build_feature_spec, examples_at_origin
from cd4ml.sql import quote_ident, quote_idents, quote_literal

# naive quoting ('"' + name + '"') turns this one name into two columns: "a", "b"
SPLITS = 'a", "b'
HOSTILE = [SPLITS, 'x" FROM t; DROP TABLE t; --', "it's", '"', '""']


@pytest.mark.parametrize("name", HOSTILE)
def test_a_quoted_identifier_names_exactly_one_column(name: str) -> None:
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t (a INT, b INT)")
        con.execute(f"CREATE TABLE u AS SELECT 1 AS {quote_ident(name)}, 2 AS r")
        result = con.execute(f"SELECT {quote_ident(name, 'u.')}, r FROM u")
        assert [d[0] for d in result.description] == [name, "r"] and result.fetchall() == [(1, 2)]
        assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)  # still there


def test_naive_quoting_would_have_changed_the_query() -> None:
    """What the test above guards against: the same name, quoted without escaping."""
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a, 2 AS b")
        naive = con.execute(f'SELECT "{SPLITS}" FROM t')
        assert [d[0] for d in naive.description] == ["a", "b"]
        con.execute(f"CREATE TABLE u AS SELECT 3 AS {quote_ident(SPLITS)}")
        assert con.execute(f"SELECT {quote_idents([SPLITS])} FROM u").fetchall() == [(3,)]


def test_a_literal_keeps_quotes_in_paths(tmp_path: Path) -> None:
    folder = tmp_path / "it's here"
    folder.mkdir()
    pd.DataFrame({"v": [1, 2]}).to_parquet(folder / "x.parquet")
    with duckdb.connect() as con:
        assert con.execute(f"SELECT sum(v) FROM read_parquet({quote_literal(folder / 'x.parquet')})").fetchone() == (3,)


def test_a_csv_header_with_quotes_ingests_and_featurizes_as_named(tmp_path: Path) -> None:
    """Keys, a covariate and an attribute whose headers hold `"`: ingest writes each column under
    its own name with its own values, and features read them the same way."""
    store, promo, kind = 'store", "item', 'promo"); --', 'kind "x"'
    with (tmp_path / "sales.csv").open("w", newline="") as file:
        rows = csv.writer(file)  # a header cell holding `"` is written "..""..", as spreadsheets do
        rows.writerow(["date", store, "item", "units", promo, kind])
        for d in range(1, 31):
            rows.writerows(
                [f"2016-01-{d:02d}", s, i, d + s, d % 2, "big" if s == 1 else "small"] for s in (1, 2) for i in "AB"
            )
    spec = DatasetSpec(
        name="hostile",
        sales="sales.csv",
        series_keys=[store, "item"],
        target="units",
        covariates=[promo],
        attributes=[kind],
        base=str(tmp_path),
    )
    report = ingest(spec, tmp_path / "out", tmp_path / "cache")
    sales = pd.read_parquet(tmp_path / "out" / "sales.parquet")
    assert list(sales.columns) == ["date", store, "item", "sales", promo, kind, "weight"]
    assert report.series == 4 and len(sales) == 120
    first = sales[(sales[store] == 1) & (sales["item"] == "A")].sort_values("date")
    assert first["sales"].tolist() == [d + 1 for d in range(1, 31)]
    assert first[promo].tolist() == [d % 2 for d in range(1, 31)]
    assert set(sales.loc[sales[store] == 2, kind]) == {"small"}

    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    with duckdb.connect() as con:
        table = quote_literal(tmp_path / "out" / "sales.parquet")
        con.execute(f"CREATE VIEW sales AS SELECT * FROM read_parquet({table})")
        fs = build_feature_spec(dataset, con, "sales", horizon=3, windows=[7], weekday_weeks=[2])
        holidays = holiday_counts(pd.read_parquet(tmp_path / "out" / "holidays.parquet"), fs)
        features, labels = examples_at_origin(con, fs, "sales", date(2016, 1, 27), holidays, ["sales"])
    assert fs.categories[kind] == ["big", "small"] and fs.categories[store] == ["1", "2"]
    assert len(features) == 4 * 3 and f"{promo}_hist" in features.columns
    week = pd.to_datetime(first["date"]).between("2016-01-21", "2016-01-27")
    mean_promo = first.loc[week.to_numpy(), promo].mean()
    one_a = (labels[store] == 1).to_numpy() & (labels["item"] == "A").to_numpy()
    assert features.loc[one_a, f"{promo}_hist"].tolist() == pytest.approx([mean_promo] * 3)
