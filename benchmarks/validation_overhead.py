"""Measure validation overhead: ``python benchmarks/validation_overhead.py [--docs 10000] [--chars 3000]``.

Prints seconds per shard for each stage's suite on synthetic ~3 KB documents, split
into polars->pandas conversion and the GX run, plus the whole-stage checks and the
one-off start-up (GX import + context). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl


def synthetic_docs(n: int, chars: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    texts = []
    for i in range(n):
        out, size = [], 0
        while size < chars:
            w = rng.choice(words)
            out.append(w)
            size += len(w) + 1
        texts.append(" ".join(out) + f" {i}")
    return pl.DataFrame(
        {
            "id": [f"doc-{i:08d}" for i in range(n)],
            "text": texts,
            "source": ["bench"] * n,
            "uri": [f"bench.jsonl:{i}" for i in range(n)],
            "license": [None] * n,
            "lang": ["en"] * n,
            "lang_prob": [0.99] * n,
            "gopher_word_count": [float(chars // 6)] * n,
            "fineweb_line_punct_ratio": [0.5] * n,
            "pii_count": [0] * n,
            "dup_cluster": [f"doc-{i:08d}" for i in range(n)],
        },
        schema_overrides={"license": pl.String},
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--chars", type=int, default=3_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from lmwright.data_quality import ValidationSettings, validate_shard, validate_stage
    from lmwright.tasks.core.dataset import ShardStats, write_parquet

    docs = synthetic_docs(args.docs, args.chars)
    mb = docs["text"].str.len_bytes().sum() / 1e6
    empty = docs.head(0)
    settings = ValidationSettings()
    params = SimpleNamespace(languages=["en"], min_prob=0.5)

    t = time.perf_counter()
    validate_shard("ingest", docs.head(10), empty, params, settings, "warmup")
    print(f"start-up (import GX, build context, first suite): {time.perf_counter() - t:.2f} s")
    print(f"shard: {args.docs:,} docs, {mb:.1f} MB of text")

    t = time.perf_counter()
    for _ in range(args.repeat):
        docs.to_pandas()
    conv = (time.perf_counter() - t) / args.repeat
    print(f"  polars->pandas: {conv:.3f} s")
    for stage in ("ingest", "normalize", "langid", "quality", "pii", "dedup"):
        validate_shard(stage, docs.head(10), empty, params, settings, "warmup")
        t = time.perf_counter()
        for _ in range(args.repeat):
            validate_shard(stage, docs, empty, params, settings, "bench")
        sec = (time.perf_counter() - t) / args.repeat
        print(f"  {stage:9s} validate_shard: {sec:.3f} s  ({sec / args.docs * 1e4:.3f} s per 10k docs, {mb / sec:.0f} MB/s)")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        shards = []
        for k in range(4):
            part = docs.with_columns(pl.col("id") + f"-{k}", pl.col("text") + f" {k}")
            write_parquet(part, out / f"part-{k:05d}.parquet")
            shards.append(ShardStats(f"part-{k:05d}", docs_in=part.height, kept=part.height))
        for stage in ("quality", "dedup"):
            t = time.perf_counter()
            validate_stage(stage, out, shards, params, settings)
            sec = time.perf_counter() - t
            print(f"  {stage:9s} validate_stage over 4 shards ({4 * args.docs:,} docs): {sec:.3f} s")


if __name__ == "__main__":
    main()
