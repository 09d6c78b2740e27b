"""Release stages: gate (every promotion check, the bundle) and register."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cd4ml.config import Paths, load_params
from cd4ml.pipeline.stages.workdir import feature_spec, load_part, read_dataset, write_json


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
    backtest = json.loads((paths.reports / "backtest.json").read_text())
    rows = holdout[["date", *fs.series_keys]].merge(  # the holdout lies inside the bundle's history window
        data.history[["date", *fs.series_keys, *fs.covariates]], on=["date", *fs.series_keys], how="left"
    )
    holdout = pd.concat([holdout, rows[fs.covariates]], axis=1)
    serving = Scorer(Predictor.read(paths.shipped), data, plan.holdout_origin)
    requests = serving.validate(holdout[["date", *fs.series_keys, *fs.covariates]])
    serving_X = serving.features(requests)
    checks = [
        *gates.absolute(metrics["model"], p),
        gates.beats_baseline(
            backtest["mean"][params.model.type]["nwrmsle"],
            backtest["mean"]["seasonal_naive"]["nwrmsle"],
            len(backtest["folds"]),
            p,
        ),
    ]
    champion = _rescored_champion(root, params, data, holdout, plan.holdout_origin, backtest)
    checks.append(gates.not_worse_than_champion(champion, p))
    slices = read_dataset(paths)["spec"]["slices"]
    checks.append(gates.slice_degradation(holdout, slices, "baseline", "seasonal naive", p))
    if champion.predictions is not None:
        judged = holdout.loc[champion.rows].assign(champion=champion.predictions)
        checks.append(gates.slice_degradation(judged, slices, "champion", f"champion v{champion.version}", p))
    # the ONNX file that will ship, scored now: evaluate's predictions come from the held-out fit
    shipped = serving.predictor.predict_features(X)
    checks.append(gates.onnx_parity(load_model(paths.shipped).predict(X), shipped, p))
    status = json.loads((paths.reports / "validation.json").read_text())["status"]
    checks += [
        gates.data_valid(status),
        gates.contract(X, serving_X),
        gates.contract(X, gateway_features(serving, requests), "gateway table"),
    ]
    result = gates.report(checks)
    write_json(paths.reports / "gates.json", result)
    _write_bundle(root, paths, params, fs, plan, data, holdout, metrics | {"backtest": backtest}, shipped)
    run_id = tracking.read_run(paths.run)["run_id"]
    with tracking.run(root, params.tracking.experiment, run_id):
        mlflow.log_dict(result, "gates/gates.json")
        mlflow.set_tag("gate", "passed" if result["passed"] else "failed")
    _log_bundle(root, paths, fs, run_id)
    failed = [gates.Check(**c) for c in result["checks"] if not c["passed"]]
    if failed:
        raise gates.GateFailed(failed)
    return f"{len(checks)} checks passed"


def gateway_features(scorer, rows: pd.DataFrame) -> pd.DataFrame:
    """Validated rows' features as the gateway computes them: looked up in a FeatureTable at the
    scorer's origin, each row's covariates written in (`serving.predicting.score`). Rows the
    table does not hold are left out, so the contract fails naming how many were served."""
    import numpy as np

    from cd4ml.scoring import FeatureTable

    spec, table = scorer.spec, FeatureTable(scorer)
    keys = zip(*(rows[k].tolist() for k in spec.series_keys), strict=True)
    days = pd.to_datetime(rows["date"]).dt.date
    positions = [table.row(tuple(key), day) for key, day in zip(keys, days, strict=True)]
    served = np.array([p is not None for p in positions], dtype=bool)
    covariates = rows.loc[served, spec.covariates].to_numpy(np.float32)
    matrix = table.gather([p for p in positions if p is not None], covariates)
    return pd.DataFrame(matrix, columns=spec.columns)


def _write_bundle(root: Path, paths: Paths, params, fs, plan, data, holdout, metrics, shipped) -> None:
    """models/bundle: the shipped model, its data, the gated metrics and what the shipped model
    scores on the holdout (in-sample once refit; `cd4ml verify` re-checks that)."""
    from cd4ml import tracking
    from cd4ml.bundle import reference_features, write_bundle
    from cd4ml.data.schemas import input_schema
    from cd4ml.metrics import evaluate as score

    dataset = read_dataset(paths)
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
    write_json(paths.logged, {"model_uri": uri, "run_id": run_id})


def _rescored_champion(root: Path, params, data, holdout: pd.DataFrame, origin, backtest: dict):
    """The current champion scored on the holdout rows it never trained on (all of them unless it
    was refit on newer data than this run's), or — when it has seen them all — its own held-out
    estimate: the mean over the same backtest folds if it has one, else its holdout NWRMSLE."""
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
        theirs = recorded_metrics(bundle)
        folds = [f["origin"] for f in backtest["folds"]]
        if [f["origin"] for f in theirs.get("backtest", {}).get("folds", [])] == folds:
            mean = theirs["backtest"]["mean"][theirs["backtest"]["family"]]["nwrmsle"]
            ours = backtest["mean"][backtest["family"]]["nwrmsle"]
            detail = f"mean over the same {len(folds)} backtest folds (the champion was refit on this holdout)"
            return ChampionScore(ours, version, mean, detail=detail)
        detail = "holdout NWRMSLE of both held-out fits (the champion was refit on this holdout)"
        return ChampionScore(model, version, theirs["model"]["nwrmsle"], detail=detail)
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
    """Register the gated bundle logged by the gate stage: the first becomes champion, later ones
    challenger. The champion is looked up first: a registry that cannot say whether there is one
    fails the stage (RegistryError) before anything is registered or promoted."""
    from cd4ml import tracking
    from cd4ml.config import tracking_uri
    from cd4ml.registry import CHALLENGER, CHAMPION, Registry

    paths, params = Paths(root), load_params(Paths(root).params)
    run_id = tracking.read_run(paths.run)["run_id"]
    uri = json.loads(paths.logged.read_text())["model_uri"]
    registry = Registry(tracking_uri(root), params.registry.model_name)
    metrics = json.loads((paths.reports / "metrics.json").read_text())["model"]
    tags = {"gate": "passed", "run_id": run_id, **{f"holdout.{k}": f"{v:.4f}" for k, v in metrics.items()}}
    alias = CHALLENGER if registry.alias(CHAMPION) else CHAMPION
    version = registry.register(uri, run_id, tags)
    registry.move(alias, version, "passed all gates in cd4ml run")
    write_json(
        root / "models" / "registered.json",
        {"name": params.registry.model_name, "version": version, "alias": alias, "model_uri": uri},
    )
    return f"{params.registry.model_name} v{version} → {alias}"
