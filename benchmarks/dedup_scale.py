"""Dedup cluster step at scale: bounded polars engine vs dask engine vs the in-memory path.

    flock /tmp/lmwright-bench.lock python benchmarks/dedup_scale.py [--sizes 100000,500000,1000000,2000000]
        [--dask-max 1000000] [--memory-max 1000000] [--shard-docs 10000] [--shingles 64] [--workdir DIR]

Input: synthetic signature files in exactly the schema ``compute_signatures`` writes (id,
shard, row, hash, n_shingles, sig uint32[112], bands uint64[14], shingles list<uint32>),
one file per ``--shard-docs`` documents, so the corpus reaches millions of documents in
seconds. Per document: 75% distinct (random signature, random set of 32-96 shingle
hashes), 8% exact copies of a template document (same hash, signature and set), 15% near
copies of a template (5% of signature values and 5% of shingles replaced: verified at
Jaccard 0.8, and copies of one template link to each other), 2% boilerplate (random
except that band 0 equals one of n/25,000 shared values: buckets of ~500, far above
max_bucket_pairs, all rejected by verification). Templates: n/20 random documents.

Each engine runs ``find_clusters``'s work (signature files -> clusters.parquet) in a fresh
process: ``cluster_files`` (polars, spill dir beside), ``cluster_files_dask`` on a
LocalCluster of 2 worker processes x 1 thread (POLARS_MAX_THREADS=1 in them; cluster start
timed apart), and the old in-memory ``cluster_frame(read_signatures(...))`` as the peer.
Reported: wall seconds of the step, docs/s, peak RSS of the process tree (polled every
0.1 s with psutil; workers included), the child's own ru_maxrss, bytes written to the
spill dir, load average before/after. All engines' clusters.parquet are checked equal.
Then a least-squares line seconds = a + b * docs (and RSS) per engine over the measured
sizes, extrapolated to 10^9 documents.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmwright.tasks.core.dataset import write_parquet  # noqa: E402
from lmwright.tasks.curate.dedup.clusters import gather_ranges  # noqa: E402
from lmwright.tasks.curate.dedup.params import DedupParams  # noqa: E402
from lmwright.tasks.curate.dedup.minhash import band_hashes  # noqa: E402

P_DISTINCT, P_EXACT, P_NEAR, P_BOILER = 0.75, 0.08, 0.15, 0.02
BUCKET = 500  # boilerplate documents per shared band-0 value


# --- synthetic signature files --------------------------------------------------------------


def random_sets(rng: np.random.Generator, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct uint32 sets of about ``lengths`` values: (values, offsets)."""
    return sorted_sets(np.repeat(np.arange(lengths.size), lengths), rng.integers(0, 2**32, int(lengths.sum()), dtype=np.uint32), lengths.size)


def sorted_sets(row: np.ndarray, values: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    key = np.sort((row.astype(np.uint64) << np.uint64(32)) | values.astype(np.uint64))
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=rows)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), offsets


