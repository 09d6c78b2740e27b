"""Turn a SOURCE argument (a folder, a file, a URL or a spec) into a dataset spec, and a spec
into the input files it names, each found and its header checked.

`sample` is not resolved here: the ingest stage generates it from params.yaml first and then
reads it as the Favorita folder it is.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import ValidationError
from ruamel.yaml import YAML, YAMLError

from cd4ml.data import online_retail, presets
from cd4ml.data.download import fetch, is_url
from cd4ml.data.spec import DatasetSpec, SpecError, load_spec
from cd4ml.data.validation import DataValidationError, Problem, csv_lines

FAVORITA_TRAIN = {"date", "store_nbr", "item_nbr", "unit_sales"}
STORE_SALES_TRAIN = {"date", "store_nbr", "family", "sales"}
SPEC_SUFFIXES = (".yaml", ".yml")
USE_A_SPEC = "describe the table with a dataset spec YAML (see examples/weekly-sales)"
CANONICAL = ["date", "sales", "weight"]  # names the canonical table gives its own columns


def header(path: Path) -> list[str]:
    """Column names; a byte-order mark (Excel's UTF-8 export) is not part of the first name."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def resolve_source(source: str, cache_dir: Path) -> DatasetSpec:
    """Recognise the source's layout from its shape; anything else needs a dataset spec."""
    if is_url(source):
        local = fetch(source, cache_dir)
        if source.endswith(SPEC_SUFFIXES):
            return load_spec(local, base=source)
        return _single_file(local, location=source)
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(f"data source not found: {source} (use 'sample', a folder, a CSV, a URL or a spec YAML)")
    if path.suffix in SPEC_SUFFIXES:
        return _spec_file(path, cache_dir)
    if path.is_dir():
        return _folder(path, cache_dir)
    if set(header(path)) == set(online_retail.COLUMNS):
        return presets.online_retail(path, cache_dir)
    return _single_file(path, location=str(path.resolve()))


def _spec_file(path: Path, cache_dir: Path) -> DatasetSpec:
    """A dataset spec, or a preset file (`preset: online-retail` plus the preset's options)."""
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise SpecError(f"{path}: cannot read dataset spec: {exc}") from exc
    if not (isinstance(raw, dict) and "preset" in raw):
        return load_spec(path)
    try:
        options = presets.OnlineRetailOptions.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(preset)'}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"{path}: invalid preset file: {problems}") from exc
    data = (path.parent / options.data).resolve()
    if data.is_dir():
        data = data / presets.ONLINE_RETAIL_FILE
    if not data.is_file():
        raise SpecError(f"{path}: data: {data} not found (the UCI Online Retail {presets.ONLINE_RETAIL_FILE})")
    return presets.online_retail(data, cache_dir, options.frequency, options.top_products)


def _folder(path: Path, cache_dir: Path) -> DatasetSpec:
    if (path / presets.ONLINE_RETAIL_FILE).is_file():
        return presets.online_retail(path / presets.ONLINE_RETAIL_FILE, cache_dir)
    train = path / "train.csv"
    if not train.exists():
        raise SpecError(f"{path}: no train.csv; a Favorita or Store Sales folder holds train.csv")
    columns = set(header(train))
    if columns >= FAVORITA_TRAIN:
        return presets.favorita(path)
    if columns >= STORE_SALES_TRAIN:
        return presets.store_sales(path)
    raise SpecError(
        f"{train}: columns {sorted(columns)} match neither the Favorita nor the Store Sales layout; {USE_A_SPEC}"
    )


def _single_file(local: Path, location: str) -> DatasetSpec:
    """The workshop's store47 file; the spec keeps the location as given, URL included."""
    columns = header(local)
    if set(presets.STORE47_COLUMNS) <= set(columns):
        return presets.store47(location)
    raise SpecError(f"{location}: columns {columns} are not the CD4ML workshop's store47 layout; {USE_A_SPEC}")


@dataclass(frozen=True)
class SideInput:
    """A side table found on disk, with the attribute columns it contributes."""

    name: str  # as the spec names it (path or URL): what error messages show
    path: Path
    on: list[str]
    columns: list[str]


@dataclass(frozen=True)
class Inputs:
    """Every file an ingest reads, found and with its header checked."""

    sales_name: str
    sales: Path
    sides: list[SideInput]

    @property
    def side_attributes(self) -> list[str]:
        """The attribute columns the side tables add, in join order."""
        return [c for side in self.sides for c in side.columns]


def local_path(location: str, cache_dir: Path, sha256: str | None = None) -> Path:
    return fetch(location, cache_dir, sha256=sha256) if is_url(location) else Path(location)


def _existing(location: str, cache_dir: Path, sha256: str | None, check: str) -> Path:
    path = local_path(location, cache_dir, sha256)
    if not path.is_file():
        raise DataValidationError([Problem(location, "-", check, 1)])
    return path


def _require_columns(file: str, found: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        check = f"column present (found: {', '.join(found)})"
        raise DataValidationError([Problem(file, ", ".join(missing), check, 1, [{"line": 1}])])


def locate_inputs(spec: DatasetSpec, cache_dir: Path) -> Inputs:
    """Find every file and check every header, so a bad spec fails before any row is read."""
    sales_name = spec.resolve(spec.sales)
    sales = _existing(sales_name, cache_dir, spec.sales_sha256, "file exists")
    _require_columns(sales_name, header(sales), spec.sales_columns)
    sides = []
    for side in spec.side_tables:
        name = spec.resolve(side.path)
        path = _existing(name, cache_dir, side.sha256, "side table exists")
        found = header(path)
        columns = side.columns or [c for c in found if c not in side.on]
        _require_columns(name, found, [*side.on, *columns])
        unjoinable = [k for k in side.on if k not in [*spec.series_keys, *spec.attributes]]
        if unjoinable:
            check = "join key is a series key or attribute of the sales rows"
            raise DataValidationError([Problem(name, ", ".join(unjoinable), check, 1)])
        sides.append(SideInput(name, path, side.on, columns))
    if spec.holidays and spec.holidays.events_file:
        _existing(spec.resolve(spec.holidays.events_file), cache_dir, None, "holidays file exists")
    inputs = Inputs(sales_name, sales, sides)
    _check_names(spec, inputs)
    return inputs


def _check_names(spec: DatasetSpec, inputs: Inputs) -> None:
    """Canonical columns must be unique; slices, weights and locales must name attributes."""
    canonical = list(CANONICAL)
    sales_columns = [*spec.series_keys, *spec.covariates, *spec.attributes]
    for file, columns in [
        (inputs.sales_name, sales_columns),
        *((side.name, side.columns) for side in inputs.sides),
    ]:
        clash = [c for c in columns if c in canonical]
        if clash:
            check = f"column name not taken in the canonical table ({', '.join(canonical)})"
            raise DataValidationError([Problem(file, ", ".join(clash), check, 1, [{"line": 1}])])
        canonical += columns
    attributes = [*spec.attributes, *inputs.side_attributes]
    weights = [spec.weights.column] if spec.weights else []
    locales = spec.holidays.local_columns if spec.holidays else []
    for role, names, allowed in [
        ("slices", spec.slices, [*spec.series_keys, *attributes]),
        ("weights.column", weights, attributes),
        ("holidays.local_columns", locales, attributes),
    ]:
        unknown = [n for n in names if n not in allowed]
        if unknown:
            check = f"names an attribute (one of: {', '.join(allowed) or 'none'})"
            examples = [{role: n} for n in unknown]
            raise DataValidationError([Problem(f"dataset spec '{spec.name}'", role, check, len(unknown), examples)])


def read_side_table(side: SideInput) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per key, and the count of empty attribute values per column.

    Side tables are small (stores, items), so pandas reads them whole and line numbers stay
    exact. Exact duplicate rows are harmless and dropped; a key with two different rows
    cannot be joined without guessing, so it is an error.
    """
    frame = pd.read_csv(side.path, usecols=[*side.on, *side.columns], dtype=str, encoding="utf-8-sig")
    for key in side.on:
        frame[key] = frame[key].str.strip()
        missing = frame.index[frame[key].isna()]
        if len(missing):
            examples = [{"line": line} for line in csv_lines(missing)]
            raise DataValidationError([Problem(side.name, key, "not_nullable", len(missing), examples)])
    unique = frame.drop_duplicates()
    clashing = unique[unique.duplicated(side.on, keep=False)]
    if len(clashing):
        examples = [
            {"line": line, **row}
            for line, row in zip(csv_lines(clashing.index), clashing[side.on].to_dict("records"), strict=False)
        ]
        raise DataValidationError([Problem(side.name, ", ".join(side.on), "one row per key", len(clashing), examples)])
    empty = {c: int(n) for c, n in unique[side.columns].isna().sum().items() if n}
    return unique, empty
