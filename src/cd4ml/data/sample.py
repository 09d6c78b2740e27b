"""Deterministic synthetic data shaped like Kaggle's "Corporación Favorita" grocery sales.

The real data set (125M rows) sits behind a Kaggle login, yet the pipeline, its tests and its
demos need the same file set, columns and text formats, with demand that has the structure a
forecaster must learn. Sales are negative-binomial counts around a multiplicative mean:

    item level (lognormal; perishables sell more) x store (type, cluster, own) x store-item
    affinity x weekday (weekend peak, family-dependent) x year (December peak) x payday (15th,
    last day, and the day after each) x holiday (national, regional, local) x promotion (1.5-2.5x)
    x trend

Slow items are intermittent, weighed perishables are sold in kilograms (3 decimals), about
0.05% of rows are returns (negative), stores close on Dec 25 and mostly on Jan 1, and every
eighth store (5, 13, 21, ...) opens mid-history. As in the original, zero-sale rows are absent
and `onpromotion` is empty for the first 20% of history.

train.csv is written one store at a time and ordered by (store_nbr, date, item_nbr), not by
date like the original, so memory stays bounded at the real size. Every random draw comes from
a generator keyed by (seed, stream[, store]), so a store's rows do not depend on how many stores
are generated: the same config always yields byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv


@dataclass(frozen=True)
class SampleConfig:
    """Size, first day and seed of the generated data set."""

    stores: int = 10
    items: int = 50
    days: int = 730
    start: date = date(2015, 1, 1)
    seed: int = 42

    def __post_init__(self) -> None:
        if min(self.stores, self.items, self.days) < 1 or self.seed < 0:
            raise ValueError("stores, items and days must be positive and seed non-negative")

    @property
    def end(self) -> date:
        return self.start + timedelta(days=self.days - 1)


# Random streams: each table draws from its own generator so they never shift each other.
_ITEMS, _STORES, _CLUSTERS, _SALES, _HOLIDAYS, _OIL = range(6)

# (family, share of items in the original, volume multiplier, weekend amplitude)
_FAMILIES = (
    ("GROCERY I", 1334, 1.2, 1.0), ("BEVERAGES", 613, 1.5, 1.1), ("CLEANING", 446, 0.8, 0.8),
    ("PRODUCE", 306, 1.0, 1.2), ("DAIRY", 242, 1.0, 0.9), ("PERSONAL CARE", 153, 0.6, 0.8),
    ("BREAD/BAKERY", 134, 1.0, 1.1), ("HOME CARE", 108, 0.7, 0.8), ("DELI", 91, 0.6, 1.1),
    ("MEATS", 84, 0.7, 1.3), ("HOME AND KITCHEN I", 77, 0.2, 1.2),
    ("LIQUOR,WINE,BEER", 73, 0.8, 2.0), ("FROZEN FOODS", 55, 0.6, 1.0), ("POULTRY", 54, 0.9, 1.2),
    ("HOME AND KITCHEN II", 45, 0.2, 1.2), ("EGGS", 41, 0.8, 0.9), ("CELEBRATION", 31, 0.2, 1.4),
    ("LAWN AND GARDEN", 26, 0.2, 1.3), ("PREPARED FOODS", 26, 0.5, 1.1), ("LINGERIE", 20, 0.1, 1.3),
    ("LADIESWEAR", 20, 0.1, 1.3), ("AUTOMOTIVE", 20, 0.15, 1.2), ("BEAUTY", 19, 0.2, 1.0),
    ("PLAYERS AND ELECTRONICS", 17, 0.1, 1.3), ("SCHOOL AND OFFICE SUPPLIES", 15, 0.15, 0.6),
    ("GROCERY II", 14, 0.4, 1.0), ("PET SUPPLIES", 14, 0.3, 1.0), ("SEAFOOD", 8, 0.5, 1.1),
    ("MAGAZINES", 6, 0.1, 1.0), ("HARDWARE", 4, 0.1, 1.2), ("BABY CARE", 1, 0.2, 0.8),
    ("BOOKS", 1, 0.05, 1.0), ("HOME APPLIANCES", 1, 0.05, 1.0),
)  # fmt: skip
_PERISHABLE_FAMILIES = frozenset({"PRODUCE", "DAIRY", "BREAD/BAKERY", "POULTRY", "MEATS", "DELI", "EGGS", "SEAFOOD"})
_WEIGHED_FAMILIES = frozenset({"PRODUCE", "MEATS", "POULTRY", "DELI", "SEAFOOD"})

# (city, state, stores in the original)
_CITIES = (
    ("Quito", "Pichincha", 18), ("Guayaquil", "Guayas", 8), ("Cuenca", "Azuay", 3),
    ("Santo Domingo", "Santo Domingo de los Tsachilas", 3), ("Manta", "Manabi", 2),
    ("Latacunga", "Cotopaxi", 2), ("Machala", "El Oro", 2), ("Ambato", "Tungurahua", 2),
    ("Quevedo", "Los Rios", 1), ("Esmeraldas", "Esmeraldas", 1), ("Loja", "Loja", 1),
    ("Libertad", "Guayas", 1), ("Playas", "Guayas", 1), ("Daule", "Guayas", 1),
    ("Babahoyo", "Los Rios", 1), ("Salinas", "Santa Elena", 1), ("Puyo", "Pastaza", 1),
    ("Guaranda", "Bolivar", 1), ("Ibarra", "Imbabura", 1), ("Riobamba", "Chimborazo", 1),
    ("El Carmen", "Manabi", 1), ("Cayambe", "Pichincha", 1),
)  # fmt: skip
# type: (stores in the original, sales scale, clusters of that type)
_STORE_TYPES = {
    "A": (9, 1.8, (5, 11, 14, 17)),
    "B": (8, 1.3, (6, 16)),
    "C": (15, 0.8, (3, 7, 12, 15)),
    "D": (18, 1.0, (1, 2, 4, 8, 9, 13)),
    "E": (4, 0.6, (10,)),
}
# (month, day, locale, locale_name, description) of the original's foundation days
_LOCAL_HOLIDAYS = (
    (3, 2, "Local", "Manta", "Fundacion de Manta"),
    (4, 1, "Regional", "Cotopaxi", "Provincializacion de Cotopaxi"),
    (4, 12, "Local", "Cuenca", "Fundacion de Cuenca"),
    (4, 14, "Local", "Libertad", "Cantonizacion de Libertad"),
    (4, 21, "Local", "Riobamba", "Cantonizacion de Riobamba"),
    (5, 12, "Local", "Puyo", "Cantonizacion del Puyo"),
    (6, 23, "Local", "Guaranda", "Cantonizacion de Guaranda"),
    (6, 25, "Regional", "Imbabura", "Provincializacion de Imbabura"),
    (6, 25, "Local", "Latacunga", "Cantonizacion de Latacunga"),
    (6, 25, "Local", "Machala", "Fundacion de Machala"),
    (7, 3, "Local", "Santo Domingo", "Fundacion de Santo Domingo"),
    (7, 23, "Local", "Cayambe", "Cantonizacion de Cayambe"),
    (7, 25, "Local", "Guayaquil", "Fundacion de Guayaquil"),
    (8, 5, "Local", "Esmeraldas", "Fundacion de Esmeraldas"),
    (8, 15, "Local", "Riobamba", "Fundacion de Riobamba"),
    (9, 28, "Local", "Ibarra", "Fundacion de Ibarra"),
    (10, 7, "Local", "Quevedo", "Cantonizacion de Quevedo"),
    (11, 6, "Regional", "Santo Domingo de los Tsachilas", "Provincializacion de Santo Domingo"),
    (11, 7, "Regional", "Santa Elena", "Provincializacion Santa Elena"),
    (11, 12, "Local", "Ambato", "Independencia de Ambato"),
    (12, 6, "Local", "Quito", "Fundacion de Quito"),
    (12, 8, "Local", "Loja", "Fundacion de Loja"),
    (12, 22, "Local", "Salinas", "Cantonizacion de Salinas"),
)
_NOT_TRANSFERABLE = frozenset({"Año Nuevo", "Carnaval", "Viernes Santo", "Navidad"})

_WEEKDAY_PROFILE = np.array([0.92, 0.86, 0.88, 0.90, 1.00, 1.22, 1.22])  # Monday..Sunday
_PAYDAY_LIFT, _AFTER_PAYDAY_LIFT = 1.15, 1.07
_NATIONAL_LIFT, _REGIONAL_LIFT, _LOCAL_LIFT, _NEW_YEAR_LEVEL = 1.25, 1.1, 1.2, 0.35
_TRANSFER_PROBABILITY = 0.5
_PROMO_MEAN_DAYS = 4
_RETURN_PROBABILITY = 0.0005
_PROMO_RECORDED_FROM = 0.2  # share of history with `onpromotion` missing
_LATE_OPENING_EVERY = 8  # stores 5, 13, 21, ... open mid-history
_ITEM_NBR_SPAN = (96_995, 2_134_245)  # the original's item numbers
_TRAIN_HEADER = b"id,date,store_nbr,item_nbr,unit_sales,onpromotion\n"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


@dataclass(frozen=True)
class _Items:
    """Item attributes plus the chain-wide promotion calendar (days x items)."""

    nbr: np.ndarray
    family: np.ndarray  # index into _FAMILIES
    klass: np.ndarray
    perishable: np.ndarray
    weighed: np.ndarray  # sold by weight: unit_sales in kilograms
    kilos: np.ndarray  # mean kilograms per purchase of a weighed item
    level: np.ndarray
    weekly: np.ndarray  # (7, items) weekday multipliers
    trend: np.ndarray  # log growth per year
    dispersion: np.ndarray  # negative-binomial shape: small is bursty
    promo_lift: np.ndarray
    promo: np.ndarray


@dataclass(frozen=True)
class _Store:
    nbr: int
    city: str
    state: str
    type: str
    cluster: int
    opening: int  # first open day (index into the history)
    open_new_year: bool
    scale: float
    growth: float  # log growth per year


@dataclass(frozen=True)
class _Calendar:
    """Per-day factors shared by all stores, and the holiday days that depend on the store."""

    dates: np.ndarray  # datetime64[D]
    weekday: np.ndarray
    years: np.ndarray  # time since start, in years (for trends)
    factor: np.ndarray  # year x payday x national holiday
    christmas: np.ndarray
    new_year: np.ndarray
    city_days: dict[str, np.ndarray]
    state_days: dict[str, np.ndarray]
    promo_recorded_from: int


def _family_quotas(items: int) -> np.ndarray:
    """Items per family proportional to the original (largest remainder), so even a small
    sample holds the big families, perishables included."""
    shares = np.array([f[1] for f in _FAMILIES], dtype=float)
    exact = items * shares / shares.sum()
    quotas = np.floor(exact).astype(int)
    extra = np.argsort(-(exact - quotas), kind="stable")[: items - quotas.sum()]
    quotas[extra] += 1
    return quotas


def _promo_calendar(rng: np.random.Generator, days: int, share: np.ndarray) -> np.ndarray:
    """Promotions run for a few days (geometric lengths) starting at random on each item."""
    starts = rng.random((days, share.size)) < share / _PROMO_MEAN_DAYS
    day, item = np.nonzero(starts)
    ends = np.zeros(starts.shape, dtype=np.int32)
    ends[day, item] = day + rng.geometric(1 / _PROMO_MEAN_DAYS, size=day.size)
    return np.maximum.accumulate(ends, axis=0) > np.arange(days, dtype=np.int32)[:, None]


def _items(config: SampleConfig) -> _Items:
    rng = _rng(config.seed, _ITEMS)
    n = config.items
    low, high = _ITEM_NBR_SPAN
    nbr = np.sort(rng.choice(high - low, size=n, replace=False)) + low
    family = rng.permutation(np.repeat(np.arange(len(_FAMILIES)), _family_quotas(n)))
    names = np.array([f[0] for f in _FAMILIES])[family]
    perishable = np.isin(names, list(_PERISHABLE_FAMILIES))
    volume = np.array([f[2] for f in _FAMILIES])[family] * np.where(perishable, 2.5, 1.0)
    amplitude = np.array([f[3] for f in _FAMILIES])[family] * rng.uniform(0.7, 1.3, n)
    return _Items(
        nbr=nbr,
        family=family,
        klass=1000 + 100 * family + rng.integers(2, 99, n),
        perishable=perishable,
        weighed=np.isin(names, list(_WEIGHED_FAMILIES)) & (rng.random(n) < 0.6),
        kilos=rng.uniform(0.3, 1.5, n),
        level=volume * rng.lognormal(np.log(0.5), 1.7, n),
        weekly=1 + (_WEEKDAY_PROFILE[:, None] - 1) * amplitude[None, :],
        trend=rng.normal(0.0, 0.15, n),
        dispersion=rng.uniform(1.5, 10.0, n),
        promo_lift=rng.uniform(1.5, 2.5, n),
        promo=_promo_calendar(rng, config.days, rng.beta(0.6, 7.0, n)),
    )


def _store(config: SampleConfig, nbr: int) -> _Store:
    rng = _rng(config.seed, _STORES, nbr)
    city, state, _ = _CITIES[rng.choice(len(_CITIES), p=_weights(c[2] for c in _CITIES))]
    kind = str(rng.choice(list(_STORE_TYPES), p=_weights(t[0] for t in _STORE_TYPES.values())))
    _, type_scale, clusters = _STORE_TYPES[kind]
    cluster = int(rng.choice(clusters))
    late = nbr % _LATE_OPENING_EVERY == 5
    opening = int(rng.integers(config.days * 15 // 100, config.days * 85 // 100 + 1)) if late else 0
    cluster_scale = _rng(config.seed, _CLUSTERS, cluster).lognormal(0.0, 0.25)
    return _Store(
        nbr=nbr,
        city=city,
        state=state,
        type=kind,
        cluster=cluster,
        opening=opening,
        open_new_year=bool(rng.random() < 0.1),
        scale=type_scale * cluster_scale * rng.lognormal(0.0, 0.15),
        growth=rng.normal(0.04, 0.05),
    )


def _weights(counts: Iterable[float]) -> np.ndarray:
    values = np.fromiter(counts, dtype=float)
    return values / values.sum()


def _transfer_target(day: date, name: str) -> date | None:
    """Ecuador moves midweek holidays next to the weekend: Tuesday to Monday, Wed/Thu to Friday."""
    shift = {1: -1, 2: 2, 3: 1}.get(day.weekday())
    return None if shift is None or name in _NOT_TRANSFERABLE else day + timedelta(days=shift)


def _holiday_events(config: SampleConfig) -> pd.DataFrame:
    """holidays_events.csv rows: the data's years plus the next, so forecasts can see ahead."""
    rng = _rng(config.seed, _HOLIDAYS)
    years = range(config.start.year, config.end.year + 2)
    national = holidays.country_holidays("EC", years=years, language="es", observed=False)
    rows, taken = [], set(national)
    for day, name in sorted(national.items()):
        target = _transfer_target(day, name) if rng.random() < _TRANSFER_PROBABILITY else None
        moved = target is not None and target not in taken  # never onto another day off
        rows.append((day, "Holiday", "National", "Ecuador", name, moved))
        if moved:
            taken.add(target)
            rows.append((target, "Transfer", "National", "Ecuador", f"Traslado {name}", False))
    for year in years:
        rows += [(date(year, m, d), "Holiday", *where, False) for m, d, *where in _LOCAL_HOLIDAYS]
    columns = ["date", "type", "locale", "locale_name", "description", "transferred"]
    events = pd.DataFrame(rows, columns=columns)
    return events.sort_values("date", kind="stable").reset_index(drop=True)


