"""Read a sales table described by a spec into cd4ml's canonical form, reporting every repair.

Raw rows are validated with pandera chunk by chunk (so a 125M-row file never sits in memory),
written to a typed staging file, then de-duplicated, zero-filled and joined out of core in
DuckDB. The canonical table has: date, the series keys, `sales`, the covariates, the
attributes and `weight`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cd4ml.data.download import fetch, is_url
from cd4ml.data.spec import DatasetSpec
from cd4ml.data.validation import DataValidationError, Problem, problems_from_pandera

CHUNK_ROWS = 1_000_000
KNOWN_DATE_FORMATS = ["%Y-%m-%d", "%m/%d/%Y", "%m/%d/%y", "%d/%m/%Y", "%d/%m/%y", "%d.%m.%Y", "%Y%m%d"]
TRUE_WORDS = {"true": 1.0, "false": 0.0, "t": 1.0, "f": 0.0, "yes": 1.0, "no": 0.0}
UNKNOWN = "UNKNOWN"


@dataclass
class IngestReport:
    """What was read and what was repaired; nothing is changed without being counted here."""

    source: str
    rows_read: int = 0
    date_format: str = ""
    date_format_detected: bool = False
    exact_duplicates_dropped: int = 0
    conflicting_duplicates_summed: int = 0
    negative_targets_kept: int = 0
    zero_rows_filled: int = 0
    empty_covariates_filled: dict[str, int] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    dropped_columns: list[str] = field(default_factory=list)
    series: int = 0
    rows: int = 0
    first_date: str = ""
    last_date: str = ""

    def notes(self) -> list[str]:
        """Human sentences for the repairs that happened."""
        notes = []
        if self.date_format_detected:
            notes.append(f"dates read as {self.date_format} (the only known format that fits)")
        if self.exact_duplicates_dropped:
            notes.append(f"{self.exact_duplicates_dropped} exact duplicate rows dropped")
        if self.conflicting_duplicates_summed:
            notes.append(f"{self.conflicting_duplicates_summed} series-days with several rows summed")
        if self.negative_targets_kept:
            notes.append(f"{self.negative_targets_kept} negative targets kept as returns")
        if self.zero_rows_filled:
            notes.append(f"{self.zero_rows_filled} missing periods filled with zero sales")
        for column, count in self.empty_covariates_filled.items():
            notes.append(f"{count} empty '{column}' values filled with 0")
        for table, count in self.unknown_categories.items():
            notes.append(f"{count} series not found in {table}: attributes set to {UNKNOWN}")
        return notes


def local_path(location: str, cache_dir: Path, sha256: str | None = None) -> Path:
    return fetch(location, cache_dir, sha256=sha256) if is_url(location) else Path(location)


def detect_date_format(values: pd.Series, given: str | None, file: str, column: str) -> str:
    """The date format: the spec's, else the single known format that parses every value."""
    sample = values.dropna().drop_duplicates().head(5000)
    formats = [given] if given else KNOWN_DATE_FORMATS
    fitting = [f for f in formats if pd.to_datetime(sample, format=f, errors="coerce").notna().all()]
    if len(fitting) == 1 or (len(fitting) > 1 and fitting[0] == "%Y-%m-%d"):
        return fitting[0]
    examples = [{column: v} for v in sample.head(3)]
    if not fitting:
        check = f"date format {given}" if given else "date in a known format (set date_format in a spec)"
        raise DataValidationError([Problem(file, column, check, len(sample), examples)])
    raise DataValidationError(
        [Problem(file, column, f"ambiguous date format, fits {' and '.join(fitting)}: set date_format", len(sample), examples)]
    )


def _to_number(values: pd.Series) -> pd.Series:
    words = values.str.strip().str.lower().map(TRUE_WORDS)
    return words.fillna(pd.to_numeric(values, errors="coerce"))


