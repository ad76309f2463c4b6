"""Quality stage vs datatrove: throughput and % identical keep/drop decisions on the same documents.

datatrove is not a project dependency; run this from a separate venv (see benchmarks/QUALITY.md):

    POLARS_MAX_THREADS=1 ../venv-bench/bin/python benchmarks/quality_vs_datatrove.py

Both sides run in this process, one after the other, on the same documents: ours is
``tasks.curate.quality.apply_quality`` with default ``QualityParams``; datatrove's is its
GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter -> FineWebQualityFilter,
defaults throughout, in sequence (C4 rewrites the text FineWeb then reads, as in datatrove).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "web"
DEFAULT_FILES = [DATA / "cc_warc_2019_07_cclicensed_pages.jsonl", DATA / "c4_en_sample_olmo.jsonl"]


def load(files: list[Path]) -> list[dict]:
    docs = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").split("\n")):
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get("text") or ""
            if text.strip():  # the "non-empty docs"
                docs.append({"id": f"{f.stem}:{i}", "text": text})
    return docs


def run_datatrove(docs: list[dict]) -> tuple[list[str | None], float]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.filters.base_filter import get_filter_result

    filters = [
        ("gopher_", GopherRepetitionFilter()),
        ("", GopherQualityFilter()),  # its reasons already start with gopher_
        ("c4_", C4QualityFilter()),
        ("fineweb_", FineWebQualityFilter()),
    ]
    # warm the spaCy tokenizer outside the timing
    filters[1][1].filter(Document(text="warm up the tokenizer.", id="w"))
    reasons: list[str | None] = []
    start = time.perf_counter()
    for d in docs:
        doc = Document(text=d["text"], id=d["id"])
        reason = None
        for prefix, f in filters:
            ok, why = get_filter_result(f.filter(doc))
            if not ok:
                reason = prefix + (why or "dropped")
                break
        reasons.append(reason)
    return reasons, time.perf_counter() - start


def run_ours(docs: list[dict], repeat: int) -> tuple[list[str | None], float]:
    from lmwright.tasks.curate.quality import QualityParams, apply_quality

    df = pl.DataFrame({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})
    params = QualityParams()
    apply_quality(df.head(20), params)  # warm regex caches
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = apply_quality(df, params)
        best = min(best, time.perf_counter() - start)
    return out["reason"].to_list(), best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, default=DEFAULT_FILES)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for ours")
    ap.add_argument("--show", type=int, default=0, help="print N disagreeing documents")
    args = ap.parse_args()
    try:
        import datatrove  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as e:
        print(
            f"datatrove (with spaCy) is not installed here ({e}). It is not a project dependency: "
            "python -m venv ../venv-bench && ../venv-bench/bin/pip install datatrove spacy nltk regex "
            "polars pydantic numpy prefect && ../venv-bench/bin/pip install -e . --no-deps",
            file=sys.stderr,
        )
        return 2

    docs = load(args.files)
    n_bytes = sum(len(d["text"].encode()) for d in docs)
    ours, t_ours = run_ours(docs, args.repeat)
    theirs, t_dt = run_datatrove(docs)

    mb = n_bytes / 1e6
    print(f"{len(docs)} documents, {mb:.2f} MB ({', '.join(f.name for f in args.files)})")
    print(f"datatrove 4 filters : {len(docs) / t_dt:9.1f} docs/s  {mb / t_dt:7.3f} MB/s  ({t_dt:.2f} s)")
    print(f"lmwright quality    : {len(docs) / t_ours:9.1f} docs/s  {mb / t_ours:7.3f} MB/s  ({t_ours:.2f} s, best of {args.repeat})")
    print(f"speed ratio         : {t_dt / t_ours:.1f}x")
    same_keep = sum((a is None) == (b is None) for a, b in zip(ours, theirs))
    same_reason = sum(a == b for a, b in zip(ours, theirs))
    print(f"identical keep/drop : {100 * same_keep / len(docs):.2f}%  ({same_keep}/{len(docs)})")
    print(f"identical reason    : {100 * same_reason / len(docs):.2f}%")
    kept_o = sum(r is None for r in ours)
    kept_d = sum(r is None for r in theirs)
    print(f"kept                : lmwright {kept_o}, datatrove {kept_d}")
    confusion = Counter((b or "KEEP", a or "KEEP") for a, b in zip(ours, theirs) if a != b)
    if confusion:
        print("\ndisagreements (datatrove reason -> lmwright reason: count):")
        for (b, a), c in confusion.most_common():
            print(f"  {b:34s} -> {a:34s} {c}")
    if args.show:
        shown = 0
        for d, a, b in zip(docs, ours, theirs):
            if (a is None) != (b is None) and shown < args.show:
                shown += 1
                print(f"\n--- {d['id']}: datatrove={b} lmwright={a}\n{d['text'][:400]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