def _holiday_days(events: pd.DataFrame, dates: np.ndarray, locale: str) -> dict[str, np.ndarray]:
    """Days off per locale_name: a transferred holiday is a normal day, its Transfer row is not."""
    off = events[(events["locale"] == locale) & ~events["transferred"]]
    days = pd.to_datetime(off["date"]).to_numpy().astype("datetime64[D]")
    return {name: np.isin(dates, days[(off["locale_name"] == name).to_numpy()]) for name in off["locale_name"].unique()}


def _yearly(index: pd.DatetimeIndex) -> np.ndarray:
    """A mild annual cycle plus the Christmas run-up that peaks on Dec 24."""
    day, december = np.asarray(index.day), np.asarray(index.month == 12)
    cycle = 1 + 0.05 * np.cos(2 * np.pi * (np.asarray(index.dayofyear) - 355) / 365.25)
    run_up = np.where(december & (day <= 24), 1 + 0.45 * (day / 24) ** 2, 1.0)
    return cycle * run_up * np.where(december & (day >= 26), 1.15, 1.0)


def _payday(index: pd.DatetimeIndex) -> np.ndarray:
    """Public wages are paid on the 15th and the last day of the month; spending follows."""
    day = np.asarray(index.day)
    payday = (day == 15) | np.asarray(index.is_month_end)
    after = (day == 16) | (day == 1)
    return np.where(payday, _PAYDAY_LIFT, np.where(after, _AFTER_PAYDAY_LIFT, 1.0))


