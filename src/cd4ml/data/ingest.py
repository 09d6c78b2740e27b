"""Read a sales table described by a spec into cd4ml's canonical form, reporting every repair.

Every input file is located and its header checked first, so a typo in a side table fails in
a second, not after reading 125M rows. Raw rows are then validated with pandera chunk by chunk
(so the sales file never sits in memory), written to a typed staging file, then de-duplicated,
zero-filled and joined out of core in DuckDB. The canonical table has: date, the series keys,
`sales`, the covariates, the attributes and `weight`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cd4ml.data.calendar import ISO_DATE, detect_date_format, holidays_table
from cd4ml.data.schemas import raw_schema, to_number, to_target
from cd4ml.data.sources import Inputs, SideInput, header, locate_inputs, read_side_table
from cd4ml.data.spec import DatasetSpec
from cd4ml.data.validation import (
    MAX_EXAMPLES,
    DataValidationError,
    Problem,
    problems_from_pandera,
)
from cd4ml.sql import quote_ident, quote_idents, quote_literal

CHUNK_ROWS = 1_000_000
UNKNOWN = "UNKNOWN"


@dataclass
class IngestReport:
    """What was read and what was repaired; nothing is changed without being counted here."""

    source: str
    source_notes: list[str] = field(default_factory=list)  # the preset's own repairs, from the spec
    rows_read: int = 0
    date_format: str = ""
    date_format_detected: bool = False
    exact_duplicates_dropped: int = 0
    conflicting_duplicates_summed: int = 0
    negative_targets_kept: int = 0
    zero_rows_filled: int = 0
    empty_covariates_filled: dict[str, int] = field(default_factory=dict)
    empty_attributes_unknown: dict[str, int] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    dropped_columns: list[str] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)  # dropped, yet not in drop_columns
    series: int = 0
    rows: int = 0
    first_date: str = ""
    last_date: str = ""

    def notes(self) -> list[str]:
        """Human sentences for the repairs that happened."""
        notes = list(self.source_notes)
        if self.date_format_detected:
            notes.append(f"dates read as {self.date_format} (the only known format that fits)")
        if self.exact_duplicates_dropped:
            notes.append(f"{self.exact_duplicates_dropped} exact duplicate rows dropped")
        if self.conflicting_duplicates_summed:
            notes.append(f"{self.conflicting_duplicates_summed} series-periods with several rows summed")
        if self.negative_targets_kept:
            notes.append(f"{self.negative_targets_kept} negative targets kept as returns")
        if self.zero_rows_filled:
            notes.append(f"{self.zero_rows_filled} missing periods filled with zero sales")
        for column, count in self.empty_covariates_filled.items():
            if count == self.rows_read:
                notes.append(f"covariate '{column}' is empty in every row: filled with 0")
            else:
                notes.append(f"{count} empty '{column}' values filled with 0")
        for column, count in self.empty_attributes_unknown.items():
            notes.append(f"{count} empty '{column}' values set to {UNKNOWN}")
        for table, count in self.unknown_categories.items():
            notes.append(f"{count} series not found in {table}: attributes set to {UNKNOWN}")
        if self.ignored_columns:
            ignored = ", ".join(self.ignored_columns)
            notes.append(f"columns not named in the spec ignored: {ignored}")
        return notes


def stage_sales(
    spec: DatasetSpec,
    inputs: Inputs,
    staging: Path,
    report: IngestReport,
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> None:
    """Validate raw rows chunk by chunk and write them typed to a staging parquet file.

    Every chunk is checked even after one fails, so one run lists every problem in the file.
    """
    import pandera.errors

    file = inputs.sales_name
    wanted = spec.sales_columns
    report.dropped_columns = [c for c in header(inputs.sales) if c not in wanted]
    report.ignored_columns = [c for c in report.dropped_columns if c not in spec.drop_columns]
    writer: pq.ParquetWriter | None = None
    schema = None
    problems: list[Problem] = []
    chunks = pd.read_csv(inputs.sales, usecols=wanted, dtype=str, chunksize=chunk_rows, encoding="utf-8-sig")
    try:
        for chunk in chunks:
            if chunk.empty:
                continue
            if schema is None:
                report.date_format = spec.date_format or detect_date_format(
                    chunk[spec.date_column], file, spec.date_column
                )
                report.date_format_detected = report.date_format not in (spec.date_format, ISO_DATE)
                schema = raw_schema(spec, report.date_format)
            report.rows_read += len(chunk)
            if progress:
                progress(len(chunk))
            try:
                schema.validate(chunk, lazy=True)
            except pandera.errors.SchemaErrors as exc:
                problems += problems_from_pandera(exc.failure_cases, chunk, file)
                continue
            table = pa.Table.from_pandas(_typed(chunk, spec, report), preserve_index=False)
            writer = writer or pq.ParquetWriter(staging, table.schema)
            writer.write_table(table)
    finally:
        if writer:
            writer.close()
    if problems:
        raise DataValidationError(problems)
    if report.rows_read == 0:
        raise DataValidationError([Problem(file, spec.target, "at least one row", 0)])


def _count_empty(counts: dict[str, int], column: str, values: pd.Series) -> None:
    empty = int(values.isna().sum())
    if empty:
        counts[column] = counts.get(column, 0) + empty


def _typed(chunk: pd.DataFrame, spec: DatasetSpec, report: IngestReport) -> pd.DataFrame:
    typed = pd.DataFrame({"date": pd.to_datetime(chunk[spec.date_column], format=report.date_format)})
    for key in spec.series_keys:
        typed[key] = chunk[key].str.strip()
    typed["sales"] = to_target(chunk[spec.target])
    for cov in spec.covariates:
        typed[cov] = to_number(chunk[cov]).astype("float64")
        _count_empty(report.empty_covariates_filled, cov, chunk[cov])
    for attr in spec.attributes:
        typed[attr] = chunk[attr].fillna(UNKNOWN).astype(str)
        _count_empty(report.empty_attributes_unknown, attr, chunk[attr])
    return typed


def canonicalise(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    inputs: Inputs,
    staging: Path,
    report: IngestReport,
) -> str:
    """De-duplicate, zero-fill inside each series' active range and join attributes.

    Returns the name of the temporary table holding the result.
    """
    keys = quote_idents(spec.series_keys)
    covs = [quote_ident(c) for c in spec.covariates]
    attrs = [quote_ident(a) for a in spec.attributes]
    con.execute(f"CREATE TEMP TABLE raw AS SELECT * FROM read_parquet({quote_literal(staging)})")
    con.execute("CREATE TEMP TABLE dedup AS SELECT DISTINCT * FROM raw")
    report.exact_duplicates_dropped = _count(con, "raw") - _count(con, "dedup")
    _check_frequency(con, spec, inputs.sales_name)
    aggregates = ", ".join(["sum(sales) AS sales", *(f"max({c}) AS {c}" for c in covs)])
    con.execute(
        f"CREATE TEMP TABLE periods AS SELECT {keys}, date, {aggregates}, count(*) AS n "
        f"FROM dedup GROUP BY {keys}, date"
    )
    report.conflicting_duplicates_summed = _count(con, "periods", "n > 1")
    report.negative_targets_kept = _count(con, "periods", "sales < 0")
    static = "".join(f", any_value({a}) AS {a}" for a in attrs)
    con.execute(
        f"CREATE TEMP TABLE series AS SELECT {keys}, min(date) AS first_date{static} FROM dedup GROUP BY {keys}"
    )
    con.execute(
        f"""CREATE TEMP TABLE grid AS
        SELECT {quote_idents(spec.series_keys, "s.")},
               CAST(unnest(generate_series(s.first_date, (SELECT max(date) FROM periods),
                    INTERVAL {spec.period_days} DAY)) AS TIMESTAMP) AS date
               {"".join(f", s.{a}" for a in attrs)}
        FROM series s"""
    )
    filled_covs = "".join(f", coalesce(p.{c}, 0) AS {c}" for c in covs)
    con.execute(
        f"""CREATE TEMP TABLE filled AS
        SELECT g.*, coalesce(p.sales, 0) AS sales{filled_covs}, p.n IS NULL AS was_missing
        FROM grid g LEFT JOIN periods p USING ({keys}, date)"""
    )
    report.zero_rows_filled = _count(con, "filled", "was_missing")
    relation = "filled"
    for number, side in enumerate(inputs.sides):
        relation = _join_side_table(con, spec, relation, side, number, report)
    return relation


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    """One value; fetching every row leaves the connection free for `register`."""
    return con.execute(sql).fetchall()[0][0]


def _count(con: duckdb.DuckDBPyConnection, relation: str, where: str = "true") -> int:
    return _scalar(con, f"SELECT count(*) FROM {relation} WHERE {where}")


def _check_frequency(con: duckdb.DuckDBPyConnection, spec: DatasetSpec, file: str) -> None:
    """Weekly dates must share a weekday; daily dates all on one weekday are weekly data."""
    weekdays = con.execute(
        "SELECT dayname(date), count(DISTINCT date), CAST(min(date) AS DATE) FROM dedup GROUP BY 1 ORDER BY 2 DESC"
    ).fetchall()
    dates = sum(n for _, n, _ in weekdays)
    if spec.frequency == "weekly" and len(weekdays) > 1:
        check = "weekly dates all on one weekday"
    elif spec.frequency == "daily" and len(weekdays) == 1 and dates > 2:
        check = "daily dates on several weekdays (for weekly data set frequency: weekly)"
    else:
        return
    examples = [{"weekday": day, "dates": n, "first": str(first)} for day, n, first in weekdays]
    raise DataValidationError([Problem(file, spec.date_column, check, dates, examples[:MAX_EXAMPLES])])


def _join_side_table(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    relation: str,
    side: SideInput,
    number: int,
    report: IngestReport,
) -> str:
    frame, empty = read_side_table(side)
    for column, count in empty.items():
        report.empty_attributes_unknown[column] = count
    name, joined = f"side_{number}", f"joined_{number}"
    con.register(name, frame)
    join = " AND ".join(f"CAST({quote_ident(c, 'r.')} AS VARCHAR) = {quote_ident(c, 's.')}" for c in side.on)
    unknown = _scalar(
        con,
        f"SELECT count(DISTINCT ({quote_idents(spec.series_keys, 'r.')})) "
        f"FROM {relation} r ANTI JOIN {name} s ON {join}",
    )
    if unknown:
        report.unknown_categories[side.path.name] = unknown
    attrs = ", ".join(
        f"coalesce({quote_ident(c, 's.')}, {quote_literal(UNKNOWN)}) AS {quote_ident(c)}" for c in side.columns
    )
    con.execute(f"CREATE TEMP TABLE {joined} AS SELECT r.*, {attrs} FROM {relation} r LEFT JOIN {name} s ON {join}")
    con.unregister(name)
    return joined


def write_canonical(
    con: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    relation: str,
    attributes: list[str],
    out: Path,
    report: IngestReport,
) -> None:
    """Write the canonical table sorted by series and date; integer keys stay integers.

    A key is written as an integer only if every value survives the round trip, so '007'
    stays text instead of merging with '7'; a spec's `text_keys` are always text.
    """
    keys = []
    for key in spec.series_keys:
        column = quote_ident(key)
        integer = key not in spec.text_keys and _scalar(
            con,
            f"SELECT bool_and(CAST(TRY_CAST({column} AS BIGINT) AS VARCHAR) IS NOT DISTINCT FROM "
            f"{column}) FROM {relation}",
        )
        keys.append(f"CAST({column} AS BIGINT) AS {column}" if integer else column)
    weight = "1.0"
    if spec.weights:
        flag = f"lower(CAST({quote_ident(spec.weights.column)} AS VARCHAR))"
        weight = f"CASE WHEN {flag} IN ('1', 'true', 't', 'yes') THEN {spec.weights.weight_if_true} ELSE 1 END"
    select = ", ".join(
        [
            "CAST(date AS DATE) AS date",
            *keys,
            "CAST(sales AS DOUBLE) AS sales",
            *(f"CAST({quote_ident(c)} AS DOUBLE) AS {quote_ident(c)}" for c in spec.covariates),
            *(f"CAST({quote_ident(a)} AS VARCHAR) AS {quote_ident(a)}" for a in attributes),
            f"CAST({weight} AS DOUBLE) AS weight",
        ]
    )
    order, target = quote_idents(spec.series_keys), quote_literal(out)
    con.execute(f"COPY (SELECT {select} FROM {relation} ORDER BY {order}, date) TO {target} (FORMAT parquet)")
    table = f"read_parquet({target})"
    report.rows, first, last = con.execute(f"SELECT count(*), min(date), max(date) FROM {table}").fetchall()[0]
    report.first_date, report.last_date = str(first), str(last)
    report.series = _count(con, f"(SELECT DISTINCT {order} FROM {table})")


def connect(memory_limit: str, temp_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that spills to disk instead of exceeding its memory cap."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(temp_dir), "threads": 2})


def ingest(
    spec: DatasetSpec,
    out_dir: Path,
    cache_dir: Path,
    memory_limit: str = "2GB",
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> IngestReport:
    """Sales source → `sales.parquet`, `holidays.parquet` and `dataset.json` in out_dir.

    Invalid data raises DataValidationError naming file, column, check and lines.
    """
    inputs = locate_inputs(spec, cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = IngestReport(source=inputs.sales_name, source_notes=list(spec.source_notes))
    staging = out_dir / "staging.parquet"
    attributes = [*spec.attributes, *inputs.side_attributes]
    con = connect(memory_limit, out_dir / "tmp")
    try:
        stage_sales(spec, inputs, staging, report, progress, chunk_rows)
        relation = canonicalise(con, spec, inputs, staging, report)
        write_canonical(con, spec, relation, attributes, out_dir / "sales.parquet", report)
    finally:
        con.close()
        staging.unlink(missing_ok=True)
    holidays = holidays_table(spec, cache_dir, report.first_date, report.last_date)
    holidays.to_parquet(out_dir / "holidays.parquet", index=False)
    dataset = {
        "spec": spec.model_dump(mode="json"),
        "attributes": attributes,
        "report": asdict(report),
    }
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2, default=str))
    return report
