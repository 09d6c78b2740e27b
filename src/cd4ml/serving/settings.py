"""Gateway settings: one object, from arguments and CD4ML_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError


class GatewaySettings(BaseModel):
    workdir: Path = Path(".")
    model_name: str = "sales-forecaster"
    alias: str = "champion"
    model: str | None = None  # a fixed bundle folder or model URI instead of the alias
    tracking_uri: str | None = None  # default: the work directory's store
    poll_seconds: float = Field(5.0, ge=0)  # 0 disables watching the alias
    admin_token: str | None = None
    max_rows: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    prediction_log: str | None = None  # sqlite:///path | postgresql://... | fluent://host:port/tag | none
    log_queue_size: int = Field(10_000, ge=1)
    top_contributions: int = Field(6, ge=1)
    routing_file: Path | None = None  # default: <workdir>/routing.yaml
    feedback_store: str | None = None  # default: sqlite:///<workdir>/feedback.db
    shadow_queue: int = Field(1_000, ge=1)  # shadow calls waiting beyond this are skipped, not queued

    @classmethod
    def from_env(cls, **overrides) -> GatewaySettings:
        """Settings from CD4ML_<NAME> variables (CD4ML_MAX_ROWS, CD4ML_ADMIN_TOKEN, …); empty ones
        are unset; `overrides` that are not None win. A bad value names its setting and variable."""
        names = [n for n in cls.model_fields if n != "routing_file"]  # release moves write <workdir>/routing.yaml
        env = {name: os.environ.get(f"CD4ML_{name.upper()}") for name in names}
        given = {k: v for k, v in env.items() if v} | {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            wrong = "; ".join(
                f"{e['loc'][0]} = {e['input']!r} (from its flag or CD4ML_{str(e['loc'][0]).upper()}): {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"gateway settings: {wrong}") from None

    def resolved_tracking_uri(self) -> str:
        from cd4ml.config import tracking_uri

        return self.tracking_uri or tracking_uri(self.workdir.resolve())

    def resolved_routing_file(self) -> Path:
        return self.routing_file or self.workdir / "routing.yaml"

    def resolved_feedback(self) -> str:
        return self.feedback_store or f"sqlite:///{(self.workdir / 'feedback.db').resolve()}"

    def resolved_log(self) -> str:
        return self.prediction_log or f"sqlite:///{(self.workdir / 'predictions.db').resolve()}"
