"""Dedup at scale: the bounded polars engine and the dask engine give the in-memory clusters, in bounded memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lmwright.tasks.core.dataset import write_parquet
from lmwright.tasks.curate.dedup.clusters import cluster_frame
from lmwright.tasks.curate.dedup.dask_engine import cluster_files_dask
from lmwright.tasks.curate.dedup.params import REASON_EXACT, REASON_NEAR, DedupParams
from lmwright.tasks.curate.dedup.signatures import file_heights, read_signatures, shingle_loader, signature_frame
from lmwright.tasks.curate.dedup.spill import cluster_files
from lmwright.tasks.curate.dedup.minhash import band_hashes

ROOT = Path(__file__).resolve().parents[1]
WEB = Path("web") / "cc_warc_2019_07_cclicensed_pages.jsonl"  # under ../shared/data (the shared_data fixture)


def edit_words(text: str, n: int, seed: int) -> str:
    rng = random.Random(seed)
    words = text.split()
    for k in rng.sample(range(len(words)), min(n, len(words))):
        words[k] = f"zq{rng.randrange(10**6)}"
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> list[str]:
    """Real pages plus planted exact copies, near copies, chains and a big boilerplate bucket, shuffled."""
    with open(shared_data / WEB, encoding="utf-8") as f:
        pages = [json.loads(line)["text"] for line in f]
    long = [t for t in pages if len(t.split()) >= 80][:160]
    rng = random.Random(7)
    texts = list(long)
    texts += [t.upper() for t in rng.sample(long, 15)]  # exact copies (same normalized text)
    texts += [edit_words(t, max(1, len(t.split()) // 150), seed=i) for i, t in enumerate(rng.sample(long, 25))]
    chain = long[3]
    for k in range(3):  # a chain of near copies of near copies
        chain = edit_words(chain, max(1, len(chain.split()) // 120), seed=100 + k)
        texts.append(chain)
    # boilerplate: 70 documents that share a 300-word template and differ in a few words -> one bucket
    # far above max_bucket_pairs (star + chain pairs), near-duplicates of each other
    template = " ".join(long[0].split()[:300])
    texts += [edit_words(template, 2, seed=1000 + k) for k in range(70)]
    texts += ["", " ", "short one", "short one"]  # empty documents and a tiny exact pair
    rng.shuffle(texts)
    return texts


def write_signature_files(texts: list[str], out: Path, params: DedupParams, shard_docs: int = 37) -> list[str]:
    paths = []
    for k, lo in enumerate(range(0, len(texts), shard_docs)):
        chunk = texts[lo : lo + shard_docs]
        docs = pl.DataFrame({"id": [f"d{lo + i}" for i in range(len(chunk))], "text": chunk})
        path = out / f"part-{k:05d}.parquet"
        write_parquet(signature_frame(docs, f"part-{k:05d}", params), path)
        paths.append(str(path))
    return paths


def reference(paths: list[str], params: DedupParams) -> tuple[pl.DataFrame, dict]:
    return cluster_frame(read_signatures(paths, params), params, shingle_loader(paths, file_heights(paths)))


PARAMS = {
    "jaccard": DedupParams(),
    "signature": DedupParams(verify="signature"),
    "no_exact": DedupParams(exact=False),
    "near_only_small_buckets": DedupParams(max_bucket_pairs=5, bands=20, rows=5),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_bounded_engine_equals_in_memory(tmp_path: Path, corpus: list[str], name: str) -> None:
    params = PARAMS[name]
    paths = write_signature_files(corpus, tmp_path / "signatures", params)
    want, want_counts = reference(paths, params)
    assert want_counts["exact_duplicates"] >= (15 if params.exact else 0) and want_counts["near_duplicates"] >= 60
    assert want_counts["largest_cluster"] >= 70  # the boilerplate bucket became one cluster
    # tiny runs, partitions and verification chunks: many key ranges, pair ranges and union-find batches
    got_counts = cluster_files(paths, params, tmp_path / "clusters.parquet", tmp_path / "spill",
                               spill_rows=50, part_rows=64, verify_pairs=17)
    got = pl.read_parquet(tmp_path / "clusters.parquet")
    assert got.equals(want), name
    assert got_counts == want_counts
    assert not (tmp_path / "spill").exists()
    # and with the default sizes (one range each)
    cluster_files(paths, params, tmp_path / "clusters2.parquet", tmp_path / "spill")
    assert pl.read_parquet(tmp_path / "clusters2.parquet").equals(want)


@pytest.mark.parametrize("name", ["jaccard", "signature"])
def test_dask_engine_equals_in_memory(tmp_path: Path, corpus: list[str], name: str) -> None:
    params = PARAMS[name]
    paths = write_signature_files(corpus, tmp_path / "signatures", params)
    want, want_counts = reference(paths, params)
    counts = cluster_files_dask(paths, params, tmp_path / "clusters.parquet", scheduler="threads")
    assert pl.read_parquet(tmp_path / "clusters.parquet").equals(want)
    assert counts == want_counts


def test_dask_engine_on_local_cluster(tmp_path: Path, corpus: list[str]) -> None:
    from distributed import Client, LocalCluster

    params = DedupParams()
    paths = write_signature_files(corpus, tmp_path / "signatures", params, shard_docs=60)
    want, want_counts = reference(paths, params)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster):  # found by distributed.get_client(), as under prefect-dask's runner
            counts = cluster_files_dask(paths, params, tmp_path / "clusters.parquet")
    assert pl.read_parquet(tmp_path / "clusters.parquet").equals(want)
    assert counts == want_counts
    # the reasons are what the rule says: the kept document is the smallest position of its cluster
    got = pl.read_parquet(tmp_path / "clusters.parquet").with_row_index("g")
    kept = got.group_by("dup_cluster").agg(pl.col("g").min(), pl.col("id").sort_by("g").first().alias("first"))
    assert (kept["dup_cluster"] == kept["first"]).all()
    assert set(got["reason"].drop_nulls().unique()) == {REASON_EXACT, REASON_NEAR}


def test_empty_corpus(tmp_path: Path) -> None:
    want, want_counts = cluster_frame(read_signatures([], DedupParams()), DedupParams())
    assert cluster_files([], DedupParams(), tmp_path / "a.parquet", tmp_path / "spill") == want_counts
    assert cluster_files_dask([], DedupParams(), tmp_path / "b.parquet", scheduler="sync") == want_counts
    for name in ("a.parquet", "b.parquet"):
        assert pl.read_parquet(tmp_path / name).equals(want)


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    params = DedupParams()
    docs = pl.DataFrame({"id": ["a", "b", "a"], "text": ["one two three", "four five six", "seven"]})
    path = tmp_path / "part-00000.parquet"
    write_parquet(signature_frame(docs, "part-00000", params), path)
    with pytest.raises(ValueError, match="unique document ids.*'a'"):
        cluster_files([str(path)], params, tmp_path / "c.parquet", tmp_path / "spill")
    assert not (tmp_path / "spill").exists()  # the sorted runs go, also when a step fails
    with pytest.raises(ValueError, match="unique document ids.*'a'"):
        cluster_files_dask([str(path)], params, tmp_path / "c.parquet", scheduler="sync")


def test_flow_with_dask_engine_same_dataset_and_fingerprint(tmp_path: Path, corpus: list[str], prefect_harness) -> None:
    """find_clusters honours `engine`; where it runs is not part of the fingerprint, so the other engine is a cache hit."""
    from prefect import flow

    from lmwright.data_quality import ValidationSettings
    from lmwright.tasks.curate.dedup.stage import run_dedup
    from tests.test_dedup import make_source

    texts = [t for t in corpus if t.strip()][:120]
    source = make_source(tmp_path / "src", [texts[:50], texts[50:]])

    @flow
    def dedup_with(params: DedupParams):
        return run_dedup(tmp_path / "work", source, params, ValidationSettings())

    on_dask = dedup_with(DedupParams(engine="dask"))
    info = json.loads((on_dask.dir / "clusters.json").read_text())
    assert info["duplicates"] > 0 and (on_dask.dir / "clusters.parquet").is_file() and not (on_dask.dir / "spill").exists()
    sigs = sorted(str(p) for p in (on_dask.dir / "signatures").glob("*.parquet"))
    want, _ = reference(sigs, DedupParams())
    assert pl.read_parquet(on_dask.dir / "clusters.parquet").equals(want)
    assert dedup_with(DedupParams()) == on_dask  # same fingerprint: the finished stage is reused


# --- memory ---------------------------------------------------------------------------------

CHILD = """
import json, resource, sys
import psutil
from lmwright.tasks.curate.dedup.clusters import cluster_frame
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.curate.dedup.signatures import file_heights, read_signatures
from lmwright.tasks.curate.dedup.spill import cluster_files
paths, engine, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
params = DedupParams(verify="signature")
before = psutil.Process().memory_info().rss
if engine == "memory":
    clusters, counts = cluster_frame(read_signatures(paths, params), params)
