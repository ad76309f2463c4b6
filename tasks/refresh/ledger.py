"""The source ledger: every source file a successful refresh committed (size, mtime, sha256), and
the scan that names what is new or changed since.

On disk (``<workdir>`` is the pipeline's workdir)::

    refresh/ledger.json    every source file committed so far; rewritten (atomically) only when a
                           refresh succeeds, after the corpus version it belongs to
                           (tasks/refresh/versions.py keeps a snapshot in the version; a kill between
                           the two is repaired from it)
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import fsspec
from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from lmwright.tasks.core.files import write_json
from lmwright.tasks.core.stage import RETRY_DELAYS
from lmwright.tasks.curate.sources import (
    BUILTINS,
    SourceFile,
    SourceSpec,
    list_source_files,
    pydocs_fingerprint_input,
)


def refresh_dir(workdir: str | Path) -> Path:
    """``<workdir>/refresh``: the refresh's own state (ledger, plan, lock, index files, tokenizers)."""
    return Path(workdir) / "refresh"


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


def repair_ledger(workdir: str | Path, latest: dict[str, Any] | None) -> Ledger:
    """The committed ledger; if a kill hit between moving latest.json and rewriting ledger.json,
    the version's own snapshot is the truth."""
    ledger = read_ledger(ledger_path(workdir))
    if latest is not None and ledger.version != latest["version"]:
        ledger = read_ledger(Path(latest["ledger"]))
        write_ledger(ledger_path(workdir), ledger)
        get_run_logger().warning("ledger.json was behind corpus %s: restored from its snapshot", latest["version"])
    return ledger
