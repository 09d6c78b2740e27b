"""The methods cd4ml is compared with, each a function of one fold: history up to the forecast
origin in, one forecast per target row out (aligned with `Fold.targets`, never negative).

- seasonal naive: the same period one season earlier (daily: the same weekday last week); for
  weekly data, whose 13 months hold no earlier season, the last week (naive);
- the CD4ML workshop: date parts, label-encoded keys and attributes and the promotion flag, a
  10-tree random forest on raw units (returns set to 0), no lags;
- Nixtla mlforecast, as its documentation sets up a global LightGBM: lags, rolling means of
  lags (`lag_transforms`), date features, log1p target, recursive forecasts, known covariates;
- Nixtla statsforecast AutoETS, one exponential-smoothing model chosen by AICc per series.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

ETS_WINDOW = {"D": 16 * 7, "W-MON": 52}  # AutoETS fits the newest periods only: minutes, not an hour


@dataclass(frozen=True)
class Fold:
    """One forecast origin: what every method may read, and the rows all of them are scored on."""

    origin: pd.Timestamp
    horizon: int  # periods
    freq: str  # pandas frequency: "D" or "W-MON"
    season: int  # periods in a season (7 daily, 52 weekly)
    keys: list[str]
    covariates: list[str]  # known ahead (the sample's onpromotion)
    attributes: list[str]
    history: pd.DataFrame  # canonical rows with date <= origin
    targets: pd.DataFrame  # canonical rows after the origin, series with history only

    @property
    def period(self) -> pd.Timedelta:
        return pd.Timedelta(days=7 if self.freq.startswith("W") else 1)


def series_id(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    ids = frame[keys[0]].astype(str)
    for key in keys[1:]:
        ids = ids + "/" + frame[key].astype(str)
    return ids


def _nixtla(frame: pd.DataFrame, fold: Fold, with_target: bool = True) -> pd.DataFrame:
    out = pd.DataFrame({"unique_id": series_id(frame, fold.keys).to_numpy(), "ds": frame["date"].to_numpy()})
    if with_target:
        out["y"] = frame["sales"].clip(lower=0).to_numpy()  # returns are not demand
    return out


def _aligned(fold: Fold, forecast: pd.DataFrame, column: str) -> np.ndarray:
    wanted = _nixtla(fold.targets, fold, with_target=False)
    scored = wanted.merge(forecast[["unique_id", "ds", column]], on=["unique_id", "ds"], how="left")
    if scored[column].isna().any():
        raise RuntimeError(f"{column}: no forecast for {int(scored[column].isna().sum())} target rows")
    return scored[column].clip(lower=0).to_numpy()


def seasonal_naive(fold: Fold) -> np.ndarray:
    """Last season's value, or the last value when the history holds no earlier season."""
    steps = ((fold.targets["date"] - fold.origin) / fold.period).round()
    season = fold.season if fold.history["date"].nunique() > fold.season else 1
    rows = fold.targets[fold.keys].assign(date=fold.targets["date"] - fold.period * (season * np.ceil(steps / season)))
    history = fold.history[[*fold.keys, "date", "sales"]]
    found = rows.merge(history, on=[*fold.keys, "date"], how="left")["sales"]
    last = history.sort_values("date").groupby(fold.keys, as_index=False)["sales"].last()
    fallback = rows[fold.keys].merge(last, on=fold.keys, how="left")["sales"]
    return found.fillna(fallback).clip(lower=0).to_numpy()


