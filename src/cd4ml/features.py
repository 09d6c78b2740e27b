"""The one feature definition, shared by training, batch scoring and the gateway.

A target row is a series at a period `t`, forecast from an origin `o` (the last period whose
sales are known); horizon `h = t - o` periods. Its features are
- the series *state* at the origin — rolling log-means, zero shares, weekday profiles, the last
  season of values, and the mean level of every group the series is in (its store, its family,
  …, all series) — computed in DuckDB from history at or before `o` only (so training runs out
  of core and no feature can see the future), and
- *row* features of the target — calendar, paydays, holidays and the periods to the next and
  since the last, horizon, known covariates and encoded attributes — computed in pandas, cheap
  enough for a single request.
One global model forecasts every horizon directly (no recursion, so no compounding error).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import duckdb
import numpy as np
import pandas as pd
from pydantic import BaseModel

from cd4ml.calendar_features import calendar_features
from cd4ml.sql import quote_ident, quote_idents

MISSING_CODE = -1


class FeatureSpec(BaseModel):
    """Everything needed to compute features identically anywhere; ships in the model bundle."""

    series_keys: list[str]
    covariates: list[str]
    attributes: list[str]
    local_columns: list[str]
    frequency: str
    period_days: int
    season_length: int
    anchor_weekday: int  # weekday every period ends on (daily data: any)
    horizon: int
    windows: list[int]
    weekday_weeks: list[int]
    categories: dict[str, list[str]]  # category → code by position; unseen values get -1
    lags: int = 0  # the last `lags` periods before the origin, each a feature
    groups: list[str] = []  # columns whose groups' levels are features; "" is all series
    holiday_distance: bool = False

    @property
    def group_stats(self) -> list[str]:
        """The state columns averaged per group: the shortest and the longest window's level."""
        return list(dict.fromkeys([f"lmean_{self.windows[0]}", f"lmean_{self.windows[-1]}"]))

    @property
    def group_columns(self) -> list[str]:
        return [f"group_{g or 'all'}_{stat}" for g in self.groups for stat in self.group_stats]

    @property
    def state_columns(self) -> list[str]:
        cols = [f"{stat}_{w}" for w in self.windows for stat in ("lmean", "lstd", "zero")]
        cols += [f"{c}_hist" for c in self.covariates]
        if self.frequency == "daily":
            cols += [f"dow{d}_lmean_{w}" for w in self.weekday_weeks for d in range(7)]
        cols += [f"last_{j}" for j in range(self.season_length)]
        return [*cols, "history", "since_sale", *self.group_columns]

    @property
    def columns(self) -> list[str]:
        """Model input columns, in order."""
        row = ["horizon", "dayofweek", "day", "month", "weekofyear", "dayofyear",
               "paydays", "since_payday", "holiday_national", "holiday_local"]  # fmt: skip
        if self.holiday_distance:
            row += ["holiday_next", "holiday_last"]
        picks = ["seasonal_naive_log", *(f"lag_{j}" for j in range(self.lags))]
        if self.frequency == "daily":
            picks += [f"dow_lmean_{w}" for w in self.weekday_weeks]
        encoded = [f"{c}_code" for c in self.categories]
        state = [c for c in self.state_columns if not c.startswith(("dow", "last_"))]
        return [*row, *self.covariates, *encoded, *picks, *state]


def build_feature_spec(
    dataset: dict,
    con: duckdb.DuckDBPyConnection,
    relation: str,
    horizon: int,
    windows: list[int],
    weekday_weeks: list[int],
    lags: int | None = None,
    group_levels: bool = True,
    holiday_distance: bool = True,
) -> FeatureSpec:
    """Learn the category vocabularies and the groups from the canonical table (targets are
    never looked at)."""
    spec = dataset["spec"]
    encoded = [*spec["series_keys"], *dataset["attributes"]]
    categories = {
        column: [
            str(v[0])
            for v in con.execute(
                f"SELECT DISTINCT CAST({quote_ident(column)} AS VARCHAR) FROM {relation} ORDER BY 1"
            ).fetchall()
        ]
        for column in encoded
    }
    anchor = con.execute(f"SELECT isodow(max(date)) - 1 FROM {relation}").fetchone()[0]
    holidays = spec.get("holidays") or {}
    daily = spec["frequency"] == "daily"
    season_length = 7 if daily else 52
    return FeatureSpec(
        series_keys=spec["series_keys"],
        covariates=spec["covariates"],
        attributes=dataset["attributes"],
        local_columns=[c for c in holidays.get("local_columns", []) if c in dataset["attributes"]],
        frequency=spec["frequency"],
        period_days=1 if spec["frequency"] == "daily" else 7,
        season_length=season_length,
        anchor_weekday=int(anchor),
        horizon=horizon,
        windows=windows,
        weekday_weeks=weekday_weeks,
        categories=categories,
        lags=min(season_length, (7 if daily else 4) if lags is None else lags),
        groups=_groups(con, relation, categories, spec["series_keys"]) if group_levels else [],
        holiday_distance=holiday_distance,
    )


