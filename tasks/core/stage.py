"""The stage contract as Prefect tasks: cached by output fingerprint, retryable, validated.

A shard-wise stage is a ``ShardStage``: a name, a code version and a pure function
``apply(docs, params) -> docs`` that adds signal columns and a ``reason`` column
(null keeps the document; a namespaced string such as ``gopher_short_doc`` drops it).
The function never counts, writes or logs drops: ``process_shard`` does, for every
stage alike, and ``finalize_stage`` validates and writes the manifest last.

Every step of every stage (a shard, a unit of work, a whole stage's output) has one body,
``stage_step``: done -> what it wrote is read back; else it runs, metered, and its marker is
written last.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar, Union

import polars as pl
from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import as_completed

from lmwright.data_quality import DataQualityError, ValidationSettings, validate_shard, validate_stage
from lmwright.tasks.core.energy import EnergyRecord, EnergySettings, track
from lmwright.tasks.core.errors import UserError
from lmwright.tasks.core.files import disk_errno, point_latest, write_json
from lmwright.tasks.core.results import PERSISTED_RESULTS, RecordLocks, delete_record, refuse_foreign_record
from lmwright.tasks.core.progress import LiveProgress
from lmwright.tasks.core.dataset import (
    DatasetRef,
    ShardStats,
    finalize_dataset,
    fingerprint,
    is_complete,
    manifest_of,
    require_text,
    shard_name,
    split_decisions,
    text_bytes,
    write_shard,
)

RETRY_DELAYS = [1, 5, 15]
# A stage decides per document, so a shard is decided a slice of about this much text at a time: the
# working memory of its signals (quality's token lists and n-gram tables: ~25x the text they come from)
# then follows the slice, and a shard can be as big as the orchestration wants (measured on 48 MB of
# web text: quality peaked at +1,180 MiB on the whole frame, +200 MiB in slices of 1,000 documents).
SLICE_BYTES = 8 << 20


@dataclass(frozen=True)
class ShardStage:
    """A stage that decides keep/drop per document, one shard at a time."""

    name: str
    version: str
    apply: Callable[[pl.DataFrame, Any], pl.DataFrame]
    # Counts of what the stage changes without dropping (e.g. characters stripped), summed into stats.json.
    count: Callable[[pl.DataFrame, Any], dict[str, int]] | None = None


@dataclass(frozen=True)
class StageWork:
    """What one task run produces: a stage's output (``unit=None``) or one unit of it."""

    stage: str
    fingerprint: str
    out_dir: str
    unit: str | None = None

    @property
    def cache_key(self) -> str:
        # The output directory is part of the key: the same stage in two workdirs is two outputs.
        where = hashlib.sha1(str(Path(self.out_dir).resolve()).encode()).hexdigest()[:10]
        return f"{self.stage}-{self.fingerprint}-{self.unit or 'manifest'}-{where}"

    @property
    def marker(self) -> Path:
        """The file whose existence means this work is done (written last by it)."""
        out = Path(self.out_dir)
        if self.unit is None:
            return out / "manifest.json"
        return out / "stats" / f"{self.unit}.json"

    def done(self) -> bool:
        return self.marker.is_file()

    def for_unit(self, unit: str) -> "StageWork":
        return StageWork(self.stage, self.fingerprint, self.out_dir, unit)


R = TypeVar("R")
Record = dict[str, Any]
# What a step's body returns: the record its marker holds, or a function of the step's energy
# record giving it, when the record needs more than the figures (training: tokens per joule).
Made = Union[Record, Callable[[EnergyRecord], Record]]


def read_marker(work: StageWork) -> Record:
    """What a finished step recorded in its marker."""
    return json.loads(work.marker.read_text())


def latest_as_stage(work: StageWork) -> str:
    return work.stage


