"""Holidays as a table of (date, locale, name): locale '' is national, else a city or region."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from cd4ml.data.download import fetch, is_url
from cd4ml.data.spec import DatasetSpec
from cd4ml.data.validation import DataValidationError, Problem

NATIONAL = ""
# Favorita event types that close or change shopping; 'Work Day' makes up a bridge day.
HOLIDAY_TYPES = {"Holiday", "Transfer", "Additional", "Bridge", "Event"}
EMPTY = pd.DataFrame({"date": pd.Series(dtype="datetime64[ns]"), "locale": pd.Series(dtype=str), "name": pd.Series(dtype=str)})


def holidays_table(spec: DatasetSpec, cache_dir: Path, first: str, last: str) -> pd.DataFrame:
    """Holidays spanning the data plus a year ahead, so future dates can be served."""
    if spec.holidays is None:
        return EMPTY.copy()
    if spec.holidays.events_file:
        location = spec.resolve(spec.holidays.events_file)
        path = fetch(location, cache_dir) if is_url(location) else Path(location)
        return favorita_events(path)
    years = range(date.fromisoformat(first).year, date.fromisoformat(last).year + 2)
    return country_holidays(spec.holidays.country or "", years)


def favorita_events(path: Path) -> pd.DataFrame:
    """Read holidays_events.csv: transferred holidays are not days off, their Transfer rows are."""
    if not path.exists():
        raise DataValidationError([Problem(str(path), "-", "holidays file exists", 1)])
    events = pd.read_csv(path, dtype=str)
    needed = ["date", "type", "locale", "locale_name", "description", "transferred"]
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise DataValidationError([Problem(str(path), ", ".join(missing), "column present", 1)])
    off = events[events["type"].isin(HOLIDAY_TYPES) & (events["transferred"].str.lower() != "true")]
    locale = off["locale_name"].where(off["locale"] != "National", NATIONAL)
    return pd.DataFrame(
        {"date": pd.to_datetime(off["date"]), "locale": locale.values, "name": off["description"].values}
    ).drop_duplicates(["date", "locale"]).reset_index(drop=True)


def country_holidays(country: str, years: range) -> pd.DataFrame:
    import holidays

    try:
        calendar = holidays.country_holidays(country, years=list(years))
    except NotImplementedError as exc:
        raise DataValidationError([Problem("dataset spec", "holidays.country", f"known country code ({exc})", 1)]) from exc
    rows = sorted(calendar.items())
    return pd.DataFrame(
        {"date": pd.to_datetime([d for d, _ in rows]), "locale": NATIONAL, "name": [n for _, n in rows]}
    ) if rows else EMPTY.copy()
