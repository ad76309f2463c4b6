"""The dedup stage as Prefect tasks: signatures (mapped) -> clusters (one task) -> per-shard apply.

``run_dedup`` is the flow-side half; the package docstring (tasks/curate/dedup/__init__.py)
describes the steps, which document of a cluster is kept, and the engines.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, unmapped

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, shard_name, write_parquet
from lmwright.tasks.core.energy import EnergySettings, merge_energy
from lmwright.tasks.core.stage import ShardStage, StageWork, finalize_stage, map_shards, plan_stage, stage_step, stage_task
from lmwright.tasks.curate.dedup.dask_engine import cluster_files_dask
from lmwright.tasks.curate.dedup.params import DEDUP_COLUMNS, PLACEMENT_FIELDS, STAGE, VERSION, DedupApplyParams, DedupParams
from lmwright.tasks.curate.dedup.signatures import shard_signatures
from lmwright.tasks.curate.dedup.spill import cluster_files


@dataclass(frozen=True)
class IndexWork(StageWork):
    """A unit of the dedup index (signatures of one shard, or the clusters); marker beside its data."""

    @property
    def marker(self) -> Path:
        out = Path(self.out_dir)
        if self.unit == "clusters":
            return out / "clusters.json"
        return out / "signatures" / f"{(self.unit or '').removeprefix('sig-')}.json"

    def for_unit(self, unit: str) -> "IndexWork":
        return IndexWork(self.stage, self.fingerprint, self.out_dir, unit)


@stage_task(task_run_name="dedup-{work.unit}")
@stage_step()
def compute_signatures(
    work: IndexWork, input_part: str, params: DedupParams, energy: EnergySettings | None = None
) -> dict[str, Any]:
    """MinHash signatures + exact hashes of one shard -> signatures/<shard>.parquet."""
    start = time.perf_counter()
    docs = pl.read_parquet(input_part, columns=["id", "text"])
    shard = shard_name(input_part)
    frame = shard_signatures(docs, shard, params)
    path = Path(work.out_dir) / "signatures" / f"{shard}.parquet"
    write_parquet(frame, path)
    return {
        "shard": shard,
        "path": str(path),
        "docs": docs.height,
        "bytes": int(docs["text"].str.len_bytes().sum() or 0),
        "shingles": int(frame["n_shingles"].sum() or 0),
        "seconds": round(time.perf_counter() - start, 4),
    }


@stage_task(task_run_name="dedup-clusters")
@stage_step()  # on the Dask engine the meter sees this process's share; the workers are not metered
def find_clusters(
    work: IndexWork, signatures: list[str], params: DedupParams, energy: EnergySettings | None = None
) -> dict[str, Any]:
    """Exact + near-duplicate clusters of the whole input -> clusters.parquet (engine: params.engine)."""
    start = time.perf_counter()
    path = Path(work.out_dir) / "clusters.parquet"
    if params.engine == "dask":
        counts = cluster_files_dask(signatures, params, path)
    else:
        # a spill directory of its own: a second run on this workdir must not delete this one's runs
        spill = tempfile.mkdtemp(prefix="spill-", dir=work.out_dir)
        counts = cluster_files(signatures, params, path, spill)
    get_run_logger().info(
        "dedup: %d docs, %d clusters, %d exact + %d near duplicates (%d candidate pairs, %d verified)",
        counts["docs"], counts["clusters"], counts["exact_duplicates"], counts["near_duplicates"],
        counts["candidate_pairs"], counts["verified_pairs"],
    )
    return {"path": str(path), **counts, "seconds": round(time.perf_counter() - start, 4)}


def apply_dedup(docs: pl.DataFrame, params: DedupApplyParams) -> pl.DataFrame:
    """Join a shard with its clusters: ``dup_cluster`` on all, ``reason`` + ``dup_of`` on duplicates."""
    docs = docs.drop([c for c in (*DEDUP_COLUMNS, "reason") if c in docs.columns])
    clusters = pl.scan_parquet(params.clusters).join(docs.lazy().select("id"), on="id", how="semi").collect()
    out = docs.join(clusters, on="id", how="left", maintain_order="left")
    if out.height != docs.height or out["dup_cluster"].null_count():
        raise ValueError(f"clusters at {params.clusters} do not cover this shard (stale index?)")
    return out


DEDUP = ShardStage(name=STAGE, version=VERSION, apply=apply_dedup)


def run_dedup(
    workdir: str | Path,
    source: DatasetRef,
    params: DedupParams,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> DatasetRef:
    """The flow-side half of dedup: signatures (mapped) -> clusters -> per-shard apply -> finalize."""
    # where the cluster step runs does not change the output: not part of the fingerprint
    work = plan_stage(workdir, STAGE, VERSION, params.model_dump(mode="json", exclude=set(PLACEMENT_FIELDS)), [source.fingerprint])
    if work.done():  # finished before: one cache hit, and a deleted index is not rebuilt for it
        return finalize_stage(work, VERSION, params, [source], [], validation)
    parts = source.parts()

    index = IndexWork(work.stage, work.fingerprint, work.out_dir)
    sig_futures = compute_signatures.map(
        [index.for_unit(f"sig-{shard_name(p)}") for p in parts],
        input_part=[str(p) for p in parts],
        params=unmapped(params),
        energy=unmapped(energy),
    )
    sig_infos = [f.result() for f in sig_futures]
    clusters = find_clusters(index.for_unit("clusters"), [i["path"] for i in sig_infos], params, energy)

    apply_params = DedupApplyParams(**params.model_dump(), clusters=clusters["path"])
    shard_stats = map_shards(work, DEDUP, source, apply_params, validation, energy)
    extra = {
        "dedup": {k: clusters[k] for k in (
            "clusters", "duplicates", "exact_duplicates", "near_duplicates",
            "candidate_pairs", "verified_pairs", "largest_cluster",
        )}
    }
    # the stage's energy: signatures, clusters and the per-shard apply (markers from before tracking have none)
    blocks = [b for b in (*(i.get("energy") for i in sig_infos), clusters.get("energy"), *(s.energy for s in shard_stats)) if b]
    if blocks:
        extra["energy"] = merge_energy(blocks)
    get_run_logger().debug("dedup index: %s", extra)
    return finalize_stage(work, VERSION, params, [source], shard_stats, validation, extra_stats=extra)
