"""Main-text extraction from crawled HTML: pages/s and MB/s per core, and what each extractor keeps.

    flock /tmp/lmwright-bench.lock python benchmarks/extract_bench.py
    # options: --warc-dir DIR (default ../shared/data/web/warc)  --passes 5  --out benchmarks/results/extract-<date>

On the same pages in the same run, one process (so per core):

- ``lmwright resiliparse``: what ingest does by default (charset from header/meta/detection, then
  resiliparse's main-content extraction with paragraphs kept);
- ``lmwright trafilatura``: ingest with ``ingest.html.extractor=trafilatura`` (comments left out,
  one block per paragraph);
- ``trafilatura defaults``: the peer, ``trafilatura.extract(html)`` with its default settings;
- ``read_warc (whole reader)``: lmwright's WARC reader end to end (gunzip, record parsing, HTTP,
  charset, extraction) over the files, per file byte;
- ``fastwarc`` and ``warcio`` (when installed): record iteration alone, reading every payload.

Rates are per CPU-second of this process (``time.process_time``), so other jobs on a shared
machine slow the wall clock, not the rate; wall seconds are printed beside them. MB/s counts the
HTML bytes given to the extractor (the uncompressed payloads); for the readers, the WARC file bytes.
Then, for a few real pages, the length and the first and last lines each extractor keeps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

from lmwright.tasks.curate.sources import HtmlExtraction, SourceSpec, list_source_files, read_records
from lmwright.tasks.curate.sources.extract import decode_html, main_text
from lmwright.tasks.curate.sources.warc import _charset, decode_content, dechunk

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WARCS = REPO.parent / "shared" / "data" / "web" / "warc"
SHOWN = (
    "https://creativecommons.org/mission/",
    "https://maria-antoniak.github.io/2023/07/04/notes-on-mastodon.html",
    "https://commoncrawl.org/faq",
    "https://www.semanticscholar.org/research/research-team",
)


def load_pages(folder: Path) -> list[dict]:
    """Every 200 HTML response of the WARC files: url, payload bytes, header charset."""
    from fastwarc.warc import ArchiveIterator, HeaderMap, WarcRecordType

    pages = []
    for path in sorted(folder.glob("*.warc*")):
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False):
                block = rec.reader.read()
                http = HeaderMap()
                size = http.parse(io.BytesIO(block))
                body = block[size:]
                if "chunked" in (http.get("Transfer-Encoding") or "").lower():
                    body = dechunk(body)
                body = decode_content(body, http.get("Content-Encoding"), 64 << 20)
                url = (rec.headers.get("WARC-Target-URI") or "").strip("<>")
                pages.append({"url": url, "body": body, "charset": _charset(http.get("Content-Type"))})
    return pages


def time_it(fn: Callable[[], object], passes: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of ``passes`` calls after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(passes):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def extractors() -> dict[str, Callable[[dict], str]]:
    import trafilatura

    resiliparse = HtmlExtraction(extractor="resiliparse")
    ours_traf = HtmlExtraction(extractor="trafilatura")
    return {
        "lmwright resiliparse": lambda p: main_text(decode_html(p["body"], p["charset"]), resiliparse, p["url"]),
        "lmwright trafilatura": lambda p: main_text(decode_html(p["body"], p["charset"]), ours_traf, p["url"]),
        # The peer as its users call it: the page decoded the same way, trafilatura.extract's defaults.
        "trafilatura defaults": lambda p: trafilatura.extract(decode_html(p["body"], p["charset"])) or "",
    }


def readers(folder: Path) -> dict[str, Callable[[], int]]:
    files, _ = list_source_files(SourceSpec(path=str(folder)))

    def lmwright_reader() -> int:
        return sum(1 for f in files for _ in read_records(f, 16 << 20, "file"))

    def fastwarc_reader() -> int:
        from fastwarc.warc import ArchiveIterator

        n = 0
        for path in sorted(folder.glob("*.warc*")):
            with open(path, "rb") as fh:
                for rec in ArchiveIterator(fh, parse_http=False):
                    rec.reader.read()
                    n += 1
        return n

    out = {"read_warc (whole reader)": lmwright_reader, "fastwarc (records only)": fastwarc_reader}
    try:
        from warcio.archiveiterator import ArchiveIterator as WarcioIterator

        def warcio_reader() -> int:
            n = 0
            for path in sorted(folder.glob("*.warc*")):
                with open(path, "rb") as fh:
                    for rec in WarcioIterator(fh):
                        rec.content_stream().read()
                        n += 1
            return n

        out["warcio (records only)"] = warcio_reader
    except ImportError:
        pass
    return out


def shown_pages(pages: list[dict], methods: dict[str, Callable[[dict], str]]) -> list[dict]:
    rows = []
    for url in SHOWN:
        page = next((p for p in pages if p["url"] == url), None)
        if page is None:
            continue
        for name, fn in methods.items():
            text = fn(page)
            lines = [line for line in text.splitlines() if line.strip()]
            rows.append({"url": url, "method": name, "chars": len(text), "paragraphs": text.count("\n\n") + bool(text),
                         "first": lines[0][:90] if lines else "", "last": lines[-1][:90] if lines else ""})
    return rows


def kept_only_by(pages: list[dict], methods: dict[str, Callable[[dict], str]], n: int = 3) -> list[dict]:
    """Per shown page and extractor, the first ``n`` lines it keeps that the others do not (what differs)."""
    rows = []
    for url in SHOWN:
        page = next((p for p in pages if p["url"] == url), None)
        if page is None:
            continue
        # Compared as words (whitespace runs, list bullets and trailing spaces differ between extractors).
        lines = {name: [" ".join(l.split()).strip("•-* ") for l in fn(page).splitlines() if l.strip()] for name, fn in methods.items()}
        for name, own in lines.items():
            others = {l for other, ls in lines.items() if other != name for l in ls}
            only = [l[:80] for l in own if l not in others][:n]
            rows.append({"url": url, "method": name, "only_here": only})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warc-dir", type=Path, default=DEFAULT_WARCS)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / f"extract-{dt.date.today()}")
    args = ap.parse_args()

    pages = load_pages(args.warc_dir)
    html_mb = sum(len(p["body"]) for p in pages) / 1e6
    warc_mb = sum(p.stat().st_size for p in args.warc_dir.glob("*.warc*")) / 1e6
    load = os.getloadavg()[0]
    print(f"{len(pages)} HTML pages, {html_mb:.2f} MB of HTML, from {warc_mb:.2f} MB of WARC.gz; "
          f"{os.cpu_count()} cores, load {load:.2f}; median of {args.passes} passes after a warm-up, one process\n")

    methods = extractors()
    rows = []
    for name, fn in methods.items():
        kept = sum(len(fn(p)) for p in pages)
        cpu, wall = time_it(lambda: [fn(p) for p in pages], args.passes)
        rows.append({"method": name, "pages": len(pages), "cpu_s": cpu, "wall_s": wall, "pages_per_cpu_s": len(pages) / cpu,
                     "html_mb_per_cpu_s": html_mb / cpu, "chars_kept": kept})
    for name, fn in readers(args.warc_dir).items():
        records = fn()
        cpu, wall = time_it(fn, args.passes)
        rows.append({"method": name, "records": records, "cpu_s": cpu, "wall_s": wall,
                     "pages_per_cpu_s": len(pages) / cpu, "warc_mb_per_cpu_s": warc_mb / cpu})

    print("| method | pages/s per core | MB/s per core | CPU s | wall s | characters kept |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        mbs = r.get("html_mb_per_cpu_s", r.get("warc_mb_per_cpu_s"))
        unit = "HTML" if "html_mb_per_cpu_s" in r else "WARC.gz"
        print(f"| {r['method']} | {r['pages_per_cpu_s']:,.0f} | {mbs:.1f} ({unit}) | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | "
              f"{r.get('chars_kept', ''):,} |" if "chars_kept" in r else
              f"| {r['method']} | {r['pages_per_cpu_s']:,.0f} | {mbs:.1f} ({unit}) | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | |")

    shown = shown_pages(pages, methods)
    print("\n| page | method | chars | paragraphs | first line kept | last line kept |")
    print("|---|---|---:|---:|---|---|")
    for r in shown:
        print(f"| {r['url'].split('//')[1][:45]} | {r['method']} | {r['chars']:,} | {r['paragraphs']} | {r['first']} | {r['last']} |")

    only = kept_only_by(pages, {k: v for k, v in methods.items() if k != "lmwright trafilatura"})
    print("\n| page | method | first lines only this one keeps |")
    print("|---|---|---|")
    for r in only:
        print(f"| {r['url'].split('//')[1][:45]} | {r['method']} | {' / '.join(r['only_here']) or '(nothing)'} |")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": str(dt.date.today()), "machine": platform.platform(), "cores": os.cpu_count(), "load_1min": load,
              "pages": len(pages), "html_mb": html_mb, "warc_mb": warc_mb, "passes": args.passes, "rates": rows, "shown": shown,
              "kept_only_by": only}
    (args.out / "extract_bench.json").write_text(json.dumps(result, indent=1))
    print(f"\nwritten: {args.out / 'extract_bench.json'}")


if __name__ == "__main__":
    main()
