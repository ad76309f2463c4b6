"""Curate at scale: a realistic input of ~1 GB (``--size``) and 1/4 of it, ``lmwright curate`` end to end.

    python benchmarks/curate_scale.py --size 1000 [--workdir W] [--runs full,quarter,functions]
        [--runs datatrove] [--runs dask] [--runs kill]

The input is built from ../shared/data: English web pages (Common Crawl, C4) and Gutenberg prose,
German, French, Spanish and Italian web sentences and UDHR lines, every document with a fresh id
and word-level edits (so two copies of a page are different documents), 10% exact and 10% near
duplicates (1-3% of words edited) of documents written earlier, and 5% with an e-mail address and a
phone number. The quarter input is the first quarter of the full one (the generator is seeded).

Runs (``--runs``, comma separated, repeatable):
  full, quarter   ``lmwright curate`` in a subprocess (fresh workdir and PREFECT_HOME): wall time,
                  MB/s, docs/s, peak RSS of the whole process tree (polled every 0.1 s), the CLI's
                  peak RSS per stage, per-stage seconds (from each stage's stats), Prefect task runs
                  and the size of the Prefect database.
  functions       the same stages' pure functions back to back on the quarter input, in memory,
                  shard by shard (no Prefect, no validation, no Parquet): the flow's ratio to it.
  datatrove       the peer: a datatrove pipeline doing the same work on the quarter input
                  (JSONL reader, Gopher/C4/FineWeb filters, MinHash in four steps, writer) on
                  LocalPipelineExecutor with 2 workers; needs ``--datatrove-python`` (a venv with datatrove).
  dask            the quarter input with runner.kind=dask (a LocalCluster of ``--dask-workers`` processes):
                  corpus compared with the thread runner's (ids and text hashes), times side by side.
  kill            the quarter input killed with SIGKILL at three random moments and rerun each time:
                  the final corpus compared with the uninterrupted run's, and the shards that a rerun
                  found done (not recomputed) counted.

Results go to ``--out`` (JSON) and a table on stdout. Load average is printed with each number: the
machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_bench import label_of, perturb, sample_tree_memory, tree  # noqa: E402  (the same input edits and /proc probes)

DATA = ROOT.parent / "shared" / "data"
# Share of fresh documents per language; English is what most web crawls are.
LANG_SHARES = {"en": 0.70, "de": 0.075, "fr": 0.075, "es": 0.075, "it": 0.075}
UDHR = {"de": "deu_1996.txt", "fr": "fra.txt", "es": "spa.txt", "it": "ita.txt", "en": "eng.txt"}
EXACT_DUPS, NEAR_DUPS, PII_DOCS = 0.10, 0.10, 0.05
FLOW_STAGES = ["ingest", "urlfilter", "license", "normalize", "langid", "quality", "pii", "bias", "dedup"]
LANGUAGES = list(LANG_SHARES)
MB = 1e6


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


# --------------------------------------------------------------------------- the input


def jsonl_texts(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                text = json.loads(line).get("text") or ""
                if len(text) > 200:
                    out.append(text)
    return out


def book_passages(path: Path, paragraphs: int = 12) -> list[str]:
    """A novel as passages of a dozen paragraphs (the size of a web page)."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))]
    paras = [p for p in paras if len(p) > 40]
    return ["\n\n".join(paras[i : i + paragraphs]) for i in range(0, len(paras), paragraphs)]


def sentences(lang: str) -> list[str]:
    lines = (DATA / "multilingual" / "leipzig_sentences" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
    lines += (DATA / "multilingual" / "udhr" / UDHR[lang]).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if len(s.strip()) > 20]


def base_material() -> dict[str, Any]:
    """English pages to edit; sentences per language to compose pages from."""
    web = DATA / "web"
    pages = jsonl_texts(web / "cc_warc_2019_07_cclicensed_pages.jsonl") + jsonl_texts(web / "c4_en_sample_olmo.jsonl")
    for book in sorted((DATA / "gutenberg").glob("*.txt")):
        pages += book_passages(book)
    return {"en_pages": pages, "sentences": {lang: sentences(lang) for lang in LANGUAGES if lang != "en"}}


FIRST = ["anna", "ben", "clara", "david", "elena", "felix", "grace", "hugo", "ines", "jonas"]
LAST = ["meyer", "rossi", "garcia", "dubois", "smith", "novak", "jensen", "costa"]


