"""Ingest: mess is repaired and reported; invalid data stops naming file, column, check, line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from textwrap import dedent

import pandas as pd
import pytest
import yaml

from cd4ml.calendar_features import holiday_counts
from cd4ml.config import Params
from cd4ml.data.ingest import IngestReport, ingest
from cd4ml.data.schemas import check, feature_schema
from cd4ml.data.sources import resolve_source
from cd4ml.data.spec import DatasetSpec, SideTable
from cd4ml.data.split import plan_split
from cd4ml.data.validation import DataValidationError
from cd4ml.features import build_feature_spec, examples_at_origin

Canonical = Callable[[Path], pd.DataFrame]
WEEKLY_EXAMPLE = Path(__file__).parent.parent / "examples" / "weekly-sales" / "spec.yaml"


def shop(folder: Path, sales: str, **fields) -> DatasetSpec:
    """A daily spec over `folder`/sales.csv (date, store, item, units, promo) holding `sales`."""
    (folder / "sales.csv").write_text(dedent(sales).lstrip())
    defaults = dict(
        name="shop",
        sales="sales.csv",
        series_keys=["store", "item"],
        target="units",
        covariates=["promo"],
        base=str(folder),
    )
    return DatasetSpec(**(defaults | fields))


def run(spec: DatasetSpec, tmp_path: Path, **options) -> tuple[IngestReport, pd.DataFrame]:
    report = ingest(spec, tmp_path / "out", tmp_path / "cache", **options)
    return report, pd.read_parquet(tmp_path / "out" / "sales.parquet")


def invalid(spec: DatasetSpec, tmp_path: Path, **options) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        ingest(spec, tmp_path / "out", tmp_path / "cache", **options)
    return caught.value


def series(frame: pd.DataFrame, item: str) -> pd.DataFrame:
    return frame[frame["item"] == item].set_index("date")


# --- the sample and the worked weekly example ------------------------------------------------


def test_the_favorita_sample_ingests_into_the_canonical_table(
    favorita_sample: Path, tmp_path: Path, read_canonical: Canonical
) -> None:
    spec = resolve_source(str(favorita_sample), tmp_path / "cache")
    report = ingest(spec, tmp_path / "out", tmp_path / "cache")

    sales = read_canonical(tmp_path / "out")
    raw = pd.read_csv(favorita_sample / "train.csv")
    assert report.rows_read == len(raw)
    assert report.rows == len(sales) == report.rows_read + report.zero_rows_filled
    assert report.empty_covariates_filled["onpromotion"] == raw["onpromotion"].isna().sum()
    perishable = sales["perishable"] == "1"
    assert perishable.any()
    assert (sales.loc[perishable, "weight"] == 1.25).all()
    assert (sales.loc[~perishable, "weight"] == 1.0).all()
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["attributes"] == ["family", "class", "perishable", *spec.side_tables[1].columns]
    assert IngestReport(**dataset["report"]) == report


def test_the_weekly_example_ingests_and_yields_features_for_every_origin(
    tmp_path: Path, read_canonical: Canonical
) -> None:
    import duckdb

    spec = resolve_source(str(WEEKLY_EXAMPLE), tmp_path / "cache")
    report = ingest(spec, tmp_path / "out", tmp_path / "cache")

    sales = read_canonical(tmp_path / "out")
    assert (pd.to_datetime(sales["date"]).dt.day_name() == "Friday").all()
    assert report.date_format == "%d/%m/%Y"
    assert report.negative_targets_kept > 0 and report.zero_rows_filled > 0
    assert sales.loc[sales["Store"] == 3, "Type"].eq("B").all()

    # as the split and featurize stages do, with the default parameters and 8 weeks ahead
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    params = Params()
    plan = plan_split(
        date.fromisoformat(report.first_date),
        date.fromisoformat(report.last_date),
        horizon=8,
        period_days=spec.period_days,
        train_origins=params.split.train_origins,
        origin_stride=params.split.origin_stride,
        min_history=params.split.min_history,
    )
    assert len(plan.train_origins) > 1
    con = duckdb.connect()
    con.execute(f"CREATE VIEW sales AS SELECT * FROM '{tmp_path / 'out' / 'sales.parquet'}'")
    features_params = params.features
    fs = build_feature_spec(dataset, con, "sales", plan.horizon, features_params.windows, features_params.weekday_weeks)
    holidays = holiday_counts(pd.read_parquet(tmp_path / "out" / "holidays.parquet"), fs)
    for origin in [*plan.train_origins, plan.valid_origin, plan.holdout_origin]:
        features, labels = examples_at_origin(con, fs, "sales", origin, holidays, ["sales"])
        check(feature_schema(fs), features, f"features at {origin}")
        assert len(features) == report.series * plan.horizon
        assert features["horizon"].between(1, 8).all()
    assert features["holiday_national"].sum() > 0  # US holidays fall in weekly periods
    assert labels["origin"].iloc[0] == pd.Timestamp(plan.holdout_origin)


# --- mess is repaired and reported ------------------------------------------------------------


def test_month_first_short_dates_are_detected_when_unambiguous(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        1/12/16,1,A,3,0
        1/13/16,1,A,4,1
        """,
    )
    report, sales = run(spec, tmp_path)
    assert report.date_format == "%m/%d/%y"
    assert "dates read as %m/%d/%y (the only known format that fits)" in report.notes()
    assert sales["date"].astype(str).tolist() == ["2016-01-12", "2016-01-13"]


