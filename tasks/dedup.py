"""Stage 6, dedup: exact (normalized-text hash) and near-duplicate (MinHash LSH) removal.

Dedup is global, so it runs in three cached steps that share the stage's output directory
``<workdir>/datasets/dedup/<fingerprint>/``:

1. ``compute_signatures`` (mapped over the input shards) writes
   ``signatures/<shard>.parquet``: id, shard, row, 64-bit hash of the normalized text,
   shingle count, the MinHash signature (fixed-size array column), one 64-bit key per
   LSH band and (with ``verify="jaccard"``) the document's sorted distinct 32-bit shingle
   hashes (``shingles``, a uint32 list). Marker: ``signatures/<shard>.json``.
2. ``find_clusters`` (one task) reads every signature file without ``shingles``, links
   exact duplicates (same hash) and verified near-duplicates (same key in some band, then
   the exact Jaccard of the two shingle-hash sets, read back only for candidate documents,
   >= ``threshold``; or with ``verify="signature"`` the fraction of equal signature values),
   takes connected components and writes
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
place memory grows with the corpus (the design allows the dedup index to). Shingle sets
(4 B per distinct shingle) stay on disk except for the documents in candidate pairs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from prefect import get_run_logger, unmapped
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_quality import ValidationSettings
from tasks.dataset import DatasetRef, shard_name, write_json, write_parquet
from tasks.minhash import band_hashes, minhash_signatures, normalize_expr, shingle_sets, signature_dtype
from tasks.energy import EnergySettings
from tasks.stage import ShardStage, StageWork, finalize_stage, map_shards, plan_stage, stage_task

STAGE = "dedup"
VERSION = "2"  # 2: word_mix shingle hash by default, exact-Jaccard verification
REASON_EXACT = "dedup_exact"
REASON_NEAR = "dedup_near"
DEDUP_COLUMNS = ("dup_cluster", "dup_of")


class DedupParams(BaseModel):
    """Exact and near-duplicate removal (MinHash LSH over word n-grams)."""

    model_config = ConfigDict(extra="forbid")

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
        "Signatures equal datasketch.MinHash(num_perm, seed, scheme=scheme, hashfunc=tasks.minhash.datasketch_hashfunc(hash, scheme)).",
    )
    hash: Literal["word_mix", "sha1"] = Field(
        "word_mix",
        description="Shingle hash. `word_mix`: MurmurHash3_x86_32 over the words' SHA-1-32 hashes (tasks.minhash.word_mix_hash32; "
        "SHA-1 once per distinct word, ~3.5x datasketch's speed). `sha1`: datasketch's default hash of the shingle bytes "
        "(one SHA-1 per shingle, signatures equal MinHash(num_perm, seed, scheme=scheme) with no hashfunc).",
    )
    verify: Literal["jaccard", "signature"] = Field(
        "jaccard",
        description="How LSH candidate pairs are verified against `threshold`: `jaccard`, the exact Jaccard of the two documents' "
        "shingle-hash sets (stored in the signature files, read only for candidates); `signature`, the fraction of equal "
        "signature values (the MinHash estimate, noisy at the threshold).",
    )
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="A candidate pair is a near-duplicate when its Jaccard similarity (see `verify`) is at least this."
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
    """id, position, exact hash, shingle count, MinHash signature, band keys (and shingle sets) of one shard."""
    normalized = docs.select(normalize_expr("text"))["text"].to_list()
    with_sets = params.near and params.verify == "jaccard"
    res = minhash_signatures(
        normalized, params.num_perm, params.seed, params.ngram, params.scheme, hash=params.hash, return_hashes=with_sets
    )
    sig, n_shingles = res[0], res[1]
    columns = [
        docs["id"],
        pl.Series("shard", [shard] * docs.height, dtype=pl.String),
        pl.Series("row", np.arange(docs.height, dtype=np.uint32)),
        pl.Series("hash", text_hashes(normalized)),
        pl.Series("n_shingles", n_shingles.astype(np.uint32)),
        pl.Series("sig", sig),
        pl.Series("bands", band_hashes(sig, params.bands, params.rows)),
    ]
    if with_sets:
        values, offsets = shingle_sets(res[2], n_shingles)
        sets = pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), pa.array(values, type=pa.uint32()))
        columns.append(pl.Series("shingles", sets, dtype=pl.List(pl.UInt32)))
    return pl.DataFrame(columns)


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


def _gather_ranges(offsets: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``values[offsets[w]:offsets[w+1]]`` for each ``w`` in ``which``, concatenated; and the lengths."""
    lens = offsets[which + 1] - offsets[which]
    base = np.cumsum(lens) - lens
    return np.repeat(offsets[which] - base, lens) + np.arange(int(lens.sum()), dtype=np.int64), lens


