"""langid: vanilla langdetect vs lmwright's re-implementation, speed and accuracy, same run.

    python benchmarks/langid_bench.py [--processes 2] [--copies 3]

Speed: web documents (../shared/data/web/cc_warc_2019_07_cclicensed_pages.jsonl, first
1,000 characters each, the stage's default prefix), repeated ``--copies`` times.
Accuracy: single sentences of ../shared/data/multilingual/leipzig_sentences for the
languages langdetect has profiles for (nb is scored as langdetect's ``no``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmwright.tasks.curate.langid import _model, detect_all, detect_batch, shutdown_pool  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ALIASES = {"nb": "no"}


def vanilla(texts: list[str]) -> list[str | None]:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    out = []
    for t in texts:
        try:
            out.append(detect_langs(t)[0].lang)
        except (LangDetectException, IndexError):
            out.append(None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--prefix", type=int, default=1000)
    args = ap.parse_args()

    docs = []
    with open(DATA / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl") as f:
        for line in f:
            docs.append(json.loads(line)["text"][: args.prefix])
    docs = docs * args.copies
    n = args.processes
    size = -(-len(docs) // n)
    chunks = [docs[i : i + size] for i in range(0, len(docs), size)]  # contiguous: results stay in order

    # Vanilla langdetect on the same processes (warm pool, profiles loaded, timed after).
    with ProcessPoolExecutor(n) as pool:
        list(pool.map(vanilla, [["warm up"]] * n))
        t = time.perf_counter()
        ref = [x for part in pool.map(vanilla, chunks) for x in part]
        t_ref = time.perf_counter() - t
    # Ours: the stage's shared pool (warmed first: worker start-up is paid once per process).
    t = time.perf_counter()
    detect_all(docs[: 200 * n], 0, n)
    t_warm = time.perf_counter() - t
    t = time.perf_counter()
    ours = detect_all(docs, 0, n)
    t_ours = time.perf_counter() - t
    shutdown_pool()
    t = time.perf_counter()
    detect_batch(docs[: len(docs) // args.copies], 0)
    t_one = time.perf_counter() - t
    ref_base = [None if r is None else r.split("-")[0] for r in ref]
    agree = sum(a == b[0] for a, b in zip(ref_base, ours)) / len(docs)
    print(f"web docs: {len(docs)} ({args.copies} copies of {len(docs) // args.copies}), prefix {args.prefix} chars, {n} processes")
    print(f"  vanilla langdetect : {len(docs) / t_ref:8.0f} docs/s")
    print(f"  lmwright langid    : {len(docs) / t_ours:8.0f} docs/s  ({t_ref / t_ours:.1f}x; pool start-up {t_warm:.1f}s once)")
    print(f"  lmwright, 1 process: {len(docs) // args.copies / t_one:8.0f} docs/s")
    print(f"  same top language as langdetect: {agree:.2%}")

    # Accuracy on single sentences.
    _model()
    supported = {lang.split("-")[0] for lang in _model().langlist}
    root = DATA / "multilingual" / "leipzig_sentences"
    rows = [l.split("\t") for l in (root / "languages.tsv").read_text().splitlines()[1:]]
    total = correct = 0
    per = []
    for file, iso, name, _ in rows:
        label = ALIASES.get(iso, iso)
        if label not in supported:
            continue
        lines = [l for l in (root / file).read_text().splitlines() if l.strip()]
        got = detect_all(lines, 0, 1)
        ok = sum(g[0] == label for g in got)
        per.append((iso, name, ok / len(lines)))
        total += len(lines)
        correct += ok
    print(f"\nleipzig single sentences, {len(per)} langdetect-supported languages:")
    for iso, name, acc in sorted(per, key=lambda x: x[2]):
        print(f"  {iso:3s} {name:20s} {acc:7.2%}")
    print(f"  overall: {correct / total:.2%} ({correct}/{total})  [identical to vanilla langdetect by construction]")


if __name__ == "__main__":
    main()
