"""What judging each language by its own settings costs the quality stage.

    python benchmarks/quality_languages.py [--repeat 5]

The 697 Common Crawl pages of ../shared/data/web (44 languages by langid) through
``apply_quality`` twice, best of --repeat, interleaved so both see the same machine load:
without a ``lang`` column (every page judged by the English blocks, one signal pass) and with
it (each page by its language's settings: one signal pass per group of languages that read
text alike, stop words and rules per language). Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl

from lmwright.tasks.curate.langid import LangidParams, apply_langid
from lmwright.tasks.curate.quality import QualityParams, apply_quality, resolve_quality

PAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    lines = [line for line in PAGES.read_text(encoding="utf-8").split("\n") if line.strip()]  # not splitlines: U+2028
    texts = [json.loads(line)["text"] for line in lines]
    docs = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    identified = apply_langid(docs, LangidParams(languages=None, processes=1)).drop("reason", "detail")
    params = resolve_quality(QualityParams())
    runs = {"without lang (English blocks)": identified.drop("lang"), "with lang (per-language settings)": identified}
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeat):
        for name, frame in runs.items():
            start = time.perf_counter()
            apply_quality(frame, params)
            best[name] = min(best[name], time.perf_counter() - start)
    mb = docs["text"].str.len_bytes().sum() / 1e6
    print(f"{docs.height} pages, {mb:.2f} MB, {identified['lang'].n_unique()} languages; best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:36s} {seconds:.3f} s  {mb / seconds:.2f} MB/s")
    first, second = best.values()
    print(f"  ratio {second / first:.2f}x")


if __name__ == "__main__":
    main()
