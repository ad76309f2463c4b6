"""ingest: sources -> documents with stable ids and provenance, shard by shard.

Source files are packed into units of about ``shard_bytes`` (a larger file is a unit alone),
and each unit is one mapped Prefect task: the number of task runs, and of shards every later
stage maps over, follows bytes, not files. A unit streams its records into bounded shards
``part-<unit>-<k>``; bad input becomes rejected records whose ``uri`` names the file and line
(or byte offset), so nothing is lost without a reason.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

import polars as pl
from prefect import get_run_logger, unmapped
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmwright.data_quality import ValidationSettings, validate_shard
from lmwright.tasks.core.energy import EnergyRecord, EnergySettings
from lmwright.tasks.curate.license.spdx import normalize_license
from lmwright.tasks.core.dataset import DOC_SCHEMA, DatasetRef, ShardStats, shard_stats_path, text_bytes, write_json, write_shard
from lmwright.tasks.curate.sources import (
    BUILTINS,
    HtmlExtraction,
    Record,
    Rejected,
    SourceFile,
    SourceInput,
    SourceSpec,
    list_source_files,
    pydocs_fingerprint_input,
    read_records,
)
from lmwright.tasks.core.stage import Made, StageWork, finalize_stage, plan_stage, read_marker, stage_step, stage_task

VERSION = "2"  # 2: small files packed into units by bytes; WARC columns (warc_date, content_type, warc_record_id)


class IngestParams(BaseModel):
    """Where documents come from and how files become documents."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceInput] = Field(
        default_factory=lambda: [SourceSpec(path="builtin:pydocs")],
        description="Inputs: paths, directories, fsspec URLs or builtin:pydocs (a string is a path).",
    )
    text_split: Literal["file", "paragraph"] = Field(
        "file", description="For .txt/.md files: one document per file, or one per blank-line-separated paragraph."
    )
    max_doc_bytes: int = Field(
        16 << 20, gt=0, description="Documents larger than this are rejected (ingest_doc_too_large), never loaded whole."
    )
    shard_docs: int = Field(20_000, gt=0, description="At most this many documents per output shard.")
    shard_bytes: int = Field(
        128 << 20,
        gt=0,
        description="At most about this many text bytes per output shard; smaller files are read together, one task run "
        "per this many bytes of files.",
    )
    html: HtmlExtraction = Field(default_factory=HtmlExtraction, description="How WARC pages (HTML) become documents.")

    @field_validator("sources")
    @classmethod
    def _at_least_one(cls, v: list[SourceSpec]) -> list[SourceSpec]:
        if not v:
            raise ValueError("give at least one source")
        return v


# Provenance of crawled pages, kept by every later stage (null for other sources).
WARC_COLUMNS: dict[str, pl.DataType] = {"warc_date": pl.String(), "content_type": pl.String(), "warc_record_id": pl.String()}
INGEST_SCHEMA = {**DOC_SCHEMA, **WARC_COLUMNS}
REJECTED_SCHEMA = {**INGEST_SCHEMA, "reason": pl.String(), "detail": pl.String(), "stage": pl.String()}


def doc_id(source: str, relpath: str, position: str) -> str:
    """Stable id from source and position: the same file and line give the same id on every run."""
    return hashlib.sha1(f"{source}\x00{relpath}\x00{position}".encode()).hexdigest()[:20]


def source_fingerprints(files: list[SourceFile]) -> list[str]:
    """What ingest's output depends on: every file's path, size and mtime (like make)."""
    entries = []
    builtin_inputs: dict[str, str] = {}  # one look at the installed distributions per builtin source, not per unit
    for f in files:
        if f.source.path in BUILTINS:
            if f.source.path not in builtin_inputs:
                builtin_inputs[f.source.path] = pydocs_fingerprint_input(f.source.path)
            entries.append(f"{f.source.model_dump_json()}|{f.path}|{builtin_inputs[f.source.path]}")
        else:
            entries.append(f"{f.source.model_dump_json()}|{f.path}|{f.size}|{f.mtime}")
    return [hashlib.sha256("\n".join(entries).encode()).hexdigest()]


def unit_name(index: int) -> str:
    return f"unit-{index:05d}"


def _rows(file: SourceFile, records: Iterator[Record | Rejected]) -> Iterator[tuple[dict, bool]]:
    label = file.source.label
    builtin = file.source.path in BUILTINS
    for r in records:
        # file.jsonl#L12 for files; builtin:pydocs/stdlib/os.py for the builtin corpus
        uri = f"{file.source.path}/{r.position}" if builtin else f"{file.path}#{r.position}"
        if isinstance(r, Record):
            yield {
                "id": r.own_id if r.own_id is not None else doc_id(label, file.relpath, r.position),
                "text": r.text,
                "source": label,
                "uri": uri,
                "license": r.license or normalize_license(file.source.license),
                "url": r.url,
                "warc_date": r.warc_date,
                "content_type": r.content_type,
                "warc_record_id": r.warc_record_id,
            }, True
        else:
            yield {
                "id": doc_id(label, file.relpath, r.position),
                "text": r.text,
                "source": label,
                "uri": uri,
                "license": normalize_license(file.source.license),
                "url": None,
                "reason": r.reason,
                "detail": f"{uri}: {r.detail}",
                "stage": "ingest",
            }, False