def pii_line(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{first}.{last}{rng.randrange(100)}@{rng.choice(['example.org', 'mail.example.com', 'web.example.net'])}"
    phone = f"+1 {rng.randrange(200, 999)} {rng.randrange(200, 999)} {rng.randrange(1000, 9999)}"
    return f"For details write to {first.title()} {last.title()} at {email} or call {phone}."


def composed_page(pool: list[str], rng: random.Random) -> str:
    """A page of paragraphs, each of a few random sentences of one language."""
    paras = []
    for _ in range(rng.randint(3, 12)):
        paras.append(" ".join(rng.choice(pool) for _ in range(rng.randint(2, 6))))
    return "\n\n".join(paras)


def fresh_document(material: dict[str, Any], rng: random.Random) -> str:
    lang = rng.choices(LANGUAGES, weights=[LANG_SHARES[lang] for lang in LANGUAGES])[0]
    if lang == "en":
        text = rng.choice(material["en_pages"])
    else:
        text = composed_page(material["sentences"][lang], rng)
    # Word-level edits heavy enough that two fresh copies of one page are not near duplicates.
    return perturb(text, rng.uniform(0.15, 0.25), rng)


def documents(seed: int = 0) -> Iterator[dict[str, str]]:
    """An endless, seeded stream of documents: fresh ones, exact and near duplicates of earlier ones, some PII."""
    rng = random.Random(seed)
    material = base_material()
    recent: list[str] = []  # duplicates copy documents written earlier (the last few thousand)
    n = 0
    while True:
        roll = rng.random()
        if recent and roll < EXACT_DUPS:
            text = rng.choice(recent)
        elif recent and roll < EXACT_DUPS + NEAR_DUPS:
            text = perturb(rng.choice(recent), rng.uniform(0.01, 0.03), rng)
        else:
            text = fresh_document(material, rng)
            if rng.random() < PII_DOCS:
                lines = text.split("\n")
                lines.insert(rng.randrange(len(lines) + 1), pii_line(rng))
                text = "\n".join(lines)
        if len(recent) < 4000:
            recent.append(text)
        else:
            recent[rng.randrange(len(recent))] = text
        n += 1
        yield {"id": f"doc-{seed}-{n:09d}", "text": text}


def build_input(folder: Path, size_mb: float, files: int, seed: int = 0) -> list[dict[str, Any]]:
    """``files`` JSONL files of ``size_mb / files`` MB of text each, like a crawl's dump; kept for reuse (meta.json)."""
    meta = folder / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stream, written = documents(seed), []
    for k in range(files):
        t0, text_bytes, docs = time.perf_counter(), 0, 0
        path = folder / f"part-{k:04d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for doc in stream:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                text_bytes += len(doc["text"].encode())
                docs += 1
                if text_bytes >= size_mb / files * MB:
                    break
        written.append({"path": str(path), "docs": docs, "text_mb": text_bytes / MB, "build_s": time.perf_counter() - t0})
    meta.write_text(json.dumps(written, indent=1))
    return written


def input_folder(folder: Path, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A folder holding ``parts`` (hard links: the quarter input is the full input's first quarter of files)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        link = folder / Path(part["path"]).name
        if not link.exists():
            os.link(part["path"], link)
    return {"path": str(folder), "files": len(parts), "docs": sum(p["docs"] for p in parts),
            "text_mb": sum(p["text_mb"] for p in parts)}


# --------------------------------------------------------------------------- lmwright curate, measured


def curate_command(source: Path, workdir: Path, extra: list[str]) -> list[str]:
    exe = shutil.which("lmwright") or str(Path(sys.executable).parent / "lmwright")
    cmd = [exe, "curate", "--source", str(source), "--workdir", str(workdir), "--config", "tiny",
           "--set", "langid.languages=" + json.dumps(LANGUAGES)]
    for o in extra:
        cmd += ["--set", o]
    return cmd


def flow_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_API_URL": "",
            "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}


def finished_stages(workdir: Path) -> list[str]:
    return [s for s in FLOW_STAGES if list((workdir / "datasets" / s).glob("*/manifest.json"))]


def watch(proc: subprocess.Popen, workdir: Path, interval: float, kill_at: float | None = None) -> dict[str, Any]:
    """Poll the process tree's memory until it exits (or until ``kill_at`` seconds: SIGKILL to the whole tree)."""
    t0 = time.perf_counter()
    peak_tree = peak_main = 0
    per_stage: dict[str, int] = {}
    per_proc: dict[str, int] = {}
    ends: dict[str, float] = {}
    killed = False
    cpu: dict[int, float] = {}  # pid -> its own CPU seconds so far (children a process never waits for count too)
    names: dict[int, str] = {}
    while True:
        now = time.perf_counter() - t0
        pids = tree(proc.pid)
        done = finished_stages(workdir)
        for s in done:
            ends.setdefault(s, now)
        stage = next((s for s in FLOW_STAGES if s not in done), "card+exit")
        main_rss, total, _ = sample_tree_memory(pids, proc.pid, stage, per_stage, per_proc)
        peak_main = max(peak_main, main_rss)
        for p, parent in pids.items():
            cpu[p] = max(cpu.get(p, 0.0), cpu_seconds(p))
            if p not in names or not names[p]:  # an exiting process has no command line left to read
                names[p] = "lmwright curate" if p == proc.pid else label_of(p, parent)
        peak_tree = max(peak_tree, total)
        if kill_at is not None and now >= kill_at:
            for p in pids:  # the whole tree at once, like a machine that loses power
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:  # its rusage holds the CPU time of the CLI and of every child it waited for (server, langid pool)
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        time.sleep(interval)
    return {"wall_s": time.perf_counter() - t0, "returncode": proc.returncode, "killed": killed,
            "cpu_s": max(sum(cpu.values()), usage.ru_utime + usage.ru_stime),
            "cpu_s_by_process": {name: sum(c for p, c in cpu.items() if names[p] == name) for name in set(names.values())},
            "peak_tree_rss_mib": peak_tree / 2**20, "peak_cli_rss_mib": peak_main / 2**20,
            "cli_rss_mib_by_stage": {k: v / 2**20 for k, v in per_stage.items()},
            "children_rss_mib": {k: v / 2**20 for k, v in per_proc.items()}, "stage_done_at_s": ends}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (not its children), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stage_stats(workdir: Path) -> dict[str, Any]:
    """What each stage recorded: documents in/kept, shards, and the seconds its shards worked."""
    out = {}
    for s in FLOW_STAGES:
        found = sorted((workdir / "datasets" / s).glob("*/stats.json"))
        if found:
            st = json.loads(found[-1].read_text())
            out[s] = {k: st.get(k) for k in ("in", "kept", "rejected", "shards", "seconds", "bytes_in")}
    return out


def prefect_db(workdir: Path) -> dict[str, Any]:
    """Task runs, their summed run time, and the database's size."""
    import sqlite3

    db = workdir / "prefect-home" / "prefect.db"
    if not db.is_file():
        return {}
    size = sum(p.stat().st_size for p in db.parent.glob("prefect.db*"))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n, run_s = con.execute(
            "select count(*), sum((julianday(end_time) - julianday(start_time)) * 86400) from task_run"
        ).fetchone()
    finally:
        con.close()
    return {"task_runs": n, "task_run_seconds": run_s, "db_mib": size / 2**20}


def corpus_digest(workdir: Path) -> dict[str, Any]:
    """The final corpus as (id, sha256 of text) pairs, hashed in id order: equal digests, equal corpora."""
    import polars as pl

    manifests = sorted((workdir / "datasets" / "dedup").glob("*/manifest.json"))
    if not manifests:
        return {}
    corpus = manifests[-1].parent
    docs = pl.concat([pl.read_parquet(p, columns=["id", "text"]) for p in sorted(corpus.glob("part-*.parquet"))])
    pairs = sorted(zip(docs["id"].to_list(), (hashlib.sha256(t.encode()).hexdigest() for t in docs["text"].to_list())))
    h = hashlib.sha256()
    for i, t in pairs:
        h.update(f"{i}\t{t}\n".encode())
    return {"docs": len(pairs), "digest": h.hexdigest(), "path": str(corpus)}


def run_curate(label: str, source: Path, info: dict[str, Any], workdir: Path, extra: list[str], interval: float,
               fresh: bool = True, kill_at: float | None = None) -> dict[str, Any]:
    if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = curate_command(source, workdir, extra)
    print(f"\n$ {' '.join(cmd)}" + (f"   # SIGKILL at {kill_at:.0f} s" if kill_at is not None else ""), flush=True)
    load_before = load()
    with open(workdir / f"stdout-{label}.txt", "w") as out, open(workdir / f"stderr-{label}.txt", "w") as err:
        proc = subprocess.Popen(cmd, env=flow_env(workdir), stdout=out, stderr=err, cwd=str(ROOT), start_new_session=True)
        run = watch(proc, workdir, interval, kill_at)
    if run["returncode"] != 0 and not run["killed"]:
        tail = (workdir / f"stderr-{label}.txt").read_text(errors="replace")[-3000:]
        raise SystemExit(f"lmwright curate failed ({run['returncode']}) on {label}:\n{tail}")
    result = {"label": label, "input_mb": info["text_mb"], "input_docs": info["docs"], "command": " ".join(cmd),
              "load": f"{load_before} -> {load()}", **run}
    if not run["killed"]:
        result.update({"mb_per_s": info["text_mb"] / run["wall_s"], "docs_per_s": info["docs"] / run["wall_s"],
                       "stages": stage_stats(workdir), "prefect": prefect_db(workdir), "corpus": corpus_digest(workdir)})
        print(f"{label}: {run['wall_s']:.1f} s, {result['mb_per_s']:.2f} MB/s, {result['docs_per_s']:.0f} docs/s, "
              f"peak tree RSS {run['peak_tree_rss_mib']:.0f} MiB (CLI {run['peak_cli_rss_mib']:.0f}), "
              f"{result['prefect'].get('task_runs')} task runs, load {result['load']}", flush=True)
    return result


# --------------------------------------------------------------------------- stage functions back to back


def read_shards(path: Path, shard_docs: int, shard_bytes: int) -> Iterator[Any]:
    """The JSONL parsed into document frames bounded like ingest's shards (documents and text bytes)."""
    import polars as pl

    from lmwright.tasks.core.dataset import DOC_SCHEMA

    rows: list[dict[str, Any]] = []
    size = 0

    def frame() -> Any:
        n = len(rows)
        return pl.DataFrame({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows], "source": ["bench"] * n,
                             "uri": [f"{path}/{r['line']}" for r in rows], "license": [None] * n, "url": [None] * n},
                            schema=DOC_SCHEMA)

    for file in sorted(path.glob("*.jsonl")):
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                rec = json.loads(line)
                rows.append({"id": rec["id"], "text": rec["text"], "line": f"{file.name}#L{line_no}"})
                size += len(rec["text"])
                if len(rows) >= shard_docs or size >= shard_bytes:
                    yield frame()
                    rows, size = [], 0
    if rows:
        yield frame()


def stage_functions(info: dict[str, Any], workdir: Path, overrides: list[str]) -> dict[str, Any]:
    """Every stage's pure function on the input, shard by shard, back to back: seconds per stage, no Prefect/validation/IO.

    Kept documents go on to the next stage, as in the flow; dedup is signatures per shard, the
    clusters of all of them, then the duplicates dropped. CPU seconds include the langid pool's.
    """
    import resource

    import polars as pl

    from lmwright.flows import curate as flow_module  # the stages and resolvers the flow itself uses
    from lmwright.flows.config import CurateConfig, load_config
    from lmwright.tasks.core.stage import apply_in_slices
    from lmwright.tasks.curate.dedup.clusters import cluster_frame
    from lmwright.tasks.curate.dedup.signatures import signature_frame
    from lmwright.tasks.curate.langid import shutdown_pool

    workdir.mkdir(parents=True, exist_ok=True)
    config = load_config(CurateConfig, "tiny", ["langid.languages=" + json.dumps(LANGUAGES), *overrides], workdir=str(workdir))
    m = flow_module
    chain = [
        (m.URLFILTER_STAGE, m.resolve_block_lists(config.urlfilter, str(workdir))),
        (m.LICENSE_STAGE, m.resolve_optouts(config.license, str(workdir))),
        (m.NORMALIZE_STAGE, config.normalize),
        (m.LANGID_STAGE, config.langid),
        (m.QUALITY_STAGE, m.resolve_quality(config.quality)),
        (m.PII_STAGE, m.resolve_pii(config.pii, str(workdir))),
        (m.BIAS_STAGE, config.bias),
    ]
    seconds: dict[str, float] = {"ingest (parse)": 0.0, **{s.name: 0.0 for s, _ in chain}, "dedup": 0.0}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t_all = time.perf_counter()
    finals, sigs = [], []
    shards = read_shards(Path(info["path"]), config.ingest.shard_docs, config.ingest.shard_bytes)
    while True:
        t0 = time.perf_counter()
        docs = next(shards, None)
        seconds["ingest (parse)"] += time.perf_counter() - t0
        if docs is None:
            break
        for stage, params in chain:
            t0 = time.perf_counter()
            decided = apply_in_slices(stage, docs, params)
            docs = decided.filter(pl.col("reason").is_null()).drop(["reason", "detail"], strict=False)
            seconds[stage.name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        sigs.append(signature_frame(docs, f"part-{len(sigs):05d}", config.dedup))
        seconds["dedup"] += time.perf_counter() - t0
        finals.append(docs.select("id", "text"))
    t0 = time.perf_counter()
    clusters, _ = cluster_frame(pl.concat(sigs), config.dedup)
    dups = clusters.filter(pl.col("reason").is_not_null()).select("id")
    kept = sum(d.join(dups, on="id", how="anti").height for d in finals)
    seconds["dedup"] += time.perf_counter() - t0
    wall = time.perf_counter() - t_all
    # the langid pool's workers are the forkserver's children, never waited for by this process: read them first
    workers = sum(cpu_seconds(p) for p in tree(os.getpid()) if p != os.getpid())
    shutdown_pool()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) + workers
    result = {"wall_s": wall, "cpu_s": cpu, "seconds_by_stage": seconds, "docs_out": kept, "shards": len(sigs),
              "mb_per_s": info["text_mb"] / wall, "docs_per_s": info["docs"] / wall, "load": load(),
              "peak_rss_mib": cpu1.ru_maxrss / 1024}
    print(f"stage functions: {wall:.1f} s ({info['text_mb'] / wall:.2f} MB/s), {kept} docs out, "
          + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), flush=True)
    return result


# --------------------------------------------------------------------------- the peer: datatrove


def datatrove_pipeline(input_dir: str, out: str, workers: int) -> dict[str, float]:
    """Filters + MinHash dedup as datatrove's examples do it, each step on LocalPipelineExecutor; seconds per step.

    Run in a venv with datatrove (and spaCy, its English word tokenizer); one task per input file.
    """
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    tasks = len(list(Path(input_dir).glob("*.jsonl")))
    config = MinhashConfig()  # 5-grams, 14 buckets of 8 hashes: the same banding as lmwright's defaults
    steps = {
        "filters + writer": [JsonlReader(input_dir), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
                             FineWebQualityFilter(), JsonlWriter(f"{out}/filtered")],
        "minhash 1 signatures": [JsonlReader(f"{out}/filtered"), MinhashDedupSignature(f"{out}/signatures", config=config)],
        "minhash 2 buckets": [MinhashDedupBuckets(f"{out}/signatures", f"{out}/buckets", config=config)],
        "minhash 3 clusters": [MinhashDedupCluster(f"{out}/buckets", f"{out}/remove_ids", config=config)],
        "minhash 4 filter + writer": [JsonlReader(f"{out}/filtered"), MinhashDedupFilter(f"{out}/remove_ids"),
                                      JsonlWriter(f"{out}/deduplicated")],
    }
    n_tasks = {"minhash 2 buckets": config.num_buckets, "minhash 3 clusters": 1}
    seconds = {}
    for name, pipeline in steps.items():
        t0 = time.perf_counter()
        n = n_tasks.get(name, tasks)
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(workers, n), logging_dir=f"{out}/logs/{name.split()[0]}-{len(seconds)}").run()
        seconds[name] = time.perf_counter() - t0
    return seconds