def raw_schema(spec: DatasetSpec, date_format: str):  # -> pandera DataFrameSchema
    """Checks on the raw text of each sales row, before anything is converted."""
    import pandera.pandas as pa_schema

    def parses_as_date(s: pd.Series) -> pd.Series:
        return pd.to_datetime(s, format=date_format, errors="coerce").notna()

    def is_number(s: pd.Series) -> pd.Series:
        return _to_number(s).notna() | s.isna()

    columns = {
        spec.date_column: pa_schema.Column(
            str, pa_schema.Check(parses_as_date, name=f"date format {date_format}"), nullable=False
        ),
        spec.target: pa_schema.Column(str, pa_schema.Check(is_number, name="is a number"), nullable=False),
    }
    columns |= {key: pa_schema.Column(str, nullable=False) for key in spec.series_keys}
    columns |= {
        cov: pa_schema.Column(str, pa_schema.Check(is_number, name="is a number or true/false"), nullable=True)
        for cov in spec.covariates
    }
    columns |= {attr: pa_schema.Column(str, nullable=True) for attr in spec.attributes}
    return pa_schema.DataFrameSchema(columns, strict=False)


def _check_columns(spec: DatasetSpec, file: str, found: list[str]) -> list[str]:
    wanted = [spec.date_column, spec.target, *spec.series_keys, *spec.covariates, *spec.attributes]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataValidationError(
            [Problem(file, ", ".join(missing), f"column present (found: {', '.join(found)})", 1)]
        )
    return wanted


