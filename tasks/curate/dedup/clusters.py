"""Candidate pairs, their verification, connected components, and clusters.parquet.

The pieces both bounded engines (``spill``, ``dask_engine``) share, and ``cluster_frame``: the
in-memory reference they must equal, which holds every signature and band key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from lmwright.tasks.core.dataset import COMPRESSION
from lmwright.tasks.core.files import atomic_path
from lmwright.tasks.curate.dedup.params import REASON_EXACT, REASON_NEAR, DedupParams
from lmwright.tasks.curate.dedup.signatures import RowLoader, ShingleLoader, column_loader, list_arrays

CLUSTER_SCHEMA = {"id": pl.String, "dup_cluster": pl.String, "dup_of": pl.String, "reason": pl.String}


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


def gather_ranges(offsets: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        ia, la = gather_ranges(offsets, i[lo:hi])
        ib, lb = gather_ranges(offsets, j[lo:hi])
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


def verify_candidates(i: np.ndarray, j: np.ndarray, params: DedupParams, load: RowLoader) -> np.ndarray:
    """Mask of candidate pairs that pass ``params.verify``; ``load(sorted positions)`` gives their rows.

    Only the candidates' ``shingles`` (jaccard) or ``sig`` (signature) column is needed.
    """
    cand = np.unique(np.concatenate([i, j]))
    a, b = np.searchsorted(cand, i), np.searchsorted(cand, j)
    rows = load(cand)
    if params.verify == "jaccard":
        values, offsets = list_arrays(rows["shingles"])
        return jaccard_verified(values, offsets, a, b, params.threshold)
    return verified(rows["sig"].to_numpy(), a, b, params.threshold)


def cluster_rows(ids: pl.Series, dup_cluster: pl.Series, is_dup: np.ndarray, exact: np.ndarray) -> pl.DataFrame:
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
    clusters = cluster_rows(ids, ids.gather(root), is_dup, exact_dup)
    sizes = np.bincount(root, minlength=n)
    counts.update(
        clusters=int((sizes > 1).sum()),
        duplicates=int(is_dup.sum()),
        exact_duplicates=int(exact_dup.sum()),
        near_duplicates=int((is_dup & ~exact_dup).sum()),
        largest_cluster=int(sizes.max()) if n else 0,
    )
    return clusters, counts


def write_clusters(paths: list[str], heights: list[int], labels: np.ndarray, params: DedupParams, out: Path) -> dict[str, Any]:
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
        exact_total = _writecluster_rows(paths, heights, labels, roots, kept, params, tmp)
    duplicates = int(sizes.sum())
    return {
        "clusters": int(roots.size),
        "duplicates": duplicates,
        "exact_duplicates": exact_total,
        "near_duplicates": duplicates - exact_total,
        "largest_cluster": int(sizes.max()) + 1 if sizes.size else int(n > 0),
    }


def _writecluster_rows(
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
        table = cluster_rows(df["id"], dup_cluster, is_dup, exact).to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression=COMPRESSION, write_statistics=False)
        writer.write_table(table)
    if writer is None:  # no documents
        pl.DataFrame(schema=CLUSTER_SCHEMA).write_parquet(tmp, compression=COMPRESSION, statistics=False)
    else:
        writer.close()
    return exact_total