def stage_step(
    read: Callable[[StageWork], Any] = read_marker,
    *,
    metered: bool = True,
    latest: Callable[[StageWork], str] | None = None,
) -> Callable[[Callable[..., Made]], Callable[..., Any]]:
    """The one body of a cached step, for a function whose parameters include ``work`` (and ``energy``).

    ``work`` done (an earlier run, or this run before a retry): ``read(work)``, and nothing runs.
    Else the function runs (``metered``: under ``energy.track(work.stage, energy)``) and returns its
    marker's record; a metered dict record gets the step's ``energy``. The record is written as
    ``work.marker``, last: from then on the step is done. ``latest`` names the ``latest/`` pointer
    set after it. A fresh run returns ``read(work)`` too, so it returns what a cached run would.
    The cache policy (``StageOutputCache``) keys on the same ``work``: this guard is what a retry,
    or a second run that waited for the first's lock, meets.
    """

    def decorate(body: Callable[..., Made]) -> Callable[..., Any]:
        signature = inspect.signature(body)

        @functools.wraps(body)
        def step(*args: Any, **kwargs: Any) -> Any:
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            work: StageWork = call.arguments["work"]
            if work.done():
                return read(work)
            meter = track(work.stage, call.arguments.get("energy")) if metered else nullcontext(None)
            with meter as used:
                made = body(*args, **kwargs)
            record = made(used) if callable(made) else made
            if used is not None and not callable(made):
                record = {**record, "energy": used.to_json()}
            write_json(work.marker, record)  # last: the step is done
            if latest is not None:
                point_latest(work.out_dir, latest(work))
            return read(work)

        return step

    return decorate


def plan_stage(
    workdir: str | Path, stage: str, version: str, params: Any, inputs: Sequence[str], area: str = "datasets"
) -> StageWork:
    """Compute a stage's output fingerprint and its directory ``<workdir>/<area>/<stage>/<fp>``."""
    fp = fingerprint(stage, version, params, inputs)
    out = Path(workdir) / area / stage / fp
    if not is_complete(out):
        # Shard outputs with their stats marker survive: a rerun resumes after them.
        out.mkdir(parents=True, exist_ok=True)
    return StageWork(stage=stage, fingerprint=fp, out_dir=str(out))


@dataclass
class StageOutputCache(CachePolicy):
    """Cache key = the work's output fingerprint; a hit counts only while its output exists.

    Tasks using it take their ``StageWork`` as the parameter named ``work``.
    When the output is gone (deleted, or never finished), any stale record under the
    key is expired so the task runs again instead of returning a path to nothing.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        work: StageWork = inputs["work"]
        key = work.cache_key
        if not work.done():
            expire_record(task_ctx.result_store, key)
        else:  # a record Prefect would unpickle (a planted file) is deleted before it is looked up
            refuse_foreign_record(task_ctx.result_store, key)
        return key


def expire_record(store: Any, key: str) -> None:
    """Delete the record under ``key`` from a Prefect result store (its metadata and its result storage)."""
    for storage in (getattr(store, "metadata_storage", None), getattr(store, "result_storage", None)):
        if storage is not None:
            delete_record(storage, key)


# SERIALIZABLE: two runs on one workdir take turns per output unit; the second reads the first's from the cache.
STAGE_CACHE = StageOutputCache(isolation_level="SERIALIZABLE", lock_manager=RecordLocks())


def is_not_data_quality_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures; a failed expectation, or a full or read-only disk, fails the same way every time."""
    try:
        state.result()
    except (DataQualityError, UserError):
        return False
    except Exception as exc:
        return disk_errno(exc) is None
    return True


stage_task = task(
    cache_policy=STAGE_CACHE,
    retries=3,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=is_not_data_quality_error,
    persist_result=True,
    **PERSISTED_RESULTS,  # typed JSON, never a pickle: a cache hit runs no code from the record
)


def _shard_stats(work: StageWork) -> ShardStats:
    return ShardStats.from_json(read_marker(work))


