"""Cross-version dedup: a refresh's new documents against everything earlier corpus versions kept.

Stage ``dedup_previous`` (the usual dataset contract): a new document whose exact hash, or a
verified LSH band match (signature agreement >= threshold, as in tasks/curate/dedup/), hits a
document of an earlier version is rejected as ``dedup_previous_version`` with ``dup_of`` = that
document's id. A new document whose id is already in the corpus with different text (an edited
paragraph of a changed file) is rejected as ``dedup_previous_id``: versions are append-only, so
it cannot replace the old one.

The index of a version's documents is built beside the stage's output (``index.parquet``,
marker ``index.json``) and committed with the version as ``refresh/index/<version>.parquet``:
rows (band, key, id) per LSH band, plus one exact row per document (band -1, key = exact hash,
its signature).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, file_sha256
from lmwright.tasks.core.files import atomic_write_parquet
from lmwright.tasks.core.stage import ShardStage, StageWork, run_shard_stage, stage_step, stage_task
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.curate.dedup.signatures import signature_frame
from lmwright.tasks.curate.dedup.minhash import signature_dtype

VERSION = "1"
STAGE = "dedup_previous"
REASON_PREVIOUS = "dedup_previous_version"
REASON_ID = "dedup_previous_id"
EXACT_BAND = -1
# The fields that shape the index; threshold, exact, near are applied at query time only.
INDEX_FIELDS = ("ngram", "num_perm", "bands", "rows", "seed", "scheme")


def index_params_of(params: DedupParams) -> dict[str, Any]:
    return {k: getattr(params, k) for k in INDEX_FIELDS}


def index_rows(docs: pl.DataFrame, params: DedupParams) -> pl.DataFrame:
    """Index rows of documents: one exact row each (band -1, key = exact hash, signature) plus
    one (band, key, id) row per LSH band of every document that has shingles."""
    sf = signature_frame(docs.select("id", "text"), "index", params)
    sig_type = pl.Array(pl.UInt64 if signature_dtype(params.scheme) is np.uint64 else pl.UInt32, params.num_perm)
    exact = pl.DataFrame(
        {
            "band": pl.Series([EXACT_BAND] * sf.height, dtype=pl.Int16),
            "key": sf["hash"],
            "id": sf["id"],
            "n_shingles": sf["n_shingles"],
            "sig": sf["sig"].cast(sig_type),
        }
    )
    with_sh = sf.filter(pl.col("n_shingles") > 0)
    nb = params.bands
    keys = with_sh["bands"].to_numpy().reshape(-1, nb) if with_sh.height else np.zeros((0, nb), np.uint64)
    bands = pl.DataFrame(
        {
            "band": pl.Series(np.tile(np.arange(nb, dtype=np.int16), with_sh.height), dtype=pl.Int16),
            "key": pl.Series(keys.ravel(), dtype=pl.UInt64),
            "id": pl.Series(np.repeat(np.asarray(with_sh["id"].to_list(), dtype=object), nb).tolist(), dtype=pl.String),
            "n_shingles": pl.Series([None] * (with_sh.height * nb), dtype=pl.UInt32),
            "sig": pl.Series([None] * (with_sh.height * nb), dtype=sig_type),
        }
    )
    return pl.concat([exact, bands])


def _write_sorted_parquet(df: pl.DataFrame, path: Path) -> None:
    atomic_write_parquet(path, df.sort("band", "key"), compression="zstd", statistics=True, row_group_size=1 << 17)


@dataclass(frozen=True)
class IndexPartWork(StageWork):
    """The index rows of a dedup_previous output, beside it: index.parquet, marker index.json."""

    @property
    def marker(self) -> Path:  # type: ignore[override]
        return Path(self.out_dir) / "index.json"


@stage_task(task_run_name="dedup_previous-index")
@stage_step(metered=False)
def build_index_part(work: IndexPartWork, kept: DatasetRef, params: DedupParams) -> dict[str, Any]:
    """Index rows of the documents this refresh keeps (written after the dataset's manifest)."""
    start = time.perf_counter()
    frames = [index_rows(pl.read_parquet(p, columns=["id", "text"]), params) for p in kept.parts()]
    rows = pl.concat(frames) if frames else index_rows(pl.DataFrame(schema={"id": pl.String, "text": pl.String}), params)
    path = Path(work.out_dir) / "index.parquet"
    _write_sorted_parquet(rows, path)
    docs = int((rows["band"] == EXACT_BAND).sum())
    if docs != kept.manifest()["rows"]:
        raise AssertionError(f"index of {kept.path}: {docs} documents != {kept.manifest()['rows']} kept")
    return {"path": str(path), "rows": rows.height, "docs": docs, "params": index_params_of(params),
            "seconds": round(time.perf_counter() - start, 4)}


class PreviousDedupParams(DedupParams):
    """dedup_previous: DedupParams (threshold as the refresh says) plus the index of earlier versions."""

    index: list[str] = Field(default_factory=list, description="Index files of every earlier version.")
    index_sha256: list[str] = Field(default_factory=list, description="Their content hashes (part of the fingerprint).")
    withdrawn: str | None = Field(
        None, description="Record of withdrawn documents: no duplicate target any more, but their ids stay taken."
    )
    withdrawn_sha256: str | None = Field(None, description="Its content hash (part of the fingerprint).")


def apply_previous_dedup(docs: pl.DataFrame, params: PreviousDedupParams) -> pl.DataFrame:
    """Reject documents already in an earlier version (exact or verified near match, or same id)."""
    for col in ("dup_cluster", "dup_of"):
        if col not in docs.columns:
            docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    docs = docs.drop([c for c in ("reason", "detail") if c in docs.columns])
    n = docs.height
    reason: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    if params.index and n:
        sf = signature_frame(docs.select("id", "text"), "q", params)
        every = pl.scan_parquet(params.index)
        idx = every
        if params.withdrawn:  # no longer in the corpus, so no document duplicates them
            idx = every.join(pl.scan_parquet(params.withdrawn).select("id"), on="id", how="anti")
        exact_rows = idx.filter(pl.col("band") == EXACT_BAND)
        rows = np.arange(n)
        matched = np.zeros(n, dtype=bool)
        if params.exact:
            hits = (
                exact_rows.select("key", pl.col("id").alias("old"))
                .join(pl.LazyFrame({"key": sf["hash"], "row": rows}), on="key")
                .group_by("row").agg(pl.col("old").min())
                .collect()
            )
            for r, old in hits.iter_rows():
                reason[r], dup_of[r], detail[r] = REASON_PREVIOUS, old, "exact: same normalized text"
                matched[r] = True
        pool = (~matched) & (sf["n_shingles"].to_numpy() > 0)
        if params.near and pool.any():
            _near_matches(sf, np.flatnonzero(pool), idx, exact_rows, params, reason, dup_of, detail)
        ids = docs["id"].to_list()
        taken = set(every.filter(pl.col("band") == EXACT_BAND, pl.col("id").is_in(pl.Series(ids, dtype=pl.String).implode()))
                    .select("id").collect()["id"].to_list())  # withdrawn ids included: an id is never reused
        for r, i in enumerate(ids):
            if reason[r] is None and i in taken:
                reason[r], dup_of[r] = REASON_ID, i
                detail[r] = "id already in the corpus with different text; versions are append-only"
    out = docs.with_columns(
        pl.Series("reason", reason, dtype=pl.String),
        pl.Series("detail", detail, dtype=pl.String),
        pl.Series("_dup", dup_of, dtype=pl.String),
    )
    return out.with_columns(
        pl.coalesce("_dup", "dup_of").alias("dup_of"),
        pl.coalesce("_dup", "dup_cluster").alias("dup_cluster"),
    ).drop("_dup")


def _near_matches(
    sf: pl.DataFrame,
    pool: np.ndarray,
    idx: pl.LazyFrame,
    exact_rows: pl.LazyFrame,
    params: PreviousDedupParams,
    reason: list[str | None],
    dup_of: list[str | None],
    detail: list[str | None],
) -> None:
    """Candidates share an LSH band key with an indexed document; kept if signatures agree enough."""
    nb = params.bands
    keys = sf["bands"].to_numpy().reshape(-1, nb)[pool]
    long = pl.LazyFrame(
        {
            "band": pl.Series(np.tile(np.arange(nb, dtype=np.int16), pool.size), dtype=pl.Int16),
            "key": pl.Series(keys.ravel(), dtype=pl.UInt64),
            "row": np.repeat(pool, nb),
        }
    )
    cand = (
        idx.filter(pl.col("band") >= 0).select("band", "key", pl.col("id").alias("old"))
        .join(long, on=["band", "key"]).select("row", "old").unique()
        .collect()
    )
    if not cand.height:
        return
    olds = (
        exact_rows.filter(pl.col("id").is_in(cand["old"].unique().implode()), pl.col("n_shingles") > 0)
        .select(pl.col("id").alias("old"), "sig")
        .collect()
    )
    cand = cand.join(olds, on="old")
    if not cand.height:
        return
    new_sig = sf["sig"].to_numpy().reshape(sf.height, -1)[cand["row"].to_numpy()]
    old_sig = cand["sig"].to_numpy().reshape(cand.height, -1)
    agree = (new_sig == old_sig.astype(new_sig.dtype)).sum(axis=1)
    need = int(math.ceil(params.threshold * params.num_perm - 1e-9))
    best = (
        cand.select("row", "old").with_columns(agree=pl.Series(agree))
        .filter(pl.col("agree") >= need)
        .sort(["row", "agree", "old"], descending=[False, True, False])
        .unique("row", keep="first", maintain_order=True)
    )
    for r, old, a in best.iter_rows():
        reason[r], dup_of[r] = REASON_PREVIOUS, old
        detail[r] = f"near: {a / params.num_perm:.2f} of signature values agree"


PREVIOUS_DEDUP = ShardStage(name=STAGE, version=VERSION, apply=apply_previous_dedup)


def run_previous_dedup(
    workdir: str | Path,
    source: DatasetRef,
    dedup: DedupParams,
    threshold: float | None,
    latest: dict[str, Any] | None,
    validation: ValidationSettings,
    withdrawn: str | None = None,
) -> tuple[DatasetRef, dict[str, Any]]:
    """Dedup ``source`` against every earlier version, then index what it keeps: (kept dataset, index part info)."""
    files = latest["index"]["files"] if latest else []
    if latest and latest["index"]["params"] != index_params_of(dedup):
        raise ValueError(
            f"the cross-version index was built with {latest['index']['params']}, the config now says "
            f"{index_params_of(dedup)}: keep the index-shaping dedup params (or rebuild the index)"
        )
    params = PreviousDedupParams(
        **{**dedup.model_dump(), **({"threshold": threshold} if threshold is not None else {})},
        index=[f["path"] for f in files],
        index_sha256=[f["sha256"] for f in files],
        withdrawn=str(withdrawn) if withdrawn else None,
        withdrawn_sha256=file_sha256(Path(withdrawn)) if withdrawn else None,
    )
    kept = run_shard_stage(workdir, PREVIOUS_DEDUP, source, params, validation)
    work = IndexPartWork(STAGE, kept.fingerprint, kept.path, unit="index")
    return kept, build_index_part(work, kept, DedupParams(**dedup.model_dump()))
