"""Request and response shapes, typed from the live model's feature spec."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from cd4ml.features import FeatureSpec

Covariate = Annotated[float, Field(ge=0, allow_inf_nan=False, description="known ahead, e.g. items on promotion")]


def request_models(spec: FeatureSpec, key_kinds: dict[str, type], max_rows: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """(Row, PredictRequest) models: series keys, date and covariates are required; nothing else."""
    fields: dict[str, Any] = {k: (key_kinds[k], Field(..., description="series key")) for k in spec.series_keys}
    fields["date"] = (date, Field(..., description="the day to forecast, YYYY-MM-DD"))
    fields |= {c: (Covariate, ...) for c in spec.covariates}
    row = create_model("Row", __config__=ConfigDict(extra="forbid"), **fields)
    request = create_model(
        "PredictRequest", __config__=ConfigDict(extra="forbid"),
        rows=(Annotated[list[row], Field(min_length=1, max_length=max_rows)], ...),
    )
    return row, request


class Contribution(BaseModel):
    feature: str
    value: float = Field(description="contribution to log1p(sales)")


class Prediction(BaseModel):
    prediction: float
    contributions: list[Contribution] | None = None


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    model: ModelRef
    predictions: list[Prediction]