def _calendar(config: SampleConfig, events: pd.DataFrame) -> _Calendar:
    index = pd.date_range(config.start, periods=config.days, freq="D")
    dates = index.to_numpy().astype("datetime64[D]")
    month, day = np.asarray(index.month), np.asarray(index.day)
    christmas, new_year = (month == 12) & (day == 25), (month == 1) & (day == 1)
    national = _holiday_days(events, dates, "National").get("Ecuador", np.zeros(dates.size, bool))
    holiday = np.where(national, _NATIONAL_LIFT, 1.0) * np.where(new_year, _NEW_YEAR_LEVEL, 1.0)
    return _Calendar(
        dates=dates,
        weekday=np.asarray(index.weekday),
        years=np.arange(config.days) / 365.25,
        factor=_yearly(index) * _payday(index) * holiday,
        christmas=christmas,
        new_year=new_year,
        city_days=_holiday_days(events, dates, "Local"),
        state_days=_holiday_days(events, dates, "Regional"),
        promo_recorded_from=round(config.days * _PROMO_RECORDED_FROM),
    )


def _store_days(cal: _Calendar, store: _Store) -> np.ndarray:
    """The store's day multiplier: zero while closed, local holidays lift its own city."""
    none = np.zeros(cal.dates.size, dtype=bool)
    local = np.where(cal.city_days.get(store.city, none), _LOCAL_LIFT, 1.0)
    regional = np.where(cal.state_days.get(store.state, none), _REGIONAL_LIFT, 1.0)
    closed = cal.christmas | (cal.new_year & (not store.open_new_year))
    closed[: store.opening] = True
    growth = np.exp(store.growth * cal.years)
    return np.where(closed, 0.0, cal.factor * local * regional * growth * store.scale)


