"""Stage 6, dedup: exact (normalized-text hash) and near-duplicate (MinHash LSH) removal.

Dedup is global, so it runs in three cached steps that share the stage's output directory
``<workdir>/datasets/dedup/<fingerprint>/``:

1. ``compute_signatures`` (mapped over the input shards) writes
   ``signatures/<shard>.parquet``: id, shard, row, 64-bit hash of the normalized text,
   shingle count, the MinHash signature (fixed-size array column) and one 64-bit key per
   LSH band. Marker: ``signatures/<shard>.json``.
2. ``find_clusters`` (one task) reads every signature file, links exact duplicates (same
   hash) and verified near-duplicates (same key in some band, then the fraction of equal
   signature values >= ``threshold``), takes connected components and writes
   ``clusters.parquet`` (id, dup_cluster, dup_of, reason). Marker: ``clusters.json``.
3. the ``dedup`` ShardStage (``process_shard`` per shard) joins each shard with the
   clusters; ``finalize_stage`` writes stats.json and the manifest.

Which document is kept: in each cluster, the first in corpus order, i.e. the smallest
(shard position in the source manifest, row in shard). The rule does not depend on the
order pairs are found in, so reruns and other task runners pick the same document.
Every rejected document's ``dup_of`` (and every document's ``dup_cluster``) is the id of
its cluster's kept document. ``reason`` is ``dedup_exact`` when the document's normalized
text equals the kept document's, else ``dedup_near`` (it may be linked to the kept
document through a chain of near-duplicates).

Memory: signatures are fixed-size uint32 arrays (448 B/document at 112 permutations);
the cluster step holds them all, plus (documents x bands) band keys, which is the one
place memory grows with the corpus (the design allows the dedup index to).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from prefect import get_run_logger, unmapped
from pydantic import BaseModel, Field, model_validator

from data_quality import ValidationSettings
from tasks.dataset import DatasetRef, read_shard_stats, shard_name, write_json, write_parquet
from tasks.minhash import band_hashes, minhash_signatures, normalize_expr, signature_dtype
from tasks.stage import ShardStage, StageWork, finalize_stage, plan_stage, process_shard, stage_task

STAGE = "dedup"
VERSION = "1"
REASON_EXACT = "dedup_exact"
REASON_NEAR = "dedup_near"
DEDUP_COLUMNS = ("dup_cluster", "dup_of")


class DedupParams(BaseModel):
    """Exact and near-duplicate removal (MinHash LSH over word n-grams)."""

    exact: bool = Field(True, description="Drop documents whose normalized text (lowercase, whitespace collapsed) equals an earlier document's.")
    near: bool = Field(True, description="Drop near-duplicates found by MinHash LSH and verified against `threshold`.")
    ngram: int = Field(5, ge=1, description="Words per shingle; a document with fewer words is one shingle of all its words.")
    num_perm: int = Field(112, ge=1, description="MinHash permutations (signature length); must be >= bands x rows.")
    bands: int = Field(14, ge=1, description="LSH bands: two documents become a candidate pair when any band matches.")
    rows: int = Field(8, ge=1, description="Signature values per LSH band.")
    seed: int = Field(1, description="Seed of the permutations (datasketch's MinHash `seed`).")
    scheme: Literal["affine32", "affine64", "legacy"] = Field(
        "affine32",
        description="datasketch's permutation scheme (2.x default affine32; `legacy` matches datasketch < 2.0). "
        "Signatures equal datasketch.MinHash(num_perm, seed, scheme=scheme) with its default SHA-1 hash.",
    )
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="A candidate pair is a near-duplicate when this fraction of signature values agree (estimated Jaccard)."
    )
    max_bucket_pairs: int = Field(
        50,
        ge=2,
        description="Buckets (documents sharing a band key) up to this size are verified pair by pair; "
        "larger ones only against their first member and their neighbour in corpus order.",
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> "DedupParams":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class DedupApplyParams(DedupParams):
    """What the per-shard ``dedup`` step needs: the stage's params plus where the clusters are."""

    clusters: str = Field(description="Path of clusters.parquet written by find_clusters.")


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


