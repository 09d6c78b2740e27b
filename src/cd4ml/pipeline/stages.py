"""Stage entry points that dvc.yaml calls: read inputs, call plain functions, write outputs.

Every stage runs in the work directory (the folder holding dvc.yaml) and returns a one-line
summary for the run's table.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd

from cd4ml.config import Paths, load_params


def _json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, default=str))


def _dataset(paths: Paths) -> dict:
    return json.loads((paths.ingested / "dataset.json").read_text())


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
    _json(
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
    dataset = _dataset(paths)
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
    dataset = _dataset(paths)
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
    _json(paths.split, plan.model_dump(mode="json"))
    chosen = "".join(f"; {note}" for note in plan.notes)
    return (
        f"{len(plan.train_origins)} train origins {plan.train_origins[0]}..{plan.train_origins[-1]}, "
        f"valid {plan.valid_origin}, holdout {plan.holdout_origin}{chosen}"
    )


def featurize(root: Path) -> str:
    """Labelled feature rows for every origin of the split, written origin by origin."""
    from cd4ml.data.ingest import connect
    from cd4ml.data.split import Split
    from cd4ml.features import build_feature_spec, holiday_counts

    paths, params = Paths(root), load_params(Paths(root).params)
    dataset = _dataset(paths)
    plan = Split.model_validate_json(paths.split.read_text())
    con = connect(params.data.memory_limit, root / ".cd4ml" / "duckdb")
    con.execute(f"CREATE VIEW sales AS SELECT * FROM read_parquet('{paths.ingested / 'sales.parquet'}')")
    fs = build_feature_spec(dataset, con, "sales", plan.horizon, params.features.windows, params.features.weekday_weeks)
    holidays = holiday_counts(pd.read_parquet(paths.ingested / "holidays.parquet"), fs)
    keep = list(dict.fromkeys(["sales", "weight", *dataset["spec"]["slices"]]))
    paths.features.mkdir(parents=True, exist_ok=True)
    rows_per_origin = dataset["report"]["series"] * plan.horizon
    share = min(1.0, params.split.max_train_rows / (rows_per_origin * len(plan.train_origins)))
    parts = {
        "train": (plan.train_origins, share),
        "valid": ([plan.valid_origin], 1.0),
        "holdout": ([plan.holdout_origin], 1.0),
        "refit": (plan.refit_origins if params.split.refit else [], share),
    }
    counts = {
        part: _write_examples(con, fs, holidays, keep, origins, share, paths.features / f"{part}.parquet")
        for part, (origins, share) in parts.items()
    }
    con.close()
    (paths.features / "feature_spec.json").write_text(fs.model_dump_json(indent=2))
    sampled = f"; {share:.0%} of series per train origin (split.max_train_rows)" if share < 1 else ""
    return ", ".join(f"{part} {n:,}" for part, n in counts.items()) + f" rows × {len(fs.columns)} features{sampled}"


def _write_examples(con, fs, holidays, keep: list[str], origins: list[date], share: float, file: Path) -> int:
    """Feature rows of `origins` appended to one Parquet file (an empty one for no origins)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cd4ml.data.schemas import check, feature_schema
    from cd4ml.features import examples_at_origin

    writer, rows = None, 0
    for origin in origins:
        features, labels = examples_at_origin(con, fs, "sales", origin, holidays, keep, share)
        check(feature_schema(fs), features, f"{file.stem} features at origin {origin}")
        table = pa.Table.from_pandas(pd.concat([labels, features], axis=1), preserve_index=False)
        writer = writer or pq.ParquetWriter(file, table.schema)
        writer.write_table(table)
        rows += len(features)
    if writer is None:
        file.unlink(missing_ok=True)
    else:
        writer.close()
    return rows


