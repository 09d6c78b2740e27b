"""`cd4ml monitor`: drift is detected when it is there and not raised when it is not.

Unit level: `monitor.drift` on constructed frames, `monitor.breaches` on constructed summaries.
Window level: sample worlds (`simulate.make_world`, no shift) are trained with `cd4ml run`,
served day by day through the gateway (TestClient) with the day's actual sales as feedback,
and monitored exactly as `cd4ml monitor` does. The same model and requests, fed a world whose
demand dropped, must breach; the unchanged worlds measure the false-alarm rate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from cd4ml.monitoring import monitor
from cd4ml.monitoring.controller import Policy
from cd4ml.monitoring.monitor import MonitorPolicy, Summary

# --- drift on constructed frames ------------------------------------------------------------


def frame(rng: np.random.Generator, rows: int, **moved: tuple[float, float]) -> pd.DataFrame:
    """Five normal columns and a three-level category; `moved` maps a column to (shift, scale)."""
    columns = {c: rng.normal(size=rows) for c in "abcde"}
    for column, (shift, scale) in moved.items():
        if column in columns:
            columns[column] = columns[column] * scale + shift
    weights = [0.2, 0.3, 0.5] if "kind" not in moved else [0.6, 0.3, 0.1]
    columns["kind"] = rng.choice(["x", "y", "z"], size=rows, p=weights)
    return pd.DataFrame(columns)


@pytest.mark.parametrize(
    ("reference_rows", "current_rows", "method"),
    [(600, 250, "K-S p_value"), (4000, 2000, "Wasserstein distance (normed)")],
)
def test_drift_finds_the_moved_columns(reference_rows: int, current_rows: int, method: str) -> None:
    """Small windows are judged by p-values, large ones by distances: both point the right way."""
    rng = np.random.default_rng(3)
    reference = frame(rng, reference_rows)
    moved = frame(rng, current_rows, a=(1.0, 1.0), b=(0.0, 3.0), kind=(0, 0))
    result = monitor.drift(reference, moved, ["kind"], None)
    assert result["drifted"] == ["a", "b", "kind"]
    assert result["share"] == pytest.approx(3 / 6)
    assert result["columns"]["a"]["method"] == method


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_drift_is_quiet_on_the_same_distribution(seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    result = monitor.drift(frame(rng, 600), frame(rng, 250), ["kind"], tmp_path / "drift.html")
    assert result["share"] <= 1 / 6, result["drifted"]  # 6 tests at 5%: at most one by chance
    assert (tmp_path / "drift.html").stat().st_size > 10_000


def test_p_values_drift_below_and_distances_above_their_threshold() -> None:
    assert monitor._drifted({"score": 0.01, "method": "K-S p_value", "threshold": 0.05})
    assert not monitor._drifted({"score": 0.2, "method": "chi-square p_value", "threshold": 0.05})
    assert monitor._drifted({"score": 0.3, "method": "Wasserstein distance (normed)", "threshold": 0.1})
    assert not monitor._drifted({"score": 0.05, "method": "Jensen-Shannon distance", "threshold": 0.1})


# --- breaches on constructed summaries ------------------------------------------------------


def summary(drift_share: float = 0.0, nwrmsle: float = 0.5, rows: int = 500, **ops: float) -> Summary:
    return Summary(
        window={"since": 0.0, "until": 1.0, "requests": 50, "rows": rows},
        operations={"requests": 50, "p50_ms": 2.0, "p99_ms": 9.0} | ops,
        quality={"by_version": [{"model_version": "3", "rows": rows, "nwrmsle": nwrmsle}]},
        drift={"share": drift_share, "drifted": ["lmean_7"] if drift_share else [], "columns": {}},
        skew={"max": 0.0, "mean": 0.0, "rows": rows},
        reference={"holdout_nwrmsle": 0.5},
    )


def test_a_healthy_window_breaches_nothing() -> None:
    assert monitor.breaches(summary(drift_share=0.3, nwrmsle=0.6), MonitorPolicy()) == []


@pytest.mark.parametrize(
    ("window", "kind"),
    [
        (summary(drift_share=0.35), "drift"),
        (summary(nwrmsle=0.61), "quality"),
        (summary(error_rate=0.06), "errors"),
        (summary(p99_ms=300.0), "latency"),
    ],
)
def test_each_bound_breaches_on_its_own(window: Summary, kind: str) -> None:
    [breach] = monitor.breaches(window, MonitorPolicy())
    assert breach.startswith(kind), breach


def test_quality_needs_enough_rows_with_actuals() -> None:
    assert monitor.breaches(summary(nwrmsle=5.0, rows=99), MonitorPolicy()) == []


def test_skew_breaches_when_serving_differs_from_batch() -> None:
    skewed = summary()
    skewed.skew = {"max": 1e-3, "mean": 1e-4, "rows": 500}
    assert [b.split(":")[0] for b in monitor.breaches(skewed, MonitorPolicy())] == ["skew"]


# --- windows of real traffic ----------------------------------------------------------------

SEEDS = [7, 11, 23, 31, 47]
DAYS = 6  # two 3-day monitoring windows per world
TOKEN = "monitor-test"


@dataclass
class World:
    seed: int
    workdir: Path
    cutoff: date
    sales: pd.DataFrame  # the world's daily sales (unit_sales, onpromotion) by store and item


def _train(seed: int, root: Path) -> tuple[subprocess.Popen[str], World]:
    """Start `cd4ml run` on a no-shift sample world of `seed`, on data up to its cutoff."""
    from cd4ml.monitoring.simulate import Scenario, make_world

    workdir = root / f"seed{seed}"
    cutoff, _ = make_world(workdir / "world", Scenario(seed=seed, days=DAYS, shift_factor=1.0))
    overrides = [
        f"data.source={workdir / 'world'}",
        f"data.until={cutoff}",
        "split.horizon=7",
        "split.train_origins=16",
        "split.origin_stride=3",
        "gates.max_nwrmsle=1.5",
        "gates.slice_tolerance=0.5",
        # 16 origins 3 days apart reach back into the world's Christmas at earlier folds; these
        # tests are about monitoring, the gates on a backtest are tested in test_backtest/test_gates
        "backtest.folds=1",
    ]
    command = [str(Path(sys.executable).parent / "cd4ml"), "run", "--workdir", str(workdir)]
    command += [arg for item in overrides for arg in ("--set", item)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sales = pd.read_csv(workdir / "world" / "train.csv", dtype={"onpromotion": "object"})
    sales["onpromotion"] = sales["onpromotion"].map({"True": 1.0, "False": 0.0}).fillna(0.0)
    return process, World(seed, workdir, cutoff, sales)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, World]:
    """One trained work directory per seed (trained two at a time, as there are two cores)."""
    root = tmp_path_factory.mktemp("worlds")
    trained: dict[int, World] = {}
    for pair in (SEEDS[i : i + 2] for i in range(0, len(SEEDS), 2)):
        started = [_train(seed, root) for seed in pair]
        for process, world in started:
            output, _ = process.communicate(timeout=900)
            assert process.returncode == 0, output[-3000:]
            trained[world.seed] = world
    return trained


def serve(world: World, workdir: Path, sales: pd.DataFrame) -> list[float]:
    """Serve DAYS days through the gateway with `sales` as feedback; each day's start time."""
    from cd4ml.monitoring.simulate import serve_day
    from cd4ml.serving.app import create_app
    from cd4ml.serving.settings import GatewaySettings

    series = pd.read_parquet(workdir / "models" / "bundle" / "series.parquet")
    starts = []
    settings = GatewaySettings(workdir=workdir, poll_seconds=0, admin_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        gateway = type("Gateway", (), {"client": client})()
        for n in range(1, DAYS + 1):
            starts.append(time.time())
            assert (
                serve_day(
                    gateway,
                    sales,
                    series[["store_nbr", "item_nbr"]],
                    world.cutoff + timedelta(days=n),
                )
                > 0
            )
            advance = client.post(
                "/admin/origin",
                json={"complete_through": (world.cutoff + timedelta(days=n)).isoformat()},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert advance.status_code == 200, advance.text  # the day's actuals are all in: the origin moves
    starts.append(time.time())  # leaving the client flushed the prediction log
    return starts


def windows(workdir: Path, starts: list[float]) -> list[Summary]:
    """The two 3-day windows, monitored as `cd4ml monitor` does (default policy)."""
    from cd4ml.monitoring.loop import Workspace, monitor_window

    ws = Workspace(workdir, f"sqlite:///{workdir / 'predictions.db'}", f"sqlite:///{workdir / 'feedback.db'}")
    return [monitor_window(ws, starts[k], starts[k + 3], Policy()) for k in (0, 3)]


def dropped(world: World, factor: float, from_day: int) -> pd.DataFrame:
    """The world's sales with every series' demand times `factor` from simulated day `from_day`."""
    sales = world.sales.copy()
    after = pd.to_datetime(sales["date"]) >= pd.Timestamp(world.cutoff + timedelta(days=from_day))
    sales.loc[after, "unit_sales"] = (sales.loc[after, "unit_sales"] * factor).round(3)
    return sales


@pytest.fixture(scope="module")
def unchanged(worlds: dict[int, World]) -> dict[int, list[Summary]]:
    """Each world served as it is: the live data comes from the distribution trained on."""
    return {seed: windows(w.workdir, serve(w, w.workdir, w.sales)) for seed, w in worlds.items()}


@pytest.mark.integration
def test_a_demand_drop_is_detected_as_drift_and_decay(
    worlds: dict[int, World], unchanged: dict[int, list[Summary]], tmp_path: Path, run_cd4ml
) -> None:
    """Same model, same days, same requests as an unchanged world; only the sales differ."""
    world = worlds[SEEDS[0]]
    workdir = tmp_path / "dropped"
    shutil.copytree(
        world.workdir,
        workdir,
        ignore=shutil.ignore_patterns("predictions.db*", "feedback.db*", "reports"),
    )
    _, late = windows(workdir, serve(world, workdir, dropped(world, 0.1, from_day=1)))
    baseline = unchanged[world.seed][1]

    # the short-window state moved beyond doubt; long windows and weekday profiles not yet
    for column in ("lmean_7", "lstd_7"):
        assert late.drift["columns"][column]["score"] < 1e-6, late.drift["columns"][column]
        assert column in late.drift["drifted"]
    assert late.drift["share"] > baseline.drift["share"]
    [live] = late.quality["by_version"]
    assert live["nwrmsle"] > 1.2 * late.reference["holdout_nwrmsle"]
    assert live["bias"] > 1.0  # forecasts now far above the sales
    assert any(b.startswith("quality") for b in late.breaches), late.breaches
    assert late.skew["max"] <= MonitorPolicy().max_skew  # the world moved, serving did not
    reports = workdir / "reports" / "monitor"
    assert json.loads((reports / "summary.json").read_text())["breaches"] == late.breaches
    gauges = (reports / "monitor.prom").read_text()
    assert f"cd4ml_monitor_breaches {len(late.breaches)}" in gauges

    done = run_cd4ml("monitor", "--workdir", str(workdir))
    assert done.returncode == 4, done.stdout + done.stderr
    assert "breach: quality" in done.stderr


@pytest.mark.integration
def test_false_alarm_rate_without_drift(unchanged: dict[int, list[Summary]]) -> None:
    """Share of windows of unchanged worlds that breach the default policy (measured, printed)."""
    lines, alarms = [], 0
    for seed, summaries in unchanged.items():
        for n, window in enumerate(summaries):
            alarms += bool(window.breaches)
            [live] = window.quality["by_version"]
            lines.append(
                f"seed {seed} window {n + 1}: drift {window.drift['share']:.0%} "
                f"({', '.join(window.drift['drifted'])}), NWRMSLE {live['nwrmsle']:.3f} "
                f"vs holdout {window.reference['holdout_nwrmsle']:.3f}; "
                f"breaches: {'; '.join(window.breaches) or 'none'}"
            )
            assert window.skew["max"] <= MonitorPolicy().max_skew
    total = sum(len(s) for s in unchanged.values())
    print("\n".join(lines))
    print(f"false alarms: {alarms} of {total} windows ({alarms / total:.0%})")
    assert alarms <= total // 5, "\n".join(lines)
