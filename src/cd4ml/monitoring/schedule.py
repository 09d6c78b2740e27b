"""`cd4ml control --every 1h`: the monitor → control cycle on a schedule, one at a time.

A controller acting twice on the same work directory (a loop and a cron job, or two loops) would
step a canary twice or retrain twice, so every cycle holds an exclusive lock on the work
directory. The lock is `flock` on a file: the kernel releases it when the holder exits, however
it exits, so a killed loop leaves no stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class ControllerBusy(RuntimeError):
    """Another controller holds the work directory's lock; the message names it."""


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90s, 30m, 1h, 1h30m or 1d; ValueError naming the text otherwise."""
    parts = DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, e.g. 90s, 30m, 1h, 1h30m, 1d")
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if seconds < 1:
        raise ValueError(f"{text!r}: the interval must be at least one second")
    return seconds


def lock_path(workdir: Path) -> Path:
    return workdir / "reports" / "controller" / "control.lock"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the controller lock at `path`, or raise ControllerBusy naming the process that has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ControllerBusy(
                f"another controller (pid {holder}) is acting on this work directory ({path}); "
                "it releases the lock when it stops"
            ) from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or Ctrl-C (the cycle under way finishes; the wait for the
    next one ends at once); a second signal gets the default behaviour, so it stops at once."""
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(number: int, frame) -> None:
        stop.set()
        for s, handler in previous.items():
            signal.signal(s, handler)

    for s in previous:
        signal.signal(s, handle)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_every(seconds: float, cycle: Callable[[], None], stop: threading.Event) -> int:
    """Run `cycle` now and then every `seconds` until `stop` is set; the number of cycles run."""
    cycles = 0
    while not stop.is_set():
        cycle()
        cycles += 1
        stop.wait(seconds)
    return cycles