def text_hashes(normalized: list[str]) -> np.ndarray:
    """64-bit BLAKE2b of each normalized text (exact-duplicate key), stable across versions."""
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in normalized)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def signature_frame(docs: pl.DataFrame, shard: str, params: DedupParams) -> pl.DataFrame:
    """id, position, exact hash, shingle count, MinHash signature and band keys of one shard."""
    normalized = docs.select(normalize_expr("text"))["text"].to_list()
    sig, n_shingles = minhash_signatures(normalized, params.num_perm, params.seed, params.ngram, params.scheme)
    return pl.DataFrame(
        [
            docs["id"],
            pl.Series("shard", [shard] * docs.height, dtype=pl.String),
            pl.Series("row", np.arange(docs.height, dtype=np.uint32)),
            pl.Series("hash", text_hashes(normalized)),
            pl.Series("n_shingles", n_shingles.astype(np.uint32)),
            pl.Series("sig", sig),
            pl.Series("bands", band_hashes(sig, params.bands, params.rows)),
        ]
    )


@stage_task(task_run_name="dedup-{work.unit}")
def compute_signatures(work: IndexWork, input_part: str, params: DedupParams) -> dict[str, Any]:
    """MinHash signatures + exact hashes of one shard -> signatures/<shard>.parquet."""
    if work.done():
        return json.loads(work.marker.read_text())
    start = time.perf_counter()
    docs = pl.read_parquet(input_part, columns=["id", "text"])
    shard = shard_name(input_part)
    frame = signature_frame(docs, shard, params)
    path = Path(work.out_dir) / "signatures" / f"{shard}.parquet"
    write_parquet(frame, path)
    info = {
        "shard": shard,
        "path": str(path),
        "docs": docs.height,
        "bytes": int(docs["text"].str.len_bytes().sum() or 0),
        "shingles": int(frame["n_shingles"].sum() or 0),
        "seconds": round(time.perf_counter() - start, 4),
    }
    write_json(work.marker, info)  # last: the unit is done
    return info


# --- clustering -------------------------------------------------------------------------


