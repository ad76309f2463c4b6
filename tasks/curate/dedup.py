"""Stage 6, dedup: exact (normalized-text hash) and near-duplicate (MinHash LSH) removal.

Dedup is global, so it runs in three cached steps that share the stage's output directory
``<workdir>/datasets/dedup/<fingerprint>/``:

1. ``compute_signatures`` (mapped over the input shards) writes
   ``signatures/<shard>.parquet``: id, shard, row, 64-bit hash of the normalized text,
   shingle count, the MinHash signature (fixed-size array column), one 64-bit key per
   LSH band and (with ``verify="jaccard"``) the document's sorted distinct 32-bit shingle
   hashes (``shingles``, a uint32 list). Marker: ``signatures/<shard>.json``.
2. ``find_clusters`` (one task) links exact duplicates (same hash) and verified
   near-duplicates (same key in some band, then the exact Jaccard of the two shingle-hash
   sets, read back only for candidate documents, >= ``threshold``; or with
   ``verify="signature"`` the fraction of equal signature values), takes connected
   components (engines below) and writes
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

Memory: signatures are fixed-size uint32 arrays (448 B/document at 112 permutations) and
stay on disk. ``find_clusters`` runs one of two engines (``DedupParams.engine``), both giving
the same clusters.parquet as ``cluster_frame`` (the in-memory reference, which holds every
signature and band key: 560 B/document of data, ~2.5 KB/document peak RSS measured):

- ``polars`` (default, ``cluster_files``): a shuffle through sorted runs on disk under
  ``<stage dir>/spill-<random>/`` (one per run: two runs never share it). Map passes write (key, position) runs per ~1M documents: the exact
  hash, and each band's key alone; reduce steps read one key range of one band at a time
  (row groups outside the range are skipped by their min/max), group it, write its candidate
  pairs; pairs are deduplicated per range of the first position, get both documents' shingle
  sets (or signatures) by two merge joins with the signature files in corpus order (each file
  read once per join), are verified in chunks; components are union-find on one
  int64 label per document. Memory: 8 B/document (16 at the union-find peak) plus ~0.5 GB
  of buffers (``SPILL_ROWS``, ``PART_ROWS``, ``VERIFY_PAIRS``); disk: ~16 B/document/band, plus
  hashes, pairs and the pairs' first shingle sets; deleted when done. Measured to 8M
  documents: benchmarks/README.md (dedup_scale.py).
- ``dask`` (``cluster_files_dask``): the same steps as a dask.dataframe graph (group-by on the
  exact hash, shuffle on (band, key), shuffle on the pair, joins for verification) on the
  running distributed client or the threaded scheduler; the exact and verified edges are
  gathered to this process for the components.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, unmapped
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import COMPRESSION, DatasetRef, shard_name, write_json, write_parquet
from lmwright.tasks.core.files import atomic_path
from lmwright.tasks.curate.minhash import band_hashes, minhash_signatures, normalize_expr, shingle_sets, signature_dtype
from lmwright.tasks.core.energy import EnergySettings, merge_energy, track
from lmwright.tasks.core.stage import ShardStage, StageWork, finalize_stage, map_shards, plan_stage, stage_task

STAGE = "dedup"
VERSION = "2"  # 2: word_mix shingle hash by default, exact-Jaccard verification
REASON_EXACT = "dedup_exact"
REASON_NEAR = "dedup_near"
DEDUP_COLUMNS = ("dup_cluster", "dup_of")
PLACEMENT_FIELDS = ("engine", "dask_address")  # where the cluster step runs; same output, same fingerprint


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
        "Signatures equal datasketch.MinHash(num_perm, seed, scheme=scheme, hashfunc=tasks.curate.minhash.datasketch_hashfunc(hash, scheme)).",
    )
    hash: Literal["word_mix", "sha1"] = Field(
        "word_mix",
        description="Shingle hash. `word_mix`: MurmurHash3_x86_32 over the words' SHA-1-32 hashes (tasks.curate.minhash.word_mix_hash32; "
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
    engine: Literal["polars", "dask"] = Field(
        "polars",
        description="Where the global cluster step runs (same clusters either way). `polars`: on this machine, bounded "
        "in memory (~8 B/document + a constant), spilling sorted runs of band keys and pairs to the stage directory. "
        "`dask`: a dask.dataframe shuffle on the Dask cluster (`dask_address`, else the client of the Dask task runner "
        "this runs under, else dask's threaded scheduler here); for corpora whose band keys outgrow one machine's disk.",
    )
    dask_address: str | None = Field(
        None, description="Scheduler address (tcp://host:8786) for `engine: dask`; null: the current Dask client, if any."
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
def compute_signatures(
    work: IndexWork, input_part: str, params: DedupParams, energy: EnergySettings | None = None
) -> dict[str, Any]:
    """MinHash signatures + exact hashes of one shard -> signatures/<shard>.parquet."""
    if work.done():
        return json.loads(work.marker.read_text())
    start = time.perf_counter()
    with track(STAGE, energy) as used:
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
        "energy": used.to_json(),
    }
    write_json(work.marker, info)  # last: the unit is done
    return info


# --- clustering -------------------------------------------------------------------------


def connected_components(n: int, src: np.ndarray, dst: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Label of every node = the smallest node index in its component (union-find in numpy).

    Invariant: ``labels[x] <= x``. Each round hooks the larger root of every unmerged edge
    under the smaller one, then compresses paths to roots; a component's root is its minimum.
    ``labels`` (updated in place) continues from earlier edges: feed edges in chunks.
    """
    if labels is None:
        labels = np.arange(n, dtype=np.int64)
    else:
        while not np.array_equal(nxt := labels[labels], labels):  # roots first: hooking needs them
            labels[:] = nxt
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
            labels[:] = nxt


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
    buckets = long.group_by("band", "key").agg(pl.col("g").sort()).filter(pl.col("g").list.len() > 1)
    return bucket_pairs(buckets, max_bucket_pairs).unique()