def pack_files(files: list[SourceFile], target_bytes: int) -> list[list[SourceFile]]:
    """Consecutive files in units of up to ``target_bytes`` (a larger file alone), so task runs follow bytes.

    A builtin group is a unit alone: its size is unknown until it is read.
    """
    units: list[list[SourceFile]] = []
    unit: list[SourceFile] = []
    size = 0
    for f in files:
        alone = f.format == "pydocs"
        if unit and (alone or size + f.size > target_bytes):
            units.append(unit)
            unit, size = [], 0
        unit.append(f)
        size += f.size
        if alone:
            units.append(unit)
            unit, size = [], 0
    if unit:
        units.append(unit)
    return units


def _unit_parts(work: StageWork) -> list[ShardStats]:
    return [ShardStats.from_json(s) for s in read_marker(work)["parts"]]


@stage_task(task_run_name="ingest-{work.unit}")
@stage_step(read=_unit_parts)
def ingest_unit(
    work: StageWork,
    index: int,
    files: list[SourceFile],
    params: IngestParams,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> Made:
    """Read a unit of source files into bounded shards of kept and rejected documents."""
    out = Path(work.out_dir)
    parts: list[ShardStats] = []
    kept: list[dict] = []
    rejected: list[dict] = []
    size = 0
    start = time.perf_counter()

    def flush() -> None:
        nonlocal kept, rejected, size, start
        shard = f"part-{index:05d}-{len(parts):04d}"
        kept_df = pl.DataFrame(kept, schema=INGEST_SCHEMA)
        rejected_df = pl.DataFrame(rejected, schema=REJECTED_SCHEMA)
        validate_shard("ingest", kept_df, rejected_df, params, validation, shard=shard)
        parts.append(
            write_shard(
                out,
                shard,
                "ingest",
                docs_in=kept_df.height + rejected_df.height,
                bytes_in=text_bytes(kept_df) + text_bytes(rejected_df),
                kept=kept_df,
                rejected=rejected_df,
                seconds=time.perf_counter() - start,
            )
        )
        write_json(shard_stats_path(out, shard), parts[-1].to_json())
        kept, rejected, size, start = [], [], 0, time.perf_counter()

    for file in files:
        bad = 0
        for row, ok in _rows(file, read_records(file, params.max_doc_bytes, params.text_split, params.html)):
            (kept if ok else rejected).append(row)
            bad += not ok
            size += len(row["text"])
            if len(kept) + len(rejected) >= params.shard_docs or size >= params.shard_bytes:
                flush()
        if bad:
            get_run_logger().warning("%s: %d record(s) rejected, see rejected/ and stats.json", file.path, bad)
    if kept or rejected or not parts:
        flush()

    def record(used: EnergyRecord) -> dict[str, Any]:
        parts[-1].energy = used.to_json()  # the unit's energy, booked on its last shard
        return {"files": [f.path for f in files], "parts": [p.to_json() for p in parts]}

    return record


def run_ingest(
    workdir: str | Path, params: IngestParams, validation: ValidationSettings, energy: EnergySettings | None = None
) -> DatasetRef:
    """Expand sources into files, map ingest over them, finalize: the flow-side half of ingest."""
    logger = get_run_logger()
    files: list[SourceFile] = []
    skipped: list[dict[str, str]] = []
    for spec in params.sources:
        found, skip = list_source_files(spec)
        files += found
        skipped += skip
    for s in skipped:
        logger.warning("skipped %s: %s (%s)", s["file"], s["reason"], s["detail"])
    work = plan_stage(workdir, "ingest", VERSION, params, source_fingerprints(files))
    if work.done():  # every file already read: one cache hit instead of one per file
        return finalize_stage(work, VERSION, params, [], [], validation)
    units = pack_files(files, params.shard_bytes)
    futures = ingest_unit.map(
        [work.for_unit(unit_name(i)) for i in range(len(units))],
        index=list(range(len(units))),
        files=units,
        params=unmapped(params),
        validation=unmapped(validation),
        energy=unmapped(energy),
    )
    shards = [s for f in futures for s in f.result()]
    return finalize_stage(
        work, VERSION, params, [], shards, validation, extra_stats=skipped_stats(files, skipped)
    )


def skipped_stats(files: list[SourceFile], skipped: list[dict[str, str]]) -> dict[str, object]:
    """Ingest's file-level accounting: files read, files skipped (each with its reason), counts by reason."""
    by_reason = Counter(s["reason"] for s in skipped)
    return {"files": len(files), "skipped_files": skipped, "skipped_by_reason": dict(sorted(by_reason.items()))}
