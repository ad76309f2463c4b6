"""Atomic file writes: readers see a file whole or not at all, writers never share a temp file.

Every file lmwright writes under a workdir goes through ``atomic_path`` or one of the writers on
top of it, one per kind: ``atomic_write_text``, ``write_json``, ``atomic_write_bytes``,
``atomic_write_parquet`` (polars), ``atomic_write_array`` (numpy ``.npy``), ``atomic_copy``, and
``atomic_dir`` for a directory replaced whole (a checkpoint). Raw streams (``.bin`` token arrays, a
tokenizer's own ``save``) write to the temp path ``atomic_path`` yields. The data goes to a temp file
with a unique name beside the target, is fsync'd, and is renamed onto it, so two runs on one workdir
never write into each other's temp file, a killed writer (or a power cut) leaves no half file under
the real name, and a failed write (a full disk, an exception in the writer) leaves no temp file
behind and the previous file intact.

Dependency-free on purpose, so that training ranks (``tasks.train.worker``) can use them
without the data stack.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

# A write that fails because of the disk, not the data: retrying cannot help, the user must act.
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only"}
# Rust writers (polars, safetensors) and child processes report the OS error only in their message:
# "(os error 28)", "Os { code: 28, ...", "[Errno 28]", or just the system's words.
_OS_ERROR_IN_MESSAGE = re.compile(r"(?:os error|errno|os \{ code:) ?(\d+)", re.IGNORECASE)
_DISK_WORDS = {os.strerror(code): code for code in DISK_ERRNOS}


def disk_errno(exc: BaseException) -> int | None:
    """The disk errno (ENOSPC, EDQUOT, EROFS) behind ``exc`` or its causes, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code is None and (m := _OS_ERROR_IN_MESSAGE.search(str(exc))):
            code = int(m.group(1))
        if code in DISK_ERRNOS:
            return code
        if words := [c for text, c in _DISK_WORDS.items() if text in str(exc)]:
            return words[0]
        exc = exc.__cause__ or exc.__context__
    return None


class DiskError(OSError):
    """Writing ``filename`` failed because of the disk (full, over quota, read-only): retrying cannot help."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {DISK_ERRNOS.get(self.errno, self.strerror)} ({self.strerror})"


def as_disk_error(exc: BaseException, path: Path) -> DiskError | None:
    """``exc`` as a DiskError naming ``path`` when a disk problem caused it, else None."""
    if isinstance(exc, DiskError):
        return exc
    code = disk_errno(exc)
    return None if code is None else DiskError(code, os.strerror(code), str(path))


def disk_problem(directory: Path, probe_bytes: int = 1 << 20) -> DiskError | None:
    """A DiskError when ``directory`` cannot take ``probe_bytes`` more (full, over quota, read-only).

    For failures seen only from outside, e.g. a torchrun rank that died: its exception stayed in
    its own process, but if the disk it writes to is full, that was the cause and a retry is futile.
    """
    try:
        with atomic_path(directory / ".disk-probe") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
            raise _ProbeDone
    except _ProbeDone:
        return None
    except DiskError as e:
        return DiskError(e.errno, e.strerror, str(directory))
    except OSError:
        return None


class _ProbeDone(Exception):
    """Ends a disk probe before its file is renamed into place (the probe leaves nothing)."""


def temp_path_for(path: Path) -> Path:
    """A temp name beside ``path``, unique per call (two writers of one file never collide)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.tmp")


def _remove(path: Path) -> None:
    """Best effort: cleaning up must never hide the error that made it necessary."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # e.g. EROFS: the temp file was never created
            pass


def _fsync(path: Path) -> None:
    """Put ``path`` on the disk: a file, or a directory with everything under it.

    A kill -9 needs no fsync (the page cache survives it); a power cut does, or the rename can
    reach the disk before the data and leave an empty file under the real name.
    """
    if path.is_symlink():
        return  # its target is written (and synced) on its own
    if path.is_dir():
        for child in path.iterdir():
            _fsync(child)
        _fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Put ``directory``'s entries (a rename into it) on the disk, where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # no directory handles here (e.g. Windows): the rename is as durable as it gets
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # file systems that cannot sync a directory
            raise
    finally:
        os.close(fd)


def _aside_path(path: Path) -> Path:
    """Where a replaced directory waits between the two renames of ``atomic_dir``."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.old")


