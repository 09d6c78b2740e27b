"""`cd4ml simulate`: the closed loop reacts to a changed world in the right order.

Both scenarios run at once, each in its own process (training, a gateway subprocess, monitoring
and the controller are all real); the test reads the timeline each one wrote.

- shift: after the demand drop, drift or quality decay is detected, the model is retrained,
  the challenger is canaried, and the canary ends in a promotion or is stopped;
- bad-release: the retrained model is weak and released at once; the next controller cycle
  rolls it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from cd4ml.monitoring.simulate import Day, Scenario, timeline_events

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("simulate")]

SHIFT = Scenario(kind="shift", days=11, shift_day=2)
BAD_RELEASE = Scenario(kind="bad-release", days=9, shift_day=2)
RUN = (
    "import json, sys; from pathlib import Path; "
    "from cd4ml.monitoring.simulate import Scenario, simulate; "
    "simulate(Path(sys.argv[1]), Scenario(**json.loads(sys.argv[2])))"
)


@pytest.fixture(scope="module")
def timelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Day]]]:
    """scenario kind → (work directory, timeline), both simulated concurrently."""
    root = tmp_path_factory.mktemp("simulate")
    running = {}
    for scenario in (SHIFT, BAD_RELEASE):
        workdir = root / scenario.kind
        command = [sys.executable, "-c", RUN, str(workdir), json.dumps(asdict(scenario))]
        running[scenario.kind] = (
            workdir,
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        )
    found = {}
    for kind, (workdir, process) in running.items():
        output, _ = process.communicate(timeout=900)
        print(f"--- {kind}\n{output}")
        assert process.returncode == 0, output[-4000:]
        written = json.loads((workdir / "reports" / "simulation" / "timeline.json").read_text())
        found[kind] = (workdir, [Day(**day) for day in written["days"]])
    return found


def first(events: list[tuple[int, str]], kinds: set[str], after: int = 0) -> int:
    """Index of the first event of one of `kinds` at or after index `after`."""
    for index in range(after, len(events)):
        if events[index][1] in kinds:
            return index
    raise AssertionError(f"no {' or '.join(sorted(kinds))} after event {after}: {events}")


def test_a_demand_shift_is_detected_retrained_canaried_and_decided(timelines) -> None:
    workdir, timeline = timelines["shift"]
    events = timeline_events(timeline)
    detected = first(events, {"drift", "quality"})
    assert events[detected][0] >= SHIFT.shift_day, f"alarm before the shift: {events}"
    retrained = first(events, {"retrain"}, detected)
    canary = first(events, {"start_canary"}, retrained)
    decided = first(events, {"promote", "end_canary"}, canary)
    assert events[retrained][0] < events[canary][0] < events[decided][0]
    assert "rollback" not in {kind for _, kind in events[:decided]}

    day = {d.day: d for d in timeline}
    canary_day = events[canary][0]
    assert set(day[canary_day + 1].traffic) == {"champion", "challenger"}  # both arms served
    if events[decided][1] == "promote":
        assert day[events[decided][0]].champion == "2"
    for name in ("timeline.json", "report.html", "simulation.png"):
        assert (workdir / "reports" / "simulation" / name).stat().st_size > 0


def test_a_bad_release_is_rolled_back_in_the_next_cycle(timelines) -> None:
    _, timeline = timelines["bad-release"]
    events = timeline_events(timeline)
    retrained = first(events, {"retrain"})
    promoted = first(events, {"promote"}, retrained)
    rolled_back = first(events, {"rollback"}, promoted)
    assert events[rolled_back][0] == events[promoted][0] + 1, events

    day = {d.day: d for d in timeline}
    assert day[events[promoted][0]].champion == "2"
    assert day[events[rolled_back][0]].champion == "1"
    [reason] = [a for a in day[events[rolled_back][0]].actions if a.startswith("rollback")]
    assert "worse than what it replaced" in reason