@dataclass(frozen=True)
class _StoreSales:
    day: np.ndarray
    item: np.ndarray
    sales: np.ndarray
    promo: np.ndarray
    daily_total: np.ndarray
    open_days: np.ndarray


def _store_sales(config: SampleConfig, cal: _Calendar, items: _Items, store: _Store) -> _StoreSales:
    """Draw one store's days x items sales matrix and keep its non-zero cells."""
    rng = _rng(config.seed, _SALES, store.nbr)
    n = config.items
    carried = rng.random(n) < 0.8
    affinity = rng.lognormal(0.0, 0.4, n) * carried
    promo = items.promo & (rng.random(n) < 0.85)  # the store joins the chain's promotions
    days = _store_days(cal, store)
    mean = items.weekly[cal.weekday] * np.exp(cal.years[:, None] * items.trend[None, :])
    mean *= days[:, None] * (items.level * affinity)[None, :]
    mean *= np.where(promo, items.promo_lift[None, :], 1.0)
    mean *= rng.gamma(items.dispersion, 1 / items.dispersion, size=mean.shape)
    counts = rng.poisson(mean)
    sales = counts.astype(np.float64)
    weighed = items.weighed
    kilos = rng.gamma(4.0 * counts[:, weighed], items.kilos[weighed] / 4.0)
    sales[:, weighed] = np.round(kilos, 3)
    sales[(sales > 0) & (rng.random(sales.shape) < _RETURN_PROBABILITY)] *= -1
    day, item = np.nonzero(sales)
    return _StoreSales(
        day=day,
        item=item,
        sales=sales[day, item],
        promo=promo[day, item],
        daily_total=sales.sum(axis=1),
        open_days=days > 0,
    )


