"""Bounded clustering (``engine="polars"``): a shuffle through sorted runs on disk.

The runs live under ``<stage dir>/spill-<random>/`` (one per run: two runs never share it).
Map passes write (key, position) runs per ~1M documents: the exact hash, and each band's key
alone; reduce steps read one key range of one band at a time (row groups outside the range are
skipped by their min/max), group it, write its candidate pairs; pairs are deduplicated per
range of the first position, get both documents' shingle sets (or signatures) by two merge
joins with the signature files in corpus order (each file read once per join), are verified in
chunks; components are union-find on one int64 label per document. Memory: 8 B/document (16 at
the union-find peak) plus ~0.5 GB of buffers (``SPILL_ROWS``, ``PART_ROWS``, ``VERIFY_PAIRS``);
disk: ~16 B/document/band, plus hashes, pairs and the pairs' first shingle sets; deleted when
done. Measured to 8M documents: benchmarks/README.md (dedup_scale.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lmwright.tasks.curate.dedup.clusters import bucket_pairs, connected_components, jaccard_verified, verified, write_clusters
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.curate.dedup.signatures import RowLoader, column_loader, file_heights, list_arrays

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
        values, offsets = list_arrays(both)
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

    counts.update(write_clusters(paths, heights, labels, params, out))
    return counts
