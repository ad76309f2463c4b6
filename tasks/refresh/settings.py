"""The refresh's settings: when it runs, what it replays, how it dedups against earlier versions."""

from __future__ import annotations

import zoneinfo
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmwright.tasks.train.carbon_window import NIGHTLY_WINDOW, CarbonWindow


class RefreshSettings(BaseModel):
    """The nightly refresh: when it runs, how much old data it replays, how it dedups against the past."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field("0 2 * * *", description="Nightly schedule of the refresh deployment (cron syntax).")
    timezone: str = Field("UTC", description="IANA timezone the cron is read in (e.g. Europe/Berlin); never the server's.")
    carbon_window: CarbonWindow | None = Field(
        default_factory=lambda: NIGHTLY_WINDOW.model_copy(),
        description="Continued training starts only in this low-carbon window (default: 22:00-06:00 Europe/Berlin, "
        "12 h deadline); a refresh started outside it waits, Paused in the UI. null: train at once.",
    )
    replay_fraction: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Share of the continued-pretraining tokens drawn from earlier versions (replay against forgetting): "
        "replay = new tokens x f / (1 - f), capped by what exists. 0: new data only.",
    )
    replay_seed: int = Field(0, description="Salt of the replay sample (documents are chosen by a hash of their id).")
    min_val_tokens: int = Field(
        4096, ge=0, description="Top the held-out split up with old held-out documents to at least this many tokens."
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Near-duplicate threshold against earlier versions; null: dedup.threshold."
    )
    trust_mtime: bool = Field(
        True, description="Skip re-hashing a file whose size and mtime match the ledger (like rsync); false: hash every file."
    )
    max_steps: int | None = Field(None, ge=1, description="Steps of continued pretraining; null: pretrain.max_steps.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate of continued pretraining; null: pretrain.lr.")
    max_regression: float | None = Field(
        0.0,
        ge=0.0,
        description="Promote only if the new model's held-out loss on this refresh's val tokens is at most the promoted "
        "model's plus this (nats/token); null: only the evaluate gate decides.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as UTC or Europe/Berlin)") from None
        return v

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        from prefect.schedules import Cron

        Cron(v, timezone="UTC")  # raises ValueError("Invalid cron string ...")
        return v

    def schedule(self) -> Any:
        """The Prefect schedule for the refresh deployment."""
        from prefect.schedules import Cron

        return Cron(self.cron, timezone=self.timezone)
