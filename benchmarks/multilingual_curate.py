"""`lmwright curate` on many languages and on books: what quality keeps with and without per-language settings
and with and without chunking of long documents.

    python benchmarks/multilingual_curate.py [--out benchmarks/results/multilingual-2026-11-30]

Runs the real command (embedded Prefect, the tiny preset) on ../shared/data:

- multilingual/udhr (the UDHR in 82 languages, one document per file) with
  langid.languages=[en, de, fr, es, it], and with the README's example settings
  (min_doc_words=80, languages [en, de]); each with the language table (the default) and with
  quality.language_table=null (every language judged by English stop words, as before);
- gutenberg/ (two novels, one document per file) with chunking (the default) and with
  normalize.chunk.max_chars=null (each book one document, as before).

Prints one line per run and writes result.json (the numbers README.md quotes) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "udhr_5_languages": (["multilingual/udhr"], ["langid.languages=[en, de, fr, es, it]"]),
    "udhr_5_languages_english_stop_words": (
        ["multilingual/udhr"], ["langid.languages=[en, de, fr, es, it]", "quality.language_table=null"]
    ),
    "readme_example": (
        ["multilingual/udhr"], ["quality.gopher_quality.min_doc_words=80", "langid.languages=[en, de]"]
    ),
    "readme_example_english_stop_words": (
        ["multilingual/udhr"],
        ["quality.gopher_quality.min_doc_words=80", "langid.languages=[en, de]", "quality.language_table=null"],
    ),
    "novels_chunked": (["gutenberg"], []),
    "novels_whole": (["gutenberg"], ["normalize.chunk.max_chars=null"]),
}


def curate(sources: list[str], sets: list[str], workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "lmwright.deployments.cli", "curate", "--workdir", str(workdir), "--config", "tiny"]
    for s in sources:
        cmd += ["--source", str(DATA / s)]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"})
    seconds = time.perf_counter() - start
    command = "lmwright curate --config tiny " + " ".join(f"--source ../shared/data/{s}" for s in sources) + "".join(
        f" --set '{s}'" for s in sets
    )
    said = [line for line in done.stderr.splitlines() if line.startswith("lmwright: no documents")]
    if done.returncode == 2 and said:  # every document dropped: the command says by whom, and that is the result
        return {"command": command, "seconds": round(seconds, 1), "documents": 0, "characters": 0, "message": said[-1]}
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    card_md = next(line.split(": ", 1)[1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("data card: "))
    card = json.loads((Path(card_md).parent / "card.json").read_text())
    stages = {row["stage"]: row for row in card["funnel"]}
    return {
        "command": command,
        "seconds": round(seconds, 1),
        "documents": card["profile"]["documents"],
        "characters": card["profile"]["chars"],
        "languages": card["profile"].get("languages", {}),
        "funnel": {k: {"in": v["in"], "kept": v["kept"], "rejected_by_reason": v["rejected_by_reason"]} for k, v in stages.items()},
        "normalize_counts": stages.get("normalize", {}).get("counts", {}),
        "quality_by_language": [
            {k: r[k] for k in ("lang", "in", "kept", "rejected_by_reason")} for r in card.get("quality_by_language", [])
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multilingual-2026-11-30")
    ap.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS), help="Which runs (default: all).")
    args = ap.parse_args()
    result_file = args.out / "result.json"
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}  # other runs' numbers stay
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            sources, sets = RUNS[name]
            r = curate(sources, sets, Path(tmp) / name)
            results[name] = r
            args.out.mkdir(parents=True, exist_ok=True)  # after every run: a failure later keeps these numbers
            result_file.write_text(json.dumps({k: results[k] for k in RUNS if k in results}, indent=1, ensure_ascii=False) + "\n")
            if "message" in r:
                print(f"{name:40s} {r['message']}")
                continue
            q = r["funnel"]["quality"]
            print(f"{name:40s} langid kept {r['funnel']['langid']['kept']:4d}, quality kept {q['kept']:4d} of {q['in']:4d}, "
                  f"corpus {r['documents']} docs / {r['characters']:,} chars  {dict(list(q['rejected_by_reason'].items())[:3])}")
    print(f"wrote {result_file}")


if __name__ == "__main__":
    main()
