"""Dates as sales files write them, and holidays as a table of (date, locale, name).

Holiday locale '' is national, else a city or region.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from cd4ml.data.download import fetch, is_url
from cd4ml.data.spec import DatasetSpec
from cd4ml.data.validation import DataValidationError, Problem, csv_lines

ISO_DATE = "%Y-%m-%d"
KNOWN_DATE_FORMATS = [
    ISO_DATE, "%Y/%m/%d", "%Y%m%d", "%m/%d/%Y", "%m/%d/%y", "%d/%m/%Y", "%d/%m/%y",
    "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y",
]  # fmt: skip
NATIONAL = ""
# Favorita event types that close or change shopping; 'Work Day' makes up a bridge day.
HOLIDAY_TYPES = {"Holiday", "Transfer", "Additional", "Bridge", "Event"}
EVENT_COLUMNS = ["date", "type", "locale", "locale_name", "description", "transferred"]
EMPTY = pd.DataFrame(
    {
        "date": pd.Series(dtype="datetime64[ns]"),
        "locale": pd.Series(dtype=str),
        "name": pd.Series(dtype=str),
    }
)


def detect_date_format(values: pd.Series, file: str, column: str) -> str:
    """The known format that parses the most dates; values it cannot parse fail row checks.

    A tie means day and month cannot be told apart (no day above 12), which only the user can
    settle, so it is an error rather than a guess.
    """
    sample = values.dropna().drop_duplicates().head(5000)
    parsed = {f: int(pd.to_datetime(sample, format=f, errors="coerce").notna().sum()) for f in KNOWN_DATE_FORMATS}
    best = max(parsed.values())
    fitting = [f for f, count in parsed.items() if count == best]
    if best and len(fitting) == 1:
        return fitting[0]
    if best:
        check = f"unambiguous date format, fits {' and '.join(fitting)}: set date_format"
    else:
        check = "date in a known format (set date_format in a dataset spec)"
    examples = [{"line": line, column: value} for line, value in zip(csv_lines(sample.index[:3]), sample, strict=False)]
    raise DataValidationError([Problem(file, column, check, len(sample), examples)])


def holidays_table(spec: DatasetSpec, cache_dir: Path, first: str, last: str) -> pd.DataFrame:
    """Holidays spanning the data plus a year ahead, so future dates can be served."""
    if spec.holidays is None:
        return EMPTY.copy()
    if spec.holidays.events_file:
        location = spec.resolve(spec.holidays.events_file)
        return favorita_events(fetch(location, cache_dir) if is_url(location) else Path(location))
    years = range(date.fromisoformat(first).year, date.fromisoformat(last).year + 2)
    return country_holidays(str(spec.holidays.country), years)


def favorita_events(path: Path) -> pd.DataFrame:
    """Read holidays_events.csv: transferred holidays are not days off, their Transfer rows are."""
    if not path.exists():
        raise DataValidationError([Problem(str(path), "-", "holidays file exists", 1)])
    events = pd.read_csv(path, dtype=str)
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise DataValidationError([Problem(str(path), ", ".join(missing), "column present", 1)])
    dates = pd.to_datetime(events["date"], format=ISO_DATE, errors="coerce")
    bad = events.index[dates.isna()]
    if len(bad):
        examples = [{"line": line, "date": events.at[i, "date"]} for line, i in zip(csv_lines(bad), bad, strict=False)]
        raise DataValidationError([Problem(str(path), "date", f"date format {ISO_DATE}", len(bad), examples)])
    off = events["type"].isin(HOLIDAY_TYPES) & (events["transferred"].str.lower() != "true")
    locale = events["locale_name"].where(events["locale"] != "National", NATIONAL)
    return (
        pd.DataFrame({"date": dates[off], "locale": locale[off], "name": events["description"][off]})
        .drop_duplicates(["date", "locale"])
        .reset_index(drop=True)
    )


def country_holidays(country: str, years: range) -> pd.DataFrame:
    """Public holidays of a country the spec has already checked is known."""
    import holidays

    rows = sorted(holidays.country_holidays(country, years=list(years)).items())
    if not rows:
        return EMPTY.copy()
    dates, names = zip(*rows, strict=True)
    return pd.DataFrame({"date": pd.to_datetime(dates), "locale": NATIONAL, "name": names})
