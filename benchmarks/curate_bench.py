"""Curate benchmark: per-stage throughput (docs/s, MB/s) and whole-flow wall time + peak RSS.

    flock /tmp/lmwright-bench.lock python benchmarks/curate_bench.py [--scales 1,4,16] [--flow-scales 1,4]
                                                                     [--shard-docs 500] [--repeat 2]

Inputs: ../shared/data/web/cc_warc_2019_07_cclicensed_pages.jsonl (x1) and scaled copies
(x4, x16): every copy after the first repeats each document with light word-level edits
(0.5%..3% of its words replaced, dropped or doubled; line structure kept) and a fresh id,
and 1 copy in 10 is exact, so dedup has both exact and near duplicates to find.

1. Stages: each stage's pure function on the same documents, shard by shard
   (``--shard-docs`` per call, as the flow calls it), best of ``--repeat``, with the tiny
   preset's parameters and ``langid.languages=null`` (what the flow run below uses).
   normalize runs on the raw documents; langid, quality, pii and the dedup signature
   step (``tasks.curate.dedup.signatures.signature_frame``: normalization, MinHash via tasks/curate/dedup/minhash.py,
   exact hash, band keys) all run on the normalized documents, every document, so all
   see the same input. ``dedup cluster`` is the global step over all signatures (once).
2. Flow: ``lmwright curate`` in a subprocess (fresh workdir and PREFECT_HOME each run,
   ``--config tiny --set langid.languages=null --set ingest.shard_docs=N``), on x1 and x4.
   /proc is polled every 0.1 s for the CLI process and all its descendants (the langid
   process pool, Prefect's helpers): peak RSS of the CLI process, peak sum of RSS and PSS
   over the tree, and the CLI's peak RSS while each stage runs (the current stage = the
   first one in flow order without a manifest.json). ``wait4`` gives the kernel's
   ru_maxrss (largest single process in the tree) as a cross-check.

Load average (1 min) is printed beside every number: the box is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl"
FLOW_STAGES = ["ingest", "normalize", "langid", "quality", "pii", "dedup"]
WORD = re.compile(r"\S+")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# --------------------------------------------------------------------------- inputs


def read_records(path: Path) -> list[dict[str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:  # never splitlines(): U+2028 etc. inside JSON strings are not line ends
            if line.strip():
                rec = json.loads(line)
                out.append({"id": str(rec["id"]), "text": rec.get("text") or ""})
    return out


def perturb(text: str, frac: float, rng: random.Random) -> str:
    """Replace, drop or double ~frac of the words; whitespace (and so lines) stays as it was."""
    spans = [m.span() for m in WORD.finditer(text)]
    if not spans or frac <= 0:
        return text
    picks = sorted(rng.sample(range(len(spans)), min(len(spans), max(1, round(frac * len(spans))))))
    out, pos = [], 0
    for i in picks:
        s, e = spans[i]
        out.append(text[pos:s])
        word, op = text[s:e], rng.random()
        if op < 0.5:  # replace with another word of the same document
            a, b = spans[rng.randrange(len(spans))]
            out.append(text[a:b])
        elif op < 0.75:  # drop
            pass
        else:  # double
            out.append(f"{word} {word}")
        pos = e
    out.append(text[pos:])
    return "".join(out)


def scaled(records: list[dict[str, str]], scale: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = list(records)
    for copy in range(1, scale):
        for r in records:
            exact = rng.random() < 0.1
            text = r["text"] if exact else perturb(r["text"], rng.uniform(0.005, 0.03), rng)
            out.append({"id": f"{r['id']}-x{copy}", "text": text})
    return out


def write_jsonl(records: list[dict[str, str]], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- stage throughput


def frame(records: list[dict[str, str]], path: Path) -> pl.DataFrame:
    from lmwright.tasks.core.dataset import DOC_SCHEMA

    return pl.DataFrame(
        {
            "id": [r["id"] for r in records],
            "text": [r["text"] for r in records],
            "source": ["bench"] * len(records),
            "uri": [f"{path}#L{i + 1}" for i in range(len(records))],
            "license": [None] * len(records),
            "url": [None] * len(records),
        },
        schema=DOC_SCHEMA,
    )


def shards(df: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    return [df.slice(i, n) for i in range(0, df.height, n)]


def timed(fn: Callable[[pl.DataFrame], pl.DataFrame], parts: list[pl.DataFrame], repeat: int) -> tuple[float, list[pl.DataFrame]]:
    best, out = float("inf"), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = [fn(p) for p in parts]
        best = min(best, time.perf_counter() - t0)
    return best, out


def stage_table(label: str, df: pl.DataFrame, config: Any, shard_docs: int, repeat: int) -> list[dict[str, Any]]:
    from lmwright.tasks.curate.dedup.clusters import cluster_frame
    from lmwright.tasks.curate.dedup.signatures import signature_frame
    from lmwright.tasks.curate.langid import apply_langid
    from lmwright.tasks.curate.normalize import apply_normalize
    from lmwright.tasks.curate.pii import apply_pii
    from lmwright.tasks.curate.quality import apply_quality

    def mb(parts: list[pl.DataFrame]) -> float:
        return sum(int(p["text"].str.len_bytes().sum() or 0) for p in parts) / 1e6

    def kept(outs: list[pl.DataFrame]) -> str:
        if not outs or "reason" not in outs[0].columns:
            return "-"
        return f"{sum(int(o['reason'].is_null().sum()) for o in outs) / max(1, sum(o.height for o in outs)):.1%}"

    raw = shards(df, shard_docs)
    stages: list[tuple[str, Callable[[pl.DataFrame], pl.DataFrame]]] = [
        ("normalize", lambda d: apply_normalize(d, config.normalize)),
        ("langid", lambda d: apply_langid(d, config.langid)),
        ("quality", lambda d: apply_quality(d, config.quality)),
        ("pii", lambda d: apply_pii(d, config.pii)),
        ("dedup signatures", lambda d: signature_frame(d, "s", config.dedup)),
    ]
    # Warm-up outside the timing: regex compilation, langdetect profiles, and the langid
    # process pool (started only for batches above its minimum chunk, so warm with a full shard).
    for _, fn in stages:
        fn(raw[0])
    rows = []
    t, outs = timed(stages[0][1], raw, repeat)
    rows.append({"stage": "normalize", "docs": df.height, "mb": mb(raw), "s": t, "kept": kept(outs), "load": load()})
    normalized = [o.drop([c for c in ("reason", "detail") if c in o.columns]) for o in outs]
    sigs: list[pl.DataFrame] = []
    for name, fn in stages[1:]:
        t, outs = timed(fn, normalized, repeat)
        rows.append({"stage": name, "docs": df.height, "mb": mb(normalized), "s": t, "kept": kept(outs), "load": load()})
        if name == "dedup signatures":
            sigs = outs
    t0 = time.perf_counter()
    clusters, counts = cluster_frame(pl.concat(sigs, rechunk=True), config.dedup)
    t = time.perf_counter() - t0
    rows.append({
        "stage": "dedup cluster (global)", "docs": df.height, "mb": mb(normalized), "s": t,
        "kept": f"{1 - counts['duplicates'] / max(1, counts['docs']):.1%}", "load": load(),
        "note": f"{counts['exact_duplicates']} exact + {counts['near_duplicates']} near dups",
    })
    print(f"\n### stages, {label}: {df.height} docs, {mb(raw):.2f} MB, shards of {shard_docs}, best of {repeat}")
    print("| stage | docs/s | MB/s | seconds | kept | load avg (1 min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        note = f" ({r['note']})" if r.get("note") else ""
        print(f"| {r['stage']} | {r['docs'] / r['s']:,.0f} | {r['mb'] / r['s']:.2f} | {r['s']:.2f} | {r['kept']}{note} | {r['load']} |")
    sys.stdout.flush()
    return rows


# --------------------------------------------------------------------------- whole flow, peak RSS


def children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> dict[int, int]:
    """{pid: parent pid} for ``pid`` and all its descendants."""
    todo, seen = [(pid, 0)], {}
    while todo:
        p, parent = todo.pop()
        seen[p] = parent
        todo += [(c, p) for c in children(p)]
    return seen


def mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def label_of(pid: int, parent: int) -> str:
    cmd = cmdline(pid)
    if "forkserver" in cmd:
        # workers are forked from the forkserver and inherit its command line
        return "langid worker" if "forkserver" in cmdline(parent) else "forkserver"
    if "uvicorn" in cmd or "prefect server" in cmd:
        return "prefect server"
    if "resource_tracker" in cmd:
        return "mp resource tracker"
    return cmd[:60]


def sample_tree_memory(
    pids: dict[int, int], main: int, stage: str, per_stage: dict[str, int], per_proc: dict[str, int]
) -> tuple[int, int, int]:
    """One memory sample of a process tree: raises the main process's peak for ``stage`` and each
    other process's peak under its label; returns (main RSS, tree RSS, tree PSS) in bytes."""
    main_rss = tree_rss = tree_pss = 0
    for p, parent in pids.items():
        rss, pss = mem(p)
        tree_rss += rss
        tree_pss += pss
        if p == main:
            main_rss = rss
            per_stage[stage] = max(per_stage.get(stage, 0), rss)
        elif rss:
            name = label_of(p, parent)
            per_proc[name] = max(per_proc.get(name, 0), rss)
    return main_rss, tree_rss, tree_pss