def _groups(
    con: duckdb.DuckDBPyConnection, relation: str, categories: dict[str, list[str]], keys: list[str]
) -> list[str]:
    """All series, and each key (of several) or attribute that groups at least 2 series on
    average into at least 2 groups: the levels a store, a family or the whole shop share."""
    series = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {_quoted(keys)} FROM {relation})").fetchone()[0]
    candidates = [*(keys if len(keys) > 1 else []), *(c for c in categories if c not in keys)]
    return ["", *(c for c in candidates if 2 <= len(categories[c]) <= series / 2)]


def _quoted(columns: Iterable[str]) -> str:
    return quote_idents(columns)


ORIGIN = "forecast_origin"  # the origin of each row when rows of several origins are computed at once


def _origins(origins: list[date]) -> str:
    """The origins as a relation with one column, ORIGIN."""
    values = ", ".join(f"(DATE '{o.isoformat()}')" for o in origins)
    return f"(VALUES {values}) AS origins({ORIGIN})"


def state_sql(fs: FeatureSpec, relation: str, origins: list[date]) -> str:
    """SQL for the series state at each origin (column ORIGIN), reading only rows dated at or
    before it; one query for many origins costs little more than one for a single origin."""
    p = fs.period_days
    span = max([*fs.windows, fs.season_length, *(w * 7 // p for w in fs.weekday_weeks)]) * p
    o = f"origins.{ORIGIN}"
    ly = "ln(1 + greatest(sales, 0))"
    parts = []
    for w in fs.windows:
        inside = f"date > {o} - INTERVAL {w * p} DAY"
        parts += [
            f"coalesce(avg({ly}) FILTER (WHERE {inside}), 0) AS lmean_{w}",
            f"coalesce(stddev_pop({ly}) FILTER (WHERE {inside}), 0) AS lstd_{w}",
            f"coalesce(avg(CASE WHEN sales > 0 THEN 0 ELSE 1 END) FILTER (WHERE {inside}), 1) AS zero_{w}",
        ]
    longest = f"date > {o} - INTERVAL {max(fs.windows) * p} DAY"
    parts += [
        f"coalesce(avg({quote_ident(c)}) FILTER (WHERE {longest}), 0) AS {quote_ident(f'{c}_hist')}"
        for c in fs.covariates
    ]
    if fs.frequency == "daily":
        parts += [
            f"coalesce(avg({ly}) FILTER (WHERE date > {o} - INTERVAL {w * 7} DAY "
            f"AND isodow(date) = {d + 1}), 0) AS dow{d}_lmean_{w}"
            for w in fs.weekday_weeks
            for d in range(7)
        ]
    parts += [
        f"coalesce(max(sales) FILTER (WHERE date = {o} - INTERVAL {j * p} DAY), 0) AS last_{j}"
        for j in range(fs.season_length)
    ]
    parts += [
        "count(*) AS history",
        f"coalesce(date_diff('day', max(date) FILTER (WHERE sales > 0), {o}) // {p}, {span // p + 1}) AS since_sale",
    ]
    keys = _quoted(fs.series_keys)
    return (
        f"SELECT {keys}, {o}, {', '.join(parts)} FROM {relation} JOIN {_origins(origins)} "
        f"ON date <= {o} AND date > {o} - INTERVAL {span} DAY GROUP BY {keys}, {o}"
    )


def series_state(
    con: duckdb.DuckDBPyConnection, fs: FeatureSpec, relation: str, origin: date, series: pd.DataFrame
) -> pd.DataFrame:
    """The state of every series with history at one origin; `series`: keys and attributes."""
    state = con.execute(state_sql(fs, relation, [origin])).df()
    return with_group_levels(state, series, fs).drop(columns=ORIGIN)


def with_group_levels(state: pd.DataFrame, series: pd.DataFrame, fs: FeatureSpec) -> pd.DataFrame:
    """The state with, for each group, its series' mean level at the same origin (the series
    with state only; `series` holds the keys and attributes of every series)."""
    if not fs.groups:
        return state
    attributes = [g for g in fs.groups if g and g not in fs.series_keys]
    frame = state.merge(series[[*fs.series_keys, *attributes]], on=fs.series_keys, how="left", validate="many_to_one")
    levels = {}
    for group in fs.groups:
        by = [ORIGIN, *([group] if group else [])]
        means = frame.groupby(by, dropna=False, sort=False)[fs.group_stats].transform("mean")
        levels |= {f"group_{group or 'all'}_{stat}": means[stat].to_numpy() for stat in fs.group_stats}
    return state.assign(**levels)


def encode(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    positions = None
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iu":
        # integer keys: format each distinct value once; str() per row dominates scoring time
        positions, distinct = pd.factorize(values)
        values = pd.Series(distinct)
    codes = pd.Categorical(values.astype(str), categories=vocabulary).codes.astype(np.float32)
    return codes if positions is None else codes[positions]


def row_features(
    targets: pd.DataFrame,
    state: pd.DataFrame,
    origin: date | None,
    holidays: tuple[pd.Series, pd.Series],
    fs: FeatureSpec,
) -> pd.DataFrame:
    """Features of target rows (keys, date, covariates, attributes) forecast from `origin`.

    `state` must hold one row per series of `targets` (see `series_state`); rows of series
    without state get the state of a series with no history. `origin` None: each row's origin
    is its ORIGIN column, and `state` holds one row per series and origin.
    """
    on = fs.series_keys if origin is not None else [*fs.series_keys, ORIGIN]
    frame = targets.merge(state, on=on, how="left", validate="many_to_one")
    dates = pd.to_datetime(frame["date"])
    origins = pd.Timestamp(origin) if origin is not None else pd.to_datetime(frame[ORIGIN])
    out = pd.DataFrame(index=frame.index)
    out["horizon"] = ((dates - origins).dt.days // fs.period_days).astype(np.float32)
    for name, values in calendar_features(dates, frame, holidays, fs).items():
        out[name] = values
    for c in fs.covariates:
        out[c] = frame[c].to_numpy()
    for column, vocabulary in fs.categories.items():
        out[f"{column}_code"] = encode(frame[column], vocabulary)
    lags = (fs.season_length * np.ceil(out["horizon"] / fs.season_length) - out["horizon"]).astype(int)
    last = frame[[f"last_{j}" for j in range(fs.season_length)]].to_numpy(dtype=np.float64, na_value=0.0)
    rows = np.arange(len(frame))
    out["seasonal_naive_log"] = np.log1p(np.clip(last[rows, lags.clip(0, fs.season_length - 1)], 0, None))
    for j in range(fs.lags):
        out[f"lag_{j}"] = np.log1p(np.clip(last[:, j], 0, None))
    if fs.frequency == "daily":
        weekday = dates.dt.weekday.to_numpy()
        for w in fs.weekday_weeks:
            profile = frame[[f"dow{d}_lmean_{w}" for d in range(7)]].to_numpy(np.float64, na_value=0.0)
            out[f"dow_lmean_{w}"] = profile[rows, weekday]
    for c in fs.state_columns:
        if not c.startswith(("dow", "last_")):
            out[c] = frame[c].to_numpy()
    # one float32 block built column by column: DataFrame.astype + fillna on the many
    # single-column blocks above copied and consolidated the whole table twice
    defaults = _no_history_defaults(fs)
    columns = {}
    for c in fs.columns:
        values = out[c].to_numpy(np.float32, copy=True)
        values[np.isnan(values)] = defaults[c]
        columns[c] = values
    return pd.DataFrame(columns, index=out.index)


def _no_history_defaults(fs: FeatureSpec) -> dict[str, float]:
    """What a series with no history looks like: zero sales, always zero."""
    return {c: 1.0 if c.startswith("zero_") else 0.0 for c in fs.columns}


def seasonal_naive(frame: pd.DataFrame) -> np.ndarray:
    """The seasonal-naive forecast carried by every feature row: last season's same period."""
    return np.expm1(frame["seasonal_naive_log"].to_numpy(np.float64))


def target_rows_sql(fs: FeatureSpec, relation: str, origins: list[date], columns: list[str]) -> str:
    """The rows of the horizon after each origin, with their ORIGIN."""
    o = f"origins.{ORIGIN}"
    end = f"{o} + INTERVAL {fs.horizon * fs.period_days} DAY"
    return f"SELECT {o}, {_quoted(columns)} FROM {relation} JOIN {_origins(origins)} ON date > {o} AND date <= {end}"


def examples_at_origins(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSpec,
    relation: str,
    origins: list[date],
    holidays: tuple[pd.Series, pd.Series],
    keep: list[str],
    share: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled rows for the horizon after each origin: (features, target rows with `keep` columns
    and their `origin`).

    Only series with history at an origin are forecast from it, as in production; `share` < 1
    keeps that share of them, drawn anew for each origin (a row budget for many origins).
    """
    state = con.execute(state_sql(fs, relation, origins)).df()
    if fs.groups:
        series = con.execute(f"SELECT DISTINCT {_quoted([*fs.series_keys, *fs.attributes])} FROM {relation}").df()
        state = with_group_levels(state, series, fs)
    if share < 1:
        state = pd.concat(
            [part.sample(frac=share, random_state=o.toordinal()) for o, part in state.groupby(ORIGIN)],
            ignore_index=True,
        )
    columns = list(dict.fromkeys(["date", *fs.series_keys, *fs.covariates, *fs.attributes, *keep]))
    targets = con.execute(target_rows_sql(fs, relation, origins, columns)).df()
    targets = targets.merge(state[[*fs.series_keys, ORIGIN]], on=[*fs.series_keys, ORIGIN], how="inner")
    features = row_features(targets, state, None, holidays, fs)
    labels = targets[list(dict.fromkeys(["date", *fs.series_keys, *keep]))].copy()
    labels["origin"] = pd.to_datetime(targets[ORIGIN])
    return features, labels


def examples_at_origin(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSpec,
    relation: str,
    origin: date,
    holidays: tuple[pd.Series, pd.Series],
    keep: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled rows for the horizon after one origin (see `examples_at_origins`)."""
    return examples_at_origins(con, fs, relation, [origin], holidays, keep)
