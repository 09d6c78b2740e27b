"""The promotion gate's feature contract covers both serving paths: batch scoring (`Scorer`) and
the gateway's precomputed `FeatureTable`, each against the pipeline's features for the holdout."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from cd4ml import gates
from cd4ml.config import Paths
from cd4ml.data.split import Split
from cd4ml.pipeline.stages import feature_spec, load_part
from cd4ml.pipeline.stages.release import gateway_features
from cd4ml.scoring import Predictor, Scorer, SeriesData

pytestmark = pytest.mark.integration


def test_the_gate_checked_the_gateway_table(trained_workdir: Path) -> None:
    report = json.loads((trained_workdir / "reports" / "gates.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    for path in ("serving", "gateway table"):
        check = checks[f"feature contract ({path} = training)"]
        assert check["passed"] and check["value"] == "0.0e+00", check


def test_a_table_built_at_another_origin_breaks_the_contract(trained_workdir: Path) -> None:
    """The check can fail: holdout rows looked up in a table one week stale (rows both tables
    hold, so only the features differ) break the contract."""
    paths = Paths(trained_workdir)
    fs = feature_spec(paths)
    plan = Split.model_validate_json(paths.split.read_text())
    X, labels = load_part(paths, "holdout", fs.columns, labels=["date", *fs.series_keys])
    week_earlier = plan.holdout_origin - timedelta(days=7)
    both = (
        pd.to_datetime(labels["date"]) <= pd.Timestamp(week_earlier + timedelta(days=fs.horizon * fs.period_days))
    ).to_numpy()
    X, labels = X[both].reset_index(drop=True), labels[both].reset_index(drop=True)
    rows = labels.assign(**{c: X[c].to_numpy() for c in fs.covariates})[["date", *fs.series_keys, *fs.covariates]]
    bundle = trained_workdir / "models" / "bundle"
    kept, stale = (
        gateway_features(scorer, scorer.validate(rows))
        for scorer in (
            Scorer(Predictor.read(bundle), SeriesData.read(bundle), origin)
            for origin in (plan.holdout_origin, week_earlier)
        )
    )
    assert len(X) > 0 and gates.contract(X, kept, "gateway table").passed
    skewed = gates.contract(X, stale, "gateway table")
    assert not skewed.passed and skewed.detail == ""  # every row served, with other features
