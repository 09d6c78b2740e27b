"""The dataset spec: what any sales table must declare so the same code can read it.

A spec names the sales file, its date column and format, the series keys, the target, the
known covariates and the frequency, plus optional side tables joined by key. The Favorita,
Store Sales and CD4ML-workshop layouts are presets of the same spec (see `presets.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


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
    attributes: list[str] = Field(default_factory=list)  # static per-series columns in the sales file
    drop_columns: list[str] = Field(default_factory=list)  # present but not usable (e.g. same-day)
    frequency: Literal["daily", "weekly"] = "daily"
    side_tables: list[SideTable] = Field(default_factory=list)
    holidays: Holidays | None = None
    slices: list[str] = Field(default_factory=list)  # attribute columns for per-slice metrics
    weights: Weights | None = None
    base_dir: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> DatasetSpec:
        roles = [self.date_column, self.target, *self.series_keys, *self.covariates, *self.attributes]
        repeated = sorted({c for c in roles if roles.count(c) > 1})
        if repeated:
            raise ValueError(f"columns used in more than one role: {', '.join(repeated)}")
        return self

    @property
    def period_days(self) -> int:
        return 1 if self.frequency == "daily" else 7

    @property
    def season_length(self) -> int:
        """Periods in one seasonal cycle used by the seasonal-naive baseline."""
        return 7 if self.frequency == "daily" else 52

    def resolve(self, location: str) -> str:
        """A file named in the spec, as a URL or a path relative to the spec's folder."""
        if location.startswith(("http://", "https://")) or self.base_dir is None:
            return location
        return str((self.base_dir / location).resolve())


def load_spec(path: Path) -> DatasetSpec:
    """Read a dataset spec YAML; errors name the file and the offending field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read dataset spec: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a dataset spec must be a YAML mapping")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(spec)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SpecError(f"{path}: invalid dataset spec: {problems}") from exc
    return spec.model_copy(update={"base_dir": path.parent.resolve()})