def load_part(
    paths: Paths, part: str, columns: list[str], labels: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, labels) of one part of the feature table; `labels` picks columns (default: all).

    Features are filled batch by batch into one float32 block that LightGBM and ONNX read
    without a copy: reading the whole table into pandas and splitting it held three copies
    (4.5 GB peak for 5.1M training rows at 10M sample rows).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(paths.features / f"{part}.parquet")
    features = np.empty((file.metadata.num_rows, len(columns)), dtype=np.float32, order="F")
    start = 0
    for batch in file.iter_batches(batch_size=256_000, columns=columns):
        for j, column in enumerate(columns):
            features[start : start + batch.num_rows, j] = batch.column(column).to_numpy()
        start += batch.num_rows
    if labels is None:
        labels = [name for name in file.schema_arrow.names if name not in columns]
    label_frame = file.read(columns=labels).to_pandas()
    pa.default_memory_pool().release_unused()  # decoding buffers, else kept for the whole stage
    return pd.DataFrame(features, columns=columns, copy=False), label_frame


def feature_spec(paths: Paths):
    from cd4ml.features import FeatureSpec

    return FeatureSpec.model_validate_json((paths.features / "feature_spec.json").read_text())


def train(root: Path) -> str:
    """Fit the model the gates will judge (early stopping on validation), then the one that ships:
    the same settings refit on the newest origins as well (see `cd4ml.data.split`)."""
    import mlflow

    from cd4ml import tracking
    from cd4ml.models import make_model

    paths, params = Paths(root), load_params(Paths(root).params)
    fs = feature_spec(paths)
    X, labels = load_part(paths, "train", fs.columns, labels=["sales", "weight"])
    Xv, valid = load_part(paths, "valid", fs.columns, labels=["sales"])
    model = make_model(params.model.type, params.model.chosen)
    with tracking.run(root, params.tracking.experiment) as active:
        model.fit(X, labels["sales"].to_numpy(), labels["weight"].to_numpy(), valid=(Xv, valid["sales"].to_numpy()))
        _save_model(model, paths.model, fs)
        del Xv, valid
        refit = _refit(paths, model, fs, X, labels)
        dataset = _dataset(paths)
        hashes = tracking.stage_hashes(root)
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json", exclude={"model"})))
        mlflow.log_params(tracking.flatten({"model": {"type": params.model.type, **params.model.chosen}}))
        mlflow.log_params(tracking.flatten({"refit": refit}))
        mlflow.set_tags(
            tracking.lineage(root, hashes.get("ingest:data/ingested", ""))
            | {"dataset": dataset["spec"]["name"], "model_family": params.model.type}
        )
        mlflow.log_dict(dataset, "data/dataset.json")
        mlflow.log_artifact(str(paths.split), "data")
        if (root / "dvc.lock").exists():
            mlflow.log_artifact(str(root / "dvc.lock"), "lineage")
        run = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id, "refit": refit}
    _json(paths.run, run)
    shipped = f"; refit on {refit['rows']:,} rows through {refit['through']}" if refit["rows"] > len(X) else ""
    return f"{params.model.type} on {len(X):,} rows{shipped}; MLflow run {run['run_id'][:8]}"


def _save_model(model, directory: Path, fs) -> None:
    model.save(directory)
    (directory / "model.onnx").write_bytes(model.to_onnx(len(fs.columns)))
    (directory / "feature_spec.json").write_text(fs.model_dump_json(indent=2))


