"""`cd4ml predict` and `cd4ml verify`: batch scoring through the serving path reproduces what the
shipped model predicts from the pipeline's own holdout features bit for bit, refuses rows it
cannot score, reads and writes the dataset's own columns, falls back (flagged) for unknown
series, predicts with a gated-out run's model, and a bundle whose model or data was changed
after gating no longer verifies."""

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
    """(rows.csv, expected predictions in its row order, holdout origin): the sample's holdout
    rows with their covariates from the canonical table, shuffled so order cannot hide a bug.
    Expected: the shipped model (refit after the gates) on the pipeline's own holdout features."""
    from cd4ml.scoring import Predictor

    bundle = trained_workdir / "models" / "bundle"
    spec = _spec(bundle)
    keys = ["date", *spec.series_keys]
    scored = pd.read_parquet(trained_workdir / "reports" / "holdout.parquet")  # rows of the feature table
    X = pd.read_parquet(trained_workdir / "data" / "features" / "holdout.parquet", columns=spec.columns)
    scored["prediction"] = Predictor.read(bundle).predict_features(X)
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
    run_cd4ml: CLI, rows: Path, target: Path, origin: date | None, bundle: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`cd4ml predict` with a bundle folder as the model, run in the target's folder (no tracking store)."""
    return run_cd4ml(
        "predict", "-i", str(rows), "-o", str(target), *(["--origin", origin.isoformat()] if origin else []),
        "--model", str(bundle), "-w", str(target.parent), *options, env=WIDE,
    )  # fmt: skip


SAMPLE_TARGET = "unit_sales"  # the sample's (Favorita's) target: forecasts are written under it


def _predictions(path: Path) -> np.ndarray:
    return pd.read_csv(path, float_precision="round_trip")[SAMPLE_TARGET].to_numpy()


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
    assert written.drop(columns=[SAMPLE_TARGET, "fallback"]).equals(pd.read_csv(rows))  # rows kept, in order
    assert np.array_equal(written[SAMPLE_TARGET].to_numpy(), expected)
    assert written["fallback"].isna().all()  # every series known: no fallback
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
    result = _predict_with_bundle(run_cd4ml, tmp_path / "rows.csv", target, origin, bundle, "--unknown", "error")
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


# ------------------------------------------- a dataset's own language, and gated-out models

WEEKLY_SPEC = """\
name: weekly-dates-us
sales: sales.csv
date_column: Date
date_format: "%m/%d/%y"
series_keys: [Store, Dept]
target: Weekly_Sales
covariates: [IsHoliday, MarkDown1]   # MarkDown1 is empty in every row
frequency: weekly
"""
NO_GATE_CAN_PASS = ["--set", "gates.min_gain_over_baseline=0.99"]  # the run is gated out: exit 3


@pytest.fixture(scope="module")
def weekly(tmp_path_factory: pytest.TempPathFactory, run_cd4ml: CLI):
    """(work dir, sales as written, `cd4ml run` result): 4 store×department series, 100 weeks of
    Fridays dated like 02/05/10, trained with a 4-week horizon and gated out on purpose."""
    folder = tmp_path_factory.mktemp("weekly")
    rng = np.random.default_rng(3)
    fridays = pd.date_range("2010-02-05", periods=100, freq="7D")
    sales = pd.DataFrame(
        [
            {
                "Store": store,
                "Dept": dept,
                "Date": friday.strftime("%m/%d/%y"),
                "Weekly_Sales": round(
                    (1000 * store + 300 * dept) * (1.3 + 0.3 * np.sin(2 * np.pi * week / 52) + rng.normal(0, 0.05)), 2
                ),
                "IsHoliday": "TRUE" if friday.month == 12 and friday.day > 21 else "FALSE",
                "MarkDown1": "",
            }
            for store in (1, 2)
            for dept in (1, 2)
            for week, friday in enumerate(fridays)
        ]
    )
    sales.to_csv(folder / "sales.csv", index=False)
    (folder / "spec.yaml").write_text(WEEKLY_SPEC)
    workdir = folder / "work"
    result = run_cd4ml(
        "run", "-w", str(workdir), "--data", str(folder / "spec.yaml"), "--set", "split.horizon=4", *NO_GATE_CAN_PASS,
        env=WIDE,
    )  # fmt: skip
    return workdir, sales.assign(Date=pd.to_datetime(sales["Date"], format="%m/%d/%y")), result


FUTURE = """\
Store,Dept,Date,IsHoliday
1,1,01/06/12,FALSE
2,2,2012-01-13,FALSE
2,1,01/27/12,TRUE
9,1,01/06/12,FALSE
"""  # the data ends on Friday 2011-12-30; store 9 was never seen


def _future_rows(tmp_path: Path) -> Path:
    (tmp_path / "future.csv").write_text(FUTURE)
    return tmp_path / "future.csv"


def _model_forecast(bundle: Path, rows: pd.DataFrame) -> np.ndarray:
    """The bundle's forecast for canonical rows (ISO dates, every covariate), scored in process."""
    from cd4ml.bundle import scorer

    return scorer(bundle).predict(rows)


