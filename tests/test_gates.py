"""Promotion gates: each check passes and fails for the reason it exists, and `cd4ml run` stops a
model that fails one before anything is registered or any alias moves."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cd4ml import gates
from cd4ml.config import GateParams
from cd4ml.gates import Check, GateFailed

P = GateParams()
CLI = Callable[..., subprocess.CompletedProcess[str]]
MODEL = "sales-forecaster"
WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}  # Rich tables unwrapped, so output can be searched


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in checks}


# --- each check on constructed inputs --------------------------------------------------------


def test_absolute_bounds_pass_a_good_model_and_fail_each_bound_on_its_own() -> None:
    P = GateParams(max_nwrmsle=0.8)  # the workshop's bound for Favorita
    good = gates.absolute({"nwrmsle": 0.5, "r2": 0.3}, P)
    assert [c.passed for c in good] == [True, True]
    too_far = gates.absolute({"nwrmsle": 0.81, "r2": 0.3}, P)
    assert [c.passed for c in too_far] == [False, True]
    no_fit = gates.absolute({"nwrmsle": 0.5, "r2": 0.0}, P)
    assert [c.passed for c in no_fit] == [True, False]  # R² must be strictly above 0
    assert gates.absolute({"nwrmsle": 0.8, "r2": 0.1}, P)[0].passed  # the bound itself is allowed


def test_no_nwrmsle_bound_by_default_since_its_scale_depends_on_the_data() -> None:
    unbounded = gates.absolute({"nwrmsle": 1.39, "r2": 0.2}, GateParams())  # intermittent demand
    assert unbounded[0].passed and unbounded[0].threshold == "no bound"
    assert "gates.max_nwrmsle" in unbounded[0].detail


def test_baseline_gain_needs_the_configured_improvement() -> None:
    assert gates.beats_baseline(0.90, 1.0, 3, P).passed  # 10 % better
    barely_short = gates.beats_baseline(0.9503, 1.0, 3, P)  # 4.97 % better
    assert not barely_short.passed
    assert barely_short.value == "4.97%"  # shown precisely enough to see why it failed
    assert not gates.beats_baseline(1.1, 1.0, 3, P).passed  # worse than seasonal naive
    assert gates.relative_gain(0.5, 0.0) == 0.0  # a perfect baseline leaves nothing to gain


def test_champion_check_allows_the_tolerance_and_names_the_rescored_champion() -> None:
    first = gates.not_worse_than_champion(gates.ChampionScore(0.7), P)
    assert first.passed and first.detail == "first model"
    within = gates.not_worse_than_champion(gates.ChampionScore(0.5095, "3", 0.50, detail="re-scored"), P)
    assert within.passed  # 1.9 % worse: tolerated
    assert "champion v3 0.5000, re-scored" in within.detail
    worse = gates.not_worse_than_champion(gates.ChampionScore(0.52, "3", 0.50), P)  # 4 % worse
    assert not worse.passed and worse.value == "-4.00%"


def _slice_frame(rows_per_family: int = 150) -> pd.DataFrame:
    """Three families of actuals; the model's predictions are 10 % off, the baseline's 30 %."""
    rng = np.random.default_rng(0)
    families = ["DAIRY", "MEATS", "PRODUCE"]
    frame = pd.DataFrame(
        {
            "family": np.repeat(families, rows_per_family),
            "sales": rng.poisson(20, rows_per_family * len(families)).astype(float),
            "weight": 1.0,
        }
    )
    frame["prediction"] = frame["sales"] * 1.1
    frame["baseline"] = frame["sales"] * 1.3
    return frame


def test_slice_check_passes_when_every_slice_beats_the_reference() -> None:
    check = gates.slice_degradation(_slice_frame(), ["family"], "baseline", "seasonal naive", P)
    assert check.passed
    assert check.name == "slices vs seasonal naive"
    assert check.detail.startswith("worst: family=")


def test_slice_check_fails_naming_the_one_degraded_family() -> None:
    frame = _slice_frame()
    meats = frame["family"] == "MEATS"
    frame.loc[meats, "prediction"] = frame.loc[meats, "sales"] * 3 + 5
    check = gates.slice_degradation(frame, ["family"], "baseline", "seasonal naive", P)
    assert not check.passed
    assert check.detail.startswith("family=MEATS (")
    assert "DAIRY" not in check.detail and "PRODUCE" not in check.detail


def test_slice_check_ignores_slices_too_small_to_judge() -> None:
    frame = _slice_frame(rows_per_family=P.slice_min_rows - 1)
    frame["prediction"] = frame["sales"] * 10  # terrible everywhere, but no slice is judged
    check = gates.slice_degradation(frame, ["family"], "baseline", "seasonal naive", P)
    assert check.passed and check.value == "no slice large enough"


def test_onnx_parity_allows_float32_noise_and_fails_a_different_model() -> None:
    native = np.array([0.0, 1.0, 10.0, 250.0])
    assert gates.onnx_parity(native, native * (1 + 1e-6), P).passed
    drifted = gates.onnx_parity(native, native * 1.01, P)  # 1 % apart: ~1e-2 in log1p
    assert not drifted.passed
    assert float(drifted.value) == pytest.approx(np.log1p(252.5) - np.log1p(250.0), rel=1e-2)


def test_data_validation_check_passes_only_a_passed_report() -> None:
    assert gates.data_valid("passed").passed
    assert not gates.data_valid("failed").passed


def test_feature_contract_demands_identical_features() -> None:
    pipeline = pd.DataFrame({"horizon": [1.0, 2.0], "lmean_7": [0.5, 0.25]}, dtype=np.float32)
    assert gates.contract(pipeline, pipeline.copy()).passed
    skewed = pipeline.copy()
    skewed.loc[1, "lmean_7"] = np.float32(0.2500001)  # one ulp-sized skew is still skew
    assert not gates.contract(pipeline, skewed).passed
    renamed = gates.contract(pipeline, pipeline.rename(columns={"lmean_7": "lmean_14"}))
    assert not renamed.passed and renamed.detail == "column lists differ"
    fewer = gates.contract(pipeline, pipeline.iloc[:1], "gateway table")
    assert not fewer.passed and fewer.detail == "1 of 2 rows served"
    assert fewer.name == "feature contract (gateway table = training)"


def test_report_passes_only_when_every_check_passes_and_failure_names_each() -> None:
    ok, bad = Check("a", 1.0, "≤ 2", True), Check("b", 3.0, "≤ 2", False, "too high")
    assert gates.report([ok])["passed"]
    result = gates.report([ok, bad])
    assert not result["passed"]
    assert [c["name"] for c in result["checks"]] == ["a", "b"]
    assert str(GateFailed([bad])) == "b: 3.0 (needs ≤ 2) too high"


# --- on a real holdout and real pipeline runs -------------------------------------------------


@pytest.fixture
def workdir(trained_workdir: Path, tmp_path: Path) -> Path:
    """A private copy of the trained work directory (its registry: v1 champion)."""
    return Path(shutil.copytree(trained_workdir, tmp_path / "work", symlinks=True))


def _registry(workdir: Path):
    from cd4ml.registry import Registry

    return Registry(f"sqlite:///{workdir / 'mlflow.db'}", MODEL)


@pytest.mark.integration
def test_degraded_family_on_the_real_holdout_fails_the_slice_check(trained_workdir: Path) -> None:
    holdout = pd.read_parquet(trained_workdir / "reports" / "holdout.parquet")
    slices = ["family", "type", "cluster", "perishable"]
    assert gates.slice_degradation(holdout, slices, "baseline", "seasonal naive", P).passed
    cleaning = holdout["family"] == "CLEANING"
    holdout.loc[cleaning, "prediction"] = holdout.loc[cleaning, "sales"] * 4 + 3
    check = gates.slice_degradation(holdout, slices, "baseline", "seasonal naive", P)
    assert not check.passed
    assert check.detail.startswith("family=CLEANING (")
    assert "family=" not in check.detail.removeprefix("family=CLEANING")


@pytest.mark.integration
@pytest.mark.xdist_group("registry")
def test_weak_model_stops_the_run_with_exit_3_and_registers_nothing(workdir: Path, run_cd4ml: CLI) -> None:
    from mlflow import MlflowClient

    before = [str(v.version) for v in _registry(workdir).versions()]
    moves = len(_registry(workdir).history())
    theirs = json.loads((workdir / "reports" / "backtest.json").read_text())["mean"]["lightgbm"]  # v1's run
    # a tree that cannot split: one constant forecast for every row
    weak = [
        "gates.max_nwrmsle=0.8",  # the workshop's absolute bound, as a Favorita user would set it
        "model.type=decision_tree",
        "model.decision_tree.max_depth=1",
        "model.decision_tree.min_samples_leaf=1000000",
    ]
    result = run_cd4ml("run", "-w", str(workdir), *[f"--set={s}" for s in weak], env=WIDE)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output[-3000:]
    assert "promotion gates failed" in output and "no alias moved" in output
    report = json.loads((workdir / "reports" / "gates.json").read_text())
    assert report["passed"] is False
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"holdout NWRMSLE", "holdout R²", "gain over seasonal naive", "vs champion"} <= failed
    assert "ONNX parity" not in failed and "input data validation" not in failed
    for name in failed:
        assert name in output  # the failed checks are printed, not only written
    # same data: the champion was refit on this holdout, so both are judged by their held-out
    # backtest means over the same folds
    champion = by_name(report["checks"])["vs champion"]
    ours = json.loads((workdir / "reports" / "backtest.json").read_text())["mean"]["decision_tree"]
    assert champion["detail"].startswith(f"NWRMSLE {ours['nwrmsle']:.4f} vs champion v1 {theirs['nwrmsle']:.4f}, ")
    assert "mean over the same 3 backtest folds" in champion["detail"]

    registry = _registry(workdir)
    assert [str(v.version) for v in registry.versions()] == before == ["1"]
    assert registry.aliases() == {"champion": "1"}
    assert len(registry.history()) == moves
    assert json.loads((workdir / "models" / "registered.json").read_text())["version"] == "1"

    run_id = json.loads((workdir / "models" / "run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert client.get_run(run_id).data.tags["gate"] == "failed"
    logged = client.download_artifacts(run_id, "gates/gates.json", str(workdir / "downloaded"))
    assert json.loads(Path(logged).read_text()) == report


@pytest.mark.integration
@pytest.mark.xdist_group("registry")
def test_tampered_onnx_file_fails_the_parity_gate(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cd4ml.config import Paths
    from cd4ml.models.naive import SeasonalNaive
    from cd4ml.pipeline.stages import feature_spec, gate, load_part

    for name in ("CD4ML_TRACKING_URI", "CD4ML_ARTIFACT_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    paths = Paths(workdir)
    fs = feature_spec(paths)
    X, labels = load_part(paths, "holdout", fs.columns)
    other = SeasonalNaive().fit(X, labels["sales"].to_numpy())
    (paths.shipped / "model.onnx").write_bytes(other.to_onnx(len(fs.columns)))  # the file that ships

    with pytest.raises(GateFailed) as failure:
        gate(workdir)
    assert [c.name for c in failure.value.failed] == ["ONNX parity"]
    report = json.loads((paths.reports / "gates.json").read_text())
    assert not report["passed"] and not by_name(report["checks"])["ONNX parity"]["passed"]


@pytest.mark.integration
@pytest.mark.xdist_group("registry")
def test_invalid_data_stops_the_run_with_exit_2_before_any_gate(
    favorita_sample: Path, tmp_path: Path, run_cd4ml: CLI
) -> None:
    source = Path(shutil.copytree(favorita_sample, tmp_path / "source"))
    lines = (source / "train.csv").read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    bad = lines[9].rstrip("\n").split(",")  # file line 10
    bad[header.index("unit_sales")] = "lots"
    lines[9] = ",".join(bad) + "\n"
    (source / "train.csv").write_text("".join(lines))
    workdir = tmp_path / "work"

    result = run_cd4ml("run", "-w", str(workdir), "--data", str(source), env=WIDE)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "stage 'ingest' failed" in output
    assert "unit_sales" in output and "line=10" in output
    assert not (workdir / "reports" / "gates.json").exists()
    assert not (workdir / "models").exists()


@pytest.mark.integration
@pytest.mark.xdist_group("registry")
def test_second_passing_model_is_compared_to_the_rescored_champion_and_becomes_challenger(
    workdir: Path, run_cd4ml: CLI
) -> None:
    from cd4ml.bundle import holdout_origin
    from cd4ml.metrics import nwrmsle
    from cd4ml.registry import download_bundle
    from cd4ml.scoring import Predictor, Scorer, SeriesData

    recorded = json.loads((workdir / "reports" / "metrics.json").read_text())["model"]["nwrmsle"]
    # a week of new data: a new holdout the champion has never seen, and a model trained on it
    result = run_cd4ml("run", "-w", str(workdir), "--set", "data.sample.days=737", env=WIDE)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    registered = json.loads((workdir / "models" / "registered.json").read_text())
    assert (registered["version"], registered["alias"]) == ("2", "challenger")
    registry = _registry(workdir)
    assert registry.aliases() == {"champion": "1", "challenger": "2"}

    report = json.loads((workdir / "reports" / "gates.json").read_text())
    champion_check = by_name(report["checks"])["vs champion"]
    assert champion_check["passed"]
    assert "vs champion v1" in champion_check["detail"]
    assert "holdout rows neither model trained on" in champion_check["detail"]
    assert "slices vs champion v1" in by_name(report["checks"])
    rescored = float(champion_check["detail"].split("champion v1 ")[1].split(",")[0])

    # the champion's own bundle, scored on the new holdout's rows after the data it was refit on,
    # gives the number the gate used
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    champion = download_bundle(f"models:/{MODEL}/1", uri, workdir / "v1")
    through = json.loads((champion / "lineage.json").read_text())["refit"]["through"]
    new_bundle = workdir / "models" / "bundle"
    holdout = pd.read_parquet(new_bundle / "holdout.parquet")
    holdout = holdout[pd.to_datetime(holdout["date"]) > pd.Timestamp(through)]
    assert len(holdout) > 0 and f"re-scored on {len(holdout):,} holdout rows" in champion_check["detail"]
    scorer = Scorer(Predictor.read(champion), SeriesData.read(new_bundle), holdout_origin(new_bundle))
    rows = holdout[["date", *scorer.spec.series_keys, *scorer.spec.covariates]]
    expected = nwrmsle(holdout["sales"], scorer.predict(rows), holdout["weight"])
    assert rescored == pytest.approx(expected, abs=5e-5)
    assert abs(rescored - recorded) > 1e-3  # not the champion's recorded holdout metric