def test_day_month_ambiguity_stops_until_the_spec_gives_date_format(tmp_path: Path) -> None:
    text = """\
        date,store,item,units,promo
        01/02/2016,1,A,3,0
        02/02/2016,1,A,4,1
        03/02/2016,1,A,5,0
        """
    error = invalid(shop(tmp_path, text), tmp_path)
    assert str(tmp_path / "sales.csv") in str(error)
    assert "column 'date'" in str(error)
    assert "fits %m/%d/%Y and %d/%m/%Y: set date_format" in str(error)
    assert error.problems[0].examples[0] == {"line": 2, "date": "01/02/2016"}

    report, sales = run(shop(tmp_path, text, date_format="%d/%m/%Y"), tmp_path)
    assert sales["date"].astype(str).tolist() == ["2016-02-01", "2016-02-02", "2016-02-03"]
    assert not report.date_format_detected


def test_missing_periods_are_zero_inside_each_series_active_range(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,1,A,5,1
        2016-01-04,1,A,2,0
        2016-01-05,1,A,1,0
        2016-01-03,1,B,7,0
        """,
    )
    report, sales = run(spec, tmp_path)
    a, b = series(sales, "A"), series(sales, "B")
    assert a["sales"].tolist() == [5, 0, 0, 2, 1]
    assert a["promo"].tolist() == [1, 0, 0, 0, 0]
    assert b["sales"].tolist() == [7, 0, 0]  # from its first row to the data's last date
    assert str(b.index.min()) == "2016-01-03"
    assert report.zero_rows_filled == 4
    assert "4 missing periods filled with zero sales" in report.notes()


def test_empty_covariates_are_zero_and_reported(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo,flag
        2016-01-01,1,A,5,,
        2016-01-02,1,A,2,TRUE,
        2016-01-03,1,A,1,false,
        """,
        covariates=["promo", "flag"],
    )
    report, sales = run(spec, tmp_path)
    assert sales["promo"].tolist() == [0, 1, 0]
    assert sales["flag"].tolist() == [0, 0, 0]
    assert report.empty_covariates_filled == {"promo": 1, "flag": 3}
    assert "1 empty 'promo' values filled with 0" in report.notes()
    assert "covariate 'flag' is empty in every row: filled with 0" in report.notes()


def test_negative_targets_are_kept_and_counted(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,1,A,5,0
        2016-01-02,1,A,-2.5,0
        """,
    )
    report, sales = run(spec, tmp_path)
    assert sales["sales"].tolist() == [5, -2.5]
    assert report.negative_targets_kept == 1
    assert "1 negative targets kept as returns" in report.notes()


def test_exact_duplicates_are_dropped_and_conflicting_ones_summed(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,1,A,5,0
        2016-01-01,1,A,5,0
        2016-01-02,1,A,2,0
        2016-01-02,1,A,3,1
        """,
    )
    report, sales = run(spec, tmp_path)
    assert sales["sales"].tolist() == [5, 5]
    assert sales["promo"].tolist() == [0, 1]
    assert (report.exact_duplicates_dropped, report.conflicting_duplicates_summed) == (1, 1)
    assert "1 exact duplicate rows dropped" in report.notes()
    assert "1 series-periods with several rows summed" in report.notes()


