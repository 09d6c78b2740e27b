"""Model stages: train (the held-out fit the gates judge, and the refit that ships) and evaluate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cd4ml.config import Paths, load_params
from cd4ml.pipeline.stages.workdir import feature_spec, load_part, read_dataset, write_json


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
        dataset = read_dataset(paths)
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
    write_json(paths.run, run)
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
    slices = evaluate_slices(holdout, read_dataset(paths)["spec"]["slices"], actual="sales")
    paths.reports.mkdir(parents=True, exist_ok=True)
    holdout.to_parquet(paths.reports / "holdout.parquet", index=False)
    write_json(paths.reports / "metrics.json", metrics)
    write_json(paths.reports / "slices.json", slices.to_dict(orient="records"))
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