def current_stage(workdir: Path) -> str:
    for stage in FLOW_STAGES:
        if not list((workdir / "datasets" / stage).glob("*/manifest.json")):
            return stage
    return "card+exit"


def run_flow(label: str, source: Path, base: Path, shard_docs: int, interval: float, extra: list[str]) -> dict[str, Any]:
    exe = shutil.which("lmwright") or str(Path(sys.executable).parent / "lmwright")
    workdir = base / f"flow-{label}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_API_URL": "",
           "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [exe, "curate", "--source", str(source), "--workdir", str(workdir), "--config", "tiny",
           "--set", "langid.languages=null", "--set", f"ingest.shard_docs={shard_docs}"]
    for o in extra:
        cmd += ["--set", o]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    load_before = load()
    out_f, err_f = open(workdir / "stdout.txt", "w"), open(workdir / "stderr.txt", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out_f, stderr=err_f, cwd=str(ROOT))
    peak_main = peak_tree_rss = peak_tree_pss = 0
    per_stage: dict[str, int] = {}
    per_proc: dict[str, int] = {}
    samples = 0
    status = None
    while status is None:
        pids = tree(proc.pid)
        stage = current_stage(workdir)
        main_rss, tot_rss, tot_pss = sample_tree_memory(pids, proc.pid, stage, per_stage, per_proc)
        peak_main = max(peak_main, main_rss)
        peak_tree_rss, peak_tree_pss = max(peak_tree_rss, tot_rss), max(peak_tree_pss, tot_pss)
        samples += 1
        wpid, wstatus, rusage = os.wait4(proc.pid, os.WNOHANG)
        if wpid:
            status = wstatus
            break
        time.sleep(interval)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.close()
    err_f.close()
    if proc.returncode != 0:
        tail = (workdir / "stderr.txt").read_text(errors="replace")[-3000:]
        raise SystemExit(f"lmwright curate failed ({proc.returncode}) on {label}:\n{tail}")
    corpus = Path((workdir / "stdout.txt").read_text().strip().splitlines()[-1])
    ingest = next((workdir / "datasets" / "ingest").glob("*/manifest.json"))
    n_shards = len(json.loads(ingest.read_text()).get("shards", []))
    rows_out = json.loads((corpus / "manifest.json").read_text())["rows"]
    return {
        "label": label, "wall": wall, "peak_main": peak_main, "maxrss": rusage.ru_maxrss * 1024,
        "tree_rss": peak_tree_rss, "tree_pss": peak_tree_pss, "per_stage": per_stage, "per_proc": per_proc,
        "shards": n_shards, "rows_out": rows_out, "samples": samples, "load": f"{load_before} -> {load()}",
        "workdir": str(workdir),
    }


