"""The one way lmwright writes a file whole (tasks/core/files.py): a writer that dies half-way
leaves the previous file as it was and no temp file beside it, whatever the kind of file.

Two ways to die: an exception raised inside the writer (any machine), and a real full disk (a
1 MiB tmpfs, where this machine lets the test mount one).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pytest

from lmwright.tasks.core.files import (
    DiskError,
    atomic_copy,
    atomic_dir,
    atomic_path,
    atomic_write_array,
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
    recover_dir,
    write_json,
)
from tests.test_workdir_safety import small_disk, temp_files  # noqa: F401 - small_disk is a fixture

Writer = Callable[[Path, object], None]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this value")


def _stream(path: Path, chunks: object) -> None:
    """A raw ``.bin`` stream written chunk by chunk, like the token arrays."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:  # type: ignore[attr-defined]
            if isinstance(chunk, Exception):
                raise chunk
            f.write(chunk)


def _directory(path: Path, files: object) -> None:
    """A directory replaced whole, like a checkpoint."""
    with atomic_dir(path) as tmp:
        for name, data in files.items():  # type: ignore[attr-defined]
            if isinstance(data, Exception):
                raise data
            (tmp / name).write_bytes(data)


def _copy(path: Path, source: object) -> None:
    atomic_copy(Path(source), path)  # type: ignore[arg-type]


def _read(path: Path) -> object:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


def _released() -> memoryview:
    view = memoryview(b"half")
    view.release()
    return view


# kind -> (writer, the old content, content whose writing fails half-way)
KINDS: dict[str, tuple[Writer, Callable[[Path], object], Callable[[Path], object]]] = {
    "text": (atomic_write_text, lambda _: "old text\n", lambda _: "new text " * 10_000 + "\ud800"),
    "json": (write_json, lambda _: {"old": 1}, lambda _: {"a": list(range(10_000)), "z": Unprintable()}),
    "bytes": (atomic_write_bytes, lambda _: b"old bytes", lambda _: _released()),
    "parquet": (
        atomic_write_parquet,
        lambda _: pl.DataFrame({"x": [1, 2]}),
        lambda _: pl.DataFrame({"x": [object()]}, schema={"x": pl.Object}),
    ),
    "array": (atomic_write_array, lambda _: np.arange(4), lambda _: np.array([{"a": 1}, None], dtype=object)),
    "stream": (_stream, lambda _: [b"old"], lambda _: [b"x" * 100_000, OSError("the source went away")]),
    "directory": (_directory, lambda _: {"a": b"old"}, lambda _: {"a": b"new", "b": RuntimeError("killed")}),
    "copy": (_copy, lambda d: _file(d / "old-src", b"old"), lambda d: d / "missing-src"),
}


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_exception_inside_the_writer_leaves_the_old_file_and_no_temp(kind: str, tmp_path: Path) -> None:
    write, old, failing = KINDS[kind]
    target = tmp_path / "out" / f"target.{kind}"
    write(target, old(tmp_path))
    before = _read(target)
    with pytest.raises(Exception):
        write(target, failing(tmp_path))
    assert _read(target) == before
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def _big(kind: str) -> object:
    """About 2 MB of incompressible content of each kind: more than the 1 MiB disk holds."""
    blob = os.urandom(2 << 20)
    return {
        "text": blob.hex(),
        "json": {"blob": blob.hex()},
        "bytes": blob,
        "parquet": pl.DataFrame({"text": [os.urandom(256).hex() for _ in range(8000)]}),
        "array": np.frombuffer(blob, dtype=np.uint8),
        "stream": [blob[: 1 << 20], blob[1 << 20 :]],
        "directory": {"model.safetensors": blob},
    }[kind]


@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"copy"}))
def test_a_full_disk_mid_write_leaves_the_old_file_and_no_temp(kind: str, small_disk: Path) -> None:  # noqa: F811
    write, old, _ = KINDS[kind]
    target = small_disk / f"target.{kind}"
    write(target, old(small_disk))
    before = _read(target)
    with pytest.raises(DiskError) as e:
        write(target, _big(kind))
    assert e.value.errno == errno.ENOSPC and str(target) in str(e.value)
    assert _read(target) == before
    assert temp_files(small_disk) == [] and sorted(p.name for p in small_disk.iterdir()) == [target.name]


def test_a_directory_is_replaced_whole_and_a_kill_between_the_renames_is_recovered(tmp_path: Path) -> None:
    target = tmp_path / "ck"
    _directory(target, {"a": b"1", "b": b"1"})
    _directory(target, {"a": b"2"})
    assert _read(target) == {"a": b"2"}  # no file of the old directory survives
    # a kill after moving the old directory aside, before moving the new one in
    target.rename(tmp_path / ".ck.deadbeef.old")
    recover_dir(target)
    assert _read(target) == {"a": b"2"} and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_every_kind_reads_back_what_was_written(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.md", "héllo\r\nwörld\n")
    assert (tmp_path / "t.md").read_bytes() == "héllo\r\nwörld\n".encode()  # no newline translation
    write_json(tmp_path / "v.json", {"b": Path("/x"), "a": [1.5]})
    assert (tmp_path / "v.json").read_text() == json.dumps({"a": [1.5], "b": "/x"}, indent=2, sort_keys=True) + "\n"
    atomic_write_parquet(tmp_path / "f.parquet", pl.DataFrame({"x": [1, 2]}), compression="zstd")
    assert pl.read_parquet(tmp_path / "f.parquet")["x"].to_list() == [1, 2]
    atomic_write_array(tmp_path / "a.npy", np.arange(5, dtype=np.int32))
    assert np.load(tmp_path / "a.npy", allow_pickle=False).tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "f.parquet", "t.md", "v.json"]