def bucket_pairs(buckets: pl.DataFrame, max_bucket_pairs: int) -> pl.DataFrame:
    """Pairs (i < j) of buckets (column ``g``: sorted corpus positions sharing a band key, > 1 each), with repeats.

    A bucket of up to ``max_bucket_pairs`` gives all its pairs; a bigger one (boilerplate) a
    star to its first member plus the chain of neighbours, so pairs stay linear in its size.
    """
    buckets = buckets.select(pl.col("g"), pl.col("g").list.len().alias("size")).with_row_index("b")
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
    return pl.concat([small_pairs, big_pairs]).cast(pl.Int64)


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
RowLoader = Callable[[np.ndarray], pl.DataFrame]
CLUSTER_SCHEMA = {"id": pl.String, "dup_cluster": pl.String, "dup_of": pl.String, "reason": pl.String}


def _list_arrays(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a List(UInt32) series."""
    arr = lists.rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    return values, offsets - offsets[0]


def verify_candidates(i: np.ndarray, j: np.ndarray, params: DedupParams, load: RowLoader) -> np.ndarray:
    """Mask of candidate pairs that pass ``params.verify``; ``load(sorted positions)`` gives their rows.

    Only the candidates' ``shingles`` (jaccard) or ``sig`` (signature) column is needed.
    """
    cand = np.unique(np.concatenate([i, j]))
    a, b = np.searchsorted(cand, i), np.searchsorted(cand, j)
    rows = load(cand)
    if params.verify == "jaccard":
        values, offsets = _list_arrays(rows["shingles"])
        return jaccard_verified(values, offsets, a, b, params.threshold)
    return verified(rows["sig"].to_numpy(), a, b, params.threshold)


def _cluster_rows(ids: pl.Series, dup_cluster: pl.Series, is_dup: np.ndarray, exact: np.ndarray) -> pl.DataFrame:
    """clusters.parquet rows: id, dup_cluster (kept document's id), dup_of and reason on duplicates."""
    return pl.DataFrame(
        {"id": ids, "dup_cluster": dup_cluster, "is_dup": is_dup, "exact": exact}
    ).select(
        "id",
        "dup_cluster",
        pl.when("is_dup").then("dup_cluster").otherwise(None).alias("dup_of"),
        pl.when("exact").then(pl.lit(REASON_EXACT)).when("is_dup").then(pl.lit(REASON_NEAR)).alias("reason"),
    ).cast(CLUSTER_SCHEMA)  # type: ignore[arg-type]


def cluster_frame(
    sigs: pl.DataFrame, params: DedupParams, load_shingles: ShingleLoader | None = None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Clusters of a corpus given its signature rows in corpus order: (clusters frame, counts).

    The in-memory reference: holds every signature and band key (~560 B/document). The
    engines of ``find_clusters`` give the same frame and counts without doing so.
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
        if params.verify == "jaccard" and "shingles" not in sigs.columns:
            if load_shingles is None:
                raise ValueError("verify='jaccard' needs the signatures' `shingles` column or a loader")
            loader = load_shingles
            ok = verify_candidates(i, j, params, lambda pos: loader(pos).alias("shingles").to_frame())
        else:
            ok = verify_candidates(i, j, params, lambda pos: sigs.select("shingles" if params.verify == "jaccard" else "sig")[pos])
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
    clusters = _cluster_rows(ids, ids.gather(root), is_dup, exact_dup)
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


def file_heights(paths: list[str]) -> list[int]:
    """Rows of each parquet file, from its footer."""
    return [pq.ParquetFile(p).metadata.num_rows for p in paths]


def column_loader(paths: list[str], heights: list[int], columns: list[str]) -> RowLoader:
    """Reads ``columns`` of given sorted corpus positions back from the signature files, one file at a time."""
    starts = np.concatenate([[0], np.cumsum(heights)]).astype(np.int64)

    def load(positions: np.ndarray) -> pl.DataFrame:
        parts = []
        for k, path in enumerate(paths):
            lo, hi = np.searchsorted(positions, [starts[k], starts[k + 1]])
            if hi > lo:
                rows = pl.Series("r", (positions[lo:hi] - starts[k]).astype(np.uint32))
                parts.append(
                    pl.scan_parquet(path).select(columns).with_row_index("r")
                    .filter(pl.col("r").is_in(rows.implode())).drop("r").collect()
                )
        if not parts:
            return pl.scan_parquet(paths[0]).select(columns).head(0).collect() if paths else pl.DataFrame()
        return pl.concat(parts)

    return load


def shingle_loader(paths: list[str], heights: list[int]) -> ShingleLoader:
    """Reads the ``shingles`` of given corpus positions back from the signature files, one file at a time."""
    load = column_loader(paths, heights, ["shingles"])
    return lambda positions: load(positions)["shingles"] if paths else pl.Series("shingles", [], dtype=pl.List(pl.UInt32))


# --- bounded clustering (engine="polars"): a shuffle through sorted runs on disk ------------

SPILL_ROWS = 1 << 20  # documents per sorted run written by a map pass (~120 MB of bands in memory)
PART_ROWS = 1 << 22  # rows one group-by, pair partition or batch of edges holds at a time (~0.5 GB)
VERIFY_PAIRS = 1 << 18  # candidate pairs verified together: their shingle sets (or signatures) are loaded at once
RUN_ROW_GROUP = 1 << 16  # small row groups, so a key-range read skips the others by their min/max
KEY_END = 1 << 64  # band keys and hashes are uniform 64-bit values: split into equal ranges


def _corpus_chunks(paths: list[str], starts: np.ndarray, columns: list[str], rows: int):
    """Frames of ``columns`` plus the corpus position ``g``, whole files at a time, about ``rows`` rows each."""
    buf: list[pl.DataFrame] = []
    have = 0
    for path, start in zip(paths, starts):
        df = pl.read_parquet(path, columns=columns)
        buf.append(df.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + int(start)).alias("g")))
        have += df.height
        if have >= rows:
            yield pl.concat(buf)
            buf, have = [], 0
    if buf:
        yield pl.concat(buf)


def _write_run(frame: pl.DataFrame, key: str, path: Path) -> Path:
    """One sorted run of the shuffle: ``frame`` sorted by ``key``, with min/max per row group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sort(key).write_parquet(path, compression="lz4", statistics=True, row_group_size=RUN_ROW_GROUP)
    return path


def _ranges(parts: int, end: int) -> list[tuple[int, int]]:
    """``parts`` equal half-open ranges covering [0, end)."""
    bounds = [end * p // parts for p in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _scan_range(runs: list[Path], key: str, lo: int, hi: int, end: int) -> pl.LazyFrame:
    """Rows of the runs with ``lo <= key < hi``: a reduce partition of the shuffle."""
    lf = pl.scan_parquet(runs)
    if lo == 0 and hi == end:
        return lf
    dtype = pl.UInt64 if end == KEY_END else pl.Int64
    cond = pl.col(key) >= pl.lit(lo, dtype)
    if hi < end:
        cond &= pl.col(key) < pl.lit(hi, dtype)
    return lf.filter(cond)


def _groups(lf: pl.LazyFrame, key: str) -> pl.DataFrame:
    """Buckets of ``key`` with more than one row: column ``g``, each a sorted list of corpus positions.

    Most keys are unique: dropping them before grouping is ~3x faster than grouping all rows.
    """
    return lf.filter(pl.len().over(key) > 1).group_by(key).agg(pl.col("g").sort()).select("g").collect()


def _check_unique_ids(id_runs: list[Path], parts: int, load: RowLoader) -> None:
    """Raise when two documents share an id (buckets of a 64-bit id hash, then the ids themselves)."""
    examples: list[str] = []
    for lo, hi in _ranges(parts, KEY_END) if id_runs else []:
        same_hash = _groups(_scan_range(id_runs, "key", lo, hi, KEY_END), "key")
        if same_hash.height:
            pos = np.unique(same_hash.explode("g")["g"].to_numpy())
            ids = load(pos)["id"]
            examples += ids.filter(ids.is_duplicated()).unique().to_list()
    if examples:
        raise ValueError(f"dedup needs unique document ids; duplicated, e.g.: {sorted(examples)[:5]}")


def _write_clusters(paths: list[str], heights: list[int], labels: np.ndarray, params: DedupParams, out: Path) -> dict[str, Any]:
    """clusters.parquet from the component labels, one signature file at a time; returns the counts.

    Only the kept documents of clusters (one per cluster) have their id and hash looked up.
    """
    n = labels.size
    step = 1 << 24  # in slices: no second n-sized array
    dup_roots = np.concatenate(
        [labels[lo : lo + step][labels[lo : lo + step] != np.arange(lo, min(lo + step, n))] for lo in range(0, n, step)]
        or [np.zeros(0, np.int64)]
    )
    roots, sizes = np.unique(dup_roots, return_counts=True)  # kept documents of clusters, duplicates per cluster
    del dup_roots
    kept = column_loader(paths, heights, ["id", "hash"])(roots) if roots.size else None
    with atomic_path(out) as tmp:
        exact_total = _write_cluster_rows(paths, heights, labels, roots, kept, params, tmp)
    duplicates = int(sizes.sum())
    return {
        "clusters": int(roots.size),
        "duplicates": duplicates,
        "exact_duplicates": exact_total,
        "near_duplicates": duplicates - exact_total,
        "largest_cluster": int(sizes.max()) + 1 if sizes.size else int(n > 0),
    }


def _write_cluster_rows(
    paths: list[str], heights: list[int], labels: np.ndarray, roots: np.ndarray, kept: pl.DataFrame | None,
    params: DedupParams, tmp: Path,
) -> int:
    """Stream one cluster row per document into ``tmp``; returns the number of exact duplicates."""
    writer = None
    exact_total = 0
    start = 0
    for path, h in zip(paths, heights):
        df = pl.read_parquet(path, columns=["id", "hash"])
        lab = labels[start : start + h]
        is_dup = lab != np.arange(start, start + h)
        start += h
        idx = np.searchsorted(roots, lab).clip(0, max(roots.size - 1, 0))
        if kept is not None:
            dup_cluster = pl.select(pl.when(pl.Series(is_dup)).then(kept["id"].gather(idx)).otherwise(df["id"])).to_series()
            exact = is_dup & (df["hash"].to_numpy() == kept["hash"].to_numpy()[idx]) & params.exact
        else:
            dup_cluster, exact = df["id"], np.zeros(h, dtype=bool)
        exact_total += int(exact.sum())
        table = _cluster_rows(df["id"], dup_cluster, is_dup, exact).to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression=COMPRESSION, write_statistics=False)
        writer.write_table(table)
    if writer is None:  # no documents
        pl.DataFrame(schema=CLUSTER_SCHEMA).write_parquet(tmp, compression=COMPRESSION, statistics=False)
    else:
        writer.close()
    return exact_total


def _attach(pairs: pl.DataFrame, key: str, name: str, paths: list[str], starts: np.ndarray, column: str, first: int = 0):
    """``pairs`` sorted by ``key`` with the ``column`` of document ``key`` as ``name``: frames, one per file read.

    A merge join: each signature file is read once, for the rows its positions cover.
    """
    pos = pairs[key].to_numpy()
    bounds = np.searchsorted(pos, starts)
    for f in range(first, len(paths)):
        lo, hi = int(bounds[f]), int(bounds[f + 1])
        if hi == lo:
            if lo == pos.size:
                return
            continue
        part = pairs.slice(lo, hi - lo)
        need = np.unique(pos[lo:hi])
        values = pl.read_parquet(paths[f], columns=[column])[column].gather(need - int(starts[f]))
        yield part.join(pl.DataFrame({key: need, name: values}), on=key, how="left", maintain_order="left")


def _file_blocks(starts: np.ndarray, blocks: int) -> list[tuple[int, int]]:
    """``blocks`` runs of consecutive files [f0, f1) with about equal numbers of documents."""
    edges = np.unique(np.searchsorted(starts, np.linspace(0, starts[-1], blocks + 1), side="left"))
    edges[0], edges[-1] = 0, len(starts) - 1
    edges = np.unique(edges)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _verify_rows(vi: pl.Series, vj: pl.Series, params: DedupParams) -> np.ndarray:
    """Mask of rows whose two shingle sets (or signatures) pass ``params.verify``."""
    m = vi.len()
    a, b = np.arange(m), np.arange(m, 2 * m)
    both = pl.concat([vi, vj.alias(vi.name)])
    if params.verify == "jaccard":
        values, offsets = _list_arrays(both)
        return jaccard_verified(values, offsets, a, b, params.threshold)
    return verified(both.to_numpy(), a, b, params.threshold)


def cluster_files(
    paths: list[str],
    params: DedupParams,
    out: str | Path,
    spill: str | Path,
    *,
    spill_rows: int = SPILL_ROWS,
    part_rows: int = PART_ROWS,
    verify_pairs: int = VERIFY_PAIRS,
) -> dict[str, Any]:
    """clusters.parquet of the corpus in the signature files ``paths`` (corpus order), bounded in memory.

    Same clusters and counts as ``cluster_frame(read_signatures(paths))``. Memory: one int64
    label per document plus ~``part_rows`` rows of one reduce partition; ``spill`` holds the
    sorted runs (~16 B/document/band) and is removed at the end, also when a step fails.
    """
    spill = Path(spill)
    shutil.rmtree(spill, ignore_errors=True)
    try:
        return _cluster_spilled(paths, params, Path(out), spill, spill_rows, part_rows, verify_pairs)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _cluster_spilled(
    paths: list[str], params: DedupParams, out: Path, spill: Path, spill_rows: int, part_rows: int, verify_pairs: int
) -> dict[str, Any]:
    heights = file_heights(paths)
    starts = np.concatenate([[0], np.cumsum(heights)]).astype(np.int64)
    n = int(starts[-1])
    labels = np.arange(n, dtype=np.int64)  # component label = smallest corpus position in it
    parts = max(1, -(-n // part_rows))  # key ranges per reduce step: at most ~part_rows rows each
    counts: dict[str, Any] = {"docs": n, "candidate_pairs": 0, "verified_pairs": 0}

    # Map 1: (id hash, g) and (exact hash, g) runs
    id_runs, hash_runs = [], []
    for c, df in enumerate(_corpus_chunks(paths, starts, ["id", "hash"], spill_rows)):
        id_runs.append(_write_run(df.select(pl.col("id").hash().alias("key"), "g"), "key", spill / "ids" / f"run-{c:05d}.parquet"))
        if params.exact:
            hash_runs.append(_write_run(df.select(pl.col("hash").alias("key"), "g"), "key", spill / "hash" / f"run-{c:05d}.parquet"))
    _check_unique_ids(id_runs, parts, column_loader(paths, heights, ["id"]))

    # Reduce 1: exact duplicates point at their first copy (a forest of depth 1)
    for lo, hi in _ranges(parts, KEY_END) if hash_runs else []:
        b = _groups(_scan_range(hash_runs, "key", lo, hi, KEY_END), "key")
        b = b.select(pl.col("g").list.first().alias("rep"), "g").explode("g").filter(pl.col("g") != pl.col("rep"))
        labels[b["g"].to_numpy()] = b["rep"].to_numpy()

    if params.near:
        # Map 2: one (key, g) run per band for the near-duplicate pool (not empty, not an exact copy)
        band_runs: list[list[Path]] = [[] for _ in range(params.bands)]
        for c, df in enumerate(_corpus_chunks(paths, starts, ["n_shingles", "bands"], spill_rows)):
            g = df["g"].to_numpy()
            pool = df.filter(pl.Series((labels[g] == g) & (df["n_shingles"].to_numpy() > 0)))
            if pool.height:
                for k in range(params.bands):
                    frame = pool.select(pl.col("bands").arr.get(k).alias("key"), "g")
                    band_runs[k].append(_write_run(frame, "key", spill / f"band-{k:03d}" / f"run-{c:05d}.parquet"))
            del df, pool

        # Reduce 2: buckets of one band and one key range at a time -> candidate pairs, sorted by i
        pair_runs, pair_rows = [], 0
        for k, runs in enumerate(band_runs):
            for p, (lo, hi) in enumerate(_ranges(parts, KEY_END) if runs else []):
                pairs = bucket_pairs(_groups(_scan_range(runs, "key", lo, hi, KEY_END), "key"), params.max_bucket_pairs)
                if pairs.height:
                    pair_runs.append(_write_run(pairs, "i", spill / "pairs" / f"band-{k:03d}-{p:05d}.parquet"))
                    pair_rows += pairs.height

        # Reduce 3: unique pairs per range of i; each pair gets the first document's set (or
        # signature) by a merge join with the files in order, written as runs sorted by j
        column = "shingles" if params.verify == "jaccard" else "sig"
        joined_runs: list[Path] = []
        buf: list[pl.DataFrame] = []
        buffered = 0
        for lo, hi in _ranges(max(1, -(-pair_rows // part_rows)), n) if pair_runs else []:
            pairs = _scan_range(pair_runs, "i", lo, hi, n).unique().sort("i", "j").collect()
            counts["candidate_pairs"] += pairs.height
            for rows in _attach(pairs, "i", "vi", paths, starts, column):
                buf.append(rows)
                buffered += rows.height
                if buffered >= verify_pairs:
                    joined_runs.append(_write_run(pl.concat(buf), "j", spill / "joined" / f"run-{len(joined_runs):05d}.parquet"))
                    buf, buffered = [], 0
        if buf:
            joined_runs.append(_write_run(pl.concat(buf), "j", spill / "joined" / f"run-{len(joined_runs):05d}.parquet"))
            buf = []

        # Reduce 4: per block of files (~verify_pairs pairs by j), the second document's set,
        # verification, and the verified edges into union-find in batches
        src: list[np.ndarray] = []
        dst: list[np.ndarray] = []
        held = 0
        blocks = max(1, -(-counts["candidate_pairs"] // verify_pairs))
        for f0, f1 in _file_blocks(starts, blocks) if joined_runs else []:
            lo, hi = int(starts[f0]), int(starts[f1])
            pairs = _scan_range(joined_runs, "j", lo, hi, n).collect().sort("j")
            for rows in _attach(pairs, "j", "vj", paths, starts, column, first=f0):
                ok = _verify_rows(rows["vi"], rows["vj"], params)
                i, j = rows["i"].to_numpy()[ok], rows["j"].to_numpy()[ok]
                counts["verified_pairs"] += int(ok.sum())
                src.append(i)
                dst.append(j)
                held += i.size
                if held >= part_rows:
                    connected_components(n, np.concatenate(src), np.concatenate(dst), labels)
                    src, dst, held = [], [], 0
        if src:
            connected_components(n, np.concatenate(src), np.concatenate(dst), labels)
    else:
        connected_components(n, np.zeros(0, np.int64), np.zeros(0, np.int64), labels)

    counts.update(_write_clusters(paths, heights, labels, params, out))
    return counts


# --- dask clustering (engine="dask"): the same steps as a dask.dataframe graph ------------------


def _pd_part(path: str, start: int, skip: np.ndarray | None = None, *, read: list[str]):
    """One signature file as pandas: columns ``read`` + corpus position ``g`` (rows at positions in ``skip`` dropped)."""
    df = pl.read_parquet(path, columns=read).with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + start).alias("g"))
    if skip is not None and skip.size:
        df = df.filter(~pl.col("g").is_in(pl.Series(skip).implode()))
    if "n_shingles" in read:  # the near-duplicate pool: documents with shingles
        df = df.filter(pl.col("n_shingles") > 0).drop("n_shingles")
    for col in ("shingles", "sig"):  # as bytes: the shuffles carry plain binary columns (not nested ones)
        if col in read:
            df = df.with_columns(pl.Series(col, _to_binary(df[col])))
    if "bands" in read:  # long form: one row per (document, band)
        keys = df["bands"].to_numpy()  # (rows, bands)
        rows, nb = keys.shape
        df = pl.DataFrame({
            "band": np.tile(np.arange(nb, dtype=np.int16), rows),
            "key": keys.ravel(),
            "g": np.repeat(df["g"].to_numpy(), nb),
        })
    return df.to_pandas(use_pyarrow_extension_array=True)


def _pd_pairs(part, max_bucket_pairs: int):
    """Candidate pairs of one shuffle partition of (band, key, g) rows: every (band, key) is whole in it."""
    df = pl.from_pandas(part)
    buckets = df.group_by("band", "key").agg(pl.col("g").sort()).filter(pl.col("g").list.len() > 1)
    return bucket_pairs(buckets, max_bucket_pairs).to_pandas(use_pyarrow_extension_array=True)


def _to_binary(col: pl.Series) -> pa.Array:
    """A List/Array column of unsigned ints as one little-endian byte string per row."""
    if isinstance(col.dtype, pl.Array):
        values = np.ascontiguousarray(col.to_numpy())  # (rows, width)
        offsets = np.arange(col.len() + 1, dtype=np.int64) * values.shape[1]
        values = values.ravel()
    else:
        values, offsets = _list_arrays(col)
    buffers = [None, pa.py_buffer(offsets * values.dtype.itemsize), pa.py_buffer(values.tobytes())]
    return pa.Array.from_buffers(pa.large_binary(), col.len(), buffers)


def _from_binary(col: pl.Series, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a column written by ``_to_binary``; offsets in values."""
    arr = col.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_binary())
    _, off, data = arr.buffers()
    offsets = np.frombuffer(off, np.int64, len(arr) + 1, arr.offset * 8)
    values = np.frombuffer(data, dtype) if data is not None else np.zeros(0, dtype)
    return values, offsets // np.dtype(dtype).itemsize


