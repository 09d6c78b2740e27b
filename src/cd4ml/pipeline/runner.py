"""`cd4ml run`: prepare the work directory, then let DVC run what changed, stage by stage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from cd4ml.config import Paths, apply_overrides, init_project, load_params

SUMMARIES = Path(".cd4ml") / "summaries"
# A model logged from code carries a copy of cd4ml/project/dvc.yaml: were DVC to walk MLflow's
# artifacts it would collect that pipeline too (and `dvc repro` would run it), slower every run.
DVC_IGNORED = ("/mlartifacts/", "/.cd4ml/")


class PipelineFailed(RuntimeError):
    def __init__(self, stage: str, exit_code: int, message: str):
        self.stage, self.exit_code = stage, exit_code
        super().__init__(message)


@dataclass
class StageResult:
    name: str
    ran: bool
    seconds: float
    summary: str


def stage_names(workdir: Path) -> list[str]:
    """Stages in dvc.yaml order, which is their dependency order."""
    return list(yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"])


def _git(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True, check=False)


def ensure_dvc(workdir: Path) -> str:
    """Initialise DVC once, and keep it out of MLflow's artifacts and cd4ml's scratch space."""
    state = "existing" if (workdir / ".dvc").is_dir() else _init_dvc(workdir)
    ignore = workdir / ".dvcignore"
    lines = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [pattern for pattern in DVC_IGNORED if pattern not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n")
    return state


def _init_dvc(workdir: Path) -> str:
    """With git when the work directory is tracked by git, else without."""
    from dvc.repo import Repo

    top = _git(workdir, "rev-parse", "--show-toplevel")
    ignored = _git(workdir, "check-ignore", "-q", "dvc.yaml").returncode == 0
    if top.returncode != 0 or ignored:
        Repo.init(str(workdir), no_scm=True)
        return "initialised without git"
    Repo.init(str(workdir), subdir=Path(top.stdout.strip()).resolve() != workdir.resolve())
    return "initialised in git"


def source_identity(source: str, base: Path) -> dict:
    """What the ingest stage depends on: the source name plus the size and mtime of its files."""
    if source == "sample" or source.startswith(("http://", "https://")):
        return {"source": source}
    path = (base / source).expanduser().resolve()
    files = (
        sorted(path.iterdir())
        if path.is_dir()
        else [path, *sorted(path.parent.iterdir())]
        if path.suffix in {".yaml", ".yml"}
        else [path]
    )
    stamp = hashlib.sha256()
    for f in files:
        if f.is_file():
            st = f.stat()
            stamp.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return {"source": str(path), "fingerprint": stamp.hexdigest()}


def write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def prepare(workdir: Path, data: str | None, overrides: list[str]) -> list[tuple[str, object]]:
    """Project files, parameter overrides and the source identity, before DVC looks at anything."""
    init_project(workdir)
    if data is not None:
        local = Path(data).expanduser()
        if data != "sample" and not data.startswith(("http://", "https://")) and local.exists():
            data = str(local.resolve())
        overrides = [f"data.source={json.dumps(data)}", *overrides]
    applied = apply_overrides(workdir / "params.yaml", overrides) if overrides else []
    params = load_params(workdir / "params.yaml")
    identity = source_identity(params.data.source, workdir)
    write_if_changed(Paths(workdir).source, json.dumps(identity, indent=2) + "\n")
    return applied


def run_pipeline(workdir: Path, on_stage=None, last_stage: str | None = None) -> list[StageResult]:
    """Reproduce every stage in order, up to `last_stage` if given; `on_stage(name)` is called
    before each starts."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    failure = Paths(workdir).failure
    failure.unlink(missing_ok=True)
    os.chdir(workdir)  # DVC resolves stage names against the current directory
    results = []
    with Repo(str(workdir)) as repo:
        names = stage_names(workdir)
        if last_stage is not None:
            if last_stage not in names:
                older = f"{workdir / 'dvc.yaml'} has no '{last_stage}' stage (older cd4ml)"
                raise PipelineFailed(last_stage, 2, f"{older}: delete it to get the current one")
            names = names[: names.index(last_stage) + 1]
        first = _first_changed(repo, names)
        for index, name in enumerate(names):
            if on_stage:
                on_stage(name)
            started = time.perf_counter()
            try:
                ran = index >= first and bool(repo.reproduce(name, single_item=True))
            except DvcException as exc:
                if failure.exists():
                    info = json.loads(failure.read_text())
                    raise PipelineFailed(name, info["exit_code"], info["message"]) from exc
                raise PipelineFailed(name, 1, str(exc)) from exc
            summary_file = workdir / SUMMARIES / f"{name}.txt"
            summary = summary_file.read_text().strip() if summary_file.exists() else ""
            results.append(StageResult(name, ran, time.perf_counter() - started, summary))
    return results


def _first_changed(repo, names: list[str]) -> int:
    """Index of the first stage DVC reports changed, len(names) if none.

    Stages before it cannot run (nothing upstream of them changed), so they are not asked one
    by one: a single status costs what one `reproduce` does, and a no-op run stays ~1 s.
    """
    from dvc.exceptions import DvcException

    try:
        changed = repo.status()
    except DvcException:
        return 0  # let each stage's reproduce report what is wrong
    return next((i for i, name in enumerate(names) if name in changed), len(names))


def record_summary(workdir: Path, stage: str, summary: str) -> None:
    path = workdir / SUMMARIES / f"{stage}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary + "\n")


def record_failure(workdir: Path, stage: str, exit_code: int, message: str) -> None:
    path = Paths(workdir).failure
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "exit_code": exit_code, "message": message}))
