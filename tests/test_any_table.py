"""Any sane sales table runs end to end: one key or several, integer or text, daily or weekly,
a history as short as 2 × horizon + 1 periods — and a table too short says what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cd4ml.data.presets import STORE47_COLUMNS

pytestmark = pytest.mark.integration


def cd4ml(*args: str) -> subprocess.CompletedProcess[str]:
    """The `cd4ml` command of this environment, without the caller's CD4ML_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")} | {"COLUMNS": "200", "NO_COLOR": "1"}
    command = [str(Path(sys.executable).parent / "cd4ml"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def daily_sales(keys: list[object], days: int, start: date = date(2016, 3, 1), seed: int = 7) -> pd.DataFrame:
    """Poisson sales around a per-series level with a weekly profile and promotion lift: a
    seasonal-naive forecast carries one week's noise, a model can average it away."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=days, freq="D")
    weekday = np.array([1.0, 0.9, 0.9, 1.0, 1.3, 1.6, 0.7])
    frames = []
    for n, key in enumerate(keys):
        promo = rng.random(days) < 0.15
        level = 5 + 3 * n
        mean = level * weekday[dates.weekday] * np.where(promo, 1.6, 1.0)
        frames.append(pd.DataFrame({"key": key, "date": dates, "units": rng.poisson(mean), "promo": promo.astype(int)}))
    return pd.concat(frames, ignore_index=True)


def run(workdir: Path, data: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return cd4ml("run", "-w", str(workdir), "--data", str(data), *(p for o in overrides for p in ("--set", o)))


def registered(workdir: Path, result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads((workdir / "models" / "registered.json").read_text())


def write_spec(folder: Path, frame: pd.DataFrame, key: str, **extra: object) -> Path:
    frame.rename(columns={"key": key}).to_csv(folder / "sales.csv", index=False)
    spec = {"name": folder.name, "sales": "sales.csv", "series_keys": [key], "target": "units"}
    spec |= {"covariates": ["promo"]} | extra
    (folder / "spec.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return folder / "spec.yaml"


def predict(workdir: Path, rows: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    rows.to_csv(tmp_path / "rows.csv", index=False)
    done = cd4ml("predict", "-w", str(workdir), "-i", str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stdout + done.stderr
    return pd.read_csv(tmp_path / "out.csv")


def future_rows(frame: pd.DataFrame, key: str, days: int) -> pd.DataFrame:
    last = frame["date"].max()
    dates = pd.date_range(last + timedelta(days=1), periods=days, freq="D")
    grid = pd.DataFrame({key: frame["key"].unique()}).merge(pd.DataFrame({"date": dates}), how="cross")
    return grid.assign(date=grid["date"].dt.strftime("%Y-%m-%d"), promo=0)


@pytest.mark.parametrize(
    "keys",
    [list(range(101, 109)), [f"SKU-{n:03d}" for n in range(8)]],
    ids=["one-integer-key", "one-text-key"],
)
def test_a_one_key_table_trains_registers_and_forecasts_its_newest_horizon(keys: list[object], tmp_path: Path) -> None:
    frame = daily_sales(keys, days=120)
    spec = write_spec(tmp_path, frame, "product")
    workdir = tmp_path / "work"
    assert registered(workdir, run(workdir, spec, "split.horizon=7"))["alias"] == "champion"

    lineage = json.loads((workdir / "models" / "bundle" / "lineage.json").read_text())
    assert lineage["refit"]["through"] == str(frame["date"].max().date())  # the shipped model saw the newest data
    out = predict(workdir, future_rows(frame, "product", 7), tmp_path)
    assert len(out) == 7 * len(keys) and out["units"].notna().all()
    means = out.groupby("product")["units"].mean()
    assert means[keys[-1]] > 2 * means[keys[0]]  # levels 26 vs 5: the forecast follows each series


def test_the_workshop_store47_layout_runs(tmp_path: Path) -> None:
    frame = daily_sales(list(range(103520, 103532)), days=90)  # twelve items of one store, one key
    rows = frame.rename(columns={"key": "item_nbr", "units": "unit_sales"})
    rows["id"] = range(len(rows))
    dairy = rows["item_nbr"] % 2 == 1
    rows["family"] = np.where(dairy, "DAIRY", "GROCERY I")
    rows["class"] = np.where(dairy, 2712, 1028)
    rows["perishable"] = dairy.astype(int)
    rows["transactions"] = 1500
    for part in ("year", "month", "day", "dayofweek"):
        rows[part] = getattr(rows["date"].dt, part)
    rows["days_til_end_of_data"] = (rows["date"].max() - rows["date"]).dt.days
    rows["dayoff"] = rows["dayofweek"] >= 5
    path = tmp_path / "store47-2016.csv"
    rows.assign(date=rows["date"].dt.strftime("%Y-%m-%d"))[STORE47_COLUMNS].to_csv(path, index=False)

    workdir = tmp_path / "work"
    assert registered(workdir, run(workdir, path, "split.horizon=7"))["version"] == "1"


def test_twenty_days_of_history_forecast_seven_days(tmp_path: Path) -> None:
    frame = daily_sales(list(range(1, 13)), days=20)
    spec = write_spec(tmp_path, frame, "store")
    workdir = tmp_path / "work"
    result = run(workdir, spec, "split.horizon=7")
    registered(workdir, result)
    split = json.loads((workdir / "data" / "split.json").read_text())
    assert any("min_history 56 →" in note for note in split["notes"])
    assert "min_history 56 →" in result.stdout  # the split summary says what it chose
    out = predict(workdir, future_rows(frame, "store", 7), tmp_path)
    assert len(out) == 7 * 12 and (out["units"] > 0).all()


def test_a_history_too_short_for_the_horizon_exits_2_naming_what_to_change(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, daily_sales([1, 2], days=14), "store")
    result = run(tmp_path / "work", spec, "split.horizon=7")
    assert result.returncode == 2
    said = result.stdout + result.stderr
    assert "split.horizon=7 needs at least 15 periods" in said and "the data has 14" in said
    assert "Traceback" not in said


def test_weekly_data_forecasts_eight_weeks_with_weekly_defaults(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weeks = pd.date_range("2014-01-03", periods=150, freq="7D")  # Fridays
    season = 1 + 0.4 * np.sin(2 * np.pi * np.arange(150) / 52)
    parts = []
    for store in (1, 2, 3):
        for dept in (1, 2):
            promo = (rng.random(150) < 0.25).astype(int)  # a promotion week sells 60 % more
            sales = rng.poisson(200 * store * season * (1 + 0.6 * promo))
            parts.append(pd.DataFrame({"Store": store, "Dept": dept, "Date": weeks, "Sales": sales, "Promo": promo}))
    frame = pd.concat(parts)
    frame.assign(Date=frame["Date"].dt.strftime("%m/%d/%y")).to_csv(tmp_path / "sales.csv", index=False)
    spec = {
        "name": "weekly",
        "sales": "sales.csv",
        "date_column": "Date",
        "date_format": "%m/%d/%y",
        "series_keys": ["Store", "Dept"],
        "target": "Sales",
        "covariates": ["Promo"],
        "frequency": "weekly",
    }
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    workdir = tmp_path / "work"
    registered(workdir, run(workdir, tmp_path / "spec.yaml", "split.horizon=8"))

    split = json.loads((workdir / "data" / "split.json").read_text())
    origins = [date.fromisoformat(o) for o in split["train_origins"]]
    assert split["period_days"] == 7 and split["min_history"] == 13
    assert {b - a for a, b in pairwise(origins)} == {timedelta(weeks=1)}
    spec_json = json.loads((workdir / "models" / "bundle" / "feature_spec.json").read_text())
    assert spec_json["season_length"] == 52
