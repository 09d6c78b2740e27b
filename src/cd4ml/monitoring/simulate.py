"""`cd4ml simulate`: the whole loop on sample data, day by day, through the real gateway.

Each simulated day: every store asks the gateway for that day's forecasts over HTTP, the day's
actual sales come back as feedback, the gateway moves its forecast origin, `monitor` reads the
last days of the log, and the controller acts. From `shift_day` a family's demand drops (the
world changes); in the `bad-release` scenario the retrained model is deliberately weak and is
released at once, so the controller must roll it back.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import httpx
import pandas as pd

from cd4ml.data.sample import SampleConfig, write_sample
from cd4ml.monitoring import controller
from cd4ml.monitoring.loop import Workspace, control, monitor_window

WEAK_MODEL = [
    "model.lightgbm.n_estimators=3",
    "model.lightgbm.num_leaves=4",
    "features.windows=[7]",
    "gates.max_nwrmsle=10",
    "gates.min_r2=-100",
    "gates.min_gain_over_baseline=-10",
    "gates.champion_tolerance=10",
    "gates.slice_tolerance=100",
]


@dataclass
class Scenario:
    kind: Literal["shift", "bad-release"] = "shift"
    days: int = 30
    history_days: int = 420
    stores: int = 5
    items: int = 20
    seed: int = 7
    shift_day: int = 4  # simulated day the demand shift starts
    shift_family: str = "GROCERY I"  # the largest family: its drop moves the overall error
    shift_factor: float = 0.1  # demand of the family drops by 90%: unmistakable in the error
    window_days: int = 3  # days of log each monitoring window reads
    horizon: int = 7


@dataclass
class Day:
    day: int
    date: str
    requests: int
    nwrmsle: dict[str, float] = field(default_factory=dict)  # arm → NWRMSLE in the window
    traffic: dict[str, int] = field(default_factory=dict)
    drift_share: float | None = None
    breaches: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    champion: str | None = None


def make_world(folder: Path, scenario: Scenario) -> tuple[date, date]:
    """Sample data covering history + simulated days, with the shift applied; (cutoff, shift date)."""
    config = SampleConfig(
        stores=scenario.stores, items=scenario.items, days=scenario.history_days + scenario.days, seed=scenario.seed
    )
    write_sample(folder, config)
    cutoff = config.start + timedelta(days=scenario.history_days - 1)
    shift = cutoff + timedelta(days=scenario.shift_day)
    train = pd.read_csv(folder / "train.csv")
    items = pd.read_csv(folder / "items.csv")
    shifted = train["item_nbr"].isin(items.loc[items["family"] == scenario.shift_family, "item_nbr"]) & (
        pd.to_datetime(train["date"]) >= pd.Timestamp(shift)
    )
    train.loc[shifted, "unit_sales"] = (train.loc[shifted, "unit_sales"] * scenario.shift_factor).round(3)
    train.to_csv(folder / "train.csv", index=False)
    return cutoff, shift


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cd4ml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "cd4ml"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


class Gateway:
    """`cd4ml serve` in a subprocess, for the length of a simulation."""

    def __init__(self, workdir: Path, token: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        env = os.environ | {"CD4ML_ADMIN_TOKEN": token}
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "cd4ml"),
                "serve",
                "--workdir",
                str(workdir),
                "--port",
                port,
                "--poll",
                "1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        self.token = token
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.process.stderr.read()[-2000:]}")
            try:
                if self.client.get("/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("gateway did not become ready in 120 s")

    def reload(self) -> None:
        self.client.post("/admin/reload", headers={"Authorization": f"Bearer {self.token}"}).raise_for_status()

    def advance(self, day: date) -> None:
        """The day's actuals are all in: the gateway forecasts from it."""
        self.client.post(
            "/admin/origin",
            json={"complete_through": day.isoformat()},
            headers={"Authorization": f"Bearer {self.token}"},
        ).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def serve_day(gateway: Gateway, world: pd.DataFrame, series: pd.DataFrame, day: date) -> int:
    """Every store asks for the day's forecasts; the day's actual sales come back as feedback."""
    actual = world[world["date"] == day.isoformat()].set_index(["store_nbr", "item_nbr"])
    sent = 0
    for store, items in series.groupby("store_nbr"):
        keys = list(zip(items["store_nbr"], items["item_nbr"], strict=True))
        rows = [
            {
                "store_nbr": int(s),
                "item_nbr": int(i),
                "date": day.isoformat(),
                "onpromotion": float(actual["onpromotion"].get((s, i), 0) or 0),
            }
            for s, i in keys
        ]
        response = gateway.client.post("/predict", json={"rows": rows}, headers={"X-Client-Id": f"store-{store}"})
        response.raise_for_status()
        sales = [float(actual["unit_sales"].get(key, 0.0)) for key in keys]
        gateway.client.post(
            "/feedback", json={"request_id": response.json()["request_id"], "actual": sales}
        ).raise_for_status()
        sent += 1
    return sent


