"""refresh: the nightly job's pieces: the source ledger, corpus versions, the cross-version
dedup index and stage, and the replay mix for continued pretraining.

On disk (``<workdir>`` is the pipeline's workdir)::

    refresh/ledger.json            every source file committed so far: size, mtime, sha256;
                                   rewritten (atomically) only when a refresh succeeds
    refresh/pending.json           the plan of a refresh in progress (base version, base model,
                                   tokenizer); a rerun after a crash finishes the same plan
    refresh/.lock                  flock'ed while a refresh runs (released by the kernel on kill -9)
    refresh/tokenizers/<sha>.json  the tokenizer in use, content-addressed, so reusing it gives
                                   the same tokenize fingerprint every night
    refresh/index/v0001.parquet    the MinHash LSH index of the documents version v0001 added:
                                   rows (band, key, id) per LSH band, plus one exact row per
                                   document (band -1, key = exact hash, its signature); immutable
    corpus/v0001/ledger.json       the ledger as of this version (written before the manifest)
    corpus/v0001/manifest.json     the version: its datasets (earlier versions' + the new one),
                                   their shards, token arrays, index files, what the refresh did
    corpus/latest.json             the pointer to the current version: moved atomically, last

A version is committed by writing its index file, its ledger and its manifest, then moving
``latest.json``; ``ledger.json`` is rewritten after that, and repaired from the version's
ledger snapshot if a kill lands between the two. Nothing is appended in place, so a
refresh killed anywhere and run again writes the same files once.

Cross-version dedup (stage ``dedup_previous``, the usual dataset contract): a new document
whose exact hash, or a verified LSH band match (signature agreement >= threshold, as in
tasks/curate/dedup.py), hits a document of an earlier version is rejected as
``dedup_previous_version`` with ``dup_of`` = that document's id. A new document whose id is
already in the corpus with different text (an edited paragraph of a changed file) is
rejected as ``dedup_previous_id``: versions are append-only, so it cannot replace the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np
import polars as pl
from prefect import get_run_logger, task
from lmwright.tasks.core.energy import NIGHTLY_WINDOW, CarbonWindow
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmwright.data_quality import DataQualityError, ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, atomic_write_text, canonical_json, file_sha256, write_json
from lmwright.tasks.core.files import atomic_copy, atomic_path
from lmwright.tasks.curate.dedup import DedupParams, signature_frame
from lmwright.tasks.curate.minhash import signature_dtype
from lmwright.tasks.curate.sources import BUILTINS, SourceFile, SourceSpec, list_source_files, pydocs_fingerprint_input
from lmwright.tasks.core.stage import RETRY_DELAYS, ShardStage, StageWork, plan_stage, run_shard_stage, stage_task
from lmwright.tasks.train.tokenize import DOCS_FILE, META_FILE, TOKENIZER_FILE, TokenDatasetRef

VERSION = "1"
STAGE = "dedup_previous"
MIX_STAGE = "refresh_mix"
REASON_PREVIOUS = "dedup_previous_version"
REASON_ID = "dedup_previous_id"
EXACT_BAND = -1
# The fields that shape the index; threshold, exact, near are applied at query time only.
INDEX_FIELDS = ("ngram", "num_perm", "bands", "rows", "seed", "scheme")
NOTHING_NEW = "nothing new"


class RefreshSettings(BaseModel):
    """The nightly refresh: when it runs, how much old data it replays, how it dedups against the past."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field("0 2 * * *", description="Nightly schedule of the refresh deployment (cron syntax).")
    timezone: str = Field("UTC", description="IANA timezone the cron is read in (e.g. Europe/Berlin); never the server's.")
    carbon_window: CarbonWindow | None = Field(
        default_factory=lambda: NIGHTLY_WINDOW.model_copy(),
        description="Continued training starts only in this low-carbon window (default: 22:00-06:00 Europe/Berlin, "
        "12 h deadline); a refresh started outside it waits, Paused in the UI. null: train at once.",
    )
    replay_fraction: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Share of the continued-pretraining tokens drawn from earlier versions (replay against forgetting): "
        "replay = new tokens x f / (1 - f), capped by what exists. 0: new data only.",
    )
    replay_seed: int = Field(0, description="Salt of the replay sample (documents are chosen by a hash of their id).")
    min_val_tokens: int = Field(
        4096, ge=0, description="Top the held-out split up with old held-out documents to at least this many tokens."
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="Near-duplicate threshold against earlier versions; null: dedup.threshold."
    )
    trust_mtime: bool = Field(
        True, description="Skip re-hashing a file whose size and mtime match the ledger (like rsync); false: hash every file."
    )
    max_steps: int | None = Field(None, ge=1, description="Steps of continued pretraining; null: pretrain.max_steps.")
    lr: float | None = Field(None, gt=0, description="Peak learning rate of continued pretraining; null: pretrain.lr.")
    max_regression: float | None = Field(
        0.0,
        ge=0.0,
        description="Promote only if the new model's held-out loss on this refresh's val tokens is at most the promoted "
        "model's plus this (nats/token); null: only the evaluate gate decides.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as UTC or Europe/Berlin)") from None
        return v

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        from prefect.schedules import Cron

        Cron(v, timezone="UTC")  # raises ValueError("Invalid cron string ...")
        return v

    def schedule(self) -> Any:
        """The Prefect schedule for the refresh deployment."""
        from prefect.schedules import Cron

        return Cron(self.cron, timezone=self.timezone)


