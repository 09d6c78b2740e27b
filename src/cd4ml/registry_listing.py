"""A registered model's versions, read without importing MLflow: what `cd4ml models` lists.

`import mlflow` takes 3–8 s here, far more than listing a few versions, so the listing reads the
store directly where that is simple and stable: MLflow's REST API on a tracking server, and the
registry tables of a local SQLite store, opened read-only. Any other store (a database URI, a
server needing credentials or TLS settings) goes through MLflow's client, as does a SQLite store
whose tables do not look as expected (a future MLflow schema): slower, never wrong. A test checks
both fast paths against MLflow's client on the same store.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

MODEL_TYPE = "model.type"  # the run parameter naming the model family
DELETED = "Deleted_Internal"  # MLflow's stage for a version being deleted: not listed
CLIENT_SETTINGS = (  # a server needing any of these is read through MLflow's own client
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)


@dataclass(frozen=True)
class VersionRow:
    version: str
    created_ms: int
    run_id: str | None
    model_type: str | None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def list_versions(tracking_uri: str, name: str) -> list[VersionRow]:
    """Every version of `name`, newest first."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.exists():
            return []  # nothing registered; unlike MLflow, do not create the store to say so
        try:
            return _sorted(_from_sqlite(path, name))
        except sqlite3.Error:  # not the schema this reader knows: let MLflow read it
            return _sorted(_from_client(tracking_uri, name))
    if tracking_uri.startswith(("http://", "https://")) and not any(os.environ.get(v) for v in CLIENT_SETTINGS):
        return _sorted(_from_rest(tracking_uri, name))
    return _sorted(_from_client(tracking_uri, name))


def _sorted(rows: list[VersionRow]) -> list[VersionRow]:
    return sorted(rows, key=lambda r: int(r.version), reverse=True)


def _from_sqlite(path: Path, name: str) -> list[VersionRow]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        versions = db.execute(
            "SELECT version, creation_time, run_id FROM model_versions WHERE name = ? AND current_stage != ?",
            (name, DELETED),
        ).fetchall()
        aliases: dict[str, list[str]] = {}
        for alias, version in db.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE name = ? ORDER BY alias", (name,)
        ):
            aliases.setdefault(str(version), []).append(alias)
        tags: dict[str, dict[str, str]] = {}
        for version, key, value in db.execute(
            "SELECT version, key, value FROM model_version_tags WHERE name = ?", (name,)
        ):
            tags.setdefault(str(version), {})[key] = value
        types = dict(db.execute("SELECT run_uuid, value FROM params WHERE key = ?", (MODEL_TYPE,)).fetchall())
    return [
        VersionRow(
            str(v), int(created), run_id or None, types.get(run_id), aliases.get(str(v), []), tags.get(str(v), {})
        )
        for v, created, run_id in versions
    ]


def _from_rest(tracking_uri: str, name: str) -> list[VersionRow]:
    """MLflow's REST API (`model-versions/search`, `runs/get`), as its own client calls it."""
    import httpx

    base = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
    found: list[dict] = []
    with httpx.Client(timeout=30) as http:
        token = None
        while True:
            query = {"filter": f"name = '{name}'", "max_results": 1000} | ({"page_token": token} if token else {})
            page = http.get(f"{base}/model-versions/search", params=query)
            page.raise_for_status()
            body = page.json()
            found += body.get("model_versions", [])
            token = body.get("next_page_token")
            if not token:
                break
        types = {run_id: _run_model_type(http, base, run_id) for run_id in {v.get("run_id") for v in found} if run_id}
        aliases: dict[str, list[str]] = {}  # search results leave a version's aliases out
        if found:
            model = http.get(f"{base}/registered-models/get", params={"name": name})
            model.raise_for_status()
            for entry in sorted(model.json()["registered_model"].get("aliases", []), key=lambda a: a["alias"]):
                aliases.setdefault(str(entry["version"]), []).append(entry["alias"])
    return [
        VersionRow(
            str(v["version"]),
            int(v.get("creation_timestamp", 0)),
            v.get("run_id") or None,
            types.get(v.get("run_id")),
            aliases.get(str(v["version"]), []),
            {t["key"]: t.get("value", "") for t in v.get("tags", [])},
        )
        for v in found
    ]


def _run_model_type(http, base: str, run_id: str) -> str | None:
    answer = http.get(f"{base}/runs/get", params={"run_id": run_id})
    if answer.status_code == 404:  # the run was deleted; its version still lists
        return None
    answer.raise_for_status()
    params = answer.json()["run"]["data"].get("params", [])
    return next((p["value"] for p in params if p["key"] == MODEL_TYPE), None)


def _from_client(tracking_uri: str, name: str) -> list[VersionRow]:
    from mlflow.exceptions import MlflowException

    from cd4ml.registry import client

    mlflow_client = client(tracking_uri)
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    aliases: dict[str, list[str]] = {}  # search results leave a version's aliases out
    if versions:
        for alias, version in sorted(mlflow_client.get_registered_model(name).aliases.items()):
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in versions:
        try:
            model_type = mlflow_client.get_run(v.run_id).data.params.get(MODEL_TYPE) if v.run_id else None
        except MlflowException:  # the run was deleted; its version still lists
            model_type = None
        rows.append(
            VersionRow(
                str(v.version),
                int(v.creation_timestamp),
                v.run_id or None,
                model_type,
                aliases.get(str(v.version), []),
                dict(v.tags),
            )
        )
    return rows
