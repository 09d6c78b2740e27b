"""The prediction log: records are queued on the request path and written by a background thread.

The queue is bounded: when it is full a record is counted as dropped instead of blocking a
request. Closing the logger flushes everything still queued.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from cd4ml.monitoring.sinks import Sink

log = logging.getLogger("cd4ml.predictionlog")
BATCH = 500  # records per write; a full batch wakes the writer
INTERVAL = 0.2  # seconds between writes otherwise


class PredictionLogger:
    def __init__(self, sink: Sink, capacity: int = 10_000, on_drop: Callable[[int], object] | None = None):
        self.sink, self.capacity = sink, capacity
        self.dropped = 0
        self.written = 0
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def log(self, record: dict[str, Any]) -> bool:
        """Queue a record; False (and counted) when the queue is full. Never blocks."""
        if len(self._queue) >= self.capacity or self._closing:
            self._count_dropped(1)
            return False
        self._queue.append(record)
        if len(self._queue) >= BATCH:
            self._wake.set()
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=INTERVAL)
            self._wake.clear()
            self._drain(len(self._queue))
            if self._closing and not self._queue:
                return

    def _drain(self, count: int) -> None:
        """Write the `count` oldest records, BATCH at a time. Records that arrive meanwhile wait
        for the next wake-up: draining until empty wrote about a dozen records per transaction
        under load."""
        while count > 0:
            batch = [self._queue.popleft() for _ in range(min(BATCH, count))]
            count -= len(batch)
            try:
                self.sink.write(batch)
                self.written += len(batch)
            except Exception:  # a sink outage must not kill the writer; the batch is counted
                log.exception("prediction log sink failed; %d records lost", len(batch))
                self._count_dropped(len(batch))

    def _count_dropped(self, records: int) -> None:
        """Queue-full drops and records a failing sink lost: both reach `on_drop` (the metric)."""
        self.dropped += records
        if self._on_drop:
            self._on_drop(records)

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then close the sink."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        self.sink.close()
