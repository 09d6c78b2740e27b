"""MLflow tracking: one run per trained model, with the lineage that makes it reproducible."""

from __future__ import annotations

import json
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cd4ml.config import artifact_location, tracking_uri
from cd4ml.redaction import redact


def connect(workdir: Path, experiment: str) -> str:
    """Point MLflow at the configured store; returns the experiment id. An experiment keeps the
    artifact location it was created with: a local one on a tracking server gets a warning."""
    import mlflow

    uri = tracking_uri(workdir)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return mlflow.create_experiment(experiment, artifact_location=artifact_location(workdir))
    if artifact_location(workdir) is None and found.artifact_location.startswith("file:"):
        warnings.warn(
            f"experiment '{experiment}' on {redact(uri)} keeps its artifacts in {found.artifact_location}, "
            "which only this machine can read: set tracking.experiment to a new name (or "
            "CD4ML_ARTIFACT_LOCATION) so models go to the server's artifact store",
            stacklevel=2,
        )
    return found.experiment_id


@contextmanager
def run(workdir: Path, experiment: str, run_id: str | None = None) -> Iterator[Any]:
    import mlflow

    experiment_id = connect(workdir, experiment)
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id) as active:
        yield active


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def metric_name(*parts: str) -> str:
    """MLflow accepts letters, digits and _-./ and spaces in names; anything else becomes _."""
    return re.sub(r"[^\w\-./ ]", "_", ".".join(parts))


def git_commit(workdir: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


def stage_hashes(workdir: Path) -> dict[str, str]:
    """Hashes of each completed stage's outputs from dvc.lock: the data lineage of this run."""
    import yaml

    lock = workdir / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    hashes = {}
    for stage, entry in stages.items():
        for out in entry.get("outs", []):
            hashes[f"{stage}:{out['path']}"] = out.get("md5", "")
    return hashes


def git_dirty(workdir: Path) -> str:
    """Whether the checkout had uncommitted changes: the commit alone would not reproduce it."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return "unknown" if out.returncode else str(bool(out.stdout.strip())).lower()


def lineage(workdir: Path, data_hash: str) -> dict[str, str]:
    return {
        "data_hash": data_hash,
        "git_commit": git_commit(workdir),
        "git_dirty": git_dirty(workdir),
        **{f"dvc.{k}": v for k, v in stage_hashes(workdir).items()},
    }


def read_run(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())
