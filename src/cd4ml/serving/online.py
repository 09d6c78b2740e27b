"""The `online` arm: a served model plus a linear correction learned from every actual.

The correction is an incremental estimator (scikit-learn's SGDRegressor, `partial_fit` on one
feedback at a time) over the same feature rows, predicting the log error the base model made.
A snapshot is the base ONNX graph with the correction added inside it — an ordinary bundle
that the registry versions, the gates' tooling verifies and any gateway serves.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
from sklearn.linear_model import SGDRegressor


class OnlineLearner:
    def __init__(self, n_features: int, learning_rate: float = 0.005):
        self.model = SGDRegressor(learning_rate="constant", eta0=learning_rate, alpha=1e-4, random_state=0)
        self.n_features = n_features
        self.updates = 0
        self._lock = threading.Lock()
        self._scale: np.ndarray | None = None

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        """Features divided by a fixed per-column scale (from the first batch) keep SGD stable."""
        if self._scale is None:
            self._scale = np.maximum(np.abs(X).max(axis=0), 1.0)
        return X / self._scale

    def correction(self, X: np.ndarray) -> np.ndarray:
        if not self.updates:
            return np.zeros(len(X))
        with self._lock:
            return self.model.predict(self._scaled(X))

    def learn(self, X: np.ndarray, log_error: np.ndarray) -> None:
        """One step towards predicting the base model's log error on these rows."""
        with self._lock:
            self.model.partial_fit(self._scaled(X), log_error)
            self.updates += len(X)

    def coefficients(self) -> tuple[np.ndarray, float]:
        """The correction as w·x + b on unscaled features."""
        with self._lock:
            return (self.model.coef_ / self._scale).astype(np.float32), float(self.model.intercept_[0])


def corrected_onnx(base: bytes, weights: np.ndarray, bias: float) -> bytes:
    """The base graph with `input · weights + bias` added to its (log-sales) output."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_model_from_string(base)
    graph = model.graph
    output = graph.output[0]
    base_name = f"{output.name}_base"
    for node in graph.node:
        node.output[:] = [base_name if o == output.name else o for o in node.output]
    graph.initializer.extend(
        [
            numpy_helper.from_array(weights.reshape(-1, 1), "online_weights"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "online_bias"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", [graph.input[0].name, "online_weights"], ["online_product"]),
            helper.make_node("Add", ["online_product", "online_bias"], ["online_correction"]),
            helper.make_node("Add", [base_name, "online_correction"], [output.name]),
        ]
    )
    onnx.checker.check_model(model)
    return model.SerializeToString()


def snapshot_bundle(base_bundle: Path, target: Path, learner: OnlineLearner) -> Path:
    """A copy of the base bundle whose model includes the learned correction; its holdout
    metrics are re-scored so `cd4ml verify` holds for it too."""
    from cd4ml.bundle import rescore_holdout

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base_bundle, target, ignore=shutil.ignore_patterns("native"))
    weights, bias = learner.coefficients()
    (target / "model.onnx").write_bytes(corrected_onnx((base_bundle / "model.onnx").read_bytes(), weights, bias))
    metrics = json.loads((target / "metrics.json").read_text())
    metrics["model"] = metrics["shipped"] = rescore_holdout(target)
    metrics["online"] = {"updates": learner.updates, "base": str(base_bundle)}
    (target / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return target


def register_snapshot(settings, model, learner: OnlineLearner) -> str:
    """Register the online arm's current model as a new version (no alias moves: promoting it
    is a deliberate step, e.g. after a canary)."""
    import mlflow

    from cd4ml.registry import Registry, log_bundle, signature
    from cd4ml.tracking import connect

    workdir = settings.workdir.resolve()
    target = workdir / ".cd4ml" / "online" / f"{model.name}-v{model.version}-{learner.updates}" / "bundle"
    bundle = snapshot_bundle(model.bundle, target, learner)
    experiment = connect(workdir, "online-snapshots")
    kinds = {k: str(model.scorer.data.series[k].dtype) for k in model.spec.series_keys}
    metrics = json.loads((bundle / "metrics.json").read_text())["model"]
    with mlflow.start_run(experiment_id=experiment, run_name=f"online v{model.version} +{learner.updates}") as run:
        mlflow.log_metrics({f"holdout.{k}": v for k, v in metrics.items()})
        run_id = run.info.run_id
    uri = log_bundle(run_id, bundle, signature(kinds, model.spec.covariates))
    tags = {
        "online": "true",
        "base_version": model.version,
        "updates": str(learner.updates),
        "run_id": run_id,
        "gate": "not gated (online snapshot)",
        **{f"holdout.{k}": f"{v:.4f}" for k, v in metrics.items()},
    }
    return Registry(settings.resolved_tracking_uri(), model.name).register(uri, run_id, tags)