def connected_components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Label of every node = the smallest node index in its component (union-find in numpy).

    Invariant: ``labels[x] <= x``. Each round hooks the larger root of every unmerged edge
    under the smaller one, then compresses paths to roots; a component's root is its minimum.
    """
    labels = np.arange(n, dtype=np.int64)
    src, dst = src.astype(np.int64), dst.astype(np.int64)
    while True:
        lu, lv = labels[src], labels[dst]
        open_ = lu != lv
        if not open_.any():
            return labels
        np.minimum.at(labels, np.maximum(lu, lv)[open_], np.minimum(lu, lv)[open_])
        while True:  # pointer jumping
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt


def candidate_pairs(g: np.ndarray, bands: np.ndarray, max_bucket_pairs: int) -> pl.DataFrame:
    """Pairs (i < j) of documents that share a key in some band, deduplicated across bands.

    ``g`` are the documents' corpus positions, ``bands`` their (len(g), n_bands) keys.
    Banding is a polars group-by on (band, key); small buckets give all their pairs, big ones
    (boilerplate) a star to their first member plus a chain of neighbours, so pair count
    stays linear in bucket size.
    """
    n, nb = bands.shape
    long = pl.DataFrame(
        {
            "band": np.tile(np.arange(nb, dtype=np.uint16), n),
            "key": bands.ravel(),
            "g": np.repeat(g.astype(np.int64), nb),
        }
    )
    buckets = (
        long.group_by("band", "key")
        .agg(pl.col("g").sort())
        .filter(pl.col("g").list.len() > 1)
        .select(pl.col("g"), pl.col("g").list.len().alias("size"))
        .with_row_index("b")
    )
    small = buckets.filter(pl.col("size") <= max_bucket_pairs).select("b", "g").explode("g")
    small_pairs = (
        small.join(small, on="b", suffix="_j")
        .filter(pl.col("g") < pl.col("g_j"))
        .select(pl.col("g").alias("i"), pl.col("g_j").alias("j"))
    )
    big = (
        buckets.filter(pl.col("size") > max_bucket_pairs)
        .select("b", "g")
        .explode("g")
        .with_columns(
            pl.col("g").first().over("b").alias("first"),
            pl.col("g").shift(1).over("b").alias("prev"),
        )
        .filter(pl.col("prev").is_not_null())
    )
    big_pairs = pl.concat(
        [
            big.select(pl.col("first").alias("i"), pl.col("g").alias("j")),
            big.select(pl.col("prev").alias("i"), pl.col("g").alias("j")),
        ]
    )
    return pl.concat([small_pairs, big_pairs]).unique()


def verified(sig: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float, chunk: int = 1 << 16) -> np.ndarray:
    """Mask of pairs whose signatures agree on at least ``threshold`` of their values."""
    keep = np.zeros(i.size, dtype=bool)
    need = int(np.ceil(threshold * sig.shape[1] - 1e-9))
    for lo in range(0, i.size, chunk):
        a, b = sig[i[lo : lo + chunk]], sig[j[lo : lo + chunk]]
        keep[lo : lo + chunk] = (a == b).sum(axis=1) >= need
    return keep


def cluster_frame(sigs: pl.DataFrame, params: DedupParams) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Clusters of a corpus given its signature rows in corpus order: (clusters frame, counts)."""
    n = sigs.height
    g = np.arange(n, dtype=np.int64)
    hashes = sigs["hash"].to_numpy()
    src_parts, dst_parts = [], []
    counts: dict[str, Any] = {"docs": n, "candidate_pairs": 0, "verified_pairs": 0}

    near_pool = sigs["n_shingles"].to_numpy() > 0  # empty documents have no near-duplicates
    if params.exact:
        # first occurrence of each hash, in corpus order
        first = (
            pl.DataFrame({"hash": hashes, "g": g}).group_by("hash").agg(pl.col("g").min().alias("first"))
        )
        rep = pl.DataFrame({"hash": hashes}).join(first, on="hash", how="left", maintain_order="left")["first"].to_numpy()
        dup = rep != g
        src_parts.append(g[dup])
        dst_parts.append(rep[dup])
        near_pool &= ~dup  # exact copies follow their representative
    if params.near and near_pool.any():
        pool = np.flatnonzero(near_pool)
        bands = sigs["bands"].to_numpy()[pool]
        pairs = candidate_pairs(pool, bands, params.max_bucket_pairs)
        i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
        ok = verified(sigs["sig"].to_numpy(), i, j, params.threshold)
        counts["candidate_pairs"] = int(i.size)
        counts["verified_pairs"] = int(ok.sum())
        src_parts.append(i[ok])
        dst_parts.append(j[ok])

    src = np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.int64)
    dst = np.concatenate(dst_parts) if dst_parts else np.zeros(0, dtype=np.int64)
    root = connected_components(n, src, dst)
    is_dup = root != g
    exact_dup = is_dup & (hashes == hashes[root]) & params.exact
    ids = sigs["id"]
    clusters = pl.DataFrame(
        {"id": ids, "dup_cluster": ids.gather(root), "is_dup": is_dup, "exact": exact_dup}
    ).select(
        "id",
        "dup_cluster",
        pl.when("is_dup").then("dup_cluster").otherwise(None).alias("dup_of"),
        pl.when("exact").then(pl.lit(REASON_EXACT)).when("is_dup").then(pl.lit(REASON_NEAR)).alias("reason"),
    )
    sizes = np.bincount(root, minlength=n)
    counts.update(
        clusters=int((sizes > 1).sum()),
        duplicates=int(is_dup.sum()),
        exact_duplicates=int(exact_dup.sum()),
        near_duplicates=int((is_dup & ~exact_dup).sum()),
        largest_cluster=int(sizes.max()) if n else 0,
    )
    return clusters, counts


