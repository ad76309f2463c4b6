"""Validation settings and the error a failing suite raises (no Great Expectations import)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["fail", "warn"]


class DataQualityError(RuntimeError):
    """A stage's output failed its expectations; the message names them and the Data Docs."""


class ValidationSettings(BaseModel):
    """How stage outputs are validated."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the suites at all; off skips every check (not recommended).")
    severity: Severity = Field("fail", description="Default action when a suite fails: fail the stage or log a warning.")
    stage_severity: dict[str, Severity] = Field(
        # The bias audit's filter-fairness flags are findings to read in the data card, not
        # data corruption: they warn unless a user asks them to fail the run.
        default_factory=lambda: {"bias_audit": "warn"},
        description="Per-stage override of `severity`, e.g. {quality: warn, bias_audit: fail}.",
    )
    docs_dir: str | None = Field(
        None,
        description="Where Data Docs HTML is written (index.html at its top); the flow uses <workdir>/data_docs. "
        "None writes no Data Docs.",
    )
    build_docs: Literal["failures", "always", "never"] = Field(
        "failures",
        description="When Data Docs pages are rendered: only for failed validations (cheap), for every "
        "validation (a page per shard), or never.",
    )
    sample_rows: int | None = Field(
        None,
        ge=1,
        description="Validate a fixed-seed sample of at most this many kept rows per shard instead of the whole "
        "shard (faster on huge shards, but a violation outside the sample goes unseen). None checks every row.",
    )
    max_examples: int = Field(3, ge=1, description="Unexpected values quoted per failed expectation in the error message.")

    def severity_for(self, stage: str) -> Severity:
        return self.stage_severity.get(stage, self.severity)