def _pd_verify(part, verify: str, threshold: float, dtype: str):
    """Verified pairs of one partition of (i, j, vi, vj): vi/vj the two documents' shingle sets or signatures."""
    df = pl.from_pandas(part)
    if df.height == 0:
        return part[["i", "j"]]
    m = df.height
    a, b = np.arange(m), np.arange(m, 2 * m)
    values, offsets = _from_binary(pl.concat([df["vi"], df["vj"].alias("vi")]), dtype)
    if verify == "jaccard":
        ok = jaccard_verified(values, offsets, a, b, threshold)
    else:
        ok = verified(values[offsets[0] : offsets[-1]].reshape(2 * m, -1), a, b, threshold)
    return part.loc[ok, ["i", "j"]]


@contextmanager
def _dask_scheduler(address: str | None) -> Iterator[Any]:
    """What dask.compute runs on: the given address, else the current client, else the threaded scheduler.

    Inside a task on a Dask worker (prefect-dask's runner) the worker's client is used through
    ``worker_client``, which secedes the task's thread so the graph's tasks can use it.
    """
    try:
        import distributed
    except ImportError:
        yield "threads"
        return
    if address:
        with distributed.Client(address) as client:
            yield client
        return
    try:
        distributed.get_worker()
        in_worker = True
    except ValueError:
        in_worker = False
    if in_worker:
        with distributed.worker_client() as client:
            yield client
        return
    try:
        client = distributed.get_client()
    except ValueError:
        client = None
    yield client if client is not None else "threads"


