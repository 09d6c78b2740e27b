"""The "Sales forecast" page of the CD4ML reference, done properly, and the catalog it searches."""

from __future__ import annotations

from importlib import resources

import pandas as pd
from fastapi import FastAPI
from fastapi.responses import HTMLResponse


def catalog(arms) -> dict:
    """For each series key, its values with a readable label built from the attributes that
    depend on that key alone (an item's family and class, a store's city and type)."""
    model = arms.champion.current
    series = model.scorer.attributes.reset_index()
    keys = model.spec.series_keys
    attributes = [c for c in series.columns if c not in keys and c != "weight"]
    fields = []
    for key in keys:
        own = [a for a in attributes if series.groupby(key)[a].nunique().max() == 1]
        values = series[[key, *own]].drop_duplicates(key).sort_values(key)
        options = [
            {"value": _plain(row[key]), "label": " · ".join([*(_shown(a, row[a]) for a in own), f"{key} {row[key]}"])}
            for _, row in values.iterrows()
        ]
        fields.append({"name": key, "options": options})
    pairs = series[keys].astype(str).agg("|".join, axis=1).tolist()
    first = pd.Timestamp(model.scorer.origin) + pd.Timedelta(days=model.spec.period_days)
    return {
        "keys": fields,
        "series": pairs,
        "covariates": model.spec.covariates,
        "dates": {
            "min": first.date().isoformat(),
            "max": model.scorer.last_servable.isoformat(),
            "step_days": model.spec.period_days,
        },
        "live": arms.live(),
        "strategy": arms.routing.strategy,
    }


def _shown(name: str, value) -> str:
    """Words speak for themselves; bare numbers get their attribute's name."""
    text = str(value)
    return f"{name} {text}" if text.replace(".", "").isdigit() else text


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def add_web(app: FastAPI, arms) -> None:
    page = (resources.files("cd4ml.serving") / "index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    cached: dict[str, dict] = {}

    @app.get("/api/catalog")
    async def api_catalog():
        """Series keys with readable labels, servable dates and the live model(s)."""
        state = repr(arms.live()) + arms.routing.strategy
        if state not in cached:
            cached.clear()
            cached[state] = catalog(arms)
        return cached[state]