def test_predict_reads_and_writes_the_datasets_own_columns(weekly, tmp_path: Path, run_cd4ml: CLI) -> None:
    workdir, _, _ = weekly
    bundle = workdir / "models" / "bundle"
    target = tmp_path / "forecast.csv"
    result = _predict_with_bundle(run_cd4ml, _future_rows(tmp_path), target, None, bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(Weekly_Sales)" in result.stdout and "fallback for unknown series: 1 rows (1 zero)" in result.stdout
    written = pd.read_csv(target, float_precision="round_trip", keep_default_na=False, dtype={"IsHoliday": str})
    assert list(written.columns) == ["Store", "Dept", "Date", "IsHoliday", "Weekly_Sales", "fallback"]
    assert written["Date"].tolist() == ["01/06/12", "2012-01-13", "01/27/12", "01/06/12"]  # as given
    assert written["IsHoliday"].tolist() == ["FALSE", "FALSE", "TRUE", "FALSE"]
    canonical = pd.DataFrame(
        {"date": ["2012-01-06", "2012-01-13", "2012-01-27"], "Store": [1, 2, 2], "Dept": [1, 2, 1]}
    ).assign(IsHoliday=[0.0, 0.0, 1.0], MarkDown1=0.0)  # MarkDown1 left out: training only saw it empty
    assert written["Weekly_Sales"][:3].tolist() == _model_forecast(bundle, canonical).tolist()
    assert written["fallback"].tolist() == ["", "", "", "zero"] and written["Weekly_Sales"][3] == 0.0


def test_a_covariate_training_saw_is_still_required(weekly, tmp_path: Path, run_cd4ml: CLI) -> None:
    workdir, _, _ = weekly
    (tmp_path / "rows.csv").write_text("Store,Dept,Date\n1,1,01/06/12\n")
    result = _predict_with_bundle(
        run_cd4ml, tmp_path / "rows.csv", tmp_path / "out.csv", None, workdir / "models" / "bundle"
    )
    assert result.returncode == 2 and "IsHoliday: missing column" in result.stderr, result.stderr


def test_an_unknown_series_with_history_falls_back_to_last_years_week(weekly, tmp_path: Path, run_cd4ml: CLI) -> None:
    """A series the bundle has history of but no attributes for (dropped from series.parquet):
    `naive` gives the same week one year (52 weeks) before, read off the training CSV by hand."""
    workdir, sales, _ = weekly
    bundle = Path(shutil.copytree(workdir / "models" / "bundle", tmp_path / "bundle"))
    series = pd.read_parquet(bundle / "series.parquet")
    series[(series["Store"] != 1) | (series["Dept"] != 1)].to_parquet(bundle / "series.parquet", index=False)
    (tmp_path / "rows.csv").write_text(
        "Store,Dept,Date,IsHoliday\n1,1,01/06/12,FALSE\n1,1,01/27/12,FALSE\n2,2,01/06/12,FALSE\n"
    )
    results = {
        unknown: (
            _predict_with_bundle(
                run_cd4ml, tmp_path / "rows.csv", tmp_path / f"{unknown}.csv", None, bundle, "--unknown", unknown
            )
        )
        for unknown in ("naive", "zero", "error")
    }
    one = sales[(sales["Store"] == 1) & (sales["Dept"] == 1)].set_index("Date")["Weekly_Sales"]
    year_before = [one[pd.Timestamp("2011-01-07")], one[pd.Timestamp("2011-01-28")]]  # 52 weeks before each row
    naive = pd.read_csv(tmp_path / "naive.csv", keep_default_na=False)
    assert results["naive"].returncode == 0, results["naive"].stderr
    assert naive["Weekly_Sales"][:2].to_numpy() == pytest.approx(year_before, rel=1e-6)  # log1p in float32
    assert naive["fallback"].tolist() == ["seasonal_naive", "seasonal_naive", ""]
    assert "fallback for unknown series: 2 rows (2 seasonal_naive)" in results["naive"].stdout
    zero = pd.read_csv(tmp_path / "zero.csv", keep_default_na=False)
    assert zero["Weekly_Sales"][:2].tolist() == [0.0, 0.0] and zero["fallback"].tolist() == ["zero", "zero", ""]
    assert zero["Weekly_Sales"][2] == naive["Weekly_Sales"][2] > 0  # a known series: the model's forecast
    assert results["error"].returncode == 2
    assert "rows.csv line 2: Store/Dept: unknown series (Store=1, Dept=1)" in results["error"].stderr
    assert not (tmp_path / "error.csv").exists()


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("2012-01-06", "--origin 2012-01-06 is after the bundle's last actuals (2011-12-30)"),
        ("2011-12-28", "--origin 2011-12-28 is not a period end: this weekly data's periods end on Fridays"),
    ],
    ids=["beyond the data", "not a Friday"],
)
def test_an_origin_the_bundle_cannot_support_is_refused(
    weekly, tmp_path: Path, run_cd4ml: CLI, origin: str, message: str
) -> None:
    workdir, _, _ = weekly
    rows, target = _future_rows(tmp_path), tmp_path / "out.csv"
    result = _predict_with_bundle(run_cd4ml, rows, target, date.fromisoformat(origin), workdir / "models" / "bundle")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not target.exists()


def test_a_gated_out_model_is_kept_and_predicts_from_its_run(weekly, tmp_path: Path, run_cd4ml: CLI) -> None:
    from cd4ml.config import Paths
    from cd4ml.tracking import read_run

    workdir, _, run = weekly
    run_id = read_run(Paths(workdir).run)["run_id"]
    assert run.returncode == 3, run.stdout + run.stderr
    assert f"the model was kept as runs:/{run_id}/model" in run.stderr
    assert f"`cd4ml predict --model runs:/{run_id}`" in run.stderr
    rows = _future_rows(tmp_path)
    expected = _predict_with_bundle(run_cd4ml, rows, tmp_path / "bundle.csv", None, workdir / "models" / "bundle")
    assert expected.returncode == 0, expected.stderr
    for model in (f"runs:/{run_id}", f"runs:/{run_id}/model", "last"):
        target = tmp_path / "from-run.csv"
        result = run_cd4ml("predict", "-i", str(rows), "-o", str(target), "-m", model, "-w", str(workdir), env=WIDE)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"warning: run {run_id} was not promoted (gate failed)" in result.stderr
        assert target.read_text() == (tmp_path / "bundle.csv").read_text()