def test_series_missing_from_a_side_table_are_unknown_and_counted(tmp_path: Path, read_canonical: Canonical) -> None:
    (tmp_path / "items.csv").write_text("item,family,size\nA,DAIRY,\nA,DAIRY,\nC,EGGS,L\n")
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,1,A,5,0
        2016-01-01,1,B,2,0
        2016-01-01,2,B,2,0
        """,
        side_tables=[SideTable(path="items.csv", on=["item"])],
    )
    report = ingest(spec, tmp_path / "out", tmp_path / "cache")
    sales = read_canonical(tmp_path / "out")
    assert sales[["item", "family", "size"]].values.tolist() == [
        ["A", "DAIRY", "UNKNOWN"],
        ["B", "UNKNOWN", "UNKNOWN"],
        ["B", "UNKNOWN", "UNKNOWN"],
    ]
    assert report.unknown_categories == {"items.csv": 2}
    assert report.empty_attributes_unknown == {"size": 1}
    assert "2 series not found in items.csv: attributes set to UNKNOWN" in report.notes()
    assert "1 empty 'size' values set to UNKNOWN" in report.notes()


def test_unnamed_columns_are_dropped_with_a_note(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo,id,shelf
        2016-01-01,1,A,5,0,1,top
        """,
        drop_columns=["id"],
    )
    report, sales = run(spec, tmp_path)
    assert report.dropped_columns == ["id", "shelf"]
    assert "columns not named in the spec ignored: shelf" in report.notes()
    assert "shelf" not in sales.columns


