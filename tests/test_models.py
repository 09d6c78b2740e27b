"""Every model family: fit, non-negative sales, save/load, ONNX parity; LightGBM beats naive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from cd4ml.config import Paths, apply_overrides, init_project, load_params
from cd4ml.features import FeatureSpec, seasonal_naive
from cd4ml.metrics import nwrmsle
from cd4ml.models import FAMILIES, Forecaster, load_model, make_model
from cd4ml.pipeline import stages
from cd4ml.target import onnx_predict

Part = tuple[pd.DataFrame, pd.DataFrame]  # (features, labels with sales and weight)
SMALL_PARAMS = {
    "seasonal_naive": {},
    "decision_tree": {"max_depth": 8, "min_samples_leaf": 20, "random_state": 0},
    "random_forest": {"n_estimators": 15, "max_depth": 10, "min_samples_leaf": 5,
                      "max_features": 0.5, "n_jobs": 1, "random_state": 0},
    "lightgbm": {"n_estimators": 200, "learning_rate": 0.1, "num_leaves": 15, "seed": 0,
                 "n_jobs": 1, "early_stopping_rounds": 20},
}  # fmt: skip


@pytest.fixture(scope="module")
def sample_parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureSpec, dict[str, Part]]:
    """Sample data features for train/valid/holdout, made by the pipeline's own stage functions."""
    root = tmp_path_factory.mktemp("models")
    init_project(root)
    apply_overrides(root / "params.yaml", ["data.sample.stores=5", "data.sample.items=20",
                                           "data.sample.days=365"])  # fmt: skip
    for stage in (stages.ingest, stages.validate, stages.split, stages.featurize):
        stage(root)
    paths = Paths(root)
    fs = stages.feature_spec(paths)
    return fs, {part: stages.load_part(paths, part, fs.columns) for part in ("train", "valid", "holdout")}


def fitted(kind: str, params: dict, parts: dict[str, Part]) -> Forecaster:
    (X, labels), (Xv, valid) = parts["train"], parts["valid"]
    return make_model(kind, params).fit(X, labels["sales"].to_numpy(), labels["weight"].to_numpy(),
                                        valid=(Xv, valid["sales"].to_numpy()))  # fmt: skip


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest, sample_parts) -> tuple[str, Forecaster]:
    return request.param, fitted(request.param, SMALL_PARAMS[request.param], sample_parts[1])


def test_every_family_is_covered() -> None:
    assert set(FAMILIES) == set(SMALL_PARAMS)


def test_predicts_non_negative_sales_for_every_row(family, sample_parts) -> None:
    kind, model = family
    X, labels = sample_parts[1]["holdout"]
    predicted = model.predict(X)
    assert predicted.shape == (len(X),)
    assert np.isfinite(predicted).all() and (predicted >= 0).all()
    assert predicted.std() > 0  # not a constant
    if kind != "seasonal_naive":  # a learned model must have learned something
        baseline = nwrmsle(labels["sales"], seasonal_naive(X), labels["weight"])
        assert nwrmsle(labels["sales"], predicted, labels["weight"]) < baseline


def test_save_and_load_predict_identically(family, sample_parts, tmp_path: Path) -> None:
    kind, model = family
    X, _ = sample_parts[1]["holdout"]
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(model) and loaded.family == kind
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


def test_onnx_export_matches_native_predictions(family, sample_parts) -> None:
    """The parity the promotion gate checks: onnxruntime serves what the native model learned."""
    _, model = family
    fs, parts = sample_parts
    X = pd.concat([parts["valid"][0], parts["holdout"][0]], ignore_index=True)
    session = ort.InferenceSession(model.to_onnx(len(fs.columns)), providers=["CPUExecutionProvider"])
    native, served = model.predict(X), onnx_predict(session, X)
    np.testing.assert_allclose(served, native, rtol=1e-3, atol=1e-3)
    assert (served >= 0).all()


def split_thresholds(model: Forecaster) -> list[tuple[int, float]]:
    """(feature index, float64 threshold) of every split in a tree model."""
    if model.family == "lightgbm":
        found: list[tuple[int, float]] = []

        def walk(node: dict) -> None:
            if "split_feature" in node:
                found.append((node["split_feature"], node["threshold"]))
                walk(node["left_child"])
                walk(node["right_child"])

        for tree in model.booster_.dump_model()["tree_info"]:
            walk(tree["tree_structure"])
        return found
    trees = getattr(model.estimator_, "estimators_", [model.estimator_])
    splits = [zip(tree.tree_.feature, tree.tree_.threshold, strict=True) for tree in trees]
    return [(f, t) for nodes in splits for f, t in nodes if f >= 0]  # leaves have feature -2


@pytest.mark.parametrize("kind", [f for f in sorted(FAMILIES) if f != "seasonal_naive"])  # a column pick has no splits
def test_onnx_decides_like_the_native_model_at_split_thresholds(kind: str, sample_parts) -> None:
    """Rows holding a split's own value, where float32 thresholds in ONNX can send them the other
    way (LightGBM splits at float64 midpoints): the rows a shifted holdout happens to hit."""
    model = fitted(kind, SMALL_PARAMS[kind], sample_parts[1])
    fs, parts = sample_parts
    base = parts["holdout"][0].iloc[:5].to_numpy(np.float32)
    rows = []
    for feature, threshold in split_thresholds(model):
        row = base.copy()
        row[:, feature] = np.float32(threshold)
        rows.append(row)
    X = pd.DataFrame(np.vstack(rows), columns=fs.columns)
    session = ort.InferenceSession(model.to_onnx(len(fs.columns)), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(onnx_predict(session, X), model.predict(X), rtol=1e-3, atol=1e-3)


def test_seasonal_naive_model_is_the_feature_rows_baseline(sample_parts) -> None:
    _, parts = sample_parts
    X, _ = parts["holdout"]
    model = fitted("seasonal_naive", {}, parts)
    np.testing.assert_allclose(model.predict(X), seasonal_naive(X), rtol=1e-6)


def test_lightgbm_beats_seasonal_naive_on_the_sample_holdout(sample_parts, tmp_path: Path) -> None:
    """With the shipped params.yaml hyper-parameters, the default model must earn its keep."""
    _, parts = sample_parts
    init_project(tmp_path)
    model = fitted("lightgbm", load_params(tmp_path / "params.yaml").model.lightgbm, parts)
    X, labels = parts["holdout"]
    actual, weight = labels["sales"], labels["weight"]
    model_score = nwrmsle(actual, model.predict(X), weight)
    baseline_score = nwrmsle(actual, seasonal_naive(X), weight)
    assert model_score < 0.9 * baseline_score, (model_score, baseline_score)


def test_a_tree_model_file_asking_for_other_types_is_refused(tmp_path: Path) -> None:
    """skops loads only the types a tree or a forest holds: an `sklearn.*` type is not trusted for
    being scikit-learn's (a histogram booster's TreePredictor was, before the list was explicit)."""
    import skops.io
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

    from cd4ml.models.base import write_family

    X, y = np.random.default_rng(0).random((60, 3)), np.arange(60.0)
    for estimator, refused in (
        (HistGradientBoostingRegressor(max_iter=3), "refused, it asks for types a tree model never holds"),
        (RandomForestRegressor(n_estimators=2), "holds a RandomForestRegressor, not a DecisionTreeRegressor"),
    ):
        folder = tmp_path / type(estimator).__name__
        write_family(folder, "decision_tree")
        skops.io.dump(estimator.fit(X, y), folder / "model.skops")
        with pytest.raises(ValueError, match=refused):
            load_model(folder)
