"""Data validation errors that stop the pipeline, and the report they leave behind."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

EXIT_INVALID_DATA = 2
MAX_EXAMPLES = 5
FIRST_DATA_LINE = 2  # a CSV's first data row is line 2, after the header


def csv_lines(index: pd.Index) -> list[int]:
    """File line numbers of the first few rows of a data frame read from a CSV with a header."""
    return [int(i) + FIRST_DATA_LINE for i in index[:MAX_EXAMPLES]]


@dataclass
class Problem:
    """One failed check: where (file, column), what (check) and a few offending rows."""

    file: str
    column: str
    check: str
    failures: int
    examples: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        rows = "; ".join(", ".join(f"{k}={v}" for k, v in example.items()) for example in self.examples)
        where = f"{self.file}: column '{self.column}' failed check '{self.check}'"
        return f"{where} in {self.failures} row(s), e.g. {rows}" if rows else where


class DataValidationError(Exception):
    """Input data failed validation; nothing downstream may run."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.describe() for p in problems))


def problems_from_pandera(
    failure_cases: pd.DataFrame, raw: pd.DataFrame, file: str, line_offset: int = FIRST_DATA_LINE
) -> list[Problem]:
    """Group pandera's failure cases by column and check; rows are shown as CSV line numbers.

    `line_offset` turns a 0-based data-frame index into a 1-based file line (header included).
    """
    problems = []
    for (column, check), cases in failure_cases.groupby(["column", "check"], dropna=False):
        examples = []
        for index in cases["index"].dropna().head(MAX_EXAMPLES):
            row = raw.loc[int(index)] if int(index) in raw.index else None
            example: dict[str, Any] = {"line": int(index) + line_offset}
            if row is not None and column in row:
                example[str(column)] = row[column]
            examples.append(example)
        problems.append(
            Problem(
                file=file,
                column=str(column),
                check=str(check),
                failures=len(cases),
                examples=examples,
            )
        )
    return problems


def write_report(path: Path, status: str, checks: list[dict[str, Any]], problems: list[Problem]) -> None:
    """The validation report artifact: every check run, and every problem found."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"status": status, "checks": checks, "problems": [asdict(p) for p in problems]}
    path.write_text(json.dumps(report, indent=2, default=str))