def mib(b: int) -> str:
    return f"{b / 2**20:.0f}"


def flow_tables(runs: list[dict[str, Any]], shard_docs: int, extra: list[str]) -> None:
    more = "".join(f", {o}" for o in extra)
    print(f"\n### lmwright curate (tiny preset, langid.languages=null, ingest.shard_docs={shard_docs}{more})")
    print("| input | shards | docs out | wall s | CLI peak RSS MiB | wait4 maxrss MiB | tree peak RSS MiB | tree peak PSS MiB | load avg (1 min) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        print(f"| {r['label']} | {r['shards']} | {r['rows_out']} | {r['wall']:.1f} | {mib(r['peak_main'])} | {mib(r['maxrss'])} | "
              f"{mib(r['tree_rss'])} | {mib(r['tree_pss'])} | {r['load']} |")
    print("\nCLI process peak RSS (MiB) while each stage ran:")
    stages = FLOW_STAGES + ["card+exit"]
    print("| input | " + " | ".join(stages) + " |")
    print("|---|" + "---:|" * len(stages))
    for r in runs:
        print(f"| {r['label']} | " + " | ".join(mib(r['per_stage'].get(s, 0)) for s in stages) + " |")
    print("\nchild processes, peak RSS (MiB): " + "; ".join(
        f"{r['label']}: " + ", ".join(f"{k} {mib(v)}" for k, v in sorted(r["per_proc"].items())) for r in runs))
    if len(runs) >= 2:
        a, b = runs[0], runs[1]
        for what in ("peak_main", "maxrss", "tree_rss", "tree_pss"):
            ratio = b[what] / a[what]
            verdict = "meets" if ratio <= 1.3 else "MISSES"
            print(f"peak RSS ratio {b['label']}/{a['label']} [{what}]: {ratio:.2f}x  (target <= 1.3x: {verdict})")
        growth = {s: b["per_stage"].get(s, 0) - a["per_stage"].get(s, 0) for s in stages}
        worst = max(growth, key=lambda s: growth[s])
        print(f"largest per-stage growth of the CLI process: {worst} (+{mib(growth[worst])} MiB)")


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--scales", default="1,4,16", help="input sizes for the stage tables")
    ap.add_argument("--flow-scales", default="1,4", help="input sizes for the whole-flow runs ('' skips them)")
    ap.add_argument("--shard-docs", type=int, default=500, help="documents per shard (stage calls and ingest.shard_docs)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each stage")
    ap.add_argument("--interval", type=float, default=0.1, help="RSS polling interval, seconds")
    ap.add_argument("--flow-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra --set for the flow runs (repeatable), e.g. runner.max_workers=2")
    ap.add_argument("--workdir", type=Path, help="keep inputs and flow workdirs here (default: a temp dir, removed)")
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",") if s]
    flow_scales = [int(s) for s in args.flow_scales.split(",") if s]

    from lmwright.flows.config import CurateConfig, load_config

    config = load_config(CurateConfig, "tiny", ["langid.languages=null", f"ingest.shard_docs={args.shard_docs}"])
    base = args.workdir or Path(tempfile.mkdtemp(prefix="curate-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"host: {os.cpu_count()} cores, polars {pl.__version__} ({pl.thread_pool_size()} threads); "
          f"langid processes {config.langid.processes or os.cpu_count()}; load avg {os.getloadavg()}")
    records = read_records(args.data)
    inputs = {}
    for s in sorted(set(scales) | set(flow_scales)):
        recs = scaled(records, s)
        inputs[s] = (recs, write_jsonl(recs, base / f"web_x{s}.jsonl"))
    try:
        for s in scales:
            recs, path = inputs[s]
            stage_table(f"x{s}", frame(recs, path), config, args.shard_docs, args.repeat)
        from lmwright.tasks.curate.langid import shutdown_pool

        shutdown_pool()
        runs = [run_flow(f"x{s}", inputs[s][1], base, args.shard_docs, args.interval, args.flow_set) for s in flow_scales]
        if runs:
            flow_tables(runs, args.shard_docs, args.flow_set)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