def jaccard_verified(values: np.ndarray, offsets: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float,
                     chunk: int = 1 << 20) -> np.ndarray:
    """Mask of pairs whose exact Jaccard of shingle-hash sets is >= ``threshold``.

    Set ``d`` is ``values[offsets[d]:offsets[d+1]]`` (distinct values). Pairs are processed in
    chunks of about ``chunk`` set elements: both sets tagged with the pair number, sorted
    together, and equal neighbours counted as the intersection.
    """
    keep = np.zeros(i.size, dtype=bool)
    size = np.cumsum((offsets[i + 1] - offsets[i]) + (offsets[j + 1] - offsets[j]))
    lo = 0
    while lo < i.size:
        hi = max(int(np.searchsorted(size, (size[lo - 1] if lo else 0) + chunk, side="right")), lo + 1)
        ia, la = _gather_ranges(offsets, i[lo:hi])
        ib, lb = _gather_ranges(offsets, j[lo:hi])
        pair = np.arange(hi - lo, dtype=np.uint64)
        keys = np.concatenate([
            (np.repeat(pair, la) << np.uint64(32)) | values[ia].astype(np.uint64),
            (np.repeat(pair, lb) << np.uint64(32)) | values[ib].astype(np.uint64),
        ])
        keys.sort()
        same = keys[1:][keys[1:] == keys[:-1]]
        inter = np.bincount((same >> np.uint64(32)).astype(np.int64), minlength=hi - lo)
        union = la + lb - inter
        keep[lo:hi] = (union > 0) & (inter >= threshold * union - 1e-9)
        lo = hi
    return keep


ShingleLoader = Callable[[np.ndarray], pl.Series]


def _list_arrays(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a List(UInt32) series."""
    arr = lists.rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    return values, offsets - offsets[0]


def cluster_frame(
    sigs: pl.DataFrame, params: DedupParams, load_shingles: ShingleLoader | None = None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Clusters of a corpus given its signature rows in corpus order: (clusters frame, counts).

    With ``verify="jaccard"`` the shingle sets come from the ``shingles`` column of ``sigs``
    or, when ``sigs`` was read without it, from ``load_shingles(sorted corpus positions)``.
    """
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
        if params.verify == "jaccard":
            cand = np.unique(np.concatenate([i, j]))
            if "shingles" in sigs.columns:
                lists = sigs["shingles"].gather(cand)
            elif load_shingles is not None:
                lists = load_shingles(cand)
            else:
                raise ValueError("verify='jaccard' needs the signatures' `shingles` column or a loader")
            values, offsets = _list_arrays(lists)
            ok = jaccard_verified(values, offsets, np.searchsorted(cand, i), np.searchsorted(cand, j), params.threshold)
        else:
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
    """All signature rows without the shingle sets, in corpus order (the order of ``paths``, then row)."""
    dtype = pl.Array(pl.UInt64 if signature_dtype(params.scheme) is np.uint64 else pl.UInt32, params.num_perm)
    schema = {"id": pl.String, "shard": pl.String, "row": pl.UInt32, "hash": pl.UInt64, "n_shingles": pl.UInt32,
              "sig": dtype, "bands": pl.Array(pl.UInt64, params.bands)}
    frames = [pl.read_parquet(p, columns=list(schema)) for p in paths]
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, rechunk=True)


def shingle_loader(paths: list[str], heights: list[int]) -> ShingleLoader:
    """Reads the ``shingles`` of given corpus positions back from the signature files, one file at a time."""
    starts = np.concatenate([[0], np.cumsum(heights)]).astype(np.int64)

    def load(positions: np.ndarray) -> pl.Series:
        parts = []
        for k, path in enumerate(paths):
            lo, hi = np.searchsorted(positions, [starts[k], starts[k + 1]])
            if hi > lo:
                rows = pl.Series("r", (positions[lo:hi] - starts[k]).astype(np.uint32))
                parts.append(
                    pl.scan_parquet(path).select("shingles").with_row_index("r")
                    .filter(pl.col("r").is_in(rows.implode())).collect()["shingles"]
                )
        return pl.concat(parts) if parts else pl.Series("shingles", [], dtype=pl.List(pl.UInt32))

    return load


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
    heights = [pl.scan_parquet(p).select(pl.len()).collect().item() for p in signatures]
    clusters, counts = cluster_frame(sigs, params, shingle_loader(signatures, heights))
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
    energy: EnergySettings | None = None,
) -> DatasetRef:
    """The flow-side half of dedup: signatures (mapped) -> clusters -> per-shard apply -> finalize."""
    work = plan_stage(workdir, STAGE, VERSION, params, [source.fingerprint])
    if work.done():  # finished before: one cache hit, and a deleted index is not rebuilt for it
        return finalize_stage(work, VERSION, params, [source], [], validation)
    parts = source.parts()

    index = IndexWork(work.stage, work.fingerprint, work.out_dir)
    sig_futures = compute_signatures.map(
        [index.for_unit(f"sig-{shard_name(p)}") for p in parts],
        input_part=[str(p) for p in parts],
        params=unmapped(params),
    )
    signatures = [f.result()["path"] for f in sig_futures]
    clusters = find_clusters(index.for_unit("clusters"), signatures, params)

    apply_params = DedupApplyParams(**params.model_dump(), clusters=clusters["path"])
    shard_stats = map_shards(work, DEDUP, source, apply_params, validation, energy)
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
    "jaccard_verified",
    "read_signatures",
    "run_dedup",
    "shingle_loader",
    "signature_frame",
]