def recover_dir(path: Path) -> None:
    """Finish a directory replace that a kill interrupted between its two renames (see ``atomic_dir``)."""
    if path.exists():
        return
    olds = sorted(path.parent.glob(f".{path.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], path)


def remove_stale_temps(path: Path) -> None:
    """Delete the temp files or directories earlier killed writers of ``path`` left.

    Only for a path one process writes at a time (a training run's checkpoint): another writer's
    temp file would be deleted under it.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        _remove(stale)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a unique temp path to write ``path``'s content to; fsync it and rename it onto ``path`` at the end.

    When the block raises, the temp file is removed and ``path`` keeps its previous content; a disk
    problem (full, read-only) is raised as a ``DiskError`` naming ``path``, whatever library reported it.
    A directory at ``path`` is replaced whole: POSIX rename cannot replace a non-empty directory, so
    the old one is moved aside, the new one moved in and the old one deleted (``recover_dir`` puts
    the old one back when a kill came between the two renames).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    aside = None
    try:
        yield tmp
        _fsync(tmp)
        if path.is_dir() and not path.is_symlink():
            aside = _aside_path(path)
            os.replace(path, aside)
        os.replace(tmp, path)
    except BaseException as exc:
        disk = as_disk_error(exc, path)
        if disk is None and isinstance(exc, OSError) and exc.errno is None:
            # a short write a C library reports without an errno ("2097152 requested and 1044352
            # written": numpy); asked while the temp file still fills the disk
            probed = disk_problem(path.parent, probe_bytes=64 << 10)
            disk = None if probed is None else DiskError(probed.errno, probed.strerror, str(path))
        _remove(tmp)
        if disk is not None and disk is not exc:
            raise disk from exc
        raise
    _fsync_dir(path.parent)
    if aside is not None:
        _remove(aside)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a new, empty temp directory to fill; it replaces the directory ``path`` whole at the end."""
    recover_dir(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so readers see either nothing or all of it (rename is atomic on POSIX)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8, whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_parquet(path: Path, frame: Any, **options: Any) -> None:
    """Write a polars DataFrame as Parquet (``options`` go to ``write_parquet``), whole or not at all."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, **options)


def atomic_write_array(path: Path, array: Any) -> None:
    """Write a numpy array as ``.npy`` (never pickled), whole or not at all.

    Through an open file: ``np.save`` given a path not ending in ``.npy`` (a temp name) appends it.
    """
    import numpy as np  # here, not at the top: the module stays dependency-free for its other writers

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def atomic_copy(src: Path, dest: Path, hard_link: bool = False) -> None:
    """Copy ``src`` to ``dest`` atomically; ``hard_link`` links instead where the file system allows."""
    with atomic_path(dest) as tmp:
        if hard_link:
            try:
                os.link(src, tmp)
                return
            except OSError:
                pass  # another file system, or links not supported: copy
        shutil.copyfile(src, tmp)


def last_line(path: Path, tail_bytes: int = 1 << 16) -> str | None:
    """The last line of a text file (read from its tail), or None when it is missing or empty."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def append_line_once(path: Path, line: str) -> None:
    """Append ``line`` to a log unless it is already the last one: a cached rerun repeats its
    decision without writing (a read-only workdir stays usable)."""
    if last_line(path) != line:
        with open(path, "a") as f:
            f.write(line + "\n")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON with sorted keys (what is not JSON becomes its ``str``), whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


LATEST = "latest"  # <workdir>/latest/<stage>.json (+ a symlink <stage>): the stage's last finished output


def point_latest(output_dir: str | os.PathLike, stage: str) -> Path:
    """Record ``<workdir>/<area>/<stage>/<fingerprint>`` as the latest finished output of ``stage``.

    Fingerprint directories are opaque; ``<workdir>/latest/<stage>.json`` names the last one a
    stage finished (``lmwright status`` reads them), and ``<workdir>/latest/<stage>`` links to it
    where the filesystem allows symlinks.
    """
    from datetime import datetime, timezone

    out = Path(output_dir).resolve()
    latest = out.parents[2] / LATEST
    pointer = latest / f"{stage}.json"
    finished = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    write_json(pointer, {"stage": stage, "path": str(out), "fingerprint": out.name, "finished": finished})
    link = latest / stage
    try:  # relative, so a moved workdir keeps working; replaced atomically, like the JSON
        if not link.is_dir() or link.is_symlink():  # a real directory in the way stays: the JSON pointer is enough
            with atomic_path(link) as tmp:
                os.symlink(os.path.relpath(out, latest), tmp)
    except OSError:  # no symlinks here: the JSON pointer is enough
        pass
    return pointer


def read_latest(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every stage's latest pointer in ``workdir``, oldest first (the order a run finishes them)."""
    entries = [json.loads(p.read_text()) for p in sorted((Path(workdir) / LATEST).glob("*.json"))]
    return sorted(entries, key=lambda e: (e.get("finished", ""), e.get("stage", "")))
