"""The MLflow model registry as cd4ml uses it: bundles, aliases, and the alias history.

MLflow keeps no history of alias moves, so every move (who, when, from, to, why) is also
recorded as a run in a companion experiment `<model>.aliases` on the same tracking server:
it works the same on a local SQLite store and on a remote MLflow server.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cd4ml.redaction import redact

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException

CHAMPION, CHALLENGER = "champion", "challenger"
ABSENT = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for "no such model/version": not "unknown"
RUN_MODEL = "model"  # the name a run's bundle is logged under: runs:/<run_id>/model
RUNTIME_PACKAGES = [
    "pandas",
    "numpy",
    "pyarrow",
    "duckdb",
    "onnxruntime",
    "pydantic",
    "pandera",
    "lightgbm",
    "scikit-learn",
    "skops",
    "pyyaml",
    "mlflow",
]


class RegistryError(RuntimeError):
    """A registry operation cannot be done; the message says why and what to do."""


def pip_requirements() -> list[str]:
    """Pinned from the running environment: MLflow must not infer them (slow, and guesses)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME_PACKAGES]


def client(tracking_uri: str):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def signature(series_keys: dict[str, str], covariates: list[str]):
    """Request rows in, one prediction per row out — so `mlflow models serve` checks inputs too."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {k: "long" if dtype.startswith(("int", "uint")) else "string" for k, dtype in series_keys.items()}
    inputs = [
        ColSpec("string", "date"),
        *(ColSpec(t, k) for k, t in kinds.items()),
        *(ColSpec("double", c) for c in covariates),
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", "prediction")]))


def log_bundle(run_id: str, bundle_dir: Path, model_signature) -> str:
    """Log the bundle as a pyfunc model in the run; returns its model URI."""
    import mlflow

    if bundle_dir.name != "bundle":  # MLflow keeps the folder's name; readers expect artifacts/bundle
        raise ValueError(f"{bundle_dir}: a bundle folder must be named 'bundle'")

    import cd4ml
    from cd4ml import pyfunc_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name=RUN_MODEL,
            python_model=pyfunc_model.__file__,
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(Path(cd4ml.__file__).parent)],
            pip_requirements=pip_requirements(),
            signature=model_signature,
        )
    return info.model_uri


@dataclass
class AliasMove:
    alias: str
    from_version: str | None
    to_version: str | None
    who: str
    why: str
    when: float


class Registry:
    """Versions and aliases of one registered model.

    Only MLflow's RESOURCE_DOES_NOT_EXIST reads as "absent"; any other MLflow error (a tracking
    server answering 500, a locked database) is a RegistryError, so an unreadable champion can
    never pass for "no champion yet" and let a model skip the comparison with it.
    """

    def __init__(self, tracking_uri: str, name: str):
        self.client, self.name, self.tracking_uri = client(tracking_uri), name, tracking_uri

    def _failed(self, what: str, exc: MlflowException) -> RegistryError:
        """An MLflow error while doing `what`, said with the registry's address (credentials redacted)."""
        return RegistryError(
            f"{self.name}: cannot {what}: the registry at {redact(self.tracking_uri)} answered "
            f"{exc.error_code}: {redact(exc.message)}"
        )

    @contextmanager
    def _asking(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise self._failed(what, exc) from exc

    def register(self, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
        import mlflow

        with self._asking("register a version"):
            version = mlflow.register_model(model_uri, self.name, tags=tags)
        return str(version.version)

    def alias(self, alias: str) -> str | None:
        """The version `alias` names; None only when the registry says there is none."""
        return self.aliases().get(alias)

    def aliases(self) -> dict[str, str]:
        """alias → version for every alias of the model ({} for a model not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code == ABSENT:
                return {}
            raise self._failed("read its aliases", exc) from exc
        return {a: str(v) for a, v in model.aliases.items()}

    def versions(self) -> list[Any]:
        with self._asking("list its versions"):
            found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def move(self, alias: str, version: str | None, why: str, who: str | None = None) -> AliasMove:
        """Point `alias` at `version` (None removes it) and record the move."""
        previous = self.alias(alias)
        with self._asking(f"move '{alias}'"):
            if version is None:
                if previous is not None:
                    self.client.delete_registered_model_alias(self.name, alias)
            else:
                self._check_version(version)
                self.client.set_registered_model_alias(self.name, alias, version)
        return self.record(alias, previous, version, why, who)

    def record(self, alias: str, before: str | None, after: str | None, why: str, who: str | None = None) -> AliasMove:
        """Add one entry to the history (aliases, and routing changes under the name 'routing')."""
        move = AliasMove(alias, before, after, who or current_user(), why, time.time())
        with self._asking("record the move in its history"):
            self._record(move)
        return move

    def _check_version(self, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            if exc.error_code != ABSENT:
                raise
            known = ", ".join(str(v.version) for v in self.versions()) or "none"
            raise RegistryError(f"{self.name} has no version {version} (versions: {known})") from exc

    def _history_experiment(self) -> str:
        name = f"{self.name}.aliases"
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found else self.client.create_experiment(name)

    def _record(self, move: AliasMove) -> None:
        run = self.client.create_run(
            self._history_experiment(),
            start_time=int(move.when * 1000),
            run_name=f"{move.alias}: {move.from_version} → {move.to_version}",
        )
        for key in ("alias", "from_version", "to_version", "who", "why"):
            self.client.set_tag(run.info.run_id, key, str(getattr(move, key) or ""))
        self.client.set_terminated(run.info.run_id)

    def history(self, alias: str | None = None) -> list[AliasMove]:
        """Alias moves, oldest first."""
        with self._asking("read its history"):
            found = self.client.get_experiment_by_name(f"{self.name}.aliases")
            if not found:
                return []
            runs = self.client.search_runs(
                [found.experiment_id], order_by=["attributes.start_time ASC"], max_results=50_000
            )
        moves = [
            AliasMove(
                r.data.tags["alias"],
                r.data.tags["from_version"] or None,
                r.data.tags["to_version"] or None,
                r.data.tags["who"],
                r.data.tags["why"],
                r.info.start_time / 1000,
            )
            for r in runs
        ]
        return [m for m in moves if alias is None or m.alias == alias]

    def promote(self, version: str, why: str, who: str | None = None) -> AliasMove:
        move = self.move(CHAMPION, version, why, who)
        if self.alias(CHALLENGER) == version:
            self.move(CHALLENGER, None, f"promoted to {CHAMPION}", who)
        return move

    def rollback(self, why: str, who: str | None = None) -> AliasMove:
        """Champion goes back to the version it replaced; repeated rollbacks walk further back."""
        target = previous_champion(self.history(CHAMPION))
        if target is None:
            raise RegistryError(f"{self.name}: no earlier champion to roll back to")
        return self.move(CHAMPION, target, f"rollback: {why}", who)


def previous_champion(moves: list[AliasMove]) -> str | None:
    """Replay champion moves as a stack: a promotion pushes, a rollback pops."""
    stack: list[str] = []
    for move in moves:
        if move.why.startswith("rollback:"):
            if stack:
                stack.pop()
        elif move.to_version is not None and (not stack or stack[-1] != move.to_version):
            stack.append(move.to_version)
    return stack[-2] if len(stack) >= 2 else None


def current_user() -> str:
    return os.environ.get("CD4ML_USER") or getpass.getuser()


def download_bundle(model_uri: str, tracking_uri: str, into: Path) -> Path:
    """Fetch a registered model (e.g. models:/sales-forecaster@champion) and return its bundle."""
    import mlflow

    client(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    into.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(into)))
    bundle = local / "artifacts" / "bundle"
    if not bundle.is_dir():
        raise RegistryError(f"{model_uri} is not a cd4ml bundle (no artifacts/bundle)")
    return bundle


def run_of(model: str) -> str | None:
    """The run a runs:/ URI names (runs:/<id> or runs:/<id>/model), else None."""
    if not model.startswith("runs:/"):
        return None
    return model.removeprefix("runs:/").strip("/").split("/")[0] or None


def run_has_model(tracking_uri: str, run_id: str) -> bool:
    """Whether a run logged a bundle as its `model` (every trained model is, gated out or not)."""
    import mlflow

    client(tracking_uri)
    run = mlflow.get_run(run_id)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{RUN_MODEL}'",
        max_results=1,
        output_format="list",
    )
    return bool(found)


def last_run_with_model(tracking_uri: str, experiment: str) -> str:
    """The newest run of `experiment` whose bundle was logged: what `--model last` names."""
    import mlflow

    found = client(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        raise RegistryError(f"no experiment '{experiment}' in {redact(tracking_uri)}: run `cd4ml run` first")
    logged = mlflow.search_logged_models(
        experiment_ids=[found.experiment_id], filter_string=f"name = '{RUN_MODEL}'", output_format="list"
    )
    with_model = {m.source_run_id for m in logged if m.source_run_id}
    if not with_model:
        raise RegistryError(f"no run of experiment '{experiment}' has a model yet: run `cd4ml run` first")
    runs = mlflow.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], output_format="list")
    return next(r.info.run_id for r in runs if r.info.run_id in with_model)


def kept_model_note(tracking_uri: str, run_id: str) -> str:
    """For a gated-out run's exit message: where its model was kept and how to use it."""
    if not run_has_model(tracking_uri, run_id):
        return ""
    return (
        f"; the model was kept as runs:/{run_id}/{RUN_MODEL} (not registered): "
        f"use it with `cd4ml predict --model runs:/{run_id}` or `--model last`"
    )


def unregistered_reason(tracking_uri: str, run_id: str) -> str | None:
    """Why a run's model is not a registered version (a warning for whoever uses it), or None."""
    registry = client(tracking_uri)
    if registry.search_model_versions(f"run_id = '{run_id}'"):
        return None
    if registry.get_run(run_id).data.tags.get("gate") == "failed":
        return f"run {run_id} was not promoted (gate failed): its model is not a registered version"
    return f"run {run_id} was not registered: its model is not a registered version"


def missing_alias(registry: Registry, alias: str) -> str:
    """Why `name@alias` names no model: the aliases there are, or that nothing is registered yet."""
    aliases = registry.aliases()
    if aliases:
        known = ", ".join(f"{a} (v{v})" for a, v in sorted(aliases.items()))
        return f"{registry.name} has no '{alias}' alias; its aliases: {known}"
    if registry.versions():
        return f"{registry.name} has no '{alias}' alias and no alias at all: `cd4ml promote VERSION` sets the champion"
    return f"{registry.name} has no '{alias}' alias: nothing is registered yet, run `cd4ml run` first"


def resolve_bundle(model: str, tracking_uri: str, cache: Path) -> Path:
    """A bundle folder from a local path, or from a registry URI (models:/name@alias, runs:/<id>[/model])."""
    local = Path(model).expanduser()
    if (local / "feature_spec.json").exists():
        return local
    if (local / "artifacts" / "bundle").is_dir():
        return local / "artifacts" / "bundle"
    if "://" not in model and ":/" not in model:
        raise RegistryError(f"{model}: neither a bundle folder nor a model URI like models:/sales-forecaster@champion")
    from mlflow.exceptions import MlflowException

    if model.startswith("models:/") and "@" in model:  # an alias moves: cache by the version it names
        name, alias = model.removeprefix("models:/").split("@", 1)
        registry = Registry(tracking_uri, name)
        version = registry.alias(alias)
        if version is None:
            raise RegistryError(missing_alias(registry, alias))
        model = f"models:/{name}/{version}"
    if (run_id := run_of(model)) and model.removeprefix("runs:/").strip("/") == run_id:
        model = f"runs:/{run_id}/{RUN_MODEL}"
    folder = cache / hashlib.sha256(f"{tracking_uri}|{model}".encode()).hexdigest()[:16]
    try:
        return download_bundle(model, tracking_uri, folder)
    except MlflowException as exc:
        raise RegistryError(f"cannot load {model} from {redact(tracking_uri)}: {redact(exc.message)}") from exc
