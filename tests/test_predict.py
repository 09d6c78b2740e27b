"""`cd4ml predict` and `cd4ml verify`: batch scoring through the serving path reproduces the
pipeline's own holdout predictions bit for bit, refuses rows it cannot score, and a bundle
whose model or data was changed after gating no longer verifies."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cd4ml.features import FeatureSpec

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("predict")]

CLI = Callable[..., subprocess.CompletedProcess[str]]
WIDE = {"COLUMNS": "250", "NO_COLOR": "1"}  # error messages unwrapped, so they can be searched


def _spec(bundle: Path) -> FeatureSpec:
    return FeatureSpec.model_validate_json((bundle / "feature_spec.json").read_text())


@pytest.fixture(scope="module")
def holdout(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(rows.csv, pipeline predictions in its row order, holdout origin): the sample's holdout
    rows with their covariates from the canonical table, shuffled so order cannot hide a bug."""
    spec = _spec(trained_workdir / "models" / "bundle")
    keys = ["date", *spec.series_keys]
    scored = pd.read_parquet(trained_workdir / "reports" / "holdout.parquet")
    sales = pd.read_parquet(trained_workdir / "data" / "ingested" / "sales.parquet")
    sales["date"] = pd.to_datetime(sales["date"])
    scored["date"] = pd.to_datetime(scored["date"])
    rows = scored[[*keys, "prediction"]].merge(
        sales[[*keys, *spec.covariates]], on=keys, how="left", validate="one_to_one"
    )
    assert len(rows) == len(scored) and rows[spec.covariates].notna().all().all()
    rows = rows.sample(frac=1.0, random_state=7).reset_index(drop=True)
    rows["date"] = rows["date"].dt.strftime("%Y-%m-%d")
    path = tmp_path_factory.mktemp("holdout-rows") / "rows.csv"
    rows.drop(columns="prediction").to_csv(path, index=False)
    (origin,) = scored["origin"].dt.date.unique()
    return path, rows["prediction"].to_numpy(), origin


def _predict_with_bundle(
    run_cd4ml: CLI, rows: Path, target: Path, origin: date, bundle: Path
) -> subprocess.CompletedProcess[str]:
    """`cd4ml predict` with a bundle folder as the model, run in the target's folder (no tracking store)."""
    return run_cd4ml(
        "predict", "-i", str(rows), "-o", str(target), "--origin", origin.isoformat(),
        "--model", str(bundle), "-w", str(target.parent), env=WIDE,
    )  # fmt: skip


def _predictions(path: Path) -> np.ndarray:
    return pd.read_csv(path, float_precision="round_trip")["prediction"].to_numpy()


def test_predict_reproduces_the_pipeline_holdout_predictions_exactly(
    trained_workdir: Path, holdout, tmp_path: Path, run_cd4ml: CLI
) -> None:
    rows, expected, origin = holdout
    target = tmp_path / "preds.csv"
    bundle = trained_workdir / "models" / "bundle"
    result = _predict_with_bundle(run_cd4ml, rows, target, origin, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expected):,} rows" in result.stdout
    written = pd.read_csv(target, float_precision="round_trip")
    assert written.drop(columns="prediction").equals(pd.read_csv(rows))  # rows kept, in order
    assert np.array_equal(written["prediction"].to_numpy(), expected)
    assert not (tmp_path / "mlflow.db").exists()  # a bundle folder needs no tracking store


