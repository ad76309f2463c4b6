"""Signature rows of one shard (exact hash, MinHash, band keys, shingle sets) and reading them back.

A signature file ``signatures/<shard>.parquet`` holds, per document in shard order: id, shard,
row, ``hash`` (64-bit BLAKE2b of the normalized text: the exact-duplicate key), ``n_shingles``,
``sig`` (the MinHash signature, tasks.curate.dedup.minhash), ``bands`` (one 64-bit key per LSH
band) and, with ``verify="jaccard"``, ``shingles`` (sorted distinct 32-bit shingle hashes).
The engines read only the columns (and, for candidates, the rows) they need.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lmwright.tasks.core.stage import SLICE_BYTES, text_slices
from lmwright.tasks.curate.dedup.minhash import band_hashes, minhash_signatures, normalize_expr, shingle_sets, signature_dtype
from lmwright.tasks.curate.dedup.params import DedupParams

ShingleLoader = Callable[[np.ndarray], pl.Series]
RowLoader = Callable[[np.ndarray], pl.DataFrame]


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


def shard_signatures(docs: pl.DataFrame, shard: str, params: DedupParams, max_bytes: int = SLICE_BYTES) -> pl.DataFrame:
    """``signature_frame`` of a shard computed a slice of text at a time (its shingle tables cost many
    times the text): the same rows, ``row`` counted from the shard's start."""
    parts, offset = [], 0
    for part in text_slices(docs, max_bytes):
        parts.append(signature_frame(part, shard, params).with_columns(pl.col("row") + pl.lit(offset, dtype=pl.UInt32)))
        offset += part.height
    return pl.concat(parts) if len(parts) > 1 else parts[0]


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


def list_arrays(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a List(UInt32) series."""
    arr = lists.rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
    return values, offsets - offsets[0]