def read_signatures(paths: list[str], params: DedupParams) -> pl.DataFrame:
    """All signature rows, in corpus order (the order of ``paths``, then row)."""
    dtype = pl.Array(pl.UInt64 if signature_dtype(params.scheme) is np.uint64 else pl.UInt32, params.num_perm)
    frames = [pl.read_parquet(p) for p in paths]
    if not frames:
        return pl.DataFrame(
            schema={"id": pl.String, "shard": pl.String, "row": pl.UInt32, "hash": pl.UInt64, "n_shingles": pl.UInt32,
                    "sig": dtype, "bands": pl.Array(pl.UInt64, params.bands)}
        )
    return pl.concat(frames, rechunk=True)


@stage_task(task_run_name="dedup-clusters")
def find_clusters(work: IndexWork, signatures: list[str], params: DedupParams) -> dict[str, Any]:
    """Exact + near-duplicate clusters of the whole input -> clusters.parquet."""
    if work.done():
        return json.loads(work.marker.read_text())
    start = time.perf_counter()
    sigs = read_signatures(signatures, params)
    dup_ids = sigs.filter(pl.col("id").is_duplicated())["id"].unique().head(5).to_list()
    if dup_ids:
        raise ValueError(f"dedup needs unique document ids; duplicated, e.g.: {dup_ids}")
    clusters, counts = cluster_frame(sigs, params)
    path = Path(work.out_dir) / "clusters.parquet"
    write_parquet(clusters, path)
    info = {"path": str(path), **counts, "seconds": round(time.perf_counter() - start, 4)}
    write_json(work.marker, info)  # last
    get_run_logger().info(
        "dedup: %d docs, %d clusters, %d exact + %d near duplicates (%d candidate pairs, %d verified)",
        counts["docs"], counts["clusters"], counts["exact_duplicates"], counts["near_duplicates"],
        counts["candidate_pairs"], counts["verified_pairs"],
    )
    return info


# --- apply ------------------------------------------------------------------------------


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
) -> DatasetRef:
    """The flow-side half of dedup: signatures (mapped) -> clusters -> per-shard apply -> finalize."""
    work = plan_stage(workdir, STAGE, VERSION, params, [source.fingerprint])
    parts = source.parts()
    units = [work.for_unit(shard_name(p)) for p in parts]
    if work.done():  # finished before: don't rebuild a deleted index just to hit the cache
        shard_stats = [read_shard_stats(Path(work.out_dir), u.unit) for u in units]
        if all(s is not None for s in shard_stats):
            return finalize_stage(work, VERSION, params, [source], shard_stats, validation)

    index = IndexWork(work.stage, work.fingerprint, work.out_dir)
    sig_futures = compute_signatures.map(
        [index.for_unit(f"sig-{shard_name(p)}") for p in parts],
        input_part=[str(p) for p in parts],
        params=unmapped(params),
    )
    signatures = [f.result()["path"] for f in sig_futures]
    clusters = find_clusters(index.for_unit("clusters"), signatures, params)

    apply_params = DedupApplyParams(**params.model_dump(), clusters=clusters["path"])
    futures = process_shard.map(
        units,
        stage=unmapped(DEDUP),
        input_part=[str(p) for p in parts],
        params=unmapped(apply_params),
        validation=unmapped(validation),
    )
    shard_stats = [f.result() for f in futures]
    extra = {
        "dedup": {k: clusters[k] for k in (
            "clusters", "duplicates", "exact_duplicates", "near_duplicates",
            "candidate_pairs", "verified_pairs", "largest_cluster",
        )}
    }
    get_run_logger().debug("dedup index: %s", extra)
    return finalize_stage(work, VERSION, params, [source], shard_stats, validation, extra_stats=extra)


__all__ = [
    "DedupParams",
    "DedupApplyParams",
    "IndexWork",
    "DEDUP",
    "apply_dedup",
    "cluster_frame",
    "compute_signatures",
    "connected_components",
    "find_clusters",
    "run_dedup",
    "signature_frame",
]