def simulate(workdir: Path, scenario: Scenario, progress=print) -> list[Day]:
    """Run the scenario; writes reports/simulation/{timeline.json, report.html, *.png}."""
    workdir = workdir.resolve()
    world_dir = workdir / "world"
    cutoff, shift = make_world(world_dir, scenario)
    # A holdout straddling the shift makes absolute bounds (R² on raw sales above all) meaningless;
    # the relative gates — beat seasonal naive, not worse than the re-scored champion — decide.
    base = [
        f"data.source={world_dir}",
        f"split.horizon={scenario.horizon}",
        "split.train_origins=16",
        "split.origin_stride=3",
        "gates.max_nwrmsle=1.5",
        "gates.min_r2=-100",
        "gates.slice_tolerance=0.5",
    ]
    settings = [arg for item in [*base, f"data.until={cutoff}"] for arg in ("--set", item)]
    first = cd4ml("run", "--workdir", str(workdir), *settings)
    if first.returncode != 0:
        raise RuntimeError(f"initial training failed:\n{first.stderr[-3000:]}")
    progress(f"day 0 ({cutoff}): v1 trained on data up to {cutoff} and serving; shift on {shift}")
    # a canary arm gets whole stores (sticky by X-Client-Id): starting at half of them and
    # judging on 40 rows lets a 3-day window hold enough evidence for each arm
    policy = controller.Policy(
        controller=controller.ControllerPolicy(
            release="immediate" if scenario.kind == "bad-release" else "canary",
            canary_start=0.5,
            min_rows=40,
            retrain_after=2,
        )
    )
    world = pd.read_csv(world_dir / "train.csv", dtype={"onpromotion": "object"})
    world["onpromotion"] = world["onpromotion"].map({"True": 1.0, "False": 0.0}).fillna(0.0)
    token = secrets.token_hex(16)
    gateway = Gateway(workdir, token)
    ws = Workspace(
        workdir, f"sqlite:///{workdir / 'predictions.db'}", f"sqlite:///{workdir / 'feedback.db'}", gateway.url, token
    )
    series = pd.read_parquet(workdir / "models" / "bundle" / "series.parquet")[["store_nbr", "item_nbr"]]
    started: dict[int, float] = {}
    timeline: list[Day] = []
    try:
        for n in range(1, scenario.days + 1):
            day = cutoff + timedelta(days=n)
            started[n] = time.time()
            sent = serve_day(gateway, world, series, day)
            gateway.advance(day)  # the day's actuals are all in: the forecast origin moves
            since = started[max(1, n - scenario.window_days + 1)]
            summary = monitor_window(ws, since, None, policy)
            overrides = [*base, f"data.until={day}", *(WEAK_MODEL if scenario.kind == "bad-release" else [])]
            actions = control(ws, summary, policy, dry_run=False, retrain_overrides=overrides)
            record = Day(
                n,
                day.isoformat(),
                sent,
                breaches=summary.breaches,
                drift_share=summary.drift["share"] if summary.drift else None,
                actions=[f"{a.kind}: {a.reason}" for a in actions],
                champion=ws.registry.alias("champion"),
            )
            for q in summary.quality.get("by_day", []):
                if q["day"] == day.isoformat():
                    record.nwrmsle[q["arm"]] = q["nwrmsle"]
            record.traffic = summary.operations.get("by_arm", {})
            timeline.append(record)
            progress(line(record))
            if actions:
                gateway.reload()
    finally:
        gateway.stop()
    write_report(workdir / "reports" / "simulation", timeline, scenario, shift)
    return timeline


def line(d: Day) -> str:
    errors = ", ".join(f"{arm} {v:.3f}" for arm, v in d.nwrmsle.items())
    drift = f"drift {d.drift_share:.0%}" if d.drift_share is not None else "drift -"
    events = " | ".join(d.actions) or (
        "breach: " + "; ".join(b.split(":")[0] for b in d.breaches) if d.breaches else ""
    )
    return f"day {d.day:>2} {d.date} champion v{d.champion} NWRMSLE[{errors}] {drift} {events}"


def write_report(folder: Path, timeline: list[Day], scenario: Scenario, shift: date) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timeline.json").write_text(
        json.dumps(
            {"scenario": asdict(scenario), "shift": shift.isoformat(), "days": [asdict(d) for d in timeline]}, indent=2
        )
    )
    frame = pd.DataFrame([asdict(d) for d in timeline])
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    errors = pd.DataFrame(list(frame["nwrmsle"])).set_index(frame["day"])
    errors.plot(ax=axes[0], marker="o", title="daily NWRMSLE per arm")
    pd.DataFrame(list(frame["traffic"])).set_index(frame["day"]).fillna(0).plot.area(
        ax=axes[1], title="requests per arm in the monitoring window"
    )
    axes[2].plot(frame["day"], frame["drift_share"], marker="o")
    axes[2].set_title("share of drifted columns")
    for ax in axes:
        ax.axvline(scenario.shift_day, color="red", linestyle="--", linewidth=1)
        for day, actions in zip(frame["day"], frame["actions"], strict=True):
            if actions:
                ax.axvline(day, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(folder / "simulation.png", dpi=80)
    plt.close(fig)
    rows = "".join(
        f"<tr><td>{d.day}</td><td>{d.date}</td><td>v{d.champion}</td><td>{line(d)}</td></tr>" for d in timeline
    )
    (folder / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>cd4ml simulation</title><h1>Simulation: {scenario.kind}</h1>"
        f"<p>shift: {scenario.shift_family} × {scenario.shift_factor} from {shift}</p>"
        f"<img src='simulation.png'><table>{rows}</table>"
    )


def timeline_events(timeline: list[Day]) -> list[tuple[int, str]]:
    """(day, kind) of each controller action and of the first drift / quality breach."""
    events: list[tuple[int, str]] = []
    for d in timeline:
        for kind in ("drift", "quality"):
            if any(b.startswith(kind) for b in d.breaches) and kind not in {k for _, k in events}:
                events.append((d.day, kind))
        events += [(d.day, a.split(":")[0]) for a in d.actions]
    return events