def stage_sales(
    spec: DatasetSpec,
    sales: Path,
    staging: Path,
    report: IngestReport,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Validate raw rows chunk by chunk and write them typed to a staging parquet file."""
    import pandera.errors

    file = str(sales)
    found = pd.read_csv(sales, nrows=0).columns.tolist()
    wanted = _check_columns(spec, file, found)
    report.dropped_columns = [c for c in found if c not in wanted]
    writer: pq.ParquetWriter | None = None
    schema = None
    problems: list[Problem] = []
    try:
        for chunk in pd.read_csv(sales, usecols=wanted, dtype=str, chunksize=CHUNK_ROWS):
            if schema is None:
                report.date_format = detect_date_format(
                    chunk[spec.date_column], spec.date_format, file, spec.date_column
                )
                report.date_format_detected = spec.date_format is None and report.date_format != "%Y-%m-%d"
                schema = raw_schema(spec, report.date_format)
            try:
                schema.validate(chunk, lazy=True)
            except pandera.errors.SchemaErrors as exc:
                problems += problems_from_pandera(exc.failure_cases, chunk, file)
                continue
            typed = _typed(chunk, spec, report)
            table = pa.Table.from_pandas(typed, preserve_index=False)
            writer = writer or pq.ParquetWriter(staging, table.schema)
            writer.write_table(table)
            report.rows_read += len(chunk)
            if progress:
                progress(len(chunk))
    finally:
        if writer:
            writer.close()
    if problems:
        raise DataValidationError(problems)
    if writer is None:
        raise DataValidationError([Problem(file, spec.target, "at least one row", 0)])


def _typed(chunk: pd.DataFrame, spec: DatasetSpec, report: IngestReport) -> pd.DataFrame:
    typed = pd.DataFrame({"date": pd.to_datetime(chunk[spec.date_column], format=report.date_format)})
    for key in spec.series_keys:
        typed[key] = chunk[key].str.strip()
    typed["sales"] = _to_number(chunk[spec.target]).astype("float64")
    for cov in spec.covariates:
        typed[cov] = _to_number(chunk[cov]).astype("float64")
        empty = int(chunk[cov].isna().sum())
        if empty:
            report.empty_covariates_filled[cov] = report.empty_covariates_filled.get(cov, 0) + empty
    for attr in spec.attributes:
        typed[attr] = chunk[attr].fillna(UNKNOWN).astype(str)
    return typed


def _keys_sql(spec: DatasetSpec) -> str:
    return ", ".join(f'"{k}"' for k in spec.series_keys)


def canonicalise(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, staging: Path, cache_dir: Path, report: IngestReport
) -> str:
    """De-duplicate, zero-fill inside each series' active range and join attributes; returns SQL."""
    keys = _keys_sql(spec)
    covs = [f'"{c}"' for c in spec.covariates]
    attrs = [f'"{a}"' for a in spec.attributes]
    con.execute(f"CREATE TEMP TABLE raw AS SELECT * FROM read_parquet('{staging}')")
    total = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    con.execute("CREATE TEMP TABLE dedup AS SELECT DISTINCT * FROM raw")
    distinct = con.execute("SELECT count(*) FROM dedup").fetchone()[0]
    report.exact_duplicates_dropped = total - distinct
    if spec.frequency == "weekly":
        _check_one_weekday(con, spec)
    aggregates = ", ".join(["sum(sales) AS sales", *(f"max({c}) AS {c}" for c in covs)])
    con.execute(
        f"CREATE TEMP TABLE periods AS SELECT {keys}, date, {aggregates}, count(*) AS n "
        f"FROM dedup GROUP BY {keys}, date"
    )
    report.conflicting_duplicates_summed = con.execute(
        "SELECT count(*) FROM periods WHERE n > 1"
    ).fetchone()[0]
    report.negative_targets_kept = con.execute("SELECT count(*) FROM periods WHERE sales < 0").fetchone()[0]
    step = f"INTERVAL {spec.period_days} DAY"
    static = f", {', '.join(f'any_value({a}) AS {a}' for a in attrs)}" if attrs else ""
    con.execute(
        f"CREATE TEMP TABLE series AS SELECT {keys}, min(date) AS first_date{static} "
        f"FROM dedup GROUP BY {keys}"
    )
    filled_covs = "".join(f", coalesce(p.{c}, 0) AS {c}" for c in covs)
    con.execute(
        f"""CREATE TEMP TABLE grid AS
        SELECT {', '.join(f's.{k}' for k in [f'"{k}"' for k in spec.series_keys])},
               CAST(unnest(generate_series(s.first_date, (SELECT max(date) FROM periods), {step})) AS TIMESTAMP) AS date
               {''.join(f', s.{a}' for a in attrs)}
        FROM series s"""
    )
    con.execute(
        f"""CREATE TEMP TABLE filled AS
        SELECT g.*, coalesce(p.sales, 0) AS sales{filled_covs}, p.n IS NULL AS was_missing
        FROM grid g LEFT JOIN periods p USING ({keys}, date)"""
    )
    report.zero_rows_filled = con.execute("SELECT count(*) FROM filled WHERE was_missing").fetchone()[0]
    relation = "filled"
    for number, side in enumerate(spec.side_tables):
        path = local_path(spec.resolve(side.path), cache_dir, side.sha256)
        relation = _join_side_table(con, spec, relation, path, side.on, side.columns, number, report)
    return relation


def _check_one_weekday(con: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    weekdays = con.execute("SELECT DISTINCT dayname(date) FROM dedup ORDER BY 1").fetchall()
    if len(weekdays) > 1:
        raise DataValidationError(
            [Problem(spec.sales, spec.date_column, "weekly dates all on one weekday", len(weekdays),
                     [{"weekday": w[0]} for w in weekdays[:5]])]
        )


def _join_side_table(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    relation: str,
    path: Path,
    on: list[str],
    columns: list[str] | None,
    number: int,
    report: IngestReport,
) -> str:
    if not path.exists():
        raise DataValidationError([Problem(str(path), ", ".join(on), "side table exists", 1)])
    side = con.execute(f"SELECT * FROM read_csv('{path}', all_varchar=true) LIMIT 0").df().columns.tolist()
    wanted = columns or [c for c in side if c not in on]
    missing = [c for c in [*on, *wanted] if c not in side]
    if missing:
        raise DataValidationError(
            [Problem(str(path), ", ".join(missing), f"column present (found: {', '.join(side)})", 1)]
        )
    name = f"side_{number}"
    select = ", ".join([*(f'trim("{c}") AS "{c}"' for c in on), *(f'"{c}"' for c in wanted)])
    con.execute(
        f"CREATE TEMP TABLE {name} AS SELECT DISTINCT ON ({', '.join(on)}) {select} "
        f"FROM read_csv('{path}', all_varchar=true)"
    )
    join = " AND ".join(f'CAST(r."{c}" AS VARCHAR) = s."{c}"' for c in on)
    keys = ", ".join(f'r."{k}"' for k in spec.series_keys)
    report.unknown_categories[path.name] = con.execute(
        f"SELECT count(DISTINCT ({keys})) FROM {relation} r ANTI JOIN {name} s ON {join}"
    ).fetchone()[0]
    if not report.unknown_categories[path.name]:
        del report.unknown_categories[path.name]
    attrs = ", ".join(f"coalesce(s.\"{c}\", '{UNKNOWN}') AS \"{c}\"" for c in wanted)
    joined = f"joined_{number}"
    con.execute(f"CREATE TEMP TABLE {joined} AS SELECT r.*, {attrs} FROM {relation} r LEFT JOIN {name} s ON {join}")
    return joined


def attribute_columns(spec: DatasetSpec, con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    fixed = {"date", "sales", "was_missing", *spec.series_keys, *spec.covariates}
    return [c for c in con.execute(f"SELECT * FROM {relation} LIMIT 0").df().columns if c not in fixed]


def write_canonical(
    con: duckdb.DuckDBPyConnection, spec: DatasetSpec, relation: str, out: Path, report: IngestReport
) -> dict[str, Any]:
    """Write the canonical table sorted by series and date; integer keys stay integers."""
    attrs = attribute_columns(spec, con, relation)
    keys = []
    for key in spec.series_keys:
        numeric = con.execute(
            f'SELECT count(*) = count(TRY_CAST("{key}" AS BIGINT)) FROM {relation}'
        ).fetchone()[0]
        keys.append(f'CAST("{key}" AS BIGINT) AS "{key}"' if numeric else f'"{key}"')
    weight = "1.0"
    if spec.weights and spec.weights.column in attrs:
        col = f'lower(CAST("{spec.weights.column}" AS VARCHAR))'
        weight = f"CASE WHEN {col} IN ('1', 'true', 't', 'yes') THEN {spec.weights.weight_if_true} ELSE 1 END"
    select = ", ".join(
        ["CAST(date AS DATE) AS date", *keys, "CAST(sales AS DOUBLE) AS sales",
         *(f'CAST("{c}" AS DOUBLE) AS "{c}"' for c in spec.covariates),
         *(f'CAST("{a}" AS VARCHAR) AS "{a}"' for a in attrs), f"CAST({weight} AS DOUBLE) AS weight"]
    )
    order = ", ".join(f'"{k}"' for k in spec.series_keys)
    con.execute(f"COPY (SELECT {select} FROM {relation} ORDER BY {order}, date) TO '{out}' (FORMAT parquet)")
    stats = con.execute(
        f"SELECT count(*), min(date), max(date) FROM read_parquet('{out}')"
    ).fetchone()
    report.rows, first, last = stats[0], stats[1], stats[2]
    report.first_date, report.last_date = str(first)[:10], str(last)[:10]
    report.series = con.execute(
        f"SELECT count(*) FROM (SELECT DISTINCT {order} FROM read_parquet('{out}'))"
    ).fetchone()[0]
    return {"attributes": attrs}


def connect(memory_limit: str, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that spills to disk instead of exceeding its memory cap."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(
        config={"memory_limit": memory_limit, "temp_directory": str(temp_dir), "threads": 2}
    )


def ingest(
    spec: DatasetSpec,
    out_dir: Path,
    cache_dir: Path,
    memory_limit: str = "2GB",
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Sales source → `sales.parquet`, `holidays.parquet` and `dataset.json` in out_dir."""
    from cd4ml.data.calendar import holidays_table

    out_dir.mkdir(parents=True, exist_ok=True)
    sales = local_path(spec.resolve(spec.sales), cache_dir, spec.sales_sha256)
    if not sales.exists():
        raise DataValidationError([Problem(str(sales), "-", "file exists", 1)])
    report = IngestReport(source=str(sales))
    staging = out_dir / "staging.parquet"
    con = connect(memory_limit, out_dir / "tmp")
    try:
        stage_sales(spec, sales, staging, report, progress)
        relation = canonicalise(con, spec, staging, cache_dir, report)
        extra = write_canonical(con, spec, relation, out_dir / "sales.parquet", report)
    finally:
        con.close()
        staging.unlink(missing_ok=True)
    holidays = holidays_table(spec, cache_dir, report.first_date, report.last_date)
    holidays.to_parquet(out_dir / "holidays.parquet", index=False)
    dataset = {"spec": spec.model_dump(mode="json"), "attributes": extra["attributes"], "report": report.__dict__}
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2, default=str))
    return report
