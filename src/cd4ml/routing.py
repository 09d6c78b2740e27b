"""Release strategies: which arm serves a request, and which arms shadow it.

One YAML file (also readable and changeable through the admin API and `cd4ml release`)
names the arms — each a registry alias or version — and how traffic is shared:

    strategy: canary            # single | multiple | shadow | canary | ab | bandit | online
    arms: {champion: champion, challenger: challenger}   # arm name → alias or version
    share: 0.1                  # canary: challenger's share, online: the online arm's; ab: see shares
    snapshot_every: 1000        # online: register the learned model every N actuals
    shares: {champion: 0.5, challenger: 0.5}
    sticky_by: header           # header (X-Client-Id, else the series key) | series
    segment: {column: family, arms: {PRODUCE: produce}, default: champion}   # multiple
    bandit: {policy: thompson, epsilon: 0.1}

Assignment for canary and A/B is a hash of the sticky key, so a client never flips between
models while the shares stand still.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["single", "multiple", "shadow", "canary", "ab", "bandit", "online"]
CHAMPION_ARM = "champion"
ONLINE_ARM = "online"


class Segment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str
    arms: dict[str, str]  # segment value → arm
    default: str = CHAMPION_ARM


class BanditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["epsilon_greedy", "thompson", "ucb1"] = "thompson"
    epsilon: float = Field(0.1, ge=0, le=1)
    state: str | None = None  # sqlite:///path (default: beside the prediction log) | redis://... | postgresql://...


class Routing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "single"
    arms: dict[str, str] = Field(default_factory=lambda: {CHAMPION_ARM: "champion"})
    share: float = Field(0.0, ge=0, le=1)
    shares: dict[str, float] = Field(default_factory=dict)
    sticky_by: Literal["header", "series"] = "header"
    snapshot_every: int = Field(1000, ge=1)
    salt: str = "cd4ml"
    segment: Segment | None = None
    bandit: BanditSettings = BanditSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Routing:
        if CHAMPION_ARM not in self.arms:
            raise ValueError("arms must include 'champion'")
        needs_two = {"shadow", "canary", "ab", "bandit", "online"}
        if self.strategy in needs_two and len(self.arms) < 2:
            raise ValueError(f"strategy '{self.strategy}' needs at least two arms")
        if self.strategy == "canary" and "challenger" not in self.arms:
            raise ValueError("canary needs a 'challenger' arm")
        if self.strategy == "online" and ONLINE_ARM not in self.arms:
            raise ValueError("online needs an 'online' arm (the model it starts from, e.g. online: champion)")
        if any(not 0 <= share <= 1 for share in self.shares.values()):
            raise ValueError("each share must be between 0 and 1")
        unknown = [a for a in self.shares if a not in self.arms]
        if unknown:
            raise ValueError(f"shares name unknown arms: {', '.join(unknown)}")
        if self.strategy == "ab" and self.shares and abs(sum(self.shares.values()) - 1) > 1e-6:
            raise ValueError("ab shares must add up to 1")
        if self.strategy == "multiple":
            if self.segment is None:
                raise ValueError("strategy 'multiple' needs a segment")
            missing = [a for a in [*self.segment.arms.values(), self.segment.default] if a not in self.arms]
            if missing:
                raise ValueError(f"segment routes to unknown arms: {', '.join(missing)}")
        return self

    def ab_shares(self) -> dict[str, float]:
        return self.shares or {arm: 1 / len(self.arms) for arm in self.arms}


def load_routing(path: Path) -> Routing:
    if not path.exists():
        return Routing()
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:  # a ValueError, so a half-edited file cannot stop the gateway's watcher
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    return Routing.model_validate(loaded or {})


def save_routing(path: Path, routing: Routing) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(routing.model_dump(mode="json", exclude_defaults=False), sort_keys=False))
    temporary.replace(path)


def bucket(salt: str, key: str) -> float:
    """A stable, uniform number in [0, 1) for a sticky key."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sticky_choice(routing: Routing, key: str) -> str:
    """The arm for a sticky key under canary, online or A/B shares."""
    u = bucket(routing.salt, key)
    if routing.strategy in {"canary", "online"}:
        second = "challenger" if routing.strategy == "canary" else ONLINE_ARM
        return second if u < routing.share else CHAMPION_ARM
    cumulative = 0.0
    shares = routing.ab_shares()
    for arm, share in shares.items():
        cumulative += share
        if u < cumulative:
            return arm
    return list(shares)[-1]
