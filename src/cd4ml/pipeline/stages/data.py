"""Data stages: ingest, validate, split and featurize."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from cd4ml.config import Paths, load_params
from cd4ml.pipeline.stages.workdir import read_dataset, write_json


def ingest(root: Path) -> str:
    """Read the configured source; a failure leaves a failed validation report behind."""
    from cd4ml.data.ingest import ingest as read_into_canonical
    from cd4ml.data.presets import favorita
    from cd4ml.data.sample import SampleConfig, write_sample
    from cd4ml.data.sources import resolve_source
    from cd4ml.data.spec import SpecError
    from cd4ml.data.validation import DataValidationError, Problem, write_report

    paths, params = Paths(root), load_params(Paths(root).params)
    source = params.data.source
    failed = [{"check": "ingest: inputs readable and raw rows valid", "status": "failed"}]
    try:
        if source == "sample":
            sample = params.data.sample
            write_sample(
                paths.sample, SampleConfig(sample.stores, sample.items, sample.days, sample.start, sample.seed)
            )
            spec = favorita(paths.sample)
        else:
            spec = resolve_source(source, paths.cache)
        report = read_into_canonical(spec, paths.ingested, paths.cache, params.data.memory_limit)
    except DataValidationError as exc:
        write_report(paths.reports / "validation.json", "failed", failed, exc.problems)
        raise
    except SpecError as exc:
        write_report(paths.reports / "validation.json", "failed", failed, [Problem(source, "-", str(exc), 1)])
        raise
    if params.data.segment or params.data.until:
        report = restrict(paths.ingested, params.data.segment, params.data.until)
    write_json(
        paths.reports / "ingest.json",
        {
            "rows": report.rows,
            "series": report.series,
            "rows_read": report.rows_read,
            "zero_rows_filled": report.zero_rows_filled,
        },
    )
    return f"{spec.name}: {report.rows:,} rows, {report.series:,} series, {report.first_date}..{report.last_date}"


def restrict(ingested: Path, segment: dict[str, list[str]], until: date | None):
    """Keep one segment (per-segment models for the `multiple` release strategy) and/or the
    sales up to a date (backtests, simulations); dataset.json's report follows."""
    from cd4ml.data.ingest import IngestReport
    from cd4ml.data.validation import DataValidationError, Problem

    table = ingested / "sales.parquet"
    dataset = json.loads((ingested / "dataset.json").read_text())
    keys = dataset["spec"]["series_keys"]
    frame = pd.read_parquet(table)
    if until is not None:
        frame = frame[pd.to_datetime(frame["date"]) <= pd.Timestamp(until)]
    for column, values in segment.items():
        if column not in frame.columns:
            raise DataValidationError([Problem(str(table), column, "segment column is an attribute", 1)])
        frame = frame[frame[column].astype(str).isin([str(v) for v in values])]
    if frame.empty:
        raise DataValidationError([Problem(str(table), "date", f"rows in segment {segment} up to {until}", 1)])
    frame.to_parquet(table, index=False)
    report = IngestReport(**dataset["report"])
    report.rows, report.series = len(frame), len(frame.drop_duplicates(keys))
    report.first_date, report.last_date = str(frame["date"].min())[:10], str(frame["date"].max())[:10]
    dataset["report"] = report.__dict__
    (ingested / "dataset.json").write_text(json.dumps(dataset, indent=2, default=str))
    return report


def validate(root: Path) -> str:
    """Check the canonical table with pandera, batch by batch; always leave the report behind."""
    import pyarrow.parquet as pq

    from cd4ml.data.schemas import check, sales_schema
    from cd4ml.data.validation import DataValidationError, write_report

    paths = Paths(root)
    dataset = read_dataset(paths)
    spec = dataset["spec"]
    schema = sales_schema(spec["series_keys"], spec["covariates"], dataset["attributes"])
    table = paths.ingested / "sales.parquet"
    checks = [{"check": note, "status": "repaired"} for note in _notes(dataset)]
    rows, line = 0, 0
    try:
        for batch in pq.ParquetFile(table).iter_batches(batch_size=1_000_000):
            frame = batch.to_pandas()
            frame.index += line
            check(schema, frame, str(table), first_line=0)
            rows += len(frame)
            line += len(frame)
        if rows == 0:
            raise DataValidationError([])
    except DataValidationError as exc:
        write_report(paths.reports / "validation.json", "failed", checks, exc.problems)
        raise
    checks += [{"check": f"{rows:,} rows match the canonical sales schema", "status": "passed"}]
    write_report(paths.reports / "validation.json", "passed", checks, [])
    return f"{rows:,} rows valid, {len(checks) - 1} repair(s) reported"


def _notes(dataset: dict) -> list[str]:
    from cd4ml.data.ingest import IngestReport

    return IngestReport(**dataset["report"]).notes()