def _refit(paths: Paths, model, fs, X: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Write the shipped model: `model` refit on the training and the newest origins, or `model`
    itself when the split has no refit origins (`split.refit: false`)."""
    import shutil

    from cd4ml.data.split import Split

    plan = Split.model_validate_json(paths.split.read_text())
    newest = plan.train_origins[-1]
    if (paths.features / "refit.parquet").exists():
        Xr, recent = load_part(paths, "refit", fs.columns, labels=["sales", "weight"])
        X, labels = pd.concat([X, Xr], ignore_index=True), pd.concat([labels, recent], ignore_index=True)
        shipped = model.unstopped().fit(X, labels["sales"].to_numpy(), labels["weight"].to_numpy())
        _save_model(shipped, paths.shipped, fs)
        newest = plan.refit_origins[-1]
    else:
        shutil.rmtree(paths.shipped, ignore_errors=True)
        shutil.copytree(paths.model, paths.shipped)
    step = pd.Timedelta(days=plan.period_days)
    return {"rows": len(X), "through": str((pd.Timestamp(newest) + plan.horizon * step).date())}


def evaluate(root: Path) -> str:
    """Score the holdout with the exported ONNX model — exactly what will be served — against
    actuals and the seasonal-naive baseline; log it all to MLflow."""
    import mlflow

    from cd4ml import plots, tracking
    from cd4ml.features import seasonal_naive
    from cd4ml.metrics import evaluate as score
    from cd4ml.metrics import evaluate_slices
    from cd4ml.models import load_model
    from cd4ml.scoring import Predictor

    paths, params = Paths(root), load_params(Paths(root).params)
    fs = feature_spec(paths)
    model = load_model(paths.model)
    X, holdout = load_part(paths, "holdout", fs.columns)
    holdout["prediction"] = Predictor.read(paths.model).predict_features(X)
    holdout["baseline"] = seasonal_naive(X)
    actual, weight = holdout["sales"].to_numpy(), holdout["weight"].to_numpy()
    metrics = {
        "model": score(actual, holdout["prediction"].to_numpy(), weight),
        "baseline": score(actual, holdout["baseline"].to_numpy(), weight),
    }
    slices = evaluate_slices(holdout, _dataset(paths)["spec"]["slices"], actual="sales")
    paths.reports.mkdir(parents=True, exist_ok=True)
    holdout.to_parquet(paths.reports / "holdout.parquet", index=False)
    _json(paths.reports / "metrics.json", metrics)
    _json(paths.reports / "slices.json", slices.to_dict(orient="records"))
    plot_dir = paths.reports / "plots"
    figures = plots.all_plots(holdout, model, fs, plot_dir, params.evaluate.plot_series)
    with tracking.run(root, params.tracking.experiment, tracking.read_run(paths.run)["run_id"]):
        mlflow.log_metrics({tracking.metric_name("holdout", k): v for k, v in metrics["model"].items()})
        mlflow.log_metrics({tracking.metric_name("baseline", k): v for k, v in metrics["baseline"].items()})
        for row in slices.to_dict(orient="records"):
            mlflow.log_metrics(
                {
                    tracking.metric_name("slice", row["slice"], str(row["value"]), m): row[m]
                    for m in ("nwrmsle", "wape", "bias")
                    if pd.notna(row[m])
                }
            )
        mlflow.log_artifacts(str(plot_dir), "plots")
        mlflow.log_artifacts(str(paths.model), "native_model")
        mlflow.log_artifact(str(paths.reports / "metrics.json"), "reports")
        mlflow.log_artifact(str(paths.reports / "slices.json"), "reports")
        if (paths.reports / "validation.json").exists():
            mlflow.log_artifact(str(paths.reports / "validation.json"), "reports")
    m, b = metrics["model"], metrics["baseline"]
    return (
        f"NWRMSLE {m['nwrmsle']:.4f} (baseline {b['nwrmsle']:.4f}), WAPE {m['wape']:.3f}, "
        f"R² {m['r2']:.3f}; {len(figures)} plots"
    )


def gate(root: Path) -> str:
    """Run every promotion check on the held-out model and package the bundle of the model that
    ships; the bundle is logged to the run even when a check fails (exit 3), so it stays usable."""
    import mlflow

    from cd4ml import gates, tracking
    from cd4ml.bundle import series_data
    from cd4ml.data.split import Split
    from cd4ml.models import load_model
    from cd4ml.scoring import Predictor, Scorer

    paths, params = Paths(root), load_params(Paths(root).params)
    p = params.gates
    fs = feature_spec(paths)
    plan = Split.model_validate_json(paths.split.read_text())
    data = series_data(
        paths.ingested / "sales.parquet", pd.read_parquet(paths.ingested / "holidays.parquet"), fs, plan.holdout_origin
    )
    X, _ = load_part(paths, "holdout", fs.columns)
    holdout = pd.read_parquet(paths.reports / "holdout.parquet")
    metrics = json.loads((paths.reports / "metrics.json").read_text())
    rows = holdout[["date", *fs.series_keys]].merge(  # the holdout lies inside the bundle's history window
        data.history[["date", *fs.series_keys, *fs.covariates]], on=["date", *fs.series_keys], how="left"
    )
    holdout = pd.concat([holdout, rows[fs.covariates]], axis=1)
    serving = Scorer(Predictor.read(paths.shipped), data, plan.holdout_origin)
    serving_X = serving.features(serving.validate(holdout[["date", *fs.series_keys, *fs.covariates]]))
    checks = [
        *gates.absolute(metrics["model"], p),
        gates.beats_baseline(metrics["model"]["nwrmsle"], metrics["baseline"]["nwrmsle"], p),
    ]
    champion = _rescored_champion(root, params, data, holdout, plan.holdout_origin)
    checks.append(gates.not_worse_than_champion(champion, p))
    slices = _dataset(paths)["spec"]["slices"]
    checks.append(gates.slice_degradation(holdout, slices, "baseline", "seasonal naive", p))
    if champion.predictions is not None:
        judged = holdout.loc[champion.rows].assign(champion=champion.predictions)
        checks.append(gates.slice_degradation(judged, slices, "champion", f"champion v{champion.version}", p))
    # the ONNX file that will ship, scored now: evaluate's predictions come from the held-out fit
    shipped = serving.predictor.predict_features(X)
    checks.append(gates.onnx_parity(load_model(paths.shipped).predict(X), shipped, p))
    status = json.loads((paths.reports / "validation.json").read_text())["status"]
    checks += [gates.data_valid(status), gates.contract(X, serving_X)]
    result = gates.report(checks)
    _json(paths.reports / "gates.json", result)
    _write_bundle(root, paths, params, fs, plan, data, holdout, metrics, shipped)
    run_id = tracking.read_run(paths.run)["run_id"]
    with tracking.run(root, params.tracking.experiment, run_id):
        mlflow.log_dict(result, "gates/gates.json")
        mlflow.set_tag("gate", "passed" if result["passed"] else "failed")
    _log_bundle(root, paths, fs, run_id)
    failed = [gates.Check(**c) for c in result["checks"] if not c["passed"]]
    if failed:
        raise gates.GateFailed(failed)
    return f"{len(checks)} checks passed"


def _write_bundle(root: Path, paths: Paths, params, fs, plan, data, holdout, metrics, shipped) -> None:
    """models/bundle: the shipped model, its data, the gated metrics and what the shipped model
    scores on the holdout (in-sample once refit; `cd4ml verify` re-checks that)."""
    from cd4ml import tracking
    from cd4ml.bundle import reference_features, write_bundle
    from cd4ml.data.schemas import input_schema
    from cd4ml.metrics import evaluate as score

    dataset = _dataset(paths)
    run = tracking.read_run(paths.run)
    lineage = tracking.lineage(root, tracking.stage_hashes(root).get("ingest:data/ingested", "")) | {
        "run_id": run["run_id"],
        "params": params.model_dump(mode="json"),
        "dataset": dataset["spec"]["name"],
        "gated": "the held-out fit: trained on origins before validation, judged on the holdout",
        "refit": run.get("refit"),
    }
    bundle_metrics = metrics | {
        "shipped": score(holdout["sales"].to_numpy(), shipped, holdout["weight"].to_numpy()),
        "slices": json.loads((paths.reports / "slices.json").read_text()),
    }
    key_types = {k: str(data.series[k].dtype) for k in fs.series_keys}
    write_bundle(
        root / "models" / "bundle",
        paths.shipped,
        data,
        reference_features(paths.features / "train.parquet", fs.columns),
        holdout,
        plan.holdout_origin,
        bundle_metrics,
        lineage,
        input_schema(fs, key_types).to_json(),
        dataset=dataset,
    )


def _log_bundle(root: Path, paths: Paths, fs, run_id: str) -> None:
    """Every trained model's bundle under its run (`runs:/<run_id>/model`), promoted or not."""
    from cd4ml import tracking
    from cd4ml.registry import log_bundle, signature

    tracking.connect(root, load_params(paths.params).tracking.experiment)
    bundle = root / "models" / "bundle"
    history = pd.read_parquet(bundle / "series.parquet", columns=fs.series_keys)
    key_types = {k: str(history[k].dtype) for k in fs.series_keys}
    uri = log_bundle(run_id, bundle, signature(key_types, fs.covariates))
    _json(paths.logged, {"model_uri": uri, "run_id": run_id})


def _rescored_champion(root: Path, params, data, holdout: pd.DataFrame, origin):
    """The current champion scored on the holdout rows it never trained on (all of them unless it
    was refit on newer data than this run's), or — when it has seen them all — its own held-out
    NWRMSLE, the estimate this run's model is judged by as well."""
    from cd4ml.bundle import recorded_metrics
    from cd4ml.config import tracking_uri
    from cd4ml.gates import ChampionScore
    from cd4ml.metrics import nwrmsle
    from cd4ml.registry import CHAMPION, Registry, download_bundle
    from cd4ml.scoring import Predictor, Scorer

    model = json.loads((Paths(root).reports / "metrics.json").read_text())["model"]["nwrmsle"]
    registry = Registry(tracking_uri(root), params.registry.model_name)
    version = registry.alias(CHAMPION)
    if version is None:
        return ChampionScore(model)
    bundle = download_bundle(
        f"models:/{params.registry.model_name}/{version}", tracking_uri(root), root / ".cd4ml" / "champion"
    )
    through = (json.loads((bundle / "lineage.json").read_text()).get("refit") or {}).get("through")
    unseen = (pd.to_datetime(holdout["date"]) > pd.Timestamp(through)).to_numpy() if through else None
    if unseen is not None and not unseen.any():
        recorded = recorded_metrics(bundle)["model"]["nwrmsle"]
        return ChampionScore(model, version, recorded, detail="both held out (the champion was refit on this holdout)")
    rows = holdout if unseen is None else holdout.loc[unseen]
    champion = Scorer(Predictor.read(bundle), data, origin)
    predictions = champion.predict(rows[["date", *champion.spec.series_keys, *champion.spec.covariates]])
    a, w = rows["sales"], rows["weight"]
    return ChampionScore(
        nwrmsle(a, rows["prediction"], w),
        version,
        nwrmsle(a, predictions, w),
        predictions,
        rows.index.to_numpy(),
        f"re-scored on {len(rows):,} holdout rows neither model trained on",
    )


def register(root: Path) -> str:
    """Register the gated bundle logged by the gate stage: the first becomes champion, later ones challenger."""
    from cd4ml import tracking
    from cd4ml.config import tracking_uri
    from cd4ml.registry import CHALLENGER, CHAMPION, Registry

    paths, params = Paths(root), load_params(Paths(root).params)
    run_id = tracking.read_run(paths.run)["run_id"]
    uri = json.loads(paths.logged.read_text())["model_uri"]
    registry = Registry(tracking_uri(root), params.registry.model_name)
    metrics = json.loads((paths.reports / "metrics.json").read_text())["model"]
    tags = {"gate": "passed", "run_id": run_id, **{f"holdout.{k}": f"{v:.4f}" for k, v in metrics.items()}}
    version = registry.register(uri, run_id, tags)
    alias = CHALLENGER if registry.alias(CHAMPION) else CHAMPION
    registry.move(alias, version, "passed all gates in cd4ml run")
    _json(
        root / "models" / "registered.json",
        {"name": params.registry.model_name, "version": version, "alias": alias, "model_uri": uri},
    )
    return f"{params.registry.model_name} v{version} → {alias}"


STAGES = {
    "ingest": ingest,
    "validate": validate,
    "split": split,
    "featurize": featurize,
    "train": train,
    "evaluate": evaluate,
    "gate": gate,
    "register": register,
}