def cluster_files_dask(paths: list[str], params: DedupParams, out: str | Path, scheduler: Any = None) -> dict[str, Any]:
    """clusters.parquet of the corpus in ``paths`` with dask.dataframe; same clusters and counts as ``cluster_files``.

    The shuffles (exact hash, (band, key), pair, joins of pairs with shingle sets) run on dask.
    The exact-copy edges and the verified edges are gathered here: 16 B per duplicate edge,
    ~0.5 GB for 30M duplicates, as are the labels (8 B/document); each file's rows are then
    written as in ``cluster_files``. ``scheduler``: anything dask.compute takes (a Client,
    "threads", "sync"); default ``params.dask_address``, the current client, else threads.
    """
    if scheduler is None:
        with _dask_scheduler(params.dask_address) as found:
            return cluster_files_dask(paths, params, out, found)
    try:
        import dask
        import dask.dataframe as dd
        import pandas as pd
    except ImportError as e:
        raise ImportError(f"engine='dask' needs dask.dataframe: pip install 'lmwright[dask]' ({e})") from e

    heights = file_heights(paths)
    starts = [int(x) for x in np.concatenate([[0], np.cumsum(heights)])]
    n = starts[-1]
    labels = np.arange(n, dtype=np.int64)
    counts: dict[str, Any] = {"docs": n, "candidate_pairs": 0, "verified_pairs": 0}
    if not paths:
        counts.update(_write_clusters(paths, heights, labels, params, Path(out)))
        return counts
    parts = max(1, len(paths))

    def frame(columns: list[str], meta: dict[str, Any], skip: list[np.ndarray] | None = None):
        args = [paths, starts[:-1]] + ([skip] if skip is not None else [])
        empty = pd.DataFrame({k: pd.Series([], dtype=v) for k, v in meta.items()})
        # (not `columns=`: from_map takes that keyword as a column projection)
        return dd.from_map(_pd_part, *args, read=columns, meta=empty, enforce_metadata=False)

    # ids must be unique; exact copies point at their first copy (group-by on the hash)
    ids = frame(["id"], {"id": pd.ArrowDtype(pa.large_string()), "g": pd.ArrowDtype(pa.int64())})
    counted = ids["id"].value_counts(split_out=parts)
    dup_ids = counted[counted > 1]
    copies = None
    if params.exact:
        docs = frame(["hash"], {"hash": pd.ArrowDtype(pa.uint64()), "g": pd.ArrowDtype(pa.int64())})
        first = docs.groupby("hash")["g"].min(split_out=parts).rename("rep")
        both = docs.merge(first.to_frame(), left_on="hash", right_index=True)
        copies = both[both["g"] != both["rep"]][["g", "rep"]]
    dup_ids, copies = dask.compute(dup_ids, copies, scheduler=scheduler)
    if len(dup_ids):
        raise ValueError(f"dedup needs unique document ids; duplicated, e.g.: {sorted(map(str, dup_ids.index))[:5]}")
    skip = [np.zeros(0, np.int64)] * len(paths)
    if copies is not None and len(copies):
        g, rep = copies["g"].to_numpy(np.int64), copies["rep"].to_numpy(np.int64)
        labels[g] = rep  # a forest of depth 1, as in cluster_files
        g = np.sort(g)
        bounds = np.searchsorted(g, starts)
        skip = [g[bounds[k] : bounds[k + 1]] for k in range(len(paths))]  # exact copies leave the pool

    if params.near:
        i64 = pd.ArrowDtype(pa.int64())
        long = frame(["n_shingles", "bands"], {"band": pd.ArrowDtype(pa.int16()), "key": pd.ArrowDtype(pa.uint64()),
                                                "g": i64}, skip)
        pairs_meta = pd.DataFrame({"i": pd.Series([], dtype=i64), "j": pd.Series([], dtype=i64)})
        pairs = (
            long.shuffle(on=["band", "key"], npartitions=parts)  # a bucket lands whole in one partition
            .map_partitions(_pd_pairs, params.max_bucket_pairs, meta=pairs_meta)
            .shuffle(on="i", npartitions=parts)  # repeats of a pair (several bands, star + chain) meet
            .map_partitions(lambda d: d.drop_duplicates(), meta=pairs_meta)
        )
        column = "shingles" if params.verify == "jaccard" else "sig"
        dtype = "<u4" if column == "shingles" or signature_dtype(params.scheme) is np.uint32 else "<u8"
        values = frame(["n_shingles", column], {column: pd.ArrowDtype(pa.large_binary()), "g": i64}, skip)
        joined = (
            pairs.merge(values.rename(columns={"g": "i", column: "vi"}), on="i")
            .merge(values.rename(columns={"g": "j", column: "vj"}), on="j")
        )
        ok = joined.map_partitions(_pd_verify, params.verify, params.threshold, dtype, meta=pairs_meta)
        n_pairs, edges = dask.compute(pairs.map_partitions(len).sum(), ok, scheduler=scheduler)
        counts["candidate_pairs"] = int(n_pairs)
        counts["verified_pairs"] = len(edges)
        connected_components(n, edges["i"].to_numpy(np.int64), edges["j"].to_numpy(np.int64), labels)
    else:
        connected_components(n, np.zeros(0, np.int64), np.zeros(0, np.int64), labels)
    counts.update(_write_clusters(paths, heights, labels, params, Path(out)))
    return counts