else:
    counts = cluster_files(paths, params, out + "/c.parquet", out + "/spill", spill_rows=20_000, part_rows=50_000)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"delta": peak - before, "counts": counts}))
"""


def random_signature_files(out: Path, n: int, shard_docs: int, params: DedupParams, seed: int = 0) -> list[str]:
    """Signature files in compute_signatures' schema with random signatures, 1 doc in 10 a near copy of another."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, lo in enumerate(range(0, n, shard_docs)):
        m = min(shard_docs, n - lo)
        sig = rng.integers(0, 2**32, (m, params.num_perm), dtype=np.uint32)
        copy = rng.random(m) < 0.1
        src = rng.integers(0, m, m)
        sig[copy] = sig[src[copy]]
        sig[copy, rng.integers(0, params.num_perm, copy.sum())] ^= 1  # one value differs
        frame = pl.DataFrame([
            pl.Series("id", [f"r{lo + i}" for i in range(m)]),
            pl.Series("shard", [f"part-{k:05d}"] * m),
            pl.Series("row", np.arange(m, dtype=np.uint32)),
            pl.Series("hash", rng.integers(0, 2**63, m, dtype=np.uint64)),
            pl.Series("n_shingles", np.full(m, 100, dtype=np.uint32)),
            pl.Series("sig", sig),
            pl.Series("bands", band_hashes(sig, params.bands, params.rows)),
        ])
        path = out / f"part-{k:05d}.parquet"
        write_parquet(frame, path)
        paths.append(str(path))
    return paths


def test_bounded_engine_does_not_hold_the_signatures(tmp_path: Path) -> None:
    """Peak RSS growth from 40k to 320k documents: a small fraction of the signatures added, unlike the in-memory path.

    (The bounded engine's fixed cost, ~100 MB of polars thread pools and buffers, is the same at both sizes.)
    """
    params = DedupParams(verify="signature")
    paths = random_signature_files(tmp_path / "sig", 320_000, 20_000, params)
    small, big = paths[:2], paths
    per_doc = params.num_perm * 4 + params.bands * 8  # 560 B of signature + band keys

    def run(files: list[str], engine: str) -> dict:
        res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files), engine, str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.splitlines()[-1])

    memory, bounded_big, bounded_small = run(big, "memory"), run(big, "polars"), run(small, "polars")
    assert bounded_big["counts"] == memory["counts"] and memory["counts"]["near_duplicates"] > 25_000
    assert memory["delta"] > 320_000 * per_doc  # the reference holds them all: the measurement sees it
    growth = (bounded_big["delta"] - bounded_small["delta"]) / (320_000 - 40_000)
    assert growth < 0.15 * per_doc, (growth, bounded_small["delta"], bounded_big["delta"], memory["delta"])