def test_predict_defaults_to_the_registry_champion(
    trained_workdir: Path, holdout, tmp_path: Path, run_cd4ml: CLI
) -> None:
    rows, expected, origin = holdout
    workdir = Path(shutil.copytree(trained_workdir, tmp_path / "work"))  # downloads land here
    target = tmp_path / "preds.csv"
    result = run_cd4ml(
        "predict", "-i", str(rows), "-o", str(target), "--origin", origin.isoformat(), "-w", str(workdir), env=WIDE
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert np.array_equal(_predictions(target), expected)


def _beyond_horizon(rows: pd.DataFrame, spec: FeatureSpec, origin: date) -> None:
    last = origin + timedelta(days=spec.horizon * spec.period_days)
    rows.loc[41, "date"] = (last + timedelta(days=1)).isoformat()


def _unknown_series(rows: pd.DataFrame, spec: FeatureSpec, origin: date) -> None:
    rows.loc[41, spec.series_keys[-1]] = 999_999_999


def _missing_column(rows: pd.DataFrame, spec: FeatureSpec, origin: date) -> None:
    rows.drop(columns=spec.covariates[0], inplace=True)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            _beyond_horizon,
            "rows.csv line 43: date: {after} outside the servable range {first}..{last}",
        ),
        (_unknown_series, "rows.csv line 43: {keys}: unknown series ({series})"),
        (_missing_column, "{covariate}: missing column"),
    ],
    ids=["date beyond the horizon", "unknown series", "missing column"],
)
def test_predict_refuses_rows_it_cannot_score_naming_line_and_reason(
    trained_workdir: Path, holdout, tmp_path: Path, run_cd4ml: CLI, spoil, message: str
) -> None:
    source, _, origin = holdout
    bundle = trained_workdir / "models" / "bundle"
    spec = _spec(bundle)
    rows = pd.read_csv(source)
    spoil(rows, spec, origin)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    target = tmp_path / "preds.csv"
    result = _predict_with_bundle(run_cd4ml, tmp_path / "rows.csv", target, origin, bundle)
    assert result.returncode == 2, result.stdout + result.stderr
    step = timedelta(days=spec.period_days)
    last = origin + spec.horizon * step
    series = ", ".join(f"{k}={rows.loc[41, k]}" for k in spec.series_keys)
    expected = message.format(
        after=last + timedelta(days=1),
        first=origin + step,
        last=last,
        keys="/".join(spec.series_keys),
        series=series,
        covariate=spec.covariates[0],
    )
    assert expected in result.stderr
    assert not target.exists() and not list(tmp_path.glob("preds.csv*"))  # no partial output


def _replace_model(bundle: Path) -> None:
    from cd4ml.models.naive import SeasonalNaive

    spec = _spec(bundle)
    other = SeasonalNaive().fit(pd.DataFrame(columns=spec.columns), np.array([]))
    (bundle / "model.onnx").write_bytes(other.to_onnx(len(spec.columns)))


def _alter_history(bundle: Path) -> None:
    history = pd.read_parquet(bundle / "history.parquet")
    history["sales"] = history["sales"] * 1.5
    history.to_parquet(bundle / "history.parquet", index=False)


def _corrupt_model(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"not an ONNX graph")


DIFFERS = "re-scored holdout metrics differ from the recorded ones"


@pytest.mark.parametrize(
    ("tamper", "exit_code", "message"),
    [
        (None, 0, ""),
        (_replace_model, 1, DIFFERS),
        (_alter_history, 1, DIFFERS),
        (_corrupt_model, 1, "cannot be re-scored: InvalidProtobuf"),
    ],
    ids=["intact", "model.onnx replaced", "history sales altered", "model.onnx not ONNX"],
)
def test_verify_passes_an_intact_bundle_and_fails_a_tampered_one(
    trained_workdir: Path, tmp_path: Path, run_cd4ml: CLI, tamper, exit_code: int, message: str
) -> None:
    bundle = Path(shutil.copytree(trained_workdir / "models" / "bundle", tmp_path / "bundle"))
    if tamper:
        tamper(bundle)
    result = run_cd4ml("verify", str(bundle), "-w", str(tmp_path), env=WIDE)
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output
    assert message in result.stderr and "Traceback" not in output
    if message == DIFFERS:
        assert "DIFFERS" in result.stdout
    if not exit_code:
        assert output.count("match") == 6 and "DIFFERS" not in output
    assert not (tmp_path / "mlflow.db").exists()  # a bundle folder needs no tracking store