def workshop_forest(fold: Fold, seed: int = 42) -> np.ndarray:
    """The workshop's decision_tree.py with its random forest: no lags, raw units."""
    from sklearn.ensemble import RandomForestRegressor

    coded = [*fold.keys, *fold.attributes]

    def features(frame: pd.DataFrame, codes: dict[str, pd.Index]) -> pd.DataFrame:
        out = pd.DataFrame(
            {
                "year": frame["date"].dt.year,
                "month": frame["date"].dt.month,
                "day": frame["date"].dt.day,
                "dayofweek": frame["date"].dt.dayofweek,
            }
        )
        for column in fold.covariates:
            out[column] = frame[column]
        for column in coded:
            out[column] = codes[column].get_indexer(frame[column])
        return out

    # the workshop label-encodes train and validation joined, so both share one vocabulary
    codes = {c: pd.Index(pd.concat([fold.history[c], fold.targets[c]]).unique()) for c in coded}
    forest = RandomForestRegressor(n_estimators=10, n_jobs=2, random_state=seed)
    forest.fit(features(fold.history, codes), fold.history["sales"].clip(lower=0))  # "not predicting returns"
    return forest.predict(features(fold.targets, codes))


def mlforecast_lightgbm(fold: Fold, seed: int = 42) -> np.ndarray:
    """mlforecast's global LightGBM: lags and rolling means of lags, recursive over the horizon."""
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean
    from mlforecast.target_transforms import GlobalSklearnTransformer
    from sklearn.preprocessing import FunctionTransformer

    if fold.freq == "D":
        lags, date_features = [1, 7, 14, 28], ["dayofweek", "day", "month"]
        lag_transforms = {1: [RollingMean(7), RollingMean(28)], 7: [RollingMean(4 * 7)]}
    else:
        lags, date_features = [1, 2, 4, 8], ["month", "week"]
        lag_transforms = {1: [RollingMean(4), RollingMean(8)]}
    periods = fold.history["date"].nunique()
    if periods < 35:  # a short history keeps the lags it can fill, else no row would be left to train on
        lags, lag_transforms = [1, 7], {1: [RollingMean(7)]}
    model = lgb.LGBMRegressor(
        n_estimators=500, learning_rate=0.05, num_leaves=63, min_child_samples=20, n_jobs=2, random_state=seed,
        verbose=-1,
    )  # fmt: skip
    df = _nixtla(fold.history, fold)
    statics = [*fold.keys, *fold.attributes] if len(fold.keys) > 1 or fold.attributes else []
    for column in statics:
        df[column] = pd.Categorical(fold.history[column].astype(str).to_numpy())
    for column in fold.covariates:
        df[column] = fold.history[column].to_numpy()
    forecaster = MLForecast(
        models={"lgbm": model},
        freq=fold.freq,
        lags=lags,
        lag_transforms=lag_transforms,
        date_features=date_features,
        target_transforms=[GlobalSklearnTransformer(FunctionTransformer(np.log1p, np.expm1))],
        num_threads=2,
    )
    forecaster.fit(df, static_features=statics)
    known = None
    if fold.covariates:
        known = _nixtla(fold.targets, fold, with_target=False)
        for column in fold.covariates:
            known[column] = fold.targets[column].to_numpy()
    forecast = forecaster.predict(fold.horizon, X_df=known, ids=sorted(df["unique_id"].unique()))
    return _aligned(fold, forecast, "lgbm")


def statsforecast_ets(fold: Fold) -> np.ndarray:
    """AutoETS per series on the newest periods; weekly data without two seasons is not seasonal;
    a series ETS cannot fit falls back to the naive forecast (statsforecast's `fallback_model`)."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, Naive

    df = _nixtla(fold.history, fold)
    newest = df["ds"] > fold.origin - fold.period * ETS_WINDOW[fold.freq]
    season = fold.season if df.loc[newest, "ds"].nunique() >= 2 * fold.season else 1
    # a series too short for ETS ("tiny datasets": a product first sold days ago) gets the last value
    forecaster = StatsForecast(models=[AutoETS(season_length=season)], freq=fold.freq, n_jobs=1, fallback_model=Naive())
    forecast = forecaster.forecast(df=df[newest], h=fold.horizon)
    return _aligned(fold, forecast.reset_index() if "unique_id" not in forecast else forecast, "AutoETS")


METHODS = {
    "seasonal naive": seasonal_naive,
    "workshop forest": workshop_forest,
    "mlforecast LightGBM": mlforecast_lightgbm,
    "statsforecast AutoETS": statsforecast_ets,
}
