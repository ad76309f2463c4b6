"""Great Expectations suites, one per stage, and the helpers stages call.

(Interface fixed here; the suites are being built.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field


class DataQualityError(RuntimeError):
    """A stage's output failed its expectations; the message names them and the Data Docs."""


class ValidationSettings(BaseModel):
    """How stage outputs are validated."""

    severity: Literal["fail", "warn"] = Field("fail", description="Default action when a suite fails.")
    stage_severity: dict[str, Literal["fail", "warn"]] = Field(
        default_factory=dict, description="Per-stage override of `severity`, e.g. {quality: warn}."
    )
    docs_dir: str | None = Field(None, description="Where Data Docs HTML is written; default <workdir>/data_docs.")


def validate_shard(stage: str, kept: pl.DataFrame, rejected: pl.DataFrame, params: Any,
                   settings: ValidationSettings, shard: str) -> None:
    raise NotImplementedError


def validate_stage(stage: str, out_dir: Path, shards: list, params: Any, settings: ValidationSettings) -> None:
    raise NotImplementedError
