"""Dask clustering (``engine="dask"``): the same steps as ``spill`` as a dask.dataframe graph.

Group-by on the exact hash, shuffle on (band, key), shuffle on the pair, joins for
verification, on the running distributed client or the threaded scheduler; the exact and
verified edges are gathered to this process for the components. For corpora whose band keys
outgrow one machine's disk. Needs ``pip install 'lmwright[dask]'``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from lmwright.tasks.curate.dedup.clusters import bucket_pairs, connected_components, jaccard_verified, verified, write_clusters
from lmwright.tasks.curate.dedup.minhash import signature_dtype
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.curate.dedup.signatures import file_heights, list_arrays


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
        values, offsets = list_arrays(col)
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
        counts.update(write_clusters(paths, heights, labels, params, Path(out)))
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
    counts.update(write_clusters(paths, heights, labels, params, Path(out)))
    return counts