def _train_table(cal: _Calendar, items: _Items, nbr: int, sales: _StoreSales, first_id: int) -> pa.Table:
    """Rows in the original's text formats: 7.0 and 2.638 for sales, True/False/empty promos."""
    text = pc.cast(pa.array(sales.sales), pa.string())
    whole = pa.array(sales.sales == np.round(sales.sales))
    unit_sales = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
    unrecorded = sales.day < cal.promo_recorded_from
    onpromotion = pa.DictionaryArray.from_arrays(
        pa.array(sales.promo.astype(np.int8), mask=unrecorded), pa.array(["False", "True"])
    )
    return pa.table(
        {
            "id": np.arange(first_id, first_id + sales.day.size, dtype=np.int64),
            "date": pa.array(cal.dates[sales.day]),
            "store_nbr": np.full(sales.day.size, nbr, dtype=np.int64),
            "item_nbr": items.nbr[sales.item],
            "unit_sales": unit_sales,
            "onpromotion": onpromotion,
        }
    )


def _transactions(config: SampleConfig, cal: _Calendar, store: _Store, sales: _StoreSales) -> pd.DataFrame:
    """Tickets per open day follow the store's total units (sub-linearly: bigger baskets)."""
    rng = _rng(config.seed, _SALES, store.nbr, 1)
    total = sales.daily_total[sales.open_days]
    ratio = np.clip(total / max(total.mean(), 1e-9), 0.05, None) if total.size else total
    noise = rng.lognormal(0.0, 0.05, total.size)
    count = np.rint(1500 * store.scale * ratio**0.8 * noise).astype(np.int64)
    return pd.DataFrame({"date": cal.dates[sales.open_days], "store_nbr": store.nbr, "transactions": count})


