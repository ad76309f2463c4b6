"""retention: what is left of the intermediate datasets' text once a corpus is finished.

Every stage before pii (ingest, license, normalize, langid, quality) holds a full raw copy of
every document it saw, PII included, in its kept shards and its ``rejected/`` shards. Once the
corpus and its card are written, the ``retention`` step applies two settings to them:

- ``retention.intermediate_text: drop`` rewrites their kept shards to ids only and their
  rejected shards to id, reason, stage and detail (what the funnel and an audit need), with
  PII in them hashed as the pii stage hashes identifiers.
- ``rejected.keep_text: false`` (when the text is kept) redacts the rejected documents' text
  and identifiers as the pii stage would (typed placeholders, keyed hashes).

A dataset's ``retention.json`` says what was done to it; it is written *before* its shards are
rewritten, so a dataset interrupted half-way counts as dropped. Its manifest stays, so an
unchanged rerun is still a cache hit at every stage. A run that needs a dropped dataset's text
again (a changed threshold downstream of it, a card to rebuild) gets ``TextDroppedError`` from
``require_text``; the flow then forgets the dropped datasets (``forget_text_dropped``) and
rebuilds them from the sources: same inputs, same fingerprints, same documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.dataset import RETENTION_MARKER as MARKER, DatasetRef, retention_of, write_json, write_parquet
from lmwright.tasks.curate.pii import PiiParams, redact_text, scrub_identifiers
from lmwright.tasks.core.stage import StageWork, plan_stage, stage_step, stage_task

VERSION = "1"
REJECT_KEEP = ("id", "reason", "stage", "detail")


class RetentionSettings(BaseModel):
    """What stays on disk of the intermediate stages once the corpus is finished."""

    model_config = ConfigDict(extra="forbid")

    intermediate_text: Literal["keep", "drop"] = Field(
        "keep",
        description="keep: every stage's documents stay (a changed threshold reruns only what follows it). "
        "drop: the stages before pii keep only ids (and the reasons of rejected documents); a later run that "
        "needs their text rebuilds them from the sources.",
    )


class RejectedSettings(BaseModel):
    """What the ``rejected/`` shards of the stages before pii keep of a document."""

    model_config = ConfigDict(extra="forbid")

    keep_text: bool = Field(
        True,
        description="true: rejected documents keep their raw text (PII included) for audits. false: their text "
        "and identifiers are redacted like the pii stage's output once the corpus is finished.",
    )


def _drop_text(dataset: DatasetRef, pii: PiiParams) -> dict[str, int]:
    # Ids before pii are raw: they are hashed as the pii stage hashes them (same key, so they
    # still join with the corpus), and so is PII a rejection's detail may quote.
    hashed = pii.model_copy(update={"identifiers": ["id", "detail"] if pii.identifiers else []})
    for part in dataset.parts():
        write_parquet(scrub_identifiers(pl.read_parquet(part, columns=["id"]), hashed)[0], part)
    rejected = 0
    for part in dataset.rejected_parts():
        cols = [c for c in REJECT_KEEP if c in pl.read_parquet_schema(part)]
        frame = scrub_identifiers(pl.read_parquet(part, columns=cols), hashed)[0]
        write_parquet(frame, part)
        rejected += frame.height
    return {"kept_shards": len(dataset.parts()), "rejected": rejected}


def redact_rejected(frame: pl.DataFrame, pii: PiiParams) -> pl.DataFrame:
    """Rejected documents with their text and identifiers redacted as the pii stage redacts kept ones."""
    if not frame.height:
        return frame
    if "text" in frame.columns:
        redacted, _ = redact_text(frame, pii)
        frame = frame.with_columns(
            pl.when(pl.col("text").is_null()).then(None).otherwise(redacted).alias("text")
        )
    # identifiers: [] keeps raw ids in the corpus; the rejected ones stay raw too (they join)
    columns = [*pii.identifiers, "detail"] if pii.identifiers else []
    scrubbed, _ = scrub_identifiers(frame, pii.model_copy(update={"identifiers": columns}))
    return scrubbed


def _redact_rejected(dataset: DatasetRef, pii: PiiParams) -> dict[str, int]:
    rows = 0
    for part in dataset.rejected_parts():
        frame = pl.read_parquet(part)
        write_parquet(redact_rejected(frame, pii), part)
        rows += frame.height
    return {"rejected": rows}


def retain(dataset: DatasetRef, retention: RetentionSettings, rejected: RejectedSettings, pii: PiiParams) -> dict[str, Any]:
    """Apply the settings to one intermediate dataset (idempotent: its marker says what is done)."""
    done = retention_of(dataset)
    if retention.intermediate_text == "drop":
        wanted = {"kept_text": "dropped", "rejected_text": "dropped"}
    elif not rejected.keep_text:
        wanted = {"kept_text": "kept", "rejected_text": "redacted"}
    else:
        return {"stage": dataset.stage, "path": dataset.path, **(done or {"kept_text": "kept", "rejected_text": "kept"})}
    if done.get("rejected_text") == "dropped" or done == wanted:
        return {"stage": dataset.stage, "path": dataset.path, **done}  # already as little as asked, or less
    write_json(Path(dataset.path) / MARKER, wanted)  # first: a dataset interrupted half-way counts as done
    counts = _drop_text(dataset, pii) if wanted["kept_text"] == "dropped" else _redact_rejected(dataset, pii)
    return {"stage": dataset.stage, "path": dataset.path, **wanted, **counts}


@dataclass(frozen=True)
class RetentionWork(StageWork):
    """Done while its report exists *and* every dataset still carries its marker: a dataset rebuilt
    after ``forget_text_dropped`` has its text again, so the step must run again."""

    datasets: tuple[str, ...] = ()
    wanted: str = "dropped"  # or "redacted": what every dataset's rejected text must be at least

    def done(self) -> bool:
        less = ("dropped",) if self.wanted == "dropped" else ("redacted", "dropped")
        return super().done() and all(retention_of(d).get("rejected_text") in less for d in self.datasets)


def retention_work(
    workdir: str | Path, intermediate: Sequence[DatasetRef], settings: dict[str, Any], wanted: str
) -> RetentionWork:
    plan = plan_stage(workdir, "retention", VERSION, settings, [d.fingerprint for d in intermediate], area="retention")
    return RetentionWork(plan.stage, plan.fingerprint, plan.out_dir, None, tuple(d.path for d in intermediate), wanted)


@stage_task(task_run_name="retention")
@stage_step(metered=False)
def apply_retention(
    work: StageWork,
    intermediate: list[DatasetRef],
    retention: RetentionSettings,
    rejected: RejectedSettings,
    pii: PiiParams,
) -> dict[str, Any]:
    """Drop or redact the intermediate datasets' text; the report (manifest.json) marks the step done."""
    return {
        "intermediate_text": retention.intermediate_text,
        "rejected_keep_text": rejected.keep_text,
        "datasets": [retain(d, retention, rejected, pii) for d in intermediate],
    }