@stage_task(task_run_name="dedup-clusters")
def find_clusters(
    work: IndexWork, signatures: list[str], params: DedupParams, energy: EnergySettings | None = None
) -> dict[str, Any]:
    """Exact + near-duplicate clusters of the whole input -> clusters.parquet (engine: params.engine)."""
    if work.done():
        return json.loads(work.marker.read_text())
    start = time.perf_counter()
    path = Path(work.out_dir) / "clusters.parquet"
    with track(STAGE, energy) as used:  # on the Dask engine: this process's share; the workers are not metered
        if params.engine == "dask":
            counts = cluster_files_dask(signatures, params, path)
        else:
            # a spill directory of its own: a second run on this workdir must not delete this one's runs
            spill = tempfile.mkdtemp(prefix="spill-", dir=work.out_dir)
            counts = cluster_files(signatures, params, path, spill)
    info = {"path": str(path), **counts, "seconds": round(time.perf_counter() - start, 4), "energy": used.to_json()}
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


__all__ = [
    "DedupParams",
    "DedupApplyParams",
    "IndexWork",
    "DEDUP",
    "apply_dedup",
    "bucket_pairs",
    "cluster_files",
    "cluster_files_dask",
    "cluster_frame",
    "column_loader",
    "compute_signatures",
    "connected_components",
    "find_clusters",
    "jaccard_verified",
    "read_signatures",
    "run_dedup",
    "shingle_loader",
    "signature_frame",
]