def split(root: Path) -> str:
    from cd4ml.data.split import plan_split

    paths, params = Paths(root), load_params(Paths(root).params)
    dataset = read_dataset(paths)
    report = dataset["report"]
    plan = plan_split(
        date.fromisoformat(report["first_date"]),
        date.fromisoformat(report["last_date"]),
        params.split.horizon,
        1 if dataset["spec"]["frequency"] == "daily" else 7,
        params.split.train_origins,
        params.split.origin_stride,
        params.split.min_history,
    )
    write_json(paths.split, plan.model_dump(mode="json"))
    chosen = "".join(f"; {note}" for note in plan.notes)
    return (
        f"{len(plan.train_origins)} train origins {plan.train_origins[0]}..{plan.train_origins[-1]}, "
        f"valid {plan.valid_origin}, holdout {plan.holdout_origin}{chosen}"
    )


def featurize(root: Path) -> str:
    """Labelled feature rows for every origin of the split, written origin by origin."""
    from cd4ml.calendar_features import holiday_counts
    from cd4ml.data.split import Split
    from cd4ml.features import build_feature_spec

    paths, params = Paths(root), load_params(Paths(root).params)
    dataset = read_dataset(paths)
    plan = Split.model_validate_json(paths.split.read_text())
    con = connect_sales(root, params.data.memory_limit)
    f = params.features
    fs = build_feature_spec(
        dataset, con, "sales", plan.horizon, f.windows, f.weekday_weeks, f.lags, f.group_levels, f.holiday_distance
    )
    holidays = holiday_counts(pd.read_parquet(paths.ingested / "holidays.parquet"), fs)
    keep = list(dict.fromkeys(["sales", "weight", *dataset["spec"]["slices"]]))
    paths.features.mkdir(parents=True, exist_ok=True)
    share = train_share(dataset, plan, params.split.max_train_rows)
    series = dataset["report"]["series"]
    parts = {
        "train": (plan.train_origins, share),
        "valid": ([plan.valid_origin], 1.0),
        "holdout": ([plan.holdout_origin], 1.0),
        "refit": (plan.refit_origins if params.split.refit else [], share),
    }
    counts = {
        part: _write_examples(con, fs, holidays, keep, origins, share, paths.features / f"{part}.parquet", series)
        for part, (origins, share) in parts.items()
    }
    con.close()
    (paths.features / "feature_spec.json").write_text(fs.model_dump_json(indent=2))
    sampled = f"; {share:.0%} of series per train origin (split.max_train_rows)" if share < 1 else ""
    return ", ".join(f"{part} {n:,}" for part, n in counts.items()) + f" rows × {len(fs.columns)} features{sampled}"


def train_share(dataset: dict, plan, max_rows: int) -> float:
    """The share of series each training origin keeps so training stays within `max_rows`."""
    rows = dataset["report"]["series"] * plan.horizon * max(len(plan.train_origins), 1)
    return min(1.0, max_rows / rows)


def connect_sales(root: Path, memory_limit: str):
    """A DuckDB connection with the canonical table as the view `sales`."""
    from cd4ml.data.ingest import connect
    from cd4ml.sql import quote_literal

    con = connect(memory_limit, root / ".cd4ml" / "duckdb")
    table = quote_literal(Paths(root).ingested / "sales.parquet")  # a view cannot bind parameters
    con.execute(f"CREATE VIEW sales AS SELECT * FROM read_parquet({table})")
    return con


BATCH_ROWS = 250_000


def examples(con, fs, holidays, keep: list[str], origins: list[date], share: float, part: str, series: int):
    """(features, labels) of batches of origins of about BATCH_ROWS rows (`series` per origin at
    most), checked against the feature schema: one state query and one schema check per batch,
    not per origin (each costs ~70 ms whatever its size: most of featurize's time for 84 small
    origins)."""
    from cd4ml.data.schemas import check, feature_schema
    from cd4ml.features import examples_at_origins

    size = max(1, int(BATCH_ROWS / max(1.0, series * fs.horizon * share)))
    for start in range(0, len(origins), size):
        batch = origins[start : start + size]
        features, labels = examples_at_origins(con, fs, "sales", batch, holidays, keep, share)
        check(feature_schema(fs), features, f"{part} features at origins {batch[0]}..{batch[-1]}")
        yield features, labels


def _write_examples(
    con, fs, holidays, keep: list[str], origins: list[date], share: float, file: Path, series: int
) -> int:
    """Feature rows of `origins` appended to one Parquet file (none for no origins)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, rows = None, 0
    for features, labels in examples(con, fs, holidays, keep, origins, share, file.stem, series):
        table = pa.Table.from_pandas(pd.concat([labels, features], axis=1), preserve_index=False)
        writer = writer or pq.ParquetWriter(file, table.schema)
        writer.write_table(table)
        rows += len(features)
    if writer is None:
        file.unlink(missing_ok=True)
    else:
        writer.close()
    return rows