def run_retention(
    workdir: str | Path,
    intermediate: Sequence[DatasetRef],
    retention: RetentionSettings,
    rejected: RejectedSettings,
    pii: PiiParams,
) -> dict[str, Any]:
    """The flow-side half: plan (fingerprint of the datasets and settings), then the cached task.
    With the defaults (keep everything) there is nothing to do and no task runs."""
    if retention.intermediate_text == "keep" and rejected.keep_text:
        return {}
    settings = {
        "retention": retention.model_dump(),
        "rejected": rejected.model_dump(),
        "pii": pii.model_dump(mode="json") if not rejected.keep_text else None,
    }
    work = retention_work(workdir, intermediate, settings, "dropped" if retention.intermediate_text == "drop" else "redacted")
    return apply_retention(work, list(intermediate), retention, rejected, pii)




def render_retention_markdown(policy: dict[str, Any]) -> str:
    """The card's word on what stays on disk besides the corpus."""
    if policy.get("intermediate_text") == "drop":
        intermediate = (
            "dropped once the corpus is finished: the stages before pii (ingest, license, normalize, langid, "
            "quality) keep only document ids, and their rejected documents only id, reason and detail "
            "(`retention.intermediate_text: drop`)"
        )
        rejected = "dropped with the intermediate text"
    else:
        intermediate = "kept: every stage's documents stay on disk, raw before pii (`retention.intermediate_text: keep`)"
        rejected = (
            "kept raw, personal data included (`rejected.keep_text: true`)"
            if policy.get("rejected_keep_text", True)
            else "redacted like the corpus (placeholders, hashed identifiers) once the corpus is finished "
            "(`rejected.keep_text: false`)"
        )
    return (
        "## Retention\n\n"
        f"- Intermediate stages' text: {intermediate}.\n"
        f"- Text of documents rejected before pii (`rejected/`): {rejected}.\n"
    )


__all__ = [
    "RetentionSettings",
    "RejectedSettings",
    "redact_rejected",
    "run_retention",
    "render_retention_markdown",
]
