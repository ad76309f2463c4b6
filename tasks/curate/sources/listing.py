"""Expanding a source into the files ingest reads, and the files it skips (each with a reason)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import fsspec

from lmwright.tasks.core.errors import UserError
from lmwright.tasks.curate.sources.extract import require
from lmwright.tasks.curate.sources.pydocs import pydocs_units
from lmwright.tasks.curate.sources.spec import BUILTINS, SourceFile, SourceSpec, suffix_format


class SourceUnavailable(UserError, ValueError):
    """A source that cannot be read at all; the message names it and the cause."""


class SourceMissing(SourceUnavailable, FileNotFoundError):
    """A source that does not exist (a local path, or a URL answered with 404)."""


def check_source(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root of a source path, or ``SourceUnavailable`` saying why it cannot be read.

    Cheap (one ``info`` call), so the CLI runs it on every source before starting Prefect.
    fsspec's HTTP filesystem reports every failure as FileNotFoundError; the real cause
    (refused connection, HTTP status) is its ``__cause__``.
    """
    try:
        fs, root = fsspec.core.url_to_fs(path)
        fs.info(root)
    except ImportError as e:  # e.g. https:// without aiohttp
        raise SourceUnavailable(f"source {path!r} cannot be read: a package is missing ({e})") from None
    except FileNotFoundError as e:
        cause = e.__cause__
        status = getattr(cause, "status", None)
        if cause is None or isinstance(cause, FileNotFoundError) or status == 404:
            raise SourceMissing(f"source {path!r} does not exist") from None
        why = f"HTTP {status} {getattr(cause, 'message', '')}".strip() if status else str(cause) or type(cause).__name__
        raise SourceUnavailable(f"source {path!r} is unreachable: {why}") from None
    except (OSError, ValueError) as e:  # permission denied, unknown protocol, a malformed URL
        raise SourceUnavailable(f"source {path!r} cannot be read: {e}") from None
    return fs, root


def list_source_files(spec: SourceSpec) -> tuple[list[SourceFile], list[dict[str, str]]]:
    """Expand a source into files (sorted, so shard order is stable) and skipped entries."""
    if spec.path in BUILTINS:
        return pydocs_units(spec), []
    fs, root = check_source(spec.path)
    skipped: list[dict[str, str]] = []
    if fs.isdir(root):
        listed = _walk_files(fs, root, skipped)
        paths = sorted(p for p in listed if not Path(p).name.startswith("."))
    else:
        listed, paths = {}, [root]
    files: list[SourceFile] = []
    for p in paths:
        fmt = spec.format if spec.format != "auto" else suffix_format(p)
        url = p if _is_local(fs) else fs.unstrip_protocol(p)
        if listed.get(p, {}).get("islink") and (problem := _link_problem(p)) is not None:
            skipped.append(skipped_file(url, *problem))
            continue
        if fmt is None:
            skipped.append(skipped_file(url, "ingest_unsupported_format", "unknown file suffix"))
            continue
        relpath = Path(p).name if p == root else str(Path(p).relative_to(root))
        if spec.files is not None and relpath not in spec.files:
            continue
        info = fs.info(p)
        files.append(SourceFile(spec, url, relpath, int(info.get("size") or 0), _as_float(_version_stamp(info)), fmt))
    if any(f.format == "warc" for f in files):  # say what to install before any file is read
        require("fastwarc.warc", "reading WARC files")
    return files, skipped


def skipped_file(file: str, reason: str, detail: str) -> dict[str, str]:
    """A file (or directory) of a source that yields no records, with why: counted in stats, shown in the card."""
    return {"file": file, "reason": reason, "detail": detail}


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def _walk_files(fs: fsspec.AbstractFileSystem, root: str, skipped: list[dict[str, str]]) -> dict[str, dict]:
    """Every non-directory entry under ``root`` with its listing info; a directory that cannot be
    listed becomes a skipped entry (``fs.find`` omits it silently, and fsspec's ``walk`` does not
    pass ``on_error`` down to subdirectories)."""
    found: dict[str, dict] = {}
    pending, seen = [root], {root}
    while pending:
        directory = pending.pop()
        try:
            listing = fs.ls(directory, detail=True)
        except OSError as e:
            where = directory if _is_local(fs) else fs.unstrip_protocol(directory)
            skipped.append(skipped_file(where, _os_error_reason(e), _os_error_detail(e)))
            continue
        for info in listing:
            name = info["name"].rstrip("/")
            if info["type"] != "directory":
                found[name] = info
            elif name not in seen:
                seen.add(name)
                pending.append(name)
    return found


def _link_problem(path: str) -> tuple[str, str] | None:
    """(reason, detail) when a local symlink is not read: a loop, a missing target, a directory."""
    try:
        target = os.stat(path)
    except OSError as e:
        return _os_error_reason(e), _os_error_detail(e)
    if stat.S_ISDIR(target.st_mode):  # not followed: a link to a parent directory would loop
        return "ingest_symlinked_dir", f"symlink to the directory {os.readlink(path)!r}, not followed"
    return None


def _os_error_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "ingest_symlink_loop"
    if e.errno == errno.ENOENT:
        return "ingest_broken_symlink"  # listed, then not there: a dangling link (or deleted meanwhile)
    return "ingest_unreadable"


def _os_error_detail(e: OSError) -> str:
    return f"{type(e).__name__}: {e.strerror or e}"


def _version_stamp(info: dict) -> object:
    """What changes when a file changes: mtime locally, LastModified on S3, ETag or Last-Modified over HTTP."""
    for key in ("mtime", "LastModified", "last_modified", "ETag", "Last-Modified"):
        if info.get(key):
            return info[key]
    return 0


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        if hasattr(value, "timestamp"):  # S3's LastModified is a datetime
            return float(value.timestamp())  # type: ignore[union-attr]
        # An HTTP date or ETag: any stable number that changes with it will do.
        return float(int(hashlib.sha1(str(value).encode()).hexdigest()[:12], 16)) if value else 0.0
