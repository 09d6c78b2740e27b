"""Batch prediction: score a CSV of rows with a bundle, chunk by chunk, through the serving path."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cd4ml.scoring import InputError, Scorer

CHUNK_ROWS = 250_000


@dataclass
class BatchResult:
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def predict_file(
    scorer: Scorer, source: Path, target: Path, progress: Callable[[int], None] | None = None
) -> BatchResult:
    """Write every input row with a `prediction` column; a bad row stops the job naming its line."""
    started, done = time.perf_counter(), 0
    keys = {k: str for k in scorer.spec.series_keys if scorer.attributes.index.get_level_values(k).dtype == object}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    try:
        for number, chunk in enumerate(pd.read_csv(source, chunksize=CHUNK_ROWS, dtype=keys)):
            try:
                rows = scorer.validate(chunk)
            except InputError as exc:
                lines = [(done + r + 2, f, why) for r, f, why in exc.problems]
                raise InputError(lines, unit=f"{source.name} line") from None
            chunk["prediction"] = scorer.predictor.predict_features(scorer.features(rows))
            chunk.to_csv(partial, mode="w" if number == 0 else "a", header=number == 0, index=False)
            done += len(chunk)
            if progress:
                progress(len(chunk))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return BatchResult(done, time.perf_counter() - started)
