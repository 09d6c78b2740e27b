"""The dataset spec: what any sales table must declare so the same code can read it.

A spec names the sales file, its date column and format, the series keys, the target, the
known covariates and the frequency, plus optional side tables joined by key. The Favorita,
Store Sales and CD4ML-workshop layouts are presets of the same spec (see `presets.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML, YAMLError

from cd4ml.data.download import is_url


class SpecError(ValueError):
    """A dataset spec is missing, unreadable or inconsistent."""


class SideTable(BaseModel):
    """A table of attributes joined onto every sales row by `on` (e.g. items by item_nbr)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    on: list[str]
    columns: list[str] | None = None  # attributes to keep; None keeps all but the join keys
    sha256: str | None = None


class Holidays(BaseModel):
    """Where holidays come from: a Favorita-style events file, or a country's public holidays."""

    model_config = ConfigDict(extra="forbid")

    events_file: str | None = None  # holidays_events.csv layout (date,type,locale,locale_name,...)
    country: str | None = None  # ISO code for the `holidays` package, e.g. "EC", "US"
    local_columns: list[str] = Field(default_factory=list)  # store attributes matched by locale

    @model_validator(mode="after")
    def _one_known_source(self) -> Holidays:
        import holidays

        if (self.events_file is None) == (self.country is None):
            raise ValueError("give exactly one of events_file and country")
        if self.country and self.country not in holidays.list_supported_countries():
            raise ValueError(f"unknown country code {self.country!r} (ISO 3166, e.g. US, EC)")
        return self


class Weights(BaseModel):
    """Per-row metric weights from an attribute, e.g. Favorita's perishable items weigh 1.25."""

    model_config = ConfigDict(extra="forbid")

    column: str
    weight_if_true: float = 1.25


class DatasetSpec(BaseModel):
    """How to read one sales table into cd4ml's canonical form."""

    model_config = ConfigDict(extra="forbid")

    name: str
    sales: str  # path (relative to the spec's folder) or http(s) URL
    sales_sha256: str | None = None
    date_column: str = "date"
    date_format: str | None = None  # strftime format; None: ISO, or one unambiguous known format
    series_keys: list[str]
    target: str
    covariates: list[str] = Field(default_factory=list)  # known ahead (promotions, holiday flags)
    attributes: list[str] = Field(default_factory=list)  # static per series, in the sales file
    drop_columns: list[str] = Field(default_factory=list)  # present but not usable (e.g. same-day)
    frequency: Literal["daily", "weekly"] = "daily"
    side_tables: list[SideTable] = Field(default_factory=list)
    holidays: Holidays | None = None
    slices: list[str] = Field(default_factory=list)  # attribute columns for per-slice metrics
    weights: Weights | None = None
    # keys written as text even when every value looks like a number (product codes: '71053')
    text_keys: list[str] = Field(default_factory=list)
    # what a preset did to the raw source before ingest (rows dropped and why): reported as repairs
    source_notes: list[str] = Field(default_factory=list)
    # folder or URL that relative locations are relative to (the spec's own); not part of it
    base: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> DatasetSpec:
        roles = self.sales_columns
        repeated = sorted({c for c in roles if roles.count(c) > 1})
        if repeated:
            raise ValueError(f"columns used in more than one role: {', '.join(repeated)}")
        not_keys = [k for k in self.text_keys if k not in self.series_keys]
        if not_keys:
            raise ValueError(f"text_keys must be series keys: {', '.join(not_keys)}")
        return self

    @property
    def sales_columns(self) -> list[str]:
        """The sales file's columns the spec gives a role; every other column is dropped."""
        return [
            self.date_column,
            self.target,
            *self.series_keys,
            *self.covariates,
            *self.attributes,
        ]

    @property
    def period_days(self) -> int:
        return 1 if self.frequency == "daily" else 7

    @property
    def season_length(self) -> int:
        """Periods in one seasonal cycle used by the seasonal-naive baseline."""
        return 7 if self.frequency == "daily" else 52

    def resolve(self, location: str) -> str:
        """A file named in the spec, as a URL or a path relative to the spec's folder or URL."""
        if is_url(location) or self.base is None:
            return location
        if is_url(self.base):
            return urljoin(self.base, location)
        return str((Path(self.base) / location).resolve())


def load_spec(path: Path, base: str | None = None) -> DatasetSpec:
    """Read a dataset spec YAML; errors name the file and the offending field.

    Relative file locations are relative to `base`, by default the spec's folder (a spec
    downloaded from a URL passes that URL, so its files come from beside it).
    """
    try:
        # YAML 1.2, where `on:` (a side table's join key) is a word, not the boolean true
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except (OSError, YAMLError) as exc:
        raise SpecError(f"{path}: cannot read dataset spec: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec must be a YAML mapping")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(spec)'}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(f"{path}: invalid dataset spec: {problems}") from exc
    return spec.model_copy(update={"base": base or str(path.parent.resolve())})
