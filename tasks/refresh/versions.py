"""Corpus versions: immutable, numbered snapshots of everything the refreshes kept.

On disk (``<workdir>`` is the pipeline's workdir)::

    refresh/index/v0001.parquet    the cross-version dedup index of the documents version v0001
                                   added (tasks/refresh/previous_dedup.py); immutable
    corpus/v0001/ledger.json       the ledger as of this version (written before the manifest)
    corpus/v0001/manifest.json     the version: its datasets (earlier versions' + the new one),
                                   their shards, token arrays, index files, what the refresh did
    corpus/latest.json             the pointer to the current version: moved atomically, last

A version is committed by writing its index file, its ledger and its manifest, then moving
``latest.json``; ``refresh/ledger.json`` is rewritten after that, and repaired from the version's
ledger snapshot if a kill lands between the two (``ledger.repair_ledger``). Nothing is appended
in place, so a refresh killed anywhere and run again writes the same files once.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from lmwright.tasks.core.dataset import DatasetRef, file_sha256
from lmwright.tasks.core.files import atomic_copy, atomic_write_text, write_json
from lmwright.tasks.refresh.ledger import Ledger, ledger_path, refresh_dir, write_ledger
from lmwright.tasks.refresh.previous_dedup import EXACT_BAND
from lmwright.tasks.train.token_dataset import TOKENIZER_FILE, TokenDatasetRef


def corpus_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "corpus"


def version_name(number: int) -> str:
    return f"v{number:04d}"


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


def write_index_file(workdir: str | Path, version: str, part: Path) -> dict[str, Any]:
    """``refresh/index/<version>.parquet`` from a finished index part (hard link, else copy; atomic)."""
    dest = refresh_dir(workdir) / "index" / f"{version}.parquet"
    atomic_copy(part, dest, hard_link=True)
    docs = pl.scan_parquet(dest).filter(pl.col("band") == EXACT_BAND).select(pl.len()).collect().item()
    return {"version": version, "path": str(dest.resolve()), "sha256": file_sha256(dest), "docs": int(docs)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