# -- paths -------------------------------------------------------------------------------------


def refresh_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "refresh"


def corpus_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "corpus"


def version_name(number: int) -> str:
    return f"v{number:04d}"


# -- the ledger --------------------------------------------------------------------------------


class FileEntry(BaseModel):
    """A source file as seen by a refresh."""

    source: str  # the source label (the `source` column)
    path: str
    relpath: str
    size: int
    mtime: float
    sha256: str


class Ledger(BaseModel):
    """Every source file committed by a successful refresh, by ``<label>|<path>``."""

    version: str | None = None
    updated: str | None = None
    files: dict[str, FileEntry] = Field(default_factory=dict)


def ledger_path(workdir: str | Path) -> Path:
    return refresh_dir(workdir) / "ledger.json"


def read_ledger(path: Path) -> Ledger:
    return Ledger.model_validate_json(path.read_text()) if path.is_file() else Ledger()


def write_ledger(path: Path, ledger: Ledger) -> None:
    write_json(path, ledger.model_dump(mode="json"))


def file_key(label: str, path: str) -> str:
    return f"{label}|{path}"


def content_sha256(file: SourceFile) -> str:
    """sha256 of a source file's bytes (streamed); the builtin corpus hashes its Python build instead."""
    if file.source.path in BUILTINS:
        return hashlib.sha256(f"{file.source.path}|{file.path}|{pydocs_fingerprint_input(file.source.path)}".encode()).hexdigest()
    h = hashlib.sha256()
    with fsspec.open(file.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class SourceScan(BaseModel):
    """What the sources hold now, against the ledger."""

    entries: dict[str, FileEntry]  # every file now in the sources
    new: list[str]  # keys of new or changed files (by content hash), in listing order
    by_spec: list[list[str]] = Field(default_factory=list)  # keys of each source spec's files
    skipped: list[dict[str, str]] = Field(default_factory=list)


@task(retries=2, retry_delay_seconds=RETRY_DELAYS[:2], task_run_name="refresh-scan-sources", persist_result=False)
def scan_sources(specs: list[SourceSpec], ledger: Ledger, trust_mtime: bool = True) -> SourceScan:
    """List every source file, hash what may have changed, and name the new or changed ones."""
    entries: dict[str, FileEntry] = {}
    new: list[str] = []
    skipped: list[dict[str, str]] = []
    by_spec: list[list[str]] = []
    for spec in specs:
        files, skip = list_source_files(spec)
        skipped += skip
        by_spec.append([file_key(spec.label, f.path) for f in files])
        for f in files:
            key = file_key(spec.label, f.path)
            old = ledger.files.get(key)
            same_stat = old is not None and old.size == f.size and old.mtime == f.mtime
            sha = old.sha256 if (same_stat and trust_mtime and spec.path not in BUILTINS) else content_sha256(f)
            entries[key] = FileEntry(source=spec.label, path=f.path, relpath=f.relpath, size=f.size, mtime=f.mtime, sha256=sha)
            if old is None or old.sha256 != sha:
                new.append(key)
    return SourceScan(entries=entries, new=new, by_spec=by_spec, skipped=skipped)


def new_source_specs(specs: list[SourceSpec], scan: SourceScan) -> list[SourceSpec]:
    """The sources curate reads: a spec whose files are all new as it is, else one spec per new file.

    A per-file spec keeps the original options and label, so documents get the same ids as
    they would in a full run, for files at the top of a directory source (the id hashes the
    path inside the source, and a single-file source's is its file name).
    """
    out: list[SourceSpec] = []
    new = set(scan.new)
    for spec, keys in zip(specs, scan.by_spec):
        mine = [k for k in keys if k in new]
        if not mine:
            continue
        if len(mine) == len(keys) or spec.path in BUILTINS:
            out.append(spec)  # everything in it is new: ids exactly as a full run gives them
            continue
        if "files" in SourceSpec.model_fields:  # SourceSpec(files=[relpaths]): ids stay those of the directory
            out.append(spec.model_copy(update={"files": [scan.entries[k].relpath for k in mine]}))
            continue
        names: dict[str, str] = {}
        for k in mine:
            e = scan.entries[k]
            name = Path(e.relpath).name
            if name in names:
                raise ValueError(
                    f"new files {names[name]!r} and {e.relpath!r} of source {spec.label!r} have the same name: "
                    "as single-file sources their documents would get the same ids (needs SourceSpec.files)"
                )
            names[name] = e.relpath
            out.append(spec.model_copy(update={"path": e.path, "name": spec.label}))
    return out


# -- corpus versions ---------------------------------------------------------------------------


def latest_path(workdir: str | Path) -> Path:
    return corpus_dir(workdir) / "latest.json"


def read_latest(workdir: str | Path) -> dict[str, Any] | None:
    """The current version's manifest, or None before the first successful refresh."""
    pointer = latest_path(workdir)
    if not pointer.is_file():
        return None
    return json.loads(Path(json.loads(pointer.read_text())["manifest"]).read_text())


def version_parts(manifest: dict[str, Any]) -> list[Path]:
    """Every kept shard of a version, in order (oldest dataset first)."""
    return [Path(s["path"]) for d in manifest["datasets"] for s in d["shards"]]


def scan_version(manifest: dict[str, Any]) -> pl.LazyFrame:
    return pl.scan_parquet([str(p) for p in version_parts(manifest)])


def dataset_entry(ref: DatasetRef, added_in: str, tokens: TokenDatasetRef | None) -> dict[str, Any]:
    m = ref.manifest()
    entry: dict[str, Any] = {
        "added_in": added_in,
        "stage": ref.stage,
        "fingerprint": ref.fingerprint,
        "path": str(Path(ref.path).resolve()),
        "rows": m["rows"],
        "shards": [{"path": str((ref.dir / s["path"]).resolve()), "rows": s["rows"], "sha256": s["sha256"]}
                   for s in m["shards"]],
        "tokens": None,
    }
    if tokens is not None:
        entry["tokens"] = {"path": tokens.path, "fingerprint": tokens.fingerprint,
                           "tokenizer_sha256": file_sha256(Path(tokens.path) / TOKENIZER_FILE)}
    return entry


def next_version(previous: dict[str, Any] | None) -> str:
    return version_name((previous["number"] if previous else 0) + 1)


def commit_version(
    workdir: str | Path,
    previous: dict[str, Any] | None,
    dataset: dict[str, Any] | None,
    index_part: Path | None,
    index_params: dict[str, Any],
    ledger: Ledger,
    refresh_info: dict[str, Any],
    card: str | None = None,
    withdrawn: str | None = None,
) -> dict[str, Any]:
    """Write the new version's index file, ledger snapshot, card and manifest, then move latest.json.

    ``previous`` is the version this one builds on, its datasets as they stay (withdrawn
    documents already filtered out); ``dataset`` and ``index_part`` are what this refresh adds
    (None when it only withdrew documents); ``withdrawn`` the record of every document withdrawn
    so far (copied into the version). Every file is written whole (tmp + rename) under
    a name fixed by the version number, so a kill at any point leaves either the previous
    version current (and the rerun rewrites the same files) or the new one current.
    """
    number = (previous["number"] if previous else 0) + 1
    name = version_name(number)
    vdir = corpus_dir(workdir) / name
    snapshot = ledger.model_copy(update={"version": name, "updated": _now()})
    write_ledger(vdir / "ledger.json", snapshot)
    if card is not None:
        atomic_write_text(vdir / "card.md", card)
    record = None
    if withdrawn is not None:
        record = vdir / "withdrawn.parquet"
        atomic_copy(Path(withdrawn), record)
    datasets = [*(previous["datasets"] if previous else []), *([{**dataset, "added_in": name}] if dataset else [])]
    index_files = [*(previous["index"]["files"] if previous else [])]
    if index_part is not None:
        index_files.append(write_index_file(workdir, name, index_part))
    manifest = {
        "format": "lmwright-corpus-version-1",
        "version": name,
        "number": number,
        "previous": previous["version"] if previous else None,
        "created": _now(),
        "rows": sum(d["rows"] for d in datasets),
        "datasets": datasets,
        "index": {"params": index_params, "files": index_files},
        "ledger": str((vdir / "ledger.json").resolve()),
        "card": str((vdir / "card.md").resolve()) if card is not None else None,
        "withdrawn": str(record.resolve()) if record is not None else None,
        "refresh": refresh_info,
    }
    write_json(vdir / "manifest.json", manifest)
    write_json(latest_path(workdir), {"version": name, "manifest": str((vdir / "manifest.json").resolve())})  # the commit
    write_ledger(ledger_path(workdir), snapshot)
    return manifest


def repair_ledger(workdir: str | Path, latest: dict[str, Any] | None) -> Ledger:
    """The committed ledger; if a kill hit between moving latest.json and rewriting ledger.json,
    the version's own snapshot is the truth."""
    ledger = read_ledger(ledger_path(workdir))
    if latest is not None and ledger.version != latest["version"]:
        ledger = read_ledger(Path(latest["ledger"]))
        write_ledger(ledger_path(workdir), ledger)
        get_run_logger().warning("ledger.json was behind corpus %s: restored from its snapshot", latest["version"])
    return ledger


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the cross-version index -------------------------------------------------------------------


def index_params_of(params: DedupParams) -> dict[str, Any]:
    return {k: getattr(params, k) for k in INDEX_FIELDS}


def index_rows(docs: pl.DataFrame, params: DedupParams) -> pl.DataFrame:
    """Index rows of documents: one exact row each (band -1, key = exact hash, signature) plus
    one (band, key, id) row per LSH band of every document that has shingles."""
    sf = signature_frame(docs.select("id", "text"), "index", params)
    sig_type = pl.Array(pl.UInt64 if signature_dtype(params.scheme) is np.uint64 else pl.UInt32, params.num_perm)
    exact = pl.DataFrame(
        {
            "band": pl.Series([EXACT_BAND] * sf.height, dtype=pl.Int16),
            "key": sf["hash"],
            "id": sf["id"],
            "n_shingles": sf["n_shingles"],
            "sig": sf["sig"].cast(sig_type),
        }
    )
    with_sh = sf.filter(pl.col("n_shingles") > 0)
    nb = params.bands
    keys = with_sh["bands"].to_numpy().reshape(-1, nb) if with_sh.height else np.zeros((0, nb), np.uint64)
    bands = pl.DataFrame(
        {
            "band": pl.Series(np.tile(np.arange(nb, dtype=np.int16), with_sh.height), dtype=pl.Int16),
            "key": pl.Series(keys.ravel(), dtype=pl.UInt64),
            "id": pl.Series(np.repeat(np.asarray(with_sh["id"].to_list(), dtype=object), nb).tolist(), dtype=pl.String),
            "n_shingles": pl.Series([None] * (with_sh.height * nb), dtype=pl.UInt32),
            "sig": pl.Series([None] * (with_sh.height * nb), dtype=sig_type),
        }
    )
    return pl.concat([exact, bands])


def _write_sorted_parquet(df: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.sort("band", "key").write_parquet(tmp, compression="zstd", statistics=True, row_group_size=1 << 17)


@dataclass(frozen=True)
class IndexPartWork(StageWork):
    """The index rows of a dedup_previous output, beside it: index.parquet, marker index.json."""

    @property
    def marker(self) -> Path:  # type: ignore[override]
        return Path(self.out_dir) / "index.json"


@stage_task(task_run_name="dedup_previous-index")
def build_index_part(work: IndexPartWork, kept: DatasetRef, params: DedupParams) -> dict[str, Any]:
    """Index rows of the documents this refresh keeps (written after the dataset's manifest)."""
    if work.done():
        return json.loads(work.marker.read_text())
    start = time.perf_counter()
    frames = [index_rows(pl.read_parquet(p, columns=["id", "text"]), params) for p in kept.parts()]
    rows = pl.concat(frames) if frames else index_rows(pl.DataFrame(schema={"id": pl.String, "text": pl.String}), params)
    path = Path(work.out_dir) / "index.parquet"
    _write_sorted_parquet(rows, path)
    docs = int((rows["band"] == EXACT_BAND).sum())
    if docs != kept.manifest()["rows"]:
        raise AssertionError(f"index of {kept.path}: {docs} documents != {kept.manifest()['rows']} kept")
    info = {"path": str(path), "rows": rows.height, "docs": docs, "params": index_params_of(params),
            "seconds": round(time.perf_counter() - start, 4)}
    write_json(work.marker, info)  # last
    return info


def write_index_file(workdir: str | Path, version: str, part: Path) -> dict[str, Any]:
    """``refresh/index/<version>.parquet`` from a finished index part (hard link, else copy; atomic)."""
    dest = refresh_dir(workdir) / "index" / f"{version}.parquet"
    atomic_copy(part, dest, hard_link=True)
    docs = pl.scan_parquet(dest).filter(pl.col("band") == EXACT_BAND).select(pl.len()).collect().item()
    return {"version": version, "path": str(dest.resolve()), "sha256": file_sha256(dest), "docs": int(docs)}


class PreviousDedupParams(DedupParams):
    """dedup_previous: DedupParams (threshold as the refresh says) plus the index of earlier versions."""

    index: list[str] = Field(default_factory=list, description="Index files of every earlier version.")
    index_sha256: list[str] = Field(default_factory=list, description="Their content hashes (part of the fingerprint).")
    withdrawn: str | None = Field(
        None, description="Record of withdrawn documents: no duplicate target any more, but their ids stay taken."
    )
    withdrawn_sha256: str | None = Field(None, description="Its content hash (part of the fingerprint).")


def apply_previous_dedup(docs: pl.DataFrame, params: PreviousDedupParams) -> pl.DataFrame:
    """Reject documents already in an earlier version (exact or verified near match, or same id)."""
    for col in ("dup_cluster", "dup_of"):
        if col not in docs.columns:
            docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    docs = docs.drop([c for c in ("reason", "detail") if c in docs.columns])
    n = docs.height
    reason: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    detail: list[str | None] = [None] * n
    if params.index and n:
        sf = signature_frame(docs.select("id", "text"), "q", params)
        every = pl.scan_parquet(params.index)
        idx = every
        if params.withdrawn:  # no longer in the corpus, so no document duplicates them
            idx = every.join(pl.scan_parquet(params.withdrawn).select("id"), on="id", how="anti")
        exact_rows = idx.filter(pl.col("band") == EXACT_BAND)
        rows = np.arange(n)
        matched = np.zeros(n, dtype=bool)
        if params.exact:
            hits = (
                exact_rows.select("key", pl.col("id").alias("old"))
                .join(pl.LazyFrame({"key": sf["hash"], "row": rows}), on="key")
                .group_by("row").agg(pl.col("old").min())
                .collect()
            )
            for r, old in hits.iter_rows():
                reason[r], dup_of[r], detail[r] = REASON_PREVIOUS, old, "exact: same normalized text"
                matched[r] = True
        pool = (~matched) & (sf["n_shingles"].to_numpy() > 0)
        if params.near and pool.any():
            _near_matches(sf, np.flatnonzero(pool), idx, exact_rows, params, reason, dup_of, detail)
        ids = docs["id"].to_list()
        taken = set(every.filter(pl.col("band") == EXACT_BAND, pl.col("id").is_in(pl.Series(ids, dtype=pl.String).implode()))
                    .select("id").collect()["id"].to_list())  # withdrawn ids included: an id is never reused
        for r, i in enumerate(ids):
            if reason[r] is None and i in taken:
                reason[r], dup_of[r] = REASON_ID, i
                detail[r] = "id already in the corpus with different text; versions are append-only"
    out = docs.with_columns(
        pl.Series("reason", reason, dtype=pl.String),
        pl.Series("detail", detail, dtype=pl.String),
        pl.Series("_dup", dup_of, dtype=pl.String),
    )
    return out.with_columns(
        pl.coalesce("_dup", "dup_of").alias("dup_of"),
        pl.coalesce("_dup", "dup_cluster").alias("dup_cluster"),
    ).drop("_dup")


def _near_matches(
    sf: pl.DataFrame,
    pool: np.ndarray,
    idx: pl.LazyFrame,
    exact_rows: pl.LazyFrame,
    params: PreviousDedupParams,
    reason: list[str | None],
    dup_of: list[str | None],
    detail: list[str | None],
) -> None:
    """Candidates share an LSH band key with an indexed document; kept if signatures agree enough."""
    nb = params.bands
    keys = sf["bands"].to_numpy().reshape(-1, nb)[pool]
    long = pl.LazyFrame(
        {
            "band": pl.Series(np.tile(np.arange(nb, dtype=np.int16), pool.size), dtype=pl.Int16),
            "key": pl.Series(keys.ravel(), dtype=pl.UInt64),
            "row": np.repeat(pool, nb),
        }
    )
    cand = (
        idx.filter(pl.col("band") >= 0).select("band", "key", pl.col("id").alias("old"))
        .join(long, on=["band", "key"]).select("row", "old").unique()
        .collect()
    )
    if not cand.height:
        return
    olds = (
        exact_rows.filter(pl.col("id").is_in(cand["old"].unique().implode()), pl.col("n_shingles") > 0)
        .select(pl.col("id").alias("old"), "sig")
        .collect()
    )
    cand = cand.join(olds, on="old")
    if not cand.height:
        return
    new_sig = sf["sig"].to_numpy().reshape(sf.height, -1)[cand["row"].to_numpy()]
    old_sig = cand["sig"].to_numpy().reshape(cand.height, -1)
    agree = (new_sig == old_sig.astype(new_sig.dtype)).sum(axis=1)
    need = int(math.ceil(params.threshold * params.num_perm - 1e-9))
    best = (
        cand.select("row", "old").with_columns(agree=pl.Series(agree))
        .filter(pl.col("agree") >= need)
        .sort(["row", "agree", "old"], descending=[False, True, False])
        .unique("row", keep="first", maintain_order=True)
    )
    for r, old, a in best.iter_rows():
        reason[r], dup_of[r] = REASON_PREVIOUS, old
        detail[r] = f"near: {a / params.num_perm:.2f} of signature values agree"


PREVIOUS_DEDUP = ShardStage(name=STAGE, version=VERSION, apply=apply_previous_dedup)


def run_previous_dedup(
    workdir: str | Path,
    source: DatasetRef,
    dedup: DedupParams,
    threshold: float | None,
    latest: dict[str, Any] | None,
    validation: ValidationSettings,
    withdrawn: str | None = None,
) -> tuple[DatasetRef, dict[str, Any]]:
    """Dedup ``source`` against every earlier version, then index what it keeps: (kept dataset, index part info)."""
    files = latest["index"]["files"] if latest else []
    if latest and latest["index"]["params"] != index_params_of(dedup):
        raise ValueError(
            f"the cross-version index was built with {latest['index']['params']}, the config now says "
            f"{index_params_of(dedup)}: keep the index-shaping dedup params (or rebuild the index)"
        )
    params = PreviousDedupParams(
        **{**dedup.model_dump(), **({"threshold": threshold} if threshold is not None else {})},
        index=[f["path"] for f in files],
        index_sha256=[f["sha256"] for f in files],
        withdrawn=str(withdrawn) if withdrawn else None,
        withdrawn_sha256=file_sha256(Path(withdrawn)) if withdrawn else None,
    )
    kept = run_shard_stage(workdir, PREVIOUS_DEDUP, source, params, validation)
    work = IndexPartWork(STAGE, kept.fingerprint, kept.path, unit="index")
    return kept, build_index_part(work, kept, DedupParams(**dedup.model_dump()))


# -- the replay mix ----------------------------------------------------------------------------


class MixParams(BaseModel):
    """How new token arrays and a replay sample of old ones become one training set."""

    replay_fraction: float
    seed: int
    min_val_tokens: int


def _doc_hash(salt: str, doc_id: str) -> float:
    h = hashlib.blake2b(f"{salt}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def replay_budget(new_tokens: int, fraction: float) -> int:
    return int(round(new_tokens * fraction / (1.0 - fraction))) if fraction > 0 else 0


def _sample(pool: pl.DataFrame, budget: int, salt: str) -> pl.DataFrame:
    """Whole documents chosen by id hash until ``budget`` tokens (deterministic)."""
    if budget <= 0 or not pool.height:
        return pool.head(0)
    ranked = pool.with_columns(
        pl.Series("_h", [_doc_hash(salt, i) for i in pool["id"].to_list()], dtype=pl.Float64)
    ).sort("_h")
    before = ranked["tokens"].cum_sum() - ranked["tokens"]
    return ranked.filter(before < budget).drop("_h")


@stage_task(task_run_name="refresh-mix")
def mix_tokens(
    work: StageWork, new: TokenDatasetRef, old: list[TokenDatasetRef], params: MixParams, min_val: int
) -> TokenDatasetRef:
    """train.bin/val.bin = new tokens + a replay sample of old ones (whole documents, same split)."""
    out = Path(work.out_dir)
    if work.done():
        return TokenDatasetRef(str(out), work.fingerprint)
    start = time.perf_counter()
    meta = new.meta()
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    for r in old:
        if r.meta()["dtype"] != meta["dtype"] or r.meta()["vocab_size"] != meta["vocab_size"]:
            raise ValueError(f"replay tokens {r.path} do not match the new tokens' vocabulary")
    # Replay candidates: old documents present in their .bin (a mixture may have left some out), one copy each.
    pools = [packed_docs(r).with_columns(pl.lit(k + 1).alias("origin")) for k, r in enumerate(old)]
    pool = pl.concat(pools, how="diagonal_relaxed") if pools else None
    salt = f"replay:{params.seed}:{new.fingerprint}"
    new_val = meta["tokens"]["val"]
    budgets = {
        "train": replay_budget(meta["tokens"]["train"], params.replay_fraction),
        "val": max(replay_budget(new_val, params.replay_fraction), max(params.min_val_tokens, min_val) - new_val),
    }
    new_docs = new.docs().with_columns(pl.lit(0).alias("origin"))
    index: list[pl.DataFrame] = []
    replayed: dict[str, pl.DataFrame] = {}
    for split in ("train", "val"):
        chosen = pool.filter(pl.col("split") == split) if pool is not None else None
        replay = _sample(chosen, budgets[split], f"{salt}:{split}") if chosen is not None else None
        replay = replay.sort("origin", "offset") if replay is not None else None
        # the new split exactly as tokenize packed it (mixture repeats included), then the replay documents
        base = int(meta["tokens"][split])
        _write_split(out / f"{split}.bin", new.dir / meta["files"][split], old, replay, split, dtype)
        if replay is not None and replay.height:
            replay = replay.with_columns(
                (base + pl.col("tokens").cum_sum() - pl.col("tokens")).alias("offset"), pl.lit(1).alias("repeats")
            )
            replayed[split] = replay
        mine = new_docs.filter(pl.col("split") == split)
        index += [mine] + ([replayed[split]] if split in replayed else [])
    docs = pl.concat(index, how="diagonal_relaxed")
    with atomic_path(out / DOCS_FILE) as tmp:
        docs.write_parquet(tmp, compression="zstd")
    atomic_copy(new.dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    mixed_meta = json.loads(json.dumps(meta))
    replay_tokens = {s: int(replayed[s]["tokens"].sum()) if s in replayed else 0 for s in ("train", "val")}
    for split in ("train", "val"):
        extra = replayed.get(split)
        mixed_meta["tokens"][split] = int(meta["tokens"][split]) + replay_tokens[split]
        mixed_meta["docs"][split] = int(meta["docs"][split]) + (extra.height if extra is not None else 0)
        mixed_meta["bytes"][split] = int(meta["bytes"][split]) + (int(extra["bytes"].sum()) if extra is not None else 0)
        t = mixed_meta["tokens"][split]
        mixed_meta["bytes_per_token"][split] = round(mixed_meta["bytes"][split] / t, 6) if t else None
    mix_info = {
        "new": new.path,
        "replay_from": [r.path for r in old],
        "replay_fraction": params.replay_fraction,
        "replay_tokens": replay_tokens,
        "new_tokens": {s: int(meta["tokens"][s]) for s in ("train", "val")},
    }
    mixed_meta["mix"] = mix_info
    write_json(out / META_FILE, mixed_meta)
    _check_mix(out, mixed_meta, docs)
    write_json(out / "stats.json", {"stage": MIX_STAGE, "fingerprint": work.fingerprint, **mix_info,
                                    "seconds": round(time.perf_counter() - start, 4)})
    files = {n: {"sha256": file_sha256(out / n), "bytes": (out / n).stat().st_size}
             for n in ("train.bin", "val.bin", TOKENIZER_FILE, DOCS_FILE, META_FILE)}
    write_json(out / "manifest.json", {
        "stage": MIX_STAGE, "fingerprint": work.fingerprint, "version": VERSION,
        "params": json.loads(canonical_json(params)),
        "inputs": [{"path": r.path, "fingerprint": r.fingerprint} for r in [new, *old]],
        "dtype": meta["dtype"], "vocab_size": meta["vocab_size"],
        "tokens": mixed_meta["tokens"], "docs": mixed_meta["docs"], "files": files,
    })  # LAST
    get_run_logger().info(
        "mix: %d new + %d replay train tokens, %d new + %d replay val tokens",
        mix_info["new_tokens"]["train"], mix_info["replay_tokens"]["train"],
        mix_info["new_tokens"]["val"], mix_info["replay_tokens"]["val"],
    )
    return TokenDatasetRef(str(out), work.fingerprint)


def packed_docs(ref: TokenDatasetRef) -> pl.DataFrame:
    """The documents whose tokens are in the .bin files (a mixture may have left some out), one row each."""
    docs = ref.docs()
    if "repeats" in docs.columns:
        docs = docs.filter(pl.col("repeats") > 0)
    return docs.filter(pl.col("offset").is_not_null())


def _write_split(
    dest: Path, new_bin: Path, old: list[TokenDatasetRef], replay: pl.DataFrame | None, split: str, dtype: np.dtype
) -> None:
    """The new split's .bin copied whole, then each replay document's token range (tmp + rename)."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        with open(new_bin, "rb") as src:
            shutil.copyfileobj(src, f, 16 << 20)
        if replay is not None and replay.height:
            arrays = {k: old[k - 1].tokens(split) for k in set(replay["origin"].to_list())}
            for origin, offset, n in replay.select("origin", "offset", "tokens").iter_rows():
                f.write(np.asarray(arrays[origin][offset : offset + n], dtype=dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())


def _check_mix(out: Path, meta: dict[str, Any], docs: pl.DataFrame) -> None:
    """Before the manifest: counts agree, ids < vocab, every document once and in one split."""
    problems = []
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    for split in ("train", "val"):
        size = (out / f"{split}.bin").stat().st_size // dtype.itemsize
        if size != meta["tokens"][split]:
            problems.append(f"{split}.bin has {size} tokens, meta.json says {meta['tokens'][split]}")
        if size:
            top = int(np.max(np.memmap(out / f"{split}.bin", dtype=dtype, mode="r")))
            if top >= meta["vocab_size"]:
                problems.append(f"{split}.bin has token id {top} >= vocab size {meta['vocab_size']}")
    repeated = docs.filter(pl.col("id").is_duplicated())["id"].unique().head(3).to_list()
    if repeated:
        problems.append(f"documents in the mix twice (or in both splits), e.g. {repeated}")
    if problems:
        raise DataQualityError(f"data quality FAILED: stage {MIX_STAGE!r}\n  " + "\n  ".join(problems))


def run_mix(
    workdir: str | Path, new: TokenDatasetRef, old: list[TokenDatasetRef], settings: RefreshSettings, block_size: int
) -> TokenDatasetRef:
    """The flow-side half of the mix: no replay pool (or fraction 0) gives the new tokens unchanged."""
    if not old or settings.replay_fraction == 0:
        return new
    params = MixParams(replay_fraction=settings.replay_fraction, seed=settings.replay_seed,
                       min_val_tokens=settings.min_val_tokens)
    min_val = 2 * (block_size + 1)
    work = plan_stage(workdir, MIX_STAGE, VERSION, {"mix": params, "min_val": min_val},
                      [new.fingerprint, *[r.fingerprint for r in old]])
    return mix_tokens(work, new, old, params, min_val)


# -- the promoted model, the plan, the lock ----------------------------------------------------


class BaseModelInfo(BaseModel):
    """Where continued pretraining starts: the promoted model's pretrained weights and tokenizer."""

    promoted: str  # the promoted model's directory (pretrain or finetune)
    pretrained: str  # its pretrained base (itself unless it is a fine-tune)
    init_from: str  # <pretrained>/checkpoints/best
    tokenizer: str  # <pretrained>/tokenizer.json


def promoted_base(workdir: str | Path) -> BaseModelInfo | None:
    """The promoted model (promoted.json) and the pretrained checkpoint it grew from."""
    pointer = Path(workdir) / "promoted.json"
    if not pointer.is_file():
        return None
    model_dir = Path(json.loads(pointer.read_text())["model"])
    result_file = model_dir / "result.json"
    base = json.loads(result_file.read_text()).get("base") if result_file.is_file() else None
    pretrained = Path(base) if base else model_dir  # a fine-tune continues from its base, then is fine-tuned again
    return BaseModelInfo(
        promoted=str(model_dir),
        pretrained=str(pretrained),
        init_from=str(pretrained / "checkpoints" / "best"),
        tokenizer=str(pretrained / TOKENIZER_FILE),
    )


def content_addressed_tokenizer(workdir: str | Path, path: str | Path) -> Path:
    """A copy of a tokenizer named by its content: the same tokenizer gives the same fingerprints."""
    sha = file_sha256(Path(path))
    dest = refresh_dir(workdir) / "tokenizers" / f"{sha[:20]}.json"
    if not dest.is_file():
        atomic_copy(Path(path), dest)
    return dest


class RefreshPlan(BaseModel):
    """What a refresh decided before it started working: a rerun after a crash keeps to it."""

    base_version: str | None
    files: dict[str, str]  # new file key -> sha256
    base: BaseModelInfo | None
    tokenizer: str | None  # content-addressed tokenizer path; None: train one


def pending_path(workdir: str | Path) -> Path:
    return refresh_dir(workdir) / "pending.json"


def plan_refresh(workdir: str | Path, latest: dict[str, Any] | None, scan: SourceScan) -> RefreshPlan:
    """Reuse the pending plan when it is for the same base version and files; else make (and save) a new one."""
    base_version = latest["version"] if latest else None
    files = {k: scan.entries[k].sha256 for k in scan.new}
    pending = pending_path(workdir)
    if pending.is_file():
        plan = RefreshPlan.model_validate_json(pending.read_text())
        if plan.base_version == base_version and plan.files == files:
            get_run_logger().info("resuming the interrupted refresh of %d file(s)", len(files))
            return plan
    base = promoted_base(workdir)
    tokenizer_src = base.tokenizer if base else _latest_tokenizer(latest)
    tokenizer = str(content_addressed_tokenizer(workdir, tokenizer_src)) if tokenizer_src else None
    plan = RefreshPlan(base_version=base_version, files=files, base=base, tokenizer=tokenizer)
    write_json(pending, plan.model_dump(mode="json"))
    return plan


def _latest_tokenizer(latest: dict[str, Any] | None) -> str | None:
    """Without a promoted model, keep the tokenizer the corpus was last tokenized with."""
    for d in reversed(latest["datasets"] if latest else []):
        tokens = d.get("tokens") or d.get("tokens_before_withdrawal")
        if tokens and Path(tokens["path"], TOKENIZER_FILE).is_file():
            return str(Path(tokens["path"]) / TOKENIZER_FILE)
    return None


@contextlib.contextmanager
def refresh_lock(workdir: str | Path) -> Iterator[None]:
    """One refresh per workdir: an flock, which the kernel releases when the process dies (kill -9)."""
    path = refresh_dir(workdir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another refresh holds {path}; not starting a second one") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


__all__ = [
    "RefreshSettings",
    "Ledger",
    "FileEntry",
    "SourceScan",
    "scan_sources",
    "new_source_specs",
    "read_latest",
    "version_parts",
    "scan_version",
    "commit_version",
    "repair_ledger",
    "index_rows",
    "apply_previous_dedup",
    "run_previous_dedup",
    "run_mix",
    "promoted_base",
    "plan_refresh",
    "refresh_lock",
]