def _oil(config: SampleConfig) -> pd.DataFrame:
    """WTI as a log random walk on weekdays, missing on NYSE holidays like the original."""
    rng = _rng(config.seed, _OIL)
    index = pd.bdate_range(config.start, config.end)
    price = 95.0 * np.exp(np.cumsum(rng.normal(-0.0003, 0.018, index.size)))
    closed = holidays.financial_holidays("NYSE", years=range(config.start.year, config.end.year + 1))
    missing = np.isin(index.date, list(closed))
    return pd.DataFrame({"date": index.date, "dcoilwtico": np.where(missing, np.nan, price.round(2))})


def _items_frame(items: _Items) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_nbr": items.nbr,
            "family": np.array([f[0] for f in _FAMILIES])[items.family],
            "class": items.klass,
            "perishable": items.perishable.astype(int),
        }
    )


def _stores_frame(stores: list[_Store]) -> pd.DataFrame:
    columns = ["store_nbr", "city", "state", "type", "cluster"]
    return pd.DataFrame([(s.nbr, s.city, s.state, s.type, s.cluster) for s in stores], columns=columns)


def _write_frame(frame: pd.DataFrame, path: Path) -> int:
    frame.to_csv(path, index=False, lineterminator="\n")
    return len(frame)


def _write_train(
    path: Path,
    config: SampleConfig,
    cal: _Calendar,
    items: _Items,
    stores: list[_Store],
    progress: Callable[[int, int], None] | None,
) -> tuple[int, pd.DataFrame]:
    """Append train.csv store by store; returns its row count and the transactions table."""
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    rows, transactions = 0, []
    with pa.OSFile(str(path), "wb") as sink:
        sink.write(_TRAIN_HEADER)
        for done, store in enumerate(stores, start=1):
            sales = _store_sales(config, cal, items, store)
            pa_csv.write_csv(_train_table(cal, items, store.nbr, sales, rows), sink, options)
            rows += sales.day.size
            transactions.append(_transactions(config, cal, store, sales))
            if progress is not None:
                progress(done, len(stores))
    table = pd.concat(transactions).sort_values(["date", "store_nbr"], kind="stable")
    table["date"] = table["date"].astype("datetime64[s]").dt.strftime("%Y-%m-%d")
    return rows, table


def write_sample(
    out_dir: Path, config: SampleConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, int]:
    """Write the Favorita file set into out_dir; returns row counts per file.

    progress(done_stores, total_stores) is called after each store chunk of train.csv.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    events, items = _holiday_events(config), _items(config)
    stores = [_store(config, nbr) for nbr in range(1, config.stores + 1)]
    train_rows, transactions = _write_train(
        out_dir / "train.csv", config, _calendar(config, events), items, stores, progress
    )
    return {
        "train.csv": train_rows,
        "items.csv": _write_frame(_items_frame(items), out_dir / "items.csv"),
        "stores.csv": _write_frame(_stores_frame(stores), out_dir / "stores.csv"),
        "holidays_events.csv": _write_frame(events, out_dir / "holidays_events.csv"),
        "oil.csv": _write_frame(_oil(config), out_dir / "oil.csv"),
        "transactions.csv": _write_frame(transactions, out_dir / "transactions.csv"),
    }