def test_text_keys_keep_leading_zeros(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,007,A,5,0
        2016-01-01,7,A,5,0
        """,
    )
    _, sales = run(spec, tmp_path)
    assert sales["store"].tolist() == ["007", "7"]


# --- invalid data stops with file, column, check and line ------------------------------------

VALID = "date,store,item,units,promo\n2016-01-01,1,A,5,0\n"


@pytest.mark.parametrize(
    ("bad_row", "column", "check_name"),
    [
        ("2016-02-30,1,A,5,0", "date", "date format %Y-%m-%d"),
        ("2016-01-02,1,A,lots,0", "units", "is a finite number"),
        ("2016-01-02,1,A,inf,0", "units", "is a finite number"),
        ("2016-01-02,,A,5,0", "store", "not_nullable"),
        ("2016-01-02,1,A,,0", "units", "not_nullable"),
        ("2016-01-02,1,A,5,maybe", "promo", "is a number or true/false"),
    ],
)
def test_invalid_rows_are_named_by_file_column_check_and_line(
    tmp_path: Path, bad_row: str, column: str, check_name: str
) -> None:
    spec = shop(tmp_path, VALID + VALID.splitlines()[1] + "\n" + bad_row + "\n")
    error = invalid(spec, tmp_path)
    (problem,) = error.problems
    assert (problem.file, problem.column, problem.check) == (
        str(tmp_path / "sales.csv"),
        column,
        check_name,
    )
    assert problem.examples[0]["line"] == 4
    assert f"column '{column}' failed check '{check_name}' in 1 row(s), e.g. line=4" in str(error)


def test_line_numbers_hold_across_chunks_and_every_chunk_is_checked(tmp_path: Path) -> None:
    rows = [f"2016-01-{d:02d},1,A,{'x' if d in (2, 6) else d},0" for d in range(1, 8)]
    spec = shop(tmp_path, VALID.splitlines()[0] + "\n" + "\n".join(rows) + "\n")
    error = invalid(spec, tmp_path, chunk_rows=2)
    assert [p.examples for p in error.problems] == [
        [{"line": 3, "units": "x"}],
        [{"line": 7, "units": "x"}],
    ]


def test_a_missing_column_is_named_with_the_columns_found(tmp_path: Path) -> None:
    spec = shop(tmp_path, "date,store,item,units\n2016-01-01,1,A,5\n")
    error = invalid(spec, tmp_path)
    assert str(error) == (
        f"{tmp_path / 'sales.csv'}: column 'promo' failed check "
        "'column present (found: date, store, item, units)' in 1 row(s), e.g. line=1"
    )


def test_a_missing_side_table_fails_before_any_row_is_read(tmp_path: Path) -> None:
    spec = shop(tmp_path, VALID, side_tables=[SideTable(path="items.csv", on=["item"])])
    error = invalid(spec, tmp_path)
    assert f"{tmp_path / 'items.csv'}: column '-' failed check 'side table exists'" in str(error)
    assert not (tmp_path / "out").exists()


def test_a_side_table_key_with_two_different_rows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item,family\nA,DAIRY\nB,EGGS\nA,PRODUCE\n")
    spec = shop(tmp_path, VALID, side_tables=[SideTable(path="items.csv", on=["item"])])
    (problem,) = invalid(spec, tmp_path).problems
    assert (problem.column, problem.check) == ("item", "one row per key")
    assert problem.examples == [{"line": 2, "item": "A"}, {"line": 4, "item": "A"}]


def test_slices_must_name_an_attribute(tmp_path: Path) -> None:
    spec = shop(tmp_path, VALID, slices=["region"])
    (problem,) = invalid(spec, tmp_path).problems
    assert (problem.file, problem.column) == ("dataset spec 'shop'", "slices")
    assert problem.examples == [{"slices": "region"}]


def test_weekly_dates_must_share_a_weekday(tmp_path: Path) -> None:
    spec = shop(
        tmp_path,
        """\
        date,store,item,units,promo
        2016-01-01,1,A,5,0
        2016-01-08,1,A,5,0
        2016-01-16,1,A,5,0
        """,
        frequency="weekly",
    )
    (problem,) = invalid(spec, tmp_path).problems
    assert problem.check == "weekly dates all on one weekday"
    assert problem.examples == [
        {"weekday": "Friday", "dates": 2, "first": "2016-01-01"},
        {"weekday": "Saturday", "dates": 1, "first": "2016-01-16"},
    ]


def test_weekly_data_read_as_daily_is_an_error_not_six_zero_days(tmp_path: Path) -> None:
    rows = "\n".join(f"2016-01-{d:02d},1,A,5,0" for d in (1, 8, 15, 22))
    spec = shop(tmp_path, VALID.splitlines()[0] + "\n" + rows + "\n")
    (problem,) = invalid(spec, tmp_path).problems
    assert "set frequency: weekly" in problem.check


def test_a_failed_ingest_stage_leaves_a_failed_validation_report(tmp_path: Path) -> None:
    from cd4ml.config import apply_overrides, init_project
    from cd4ml.pipeline import stages

    spec = shop(tmp_path, VALID + "2016-01-02,1,A,lots,0\n")
    fields = {k: v for k, v in spec.model_dump(mode="json").items() if k != "base" and v is not None}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(fields))
    work = tmp_path / "work"
    init_project(work)
    apply_overrides(work / "params.yaml", [f"data.source={tmp_path / 'spec.yaml'}"])
    with pytest.raises(DataValidationError):
        stages.ingest(work)
    report = json.loads((work / "reports" / "validation.json").read_text())
    assert report["status"] == "failed"
    assert report["problems"][0]["column"] == "units"
    assert report["problems"][0]["examples"] == [{"line": 3, "units": "lots"}]


@pytest.mark.integration
def test_cd4ml_run_on_a_bad_file_exits_2_and_trains_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,date,item_nbr,unit_sales,family,class,perishable,transactions,year,month,day,"
        "dayofweek,days_til_end_of_data,dayoff\n"
        "1,2016-08-01,103520,4.0,GROCERY I,1028,0,1500,2016,8,1,0,30,False\n"
        "2,2016-08-02,103520,four,GROCERY I,1028,0,1500,2016,8,2,1,29,False\n"
    )
    workdir = tmp_path / "work"
    cli = Path(sys.executable).parent / "cd4ml"
    result = subprocess.run(
        [str(cli), "run", "--workdir", str(workdir), "--data", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=os.environ | {"COLUMNS": "400"},  # Rich would wrap long lines at 80
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"{bad}: column 'unit_sales' failed check 'is a finite number'" in output
    assert "line=3" in output
    report = json.loads((workdir / "reports" / "validation.json").read_text())
    assert report["status"] == "failed"
    assert report["problems"][0]["file"] == str(bad)
    assert not (workdir / "models").exists()
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / "mlartifacts").exists()