def write_corpus(out: Path, n: int, shard_docs: int, p: DedupParams, shingles: int, seed: int = 0) -> list[str]:
    """Signature files of ``n`` synthetic documents (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n_templates = max(1, n // 20)
    t_sig = rng.integers(0, 2**32, (n_templates, p.num_perm), dtype=np.uint32)
    t_hash = rng.integers(0, 2**63, n_templates, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    t_vals, t_off = random_sets(rng, rng.integers(shingles // 2, shingles * 3 // 2 + 1, n_templates))
    boiler_band = rng.integers(0, 2**32, (max(1, round(n * P_BOILER / BUCKET)), p.rows), dtype=np.uint32)
    paths = []
    for k, lo in enumerate(range(0, n, shard_docs)):
        m = min(shard_docs, n - lo)
        kind = rng.choice(4, m, p=[P_DISTINCT, P_EXACT, P_NEAR, P_BOILER])
        t = rng.integers(0, n_templates, m)
        copy, near, boiler = (kind == 1) | (kind == 2), kind == 2, kind == 3
        sig = rng.integers(0, 2**32, (m, p.num_perm), dtype=np.uint32)
        sig[copy] = t_sig[t[copy]]
        changed = rng.random((int(near.sum()), p.num_perm)) < 0.05
        sig[near] = np.where(changed, rng.integers(0, 2**32, changed.shape, dtype=np.uint32), sig[near])
        sig[boiler, : p.rows] = boiler_band[rng.integers(0, len(boiler_band), int(boiler.sum()))]
        hashes = rng.integers(0, 2**63, m, dtype=np.uint64) * np.uint64(2)  # even: never a template's
        hashes[kind == 1] = t_hash[t[kind == 1]]
        # shingle sets: templates' for copies (5% replaced for near copies), random otherwise
        lens = rng.integers(shingles // 2, shingles * 3 // 2 + 1, m)
        lens[copy] = t_off[t[copy] + 1] - t_off[t[copy]]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        values = rng.integers(0, 2**32, int(offsets[-1]), dtype=np.uint32)
        dest, _ = gather_ranges(offsets, np.flatnonzero(copy))
        src, _ = gather_ranges(t_off, t[copy])
        keep = rng.random(dest.size) >= 0.05 * np.repeat(near[copy], lens[copy])
        values[dest[keep]] = t_vals[src[keep]]
        values, offsets = sorted_sets(np.repeat(np.arange(m), lens), values, m)
        sets = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.uint32()))
        shard = f"part-{k:05d}"
        frame = pl.DataFrame([
            pl.Series("id", [f"s{lo + i}" for i in range(m)], dtype=pl.String),
            pl.Series("shard", [shard] * m, dtype=pl.String),
            pl.Series("row", np.arange(m, dtype=np.uint32)),
            pl.Series("hash", hashes),
            pl.Series("n_shingles", np.diff(offsets).astype(np.uint32)),
            pl.Series("sig", sig),
            pl.Series("bands", band_hashes(sig, p.bands, p.rows)),
            pl.Series("shingles", sets, dtype=pl.List(pl.UInt32)),
        ])
        path = out / f"{shard}.parquet"
        write_parquet(frame, path)
        paths.append(str(path))
    return paths


# --- one engine in a fresh process ----------------------------------------------------------


def child(engine: str, paths_file: str, out: str) -> None:
    """Run one engine on the files listed in ``paths_file``; print a JSON line of results."""
    import resource

    from lmwright.tasks.curate.dedup import clusters, dask_engine, signatures, spill

    paths = json.loads(Path(paths_file).read_text())
    params = DedupParams()
    spilled = [0]
    write_run = spill._write_run

    def counting(frame, key, path):  # bytes written to the spill dir
        res = write_run(frame, key, path)
        spilled[0] += path.stat().st_size
        return res

    spill._write_run = counting
    extra: dict = {}
    if engine == "dask":
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               local_directory=str(Path(out) / "dask-tmp"))
        client = Client(cluster)
        extra["cluster_start_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    if engine == "polars":
        counts = spill.cluster_files(paths, params, Path(out) / "clusters.parquet", Path(out) / "spill")
    elif engine == "dask":
        counts = dask_engine.cluster_files_dask(paths, params, Path(out) / "clusters.parquet", scheduler=client)
    else:  # the old find_clusters: everything in memory
        sigs = signatures.read_signatures(paths, params)
        frame, counts = clusters.cluster_frame(sigs, params, signatures.shingle_loader(paths, signatures.file_heights(paths)))
        write_parquet(frame, Path(out) / "clusters.parquet")
    secs = time.perf_counter() - t0
    if engine == "dask":
        client.close()
        cluster.close()
    print(json.dumps({"seconds": secs, "counts": counts, "spill_bytes": spilled[0],
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}))


def tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(engine: str, paths: list[str], out: Path) -> dict:
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "paths.json"
    listing.write_text(json.dumps(paths))
    env = dict(os.environ)
    if engine == "dask":
        env["POLARS_MAX_THREADS"] = "1"  # 2 workers x 1 thread: the same 2 cores as the polars engine
    load0 = os.getloadavg()
    proc = subprocess.Popen([sys.executable, __file__, "--child", engine, str(listing), str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"{engine} failed:\n{stderr[-3000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(engine=engine, tree_peak_rss=peak[0], load=(load0[0], os.getloadavg()[0]))
    return res


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (one point: through the origin)."""
    if len(xs) == 1:
        return 0.0, ys[0] / xs[0]
    b, a = np.polyfit(np.array(xs, float), np.array(ys, float), 1)
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,500000,1000000,2000000")
    ap.add_argument("--dask-max", type=int, default=1_000_000, help="largest corpus for the dask engine")
    ap.add_argument("--memory-max", type=int, default=1_000_000, help="largest corpus for the in-memory peer")
    ap.add_argument("--shard-docs", type=int, default=10_000)
    ap.add_argument("--shingles", type=int, default=64, help="mean distinct shingles per synthetic document")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp dir)")
    ap.add_argument("--child", nargs=3, metavar=("ENGINE", "PATHS_JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dedup-scale-"))
    p = DedupParams()
    print(f"params: verify={p.verify} bands={p.bands}x{p.rows} threshold={p.threshold} max_bucket_pairs={p.max_bucket_pairs}; "
          f"shard_docs={args.shard_docs}, ~{args.shingles} shingles/doc; cores={os.cpu_count()}; workdir={work}")
    results: list[dict] = []
    header = f"{'engine':<7} {'docs':>10} {'seconds':>8} {'docs/s':>9} {'tree peak RSS':>13} {'ru_maxrss':>10} {'spill':>9}  load 1-min before->after  (counts)"
    for n in sizes:
        sig_dir = work / f"n{n}" / "signatures"
        t0 = time.perf_counter()
        paths = sorted(str(x) for x in sig_dir.glob("part-*.parquet")) if sig_dir.is_dir() else []
        if not paths:
            paths = write_corpus(sig_dir, n, args.shard_docs, p, args.shingles)
        size = sum(Path(x).stat().st_size for x in paths)
        print(f"\n{n:,} docs: {len(paths)} signature files, {size / 2**20:,.0f} MiB ({size / n:.0f} B/doc), "
              f"written in {time.perf_counter() - t0:.1f} s")
        print(header)
        outs = {}
        for engine in ("polars", "dask", "memory"):
            if (engine == "dask" and n > args.dask_max) or (engine == "memory" and n > args.memory_max):
                continue
            out = work / f"n{n}" / engine
            r = measure(engine, paths, out)
            r["docs"] = n
            results.append(r)
            outs[engine] = out / "clusters.parquet"
            c = r["counts"]
            start = f", cluster start {r['cluster_start_s']} s" if "cluster_start_s" in r else ""
            print(f"{engine:<7} {n:>10,} {r['seconds']:>8.1f} {n / r['seconds']:>9,.0f} {r['tree_peak_rss'] / 2**20:>9,.0f} MiB "
                  f"{r['ru_maxrss'] / 2**20:>6,.0f} MiB {r['spill_bytes'] / 2**20:>5,.0f} MiB  {r['load'][0]:.2f} -> {r['load'][1]:.2f}  "
                  f"({c['clusters']:,} clusters, {c['exact_duplicates']:,} exact + {c['near_duplicates']:,} near, "
                  f"{c['candidate_pairs']:,} candidate pairs, {c['verified_pairs']:,} verified{start})", flush=True)
        ref = pl.read_parquet(outs["polars"])
        for engine, path in outs.items():
            same = pl.read_parquet(path).equals(ref)
            counts_same = next(r["counts"] for r in results if r["docs"] == n and r["engine"] == engine) == \
                next(r["counts"] for r in results if r["docs"] == n and r["engine"] == "polars")
            print(f"  {engine}: clusters.parquet {'identical' if same else 'DIFFERENT'} to polars, counts {'equal' if counts_same else 'DIFFER'}")
        shutil.rmtree(work / f"n{n}" / "dask" / "dask-tmp", ignore_errors=True)

    print("\nExtrapolation to 1e9 documents (least squares over the measured sizes; 2 cores):")
    for engine in ("polars", "dask", "memory"):
        rs = [r for r in results if r["engine"] == engine]
        if not rs:
            continue
        xs = [r["docs"] for r in rs]
        a, b = fit(xs, [r["seconds"] for r in rs])
        ma, mb = fit(xs, [r["tree_peak_rss"] for r in rs])
        sa, sb = fit(xs, [r["spill_bytes"] for r in rs])
        secs = a + b * 1e9
        print(f"  {engine:<7} measured {min(xs):,}-{max(xs):,} docs: {b * 1e6:.2f} s per 1M docs (+{a:.1f} s) -> "
              f"{secs / 3600:,.1f} h wall, {2 * secs / 3600:,.1f} core-hours per 1e9 docs; peak RSS {mb:.0f} B/doc "
              f"(+{ma / 2**20:.0f} MiB) -> {(ma + mb * 1e9) / 2**30:,.0f} GiB; spill {sb:.0f} B/doc -> {sb * 1e9 / 2**30:,.0f} GiB")
        if len(rs) >= 3:  # the marginal cost: between the two largest sizes, where fixed buffers are full
            r0, r1 = rs[-2], rs[-1]
            dx = r1["docs"] - r0["docs"]
            ds, dm = (r1["seconds"] - r0["seconds"]) / dx, (r1["tree_peak_rss"] - r0["tree_peak_rss"]) / dx
            print(f"  {'':<7} marginal {r0['docs']:,}->{r1['docs']:,}: {ds * 1e6:.2f} s per 1M docs -> {ds * 1e9 / 3600:,.1f} h wall, "
                  f"{2 * ds * 1e9 / 3600:,.1f} core-hours per 1e9 docs; peak RSS {dm:.0f} B/doc -> "
                  f"{(r1['tree_peak_rss'] + dm * (1e9 - r1['docs'])) / 2**30:,.0f} GiB at 1e9")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
