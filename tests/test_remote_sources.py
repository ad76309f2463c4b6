"""Sources behind fsspec URLs: HTTP against a local http.server, and the `remote` extra's filesystems."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import threading
from pathlib import Path
from typing import Iterator

import fsspec
import pytest

from lmwright.tasks.curate.ingest import source_fingerprints
from lmwright.tasks.curate.sources import Record, SourceSpec, list_source_files, read_records

MAX = 1 << 20


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory served by Python's http.server on 127.0.0.1 (the server `python -m http.server` runs)."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "docs.jsonl").write_text('{"text": "remote one"}\n{"text": "remote two"}\n')
    (root / "notes.txt").write_text("A remote note.\n")
    (root / "sub" / "more.jsonl.gz").write_bytes(gzip.compress(b'{"text": "zipped remote"}\n'))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def texts(path: str) -> dict[str, list[str]]:
    files, skipped = list_source_files(SourceSpec(path=path))
    assert not skipped
    return {f.path: [r.text for r in read_records(f, MAX, "file") if isinstance(r, Record)] for f in files}


def test_http_file_is_ingested(served: tuple[str, Path]) -> None:
    base, _ = served
    assert texts(f"{base}/docs.jsonl") == {f"{base}/docs.jsonl": ["remote one", "remote two"]}


def test_http_directory_listing_is_ingested_file_by_file(served: tuple[str, Path]) -> None:
    base, _ = served
    assert texts(f"{base}/") == {
        f"{base}/docs.jsonl": ["remote one", "remote two"],
        f"{base}/notes.txt": ["A remote note.\n"],
        f"{base}/sub/more.jsonl.gz": ["zipped remote"],
    }
    files, _ = list_source_files(SourceSpec(path=f"{base}/"))
    assert [f.relpath for f in files] == ["docs.jsonl", "notes.txt", "sub/more.jsonl.gz"]


def test_http_file_changed_in_place_changes_the_fingerprint(served: tuple[str, Path]) -> None:
    """Same size, new content: the server's Last-Modified (no mtime over HTTP) must change the cache key."""
    base, root = served
    url = f"{base}/docs.jsonl"
    before = source_fingerprints(list_source_files(SourceSpec(path=url))[0])
    doc = root / "docs.jsonl"
    doc.write_text(doc.read_text().replace("one", "won"))
    stamp = doc.stat().st_mtime + 60
    os.utime(doc, (stamp, stamp))
    after = source_fingerprints(list_source_files(SourceSpec(path=url))[0])
    assert after != before
    assert texts(url)[url] == ["remote won", "remote two"]


@pytest.mark.parametrize("protocol", ["http", "https", "s3"])
def test_remote_extra_provides_the_filesystems_the_readme_promises(protocol: str) -> None:
    """`pip install 'lmwright[remote]'` makes https:// and s3:// sources importable (aiohttp, s3fs)."""
    assert fsspec.get_filesystem_class(protocol) is not None


def test_object_store_last_modified_datetime_is_the_version_stamp() -> None:
    """S3 (s3fs) reports LastModified as a datetime and no mtime: listing must take it, not crash."""
    from datetime import datetime, timezone

    from fsspec.implementations.memory import MemoryFileSystem

    class S3Like(MemoryFileSystem):
        protocol = "s3like"
        stamp = datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)

        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            return MemoryFileSystem._strip_protocol(path.removeprefix("s3like://"))

        def info(self, path: str, **kwargs: object) -> dict:
            out = super().info(path, **kwargs)
            out.pop("created", None)
            return {**out, "LastModified": self.stamp} if out["type"] == "file" else out

    fsspec.register_implementation("s3like", S3Like, clobber=True)
    fs = fsspec.filesystem("s3like")
    fs.pipe("/bucket/docs.jsonl", b'{"text": "object"}\n')
    first = list_source_files(SourceSpec(path="s3like://bucket/docs.jsonl"))[0]
    assert first[0].mtime == S3Like.stamp.timestamp()
    S3Like.stamp = datetime(2026, 12, 1, tzinfo=timezone.utc)  # the object was replaced
    assert source_fingerprints(list_source_files(SourceSpec(path="s3like://bucket/docs.jsonl"))[0]) != source_fingerprints(first)
    assert [r.text for r in read_records(first[0], MAX, "file")] == ["object"]
