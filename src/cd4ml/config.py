"""One typed view of the pipeline parameters (params.yaml) and the environment (CD4ML_*)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROJECT_FILES = ("dvc.yaml", "params.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleParams(_Strict):
    stores: int = Field(10, ge=1)
    items: int = Field(50, ge=1)
    days: int = Field(730, ge=1)
    start: date = date(2015, 1, 1)
    seed: int = 42


class DataParams(_Strict):
    source: str = "sample"
    sample: SampleParams = SampleParams()
    memory_limit: str = "2GB"
    segment: dict[str, list[str]] = {}  # keep only these attribute values, e.g. {family: [PRODUCE]}
    until: date | None = None  # ignore sales after this date (backtests, simulations)


class SplitParams(_Strict):
    horizon: int = Field(16, ge=1)
    train_origins: int = Field(84, ge=1)
    origin_stride: int = Field(1, ge=1)
    min_history: int | None = Field(None, ge=1)  # None: 56 days or 13 weeks, fewer on shorter data
    max_train_rows: int = Field(2_000_000, ge=1000)  # series are sampled per origin beyond it
    refit: bool = True  # once gated, refit on origins up to the newest data


class FeatureParams(_Strict):
    windows: list[int] = [7, 14, 28, 56, 112]
    weekday_weeks: list[int] = [4, 12]
    lags: int | None = Field(None, ge=0)  # the last periods as features; None: a week of days, 4 weeks
    group_levels: bool = True  # each group's (store, family, …, all series) recent level as features
    holiday_distance: bool = True  # periods to the next and since the last national holiday


ModelFamily = Literal["lightgbm", "random_forest", "decision_tree", "seasonal_naive"]


class ModelParams(_Strict):
    type: ModelFamily = "lightgbm"
    lightgbm: dict[str, Any] = {}
    random_forest: dict[str, Any] = {}
    decision_tree: dict[str, Any] = {}
    seasonal_naive: dict[str, Any] = {}

    @property
    def chosen(self) -> dict[str, Any]:
        return getattr(self, self.type)


class BacktestParams(_Strict):
    folds: int = Field(3, ge=1)  # forecast origins the gates judge, one horizon apart; 1: the holdout alone
    models: list[ModelFamily] = []  # more families to compare in reports/backtest.json


class EvaluateParams(_Strict):
    plot_series: int = 6


class GateParams(_Strict):
    """Promotion thresholds (see cd4ml.gates)."""

    max_nwrmsle: float | None = None  # absolute bound on the holdout, data-specific (the workshop's Favorita: 0.8)
    min_r2: float = 0.0
    min_gain_over_baseline: float = 0.05  # relative NWRMSLE improvement over seasonal naive
    champion_tolerance: float = 0.02  # may be at most this much (relative) worse than the champion
    slice_tolerance: float = 0.10  # no slice more than this much (relative) worse
    slice_min_rows: int = 100  # smaller slices are too noisy to judge
    onnx_tolerance: float = 1e-4  # max |log1p difference| between ONNX and native predictions


class TrackingParams(_Strict):
    experiment: str = "cd4ml-sales"


class RegistryParams(_Strict):
    model_name: str = "sales-forecaster"


class Params(_Strict):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    features: FeatureParams = FeatureParams()
    model: ModelParams = ModelParams()
    evaluate: EvaluateParams = EvaluateParams()
    backtest: BacktestParams = BacktestParams()
    tracking: TrackingParams = TrackingParams()
    gates: GateParams = GateParams()
    registry: RegistryParams = RegistryParams()


class ConfigError(ValueError):
    """params.yaml or an override is invalid; the message names the key."""


def _describe(exc: ValidationError, where: str) -> ConfigError:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return ConfigError(f"{where}: {problems}")


def load_params(path: Path) -> Params:
    try:
        return Params.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as exc:
        raise _describe(exc, str(path)) from exc


def apply_overrides(path: Path, overrides: list[str]) -> list[tuple[str, Any]]:
    """Write `key=value` overrides into params.yaml (comments kept) so the run is reproducible."""
    from ruamel.yaml import YAML

    rt = YAML()
    document = rt.load(path.read_text())
    applied = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. model.type=random_forest")
        if not _known_key(key):
            raise ConfigError(f"--set {item!r}: no key '{key}' in {path.name}")
        *parents, leaf = key.split(".")
        node = document
        for part in parents:  # keys missing from an older params.yaml are added; Params checks them
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section in {path.name}")
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw)
        node[leaf] = value.isoformat() if isinstance(value, date) else value  # DVC reads params: no YAML dates
        applied.append((key, node[leaf]))
    try:
        Params.model_validate(yaml.safe_load(_dump(rt, document)))
    except ValidationError as exc:
        raise _describe(exc, f"--set in {path.name}") from exc
    path.write_text(_dump(rt, document))
    return applied


def _known_key(key: str) -> bool:
    """Whether `key` names a parameter (free-form sections such as model.lightgbm accept any)."""
    model: type[BaseModel] = Params
    for part in key.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return True
        model = annotation
    return True


def _dump(rt, document) -> str:
    from io import StringIO

    buffer = StringIO()
    rt.dump(document, buffer)
    return buffer.getvalue()


def init_project(workdir: Path) -> list[str]:
    """Copy the pipeline definition into workdir if it is not there yet; returns what was added."""
    workdir.mkdir(parents=True, exist_ok=True)
    added = []
    for name in PROJECT_FILES:
        target = workdir / name
        if not target.exists():
            with resources.as_file(resources.files("cd4ml.project") / name) as source:
                shutil.copyfile(source, target)
            added.append(name)
    return added


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, relative to the work directory."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # pragma: no cover - for typos only
        raise AttributeError(name)

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def source(self) -> Path:
        return self.root / "data" / "source.json"

    @property
    def sample(self) -> Path:
        return self.root / "data" / "sample"

    @property
    def cache(self) -> Path:
        return self.root / ".cd4ml" / "cache"

    @property
    def ingested(self) -> Path:
        return self.root / "data" / "ingested"

    @property
    def split(self) -> Path:
        return self.root / "data" / "split.json"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def model(self) -> Path:
        return self.root / "models" / "model"

    @property
    def shipped(self) -> Path:
        """The model that ships: refit on the newest data after the gates judged `model`."""
        return self.root / "models" / "shipped"

    @property
    def logged(self) -> Path:
        """The bundle's model URI under its MLflow run, written by the gate stage."""
        return self.root / "models" / "logged.json"

    @property
    def run(self) -> Path:
        return self.root / "models" / "run.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def failure(self) -> Path:
        return self.root / ".cd4ml" / "last_failure.json"


def tracking_uri(workdir: Path) -> str:
    """CD4ML_TRACKING_URI, else a SQLite store in the work directory."""
    return os.environ.get("CD4ML_TRACKING_URI") or f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def artifact_location(workdir: Path) -> str | None:
    """Where a new experiment keeps its artifacts: CD4ML_ARTIFACT_LOCATION, else the tracking
    server's own artifact store (None: its default root, proxied as mlflow-artifacts:), else a
    folder in the work directory. A file:// root under a server would keep models on the
    machine that trained them, out of reach of every other client of that server."""
    if os.environ.get("CD4ML_ARTIFACT_LOCATION"):
        return os.environ["CD4ML_ARTIFACT_LOCATION"]
    if tracking_uri(workdir).startswith(("http://", "https://")):
        return None
    return (workdir / "mlartifacts").resolve().as_uri()
