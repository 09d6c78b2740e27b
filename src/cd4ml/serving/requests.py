"""Request and response shapes, typed from the live model's feature spec."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from cd4ml.features import FeatureSpec

# bounded so a value stays finite as the float32 the model reads
Covariate = Annotated[
    float, Field(allow_inf_nan=False, ge=-1e30, le=1e30, description="known ahead, e.g. on promotion")
]


def request_models(
    spec: FeatureSpec, key_kinds: dict[str, type], max_rows: int
) -> tuple[type[BaseModel], type[BaseModel]]:
    """(Row, PredictRequest) models: series keys, date and covariates are required; nothing else."""
    # strict: a key is never coerced (lax mode would read `true` as store 1 and "1" as 1)
    fields: dict[str, Any] = {
        k: (key_kinds[k], Field(..., strict=True, description="series key")) for k in spec.series_keys
    }
    fields["date"] = (date, Field(..., description="the day to forecast, YYYY-MM-DD"))
    fields |= {c: (Covariate, ...) for c in spec.covariates}
    row = create_model("Row", __config__=ConfigDict(extra="forbid"), **fields)
    request = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(Annotated[list[row], Field(min_length=1, max_length=max_rows)], ...),
    )
    return row, request


class Contribution(BaseModel):
    feature: str
    value: float = Field(description="contribution to log1p(sales)")


class Prediction(BaseModel):
    prediction: float
    arm: str
    version: str
    contributions: list[Contribution] | None = None


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    arm: str
    model: ModelRef
    predictions: list[Prediction]


Actual = Annotated[float, Field(allow_inf_nan=False)]


class OriginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    complete_through: date = Field(description="the last day whose actuals are all in: the new forecast origin")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    actual: Actual | list[Actual] | None = Field(None, description="observed sales, one per requested row")
    reward: float | None = Field(None, ge=0, le=1, description="user action on the forecast, e.g. 1 = order placed")

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.actual is None and self.reward is None:
            raise ValueError("give an actual, a reward, or both")
        return self


class Alert(BaseModel):
    status: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""  # Alertmanager's field name
    fingerprint: str = ""

    @property
    def incident(self) -> str:
        """One firing of one alert ('' if unnamed): the fingerprint stays across firings."""
        return f"{self.fingerprint}@{self.startsAt}" if self.fingerprint else ""


class AlertmanagerWebhook(BaseModel):
    """The body Alertmanager's webhook receiver posts (version 4); unknown fields are ignored."""

    status: str
    alerts: list[Alert] = Field(default_factory=list, max_length=1000)