def run_datatrove(python: str, info: dict[str, Any], out: Path, workers: int, interval: float) -> dict[str, Any]:
    """The datatrove pipeline in a subprocess of ``python``, its tree's memory polled like lmwright's."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [python, str(Path(__file__).resolve()), "--datatrove-pipeline", info["path"], str(out), "--workers", str(workers)]
    print(f"\n$ {' '.join(cmd)}", flush=True)
    load_before = load()
    with open(out / "stdout.txt", "w") as so, open(out / "stderr.txt", "w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=str(ROOT), start_new_session=True)
        run = watch(proc, out, interval)
    if run["returncode"] != 0:
        raise SystemExit(f"datatrove failed:\n{(out / 'stderr.txt').read_text(errors='replace')[-3000:]}")
    seconds = json.loads((out / "stdout.txt").read_text().strip().splitlines()[-1])
    docs_out = sum(1 for f in (out / "deduplicated").glob("*.jsonl*") for _ in _lines(f))
    result = {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "peak_tree_rss_mib": run["peak_tree_rss_mib"],
              "seconds_by_step": seconds, "docs_out": docs_out, "mb_per_s": info["text_mb"] / run["wall_s"],
              "docs_per_s": info["docs"] / run["wall_s"], "workers": workers, "load": f"{load_before} -> {load()}"}
    print(f"datatrove: {run['wall_s']:.1f} s ({result['mb_per_s']:.2f} MB/s), {docs_out} docs out, "
          f"peak tree RSS {run['peak_tree_rss_mib']:.0f} MiB, " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()), flush=True)
    return result


def _lines(path: Path) -> Iterator[bytes]:
    import gzip

    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        yield from f


# --------------------------------------------------------------------------- kill -9 and rerun


def step_markers(workdir: Path) -> dict[str, int]:
    """Every finished step's marker (a shard of a stage, a unit of ingest, a shard's signatures, the clusters) -> its mtime.

    Ingest's per-part stats are not markers: a unit killed half-way reads its files again.
    """
    found = {}
    patterns = ("datasets/ingest/*/stats/unit-*.json", "datasets/[!i]*/*/stats/*.json", "datasets/*/*/signatures/*.json",
                "datasets/*/*/clusters.json")
    for pattern in patterns:
        for marker in workdir.glob(pattern):
            found[str(marker.relative_to(workdir))] = marker.stat().st_mtime_ns
    return found


def kill_test(info: dict[str, Any], workdir: Path, overrides: list[str], interval: float, reference: dict[str, Any],
              kills: int = 3, seed: int = 0) -> dict[str, Any]:
    """SIGKILL the whole process tree at ``kills`` random moments, rerunning each time; then run to the end.

    Checks: the final corpus equals the uninterrupted run's (ids and text hashes), and no marker a
    killed attempt left behind was written again (its shard was not recomputed).
    """
    rng = random.Random(seed)
    shutil.rmtree(workdir, ignore_errors=True)
    attempts, rewritten = [], []
    for k in range(kills + 1):
        before = step_markers(workdir)
        # Within the first ~2/3 of an uninterrupted run's time: every attempt starts up again before it resumes
        # (a kill later than its end would kill nothing).
        kill_at = rng.uniform(0.2, 0.65) * reference["wall_s"] if k < kills else None
        run = run_curate(f"attempt-{k}", Path(info["path"]), info, workdir, overrides, interval, fresh=False, kill_at=kill_at)
        after = step_markers(workdir)
        again = sorted(m for m, t in before.items() if after.get(m) != t)
        rewritten += again
        attempts.append({"kill_at_s": kill_at, "killed": run["killed"], "wall_s": run["wall_s"],
                         "markers_before": len(before), "markers_after": len(after), "markers_rewritten": again,
                         "stages_finished": finished_stages(workdir)})
        if kill_at is not None and not run["killed"]:
            print(f"attempt {k} finished before its kill at {kill_at:.0f} s: a kill test needs a slower reference", flush=True)
        print(f"attempt {k}: {f'killed at {kill_at:.0f} s' if run['killed'] else 'finished'}, "
              f"{len(before)} steps were done before it, {len(again)} of them redone", flush=True)
    final = corpus_digest(workdir)
    same = final.get("digest") == reference["corpus"]["digest"]
    print(f"kill test: final corpus {'IDENTICAL to' if same else 'DIFFERS from'} the uninterrupted run "
          f"({final.get('docs')} vs {reference['corpus']['docs']} docs); finished steps redone: {len(rewritten)}", flush=True)
    return {"attempts": attempts, "corpus": final, "identical": same, "steps_redone": rewritten}


# --------------------------------------------------------------------------- tables


def tables(results: list[dict[str, Any]]) -> str:
    """Markdown tables of one or more results files (the README's tables are printed by this)."""
    out = ["| run | input MB | docs | wall s | MB/s | docs/s | CPU s | peak tree RSS MiB | CLI peak MiB | task runs | "
           "task-run s | Prefect DB MiB | docs out | load (1 min) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for res in results:
        for label, r in res["runs"].items():
            if label in ("functions", "datatrove", "kill"):
                continue
            pf = r.get("prefect", {})
            out.append(f"| {label} | {r['input_mb']:.1f} | {r['input_docs']:,} | {r['wall_s']:.0f} | {r['mb_per_s']:.2f} | "
                       f"{r['docs_per_s']:.0f} | {r.get('cpu_s', float('nan')):.0f} | {r['peak_tree_rss_mib']:.0f} | {r['peak_cli_rss_mib']:.0f} | "
                       f"{pf.get('task_runs')} | {pf.get('task_run_seconds') or 0:.0f} | {pf.get('db_mib', 0):.1f} | "
                       f"{r['corpus'].get('docs')} | {r['load']} |")
    for res in results:
        for label, r in res["runs"].items():
            if "stages" in r:
                ends, prev, row = r["stage_done_at_s"], 0.0, []
                for stage in FLOW_STAGES:
                    at = ends.get(stage, prev)
                    row.append(f"{stage} {at - prev:.0f} ({(r['stages'].get(stage) or {}).get('seconds') or 0:.0f})")
                    prev = at
                row.append(f"card+exit {r['wall_s'] - prev:.0f}")
                out.append(f"\n{label} ({r['input_mb']:.0f} MB), seconds per stage on the clock (in its shard tasks): " + ", ".join(row))
    for res in results:
        f = res["runs"].get("functions")
        if f:
            out.append(f"\nstage functions back to back on {res['inputs']['quarter']['text_mb']:.0f} MB: {f['wall_s']:.0f} s wall, "
                       f"{f['cpu_s']:.0f} CPU s, {f['mb_per_s']:.2f} MB/s, load {f['load']}: "
                       + ", ".join(f"{k} {v:.0f}" for k, v in f["seconds_by_stage"].items()))
            q = res["runs"].get("quarter")
            if q:
                out.append(f"flow / functions throughput: {f['wall_s'] / q['wall_s']:.0%} by wall clock, {f['cpu_s'] / q['cpu_s']:.0%} by CPU seconds")
        d = res["runs"].get("datatrove")
        if d:
            q = res["runs"].get("quarter")
            out.append(f"\ndatatrove ({d['workers']} workers) on {res['inputs']['quarter']['text_mb']:.0f} MB: {d['wall_s']:.0f} s wall, "
                       f"{d['cpu_s']:.0f} CPU s, peak tree RSS {d['peak_tree_rss_mib']:.0f} MiB, {d['docs_out']} docs out, load {d['load']}: "
                       + ", ".join(f"{k} {v:.0f}" for k, v in d["seconds_by_step"].items()))
            if q:
                out.append(f"lmwright / datatrove throughput: {d['wall_s'] / q['wall_s']:.2f}x by wall clock, {d['cpu_s'] / q['cpu_s']:.2f}x by CPU seconds")
        k = res["runs"].get("kill")
        if k:
            for i, a in enumerate(k["attempts"]):
                redone = [m for m in a["markers_rewritten"] if "/stats/part-" not in m or not m.startswith("datasets/ingest/")]
                out.append(f"attempt {i}: " + (f"SIGKILL at {a['kill_at_s']:.0f} s" if a["killed"] else f"finished in {a['wall_s']:.0f} s")
                           + f", {a['markers_before']} finished steps before it, {len(redone)} redone; stages done after: {', '.join(a['stages_finished']) or '-'}")
            out.append(f"final corpus identical to the uninterrupted run: {k['identical']} ({k['corpus'].get('docs')} docs)")
        full, quarter = res["runs"].get("full"), res["runs"].get("quarter")
        if full and quarter:
            out.append("\nfull / quarter (4x the input): " + ", ".join(
                f"{key} {full[key] / quarter[key]:.2f}x" for key in ("wall_s", "cpu_s", "peak_tree_rss_mib", "peak_cli_rss_mib")
                if key in full and key in quarter))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=1000, help="MB of text in the full input (the quarter: size/4)")
    ap.add_argument("--runs", action="append", default=[], help="full, quarter, functions, datatrove, dask, kill")
    ap.add_argument("--workdir", type=Path, default=Path("curate-scale-work"))
    ap.add_argument("--files", type=int, default=32, help="JSONL files the full input is written as (the quarter: the first quarter)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra --set for every lmwright curate run")
    ap.add_argument("--interval", type=float, default=0.1, help="memory polling interval, seconds")
    ap.add_argument("--out", type=Path, help="results JSON")
    ap.add_argument("--workers", type=int, default=2, help="datatrove's LocalPipelineExecutor workers")
    ap.add_argument("--dask-workers", type=int, default=3, help="worker processes of the Dask LocalCluster")
    ap.add_argument("--datatrove-python", help="python of a venv with datatrove and spacy")
    ap.add_argument("--datatrove-pipeline", nargs=2, metavar=("INPUT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--reference", type=Path, help="results JSON whose quarter run is the kill test's uninterrupted run")
    ap.add_argument("--tables", nargs="+", type=Path, metavar="RESULTS_JSON", help="print the tables of results files and exit")
    args = ap.parse_args()
    if args.tables:
        print(tables([json.loads(p.read_text()) for p in args.tables]))
        return 0
    if args.datatrove_pipeline:  # the peer's own process (in the datatrove venv): seconds per step on stdout
        print(json.dumps(datatrove_pipeline(*args.datatrove_pipeline, args.workers)))
        return 0
    runs = [r for spec in (args.runs or ["quarter,full"]) for r in spec.split(",") if r]
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"host": {"cores": os.cpu_count(), "load": load()}, "size_mb": args.size,
                               "overrides": args.overrides, "runs": {}}
    parts = build_input(args.workdir / f"input-{args.size:g}mb-parts", args.size, args.files)
    inputs = {
        "full": input_folder(args.workdir / f"input-{args.size:g}mb", parts),
        "quarter": input_folder(args.workdir / f"input-{args.size / 4:g}mb", parts[: max(1, len(parts) // 4)]),
    }
    results["inputs"] = inputs
    print(f"inputs: {inputs}", flush=True)
    for label in ("quarter", "full"):
        if label in runs:
            info = inputs[label]
            results["runs"][label] = run_curate(label, Path(info["path"]), info, args.workdir / f"flow-{label}",
                                                args.overrides, args.interval)
    if "dask" in runs:
        info = inputs["quarter"]
        dask = run_curate("dask", Path(info["path"]), info, args.workdir / "flow-dask",
                          [*args.overrides, "runner.kind=dask", f"runner.max_workers={args.dask_workers}"], args.interval)
        threads = results["runs"].get("quarter")
        if threads:
            dask["identical_to_threads"] = dask["corpus"]["digest"] == threads["corpus"]["digest"]
            print(f"dask ({args.dask_workers} worker processes) vs threads: {dask['wall_s']:.1f} s vs {threads['wall_s']:.1f} s; "
                  f"corpus {'identical' if dask['identical_to_threads'] else 'DIFFERENT'}", flush=True)
        results["runs"]["dask"] = dask
    if "kill" in runs:
        reference = results["runs"].get("quarter")
        if reference is None and args.reference:  # the uninterrupted run of an earlier call on the same input
            reference = json.loads(args.reference.read_text())["runs"]["quarter"]
        if reference is None:
            raise SystemExit("--runs kill needs the uninterrupted quarter run: --runs quarter,kill or --reference RESULTS_JSON")
        results["runs"]["kill"] = kill_test(inputs["quarter"], args.workdir / "flow-kill", args.overrides, args.interval, reference)
    if "datatrove" in runs:
        if not args.datatrove_python:
            raise SystemExit("--runs datatrove needs --datatrove-python (a venv with datatrove and spacy)")
        results["runs"]["datatrove"] = run_datatrove(args.datatrove_python, inputs["quarter"], args.workdir / "datatrove",
                                                     args.workers, args.interval)
    if "functions" in runs:
        info = inputs["quarter"]
        results["runs"]["functions"] = stage_functions(info, args.workdir / "functions", args.overrides)
        flow, fns = results["runs"].get("quarter"), results["runs"]["functions"]
        if flow:  # the flow's throughput as a share of its stage functions' (target >= 0.70), by wall clock and by CPU
            fns["flow_share_wall"] = fns["wall_s"] / flow["wall_s"]
            fns["flow_share_cpu"] = fns["cpu_s"] / flow["cpu_s"]
            print(f"flow throughput / stage functions' throughput: {fns['flow_share_wall']:.0%} by wall clock, "
                  f"{fns['flow_share_cpu']:.0%} by CPU seconds (target >= 70%)", flush=True)
    full, quarter = results["runs"].get("full"), results["runs"].get("quarter")
    if full and quarter:
        results["scaling"] = {k: full[k] / quarter[k] for k in ("wall_s", "cpu_s", "peak_tree_rss_mib", "peak_cli_rss_mib")}
        print("full / quarter (4x the input): " + ", ".join(f"{k} {v:.2f}x" for k, v in results["scaling"].items())
              + "  (targets: time <= 4.4x, peak RSS <= 1.25x)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(tables([results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
