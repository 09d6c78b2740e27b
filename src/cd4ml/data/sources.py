"""Turn a SOURCE argument (sample, a folder, a file, a URL or a spec) into a dataset spec."""

from __future__ import annotations

import csv
from pathlib import Path

from cd4ml.data import presets
from cd4ml.data.download import fetch, is_url
from cd4ml.data.spec import DatasetSpec, SpecError, load_spec

FAVORITA_TRAIN = {"date", "store_nbr", "item_nbr", "unit_sales"}
STORE_SALES_TRAIN = {"date", "store_nbr", "family", "sales"}


def header(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def resolve_source(source: str, cache_dir: Path) -> DatasetSpec:
    """Recognise the source's layout from its shape; anything else needs a dataset spec."""
    if is_url(source):
        if source.endswith((".yaml", ".yml")):
            return load_spec(fetch(source, cache_dir))
        local = fetch(source, cache_dir)
        return _single_file(local, shown_as=source)
    path = Path(source).expanduser()
    if not path.exists():
        raise SpecError(f"data source not found: {source} (use 'sample', a folder, a CSV, a URL or a spec YAML)")
    if path.suffix in {".yaml", ".yml"}:
        return load_spec(path)
    if path.is_dir():
        train = path / "train.csv"
        if not train.exists():
            raise SpecError(f"{path}: no train.csv; a Favorita or Store Sales folder holds train.csv")
        columns = set(header(train))
        if FAVORITA_TRAIN <= columns:
            return presets.favorita(path)
        if STORE_SALES_TRAIN <= columns:
            return presets.store_sales(path)
        raise SpecError(
            f"{train}: columns {sorted(columns)} match neither the Favorita nor the Store Sales "
            "layout; describe the table with a dataset spec YAML"
        )
    return _single_file(path, shown_as=source)


def _single_file(path: Path, shown_as: str) -> DatasetSpec:
    columns = header(path)
    if set(presets.STORE47_COLUMNS) <= set(columns):
        return presets.store47(str(path.resolve()))
    raise SpecError(
        f"{shown_as}: columns {columns} are not the CD4ML workshop's store47 layout; "
        "describe the table with a dataset spec YAML"
    )