@stage_task(task_run_name="{work.stage}-{work.unit}")
@stage_step(read=_shard_stats)
def process_shard(
    work: StageWork,
    stage: ShardStage,
    input_part: str,
    params: Any,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> Record:
    """Run one stage on one shard: decide, split, validate, write kept + rejected; its stats are the marker."""
    start = time.perf_counter()
    docs = pl.read_parquet(input_part)
    decided = apply_in_slices(stage, docs, params)
    kept, rejected = split_decisions(decided, stage.name)
    validate_shard(stage.name, kept, rejected, params, validation, shard=work.unit)
    counts = stage.count(docs, params) if stage.count else {}
    if decided.height != docs.height:
        # A stage that splits documents (normalize cutting books into chunks) decides on the pieces:
        # 'in' counts those, so in == kept + rejected holds; how many documents came in is a count.
        counts = {**counts, "documents_received": docs.height, "documents_added_by_splitting": decided.height - docs.height}
    return write_shard(
        Path(work.out_dir),
        work.unit,
        stage.name,
        docs_in=decided.height,
        bytes_in=text_bytes(docs),
        kept=kept,
        rejected=rejected,
        seconds=time.perf_counter() - start,
        counts=counts,
    ).to_json()


def text_slices(docs: pl.DataFrame, max_bytes: int = SLICE_BYTES) -> list[pl.DataFrame]:
    """Consecutive slices of ``docs`` of about ``max_bytes`` of text each (a larger document is a slice alone)."""
    if docs.height <= 1:
        return [docs]
    ends = (docs["text"].str.len_bytes().fill_null(0).cum_sum() // max_bytes).to_numpy()
    cuts = [0] + [int(i) + 1 for i in (ends[1:] != ends[:-1]).nonzero()[0]] + [docs.height]
    return [docs.slice(a, b - a) for a, b in itertools.pairwise(cuts) if b > a]


def apply_in_slices(stage: ShardStage, docs: pl.DataFrame, params: Any, max_bytes: int = SLICE_BYTES) -> pl.DataFrame:
    """``stage.apply`` on consecutive slices of the shard, in order: the same rows and columns as on the whole."""
    slices = text_slices(docs, max_bytes)
    if len(slices) == 1:
        return stage.apply(docs, params)
    # diagonal: a column one slice's decisions lack (all null there) is null in that slice, as on the whole
    return pl.concat([stage.apply(part, params) for part in slices], how="diagonal_relaxed")


def dataset_of(work: StageWork) -> DatasetRef:
    """The finished dataset ``work`` wrote."""
    return DatasetRef.at(work.out_dir)


@stage_task(task_run_name="{work.stage}-finalize")
@stage_step(read=dataset_of, metered=False, latest=latest_as_stage)
def finalize_stage(
    work: StageWork,
    version: str,
    params: Any,
    inputs: list[DatasetRef],
    shards: list[ShardStats],
    validation: ValidationSettings,
    extra_stats: dict[str, Any] | None = None,
) -> Record:
    """Check the stage as a whole (accounting, unique ids), write stats.json; the manifest is the marker."""
    out = Path(work.out_dir)
    validate_stage(work.stage, out, shards, params, validation)
    stats = finalize_dataset(out, work.stage, work.fingerprint, shards, extra_stats)
    get_run_logger().info(
        "%s: %d in, %d kept, %d rejected %s",
        work.stage,
        stats["in"],
        stats["kept"],
        stats["rejected"],
        stats["rejected_by_reason"] or "",
    )
    return manifest_of(out, work.stage, work.fingerprint, params, version, inputs, shards)


def run_shard_stage(
    workdir: str | Path,
    stage: ShardStage,
    source: DatasetRef,
    params: Any,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> DatasetRef:
    """Map ``stage`` over the shards of ``source`` and finalize: the flow-side half of a stage."""
    work = plan_stage(workdir, stage.name, stage.version, params, [source.fingerprint])
    if work.done():  # the whole stage is there: one cache hit instead of one per shard
        return finalize_stage(work, stage.version, params, [source], [], validation)

    require_text(source)  # an earlier run's retention may have dropped its text
    shard_stats = map_shards(work, stage, source, params, validation, energy)
    return finalize_stage(work, stage.version, params, [source], shard_stats, validation)


def map_shards(
    work: StageWork,
    stage: ShardStage,
    source: DatasetRef,
    params: Any,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> list[ShardStats]:
    """Run ``stage`` on every shard of ``source`` as mapped tasks; the task runner decides where."""
    parts = source.parts()
    futures = process_shard.map(
        [work.for_unit(shard_name(p)) for p in parts],
        stage=unmapped(stage),
        input_part=[str(p) for p in parts],
        params=unmapped(params),
        validation=unmapped(validation),
        energy=unmapped(energy),
    )
    # Counted in the input's documents (a shard's size is known from the manifest before it runs),
    # so the rate is docs/s and the ETA follows documents, not shards of unequal size.
    rows = {shard_name(s["path"]): int(s["rows"]) for s in source.manifest()["shards"]}
    live = LiveProgress(work.stage, sum(rows.values()), unit="docs", artifact_key=f"{work.stage}-progress")
    live.update(0)  # the clock starts with the stage: the first shard's documents count in docs/s
    docs = 0
    for done, future in enumerate(as_completed(futures), start=1):  # a live line, not a log line per shard
        docs += rows.get(future.result().shard, 0)
        live.update(docs, shards=f"{done}/{len(parts)}")
    live.finish(docs, shards=f"{len(parts)}/{len(parts)}")
    return [f.result() for f in futures]


__all__ = [
    "ShardStage",
    "StageWork",
    "StageOutputCache",
    "process_shard",
    "finalize_stage",
    "run_shard_stage",
    "map_shards",
    "plan_stage",
    "stage_task",
]
