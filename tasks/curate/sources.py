"""Readers for every source format: each yields raw records, or a rejection with a reason.

A reader never raises on bad content: a malformed line, an undecodable file, a
truncated archive all become ``Rejected`` records carrying the file and line, so the
ingest stage can count them and nothing disappears silently.
"""

from __future__ import annotations

import ast
import functools
import csv
import errno
import hashlib
import io
import json
import os
import stat
import sys
import sysconfig
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Annotated, Callable, Iterator, Literal, Protocol

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lmwright.tasks.core.errors import UserError
from lmwright.tasks.curate.license import license_from_record, normalize_license, url_from_record

# The default corpus depends on the Python build only, so a `pip install` changes no cache key.
BUILTIN_PYDOCS = "builtin:pydocs"  # the standard library's docstrings
# Opt-in: changes with every install. Docstrings and long descriptions of the installed packages (tens of MB).
BUILTIN_PYDOCS_PACKAGES = "builtin:pydocs-packages"
BUILTINS = (BUILTIN_PYDOCS, BUILTIN_PYDOCS_PACKAGES)
BINARY_SNIFF_BYTES = 8192
TEXT_SUFFIXES = (".txt", ".md", ".text", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".json.gz", ".jsonl.gzip")
Format = Literal["auto", "text", "jsonl", "parquet", "csv"]
FileFormat = Literal["text", "jsonl", "parquet", "csv", "pydocs"]  # "pydocs": the builtin corpus only


class SourceSpec(BaseModel):
    """One input: a file, a directory, an fsspec URL, or ``builtin:pydocs``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="File, directory, fsspec URL (s3://, https://, memory://...) or builtin:pydocs.")
    name: str | None = Field(None, description="Source label stored in the `source` column; default: the file or directory name.")
    format: Format = Field("auto", description="Reader to use; auto picks by file suffix.")
    text_field: str = Field("text", description="JSONL/Parquet/CSV field holding the document text.")
    id_field: str | None = Field("id", description="Field holding a record's own id; kept as the document id when present.")
    license: str | None = Field(None, description="License declared for every document of this source (SPDX id); unknown stays null.")
    files: list[str] | None = Field(None, description="Only these files of a directory source (paths relative to it).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"path": value} if isinstance(value, str) else value

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path in BUILTINS:
            return self.path.removeprefix("builtin:")
        return Path(self.path.rstrip("/")).name or self.path


# A source as a user gives it: a plain path string or the full object. SourceSpec already turns a
# string into {"path": ...}; this makes the JSON schema say so too, so the Prefect form and the
# server's parameter check accept "/data/udhr" (they validate against the schema, not the model).
SourceInput = Annotated[SourceSpec, BeforeValidator(lambda value: value, json_schema_input_type=str | SourceSpec)]


@dataclass(frozen=True)
class Record:
    """A document as read: text plus where it came from."""

    text: str
    position: str  # e.g. "L12" (line) or "row=7": the uri fragment
    own_id: str | None = None
    license: str | None = None
    url: str | None = None  # where a crawled record came from (for opt-outs by domain or URL)


@dataclass(frozen=True)
class Rejected:
    """Something that could not become a document; kept with its reason."""

    reason: str
    position: str
    detail: str
    text: str = ""


@dataclass(frozen=True)
class SourceFile:
    """One unit of ingest work: a file of a source (or a slice of the builtin corpus)."""

    source: SourceSpec
    path: str  # fsspec URL or local path; for builtin:pydocs a group key
    relpath: str  # path inside the source, used for stable ids
    size: int
    mtime: float
    format: FileFormat


def _suffix_format(path: str) -> FileFormat | None:
    lower = path.lower()
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith((".csv", ".tsv", ".csv.gz")):
        return "csv"
    return None


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
        fmt = spec.format if spec.format != "auto" else _suffix_format(p)
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


def open_binary(path: str) -> IO[bytes]:
    """Open a file (local or fsspec) decompressing by suffix; errors surface while reading.

    A compressed file that ends early gives every byte before the cut, then EOF; its
    ``truncation_problem`` says so (gzip's own reader raises and loses its buffered lines,
    zstandard's readers end silently).
    """
    raw = fsspec.open(path, "rb").open()
    lower = path.lower()
    if lower.endswith((".gz", ".gzip")):
        return Decompressed(raw, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
    if lower.endswith(".zst"):
        import zstandard

        return Decompressed(raw, lambda: zstandard.ZstdDecompressor().decompressobj())
    return raw


class _Decoder(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


class _DecompressedRaw(io.RawIOBase):
    """Decompresses frame after frame (concatenated gzip members, zstd frames); an input that
    ends inside a frame, or corrupt data, ends the stream and records ``problem``."""

    # Small input reads bound the output held at once (~4 MB for gzip's worst ratio).
    INPUT_CHUNK = 4096

    def __init__(self, raw: IO[bytes], new_decoder: Callable[[], _Decoder]):
        self._raw, self._new_decoder = raw, new_decoder
        self._decoder = new_decoder()
        self._inside_frame = False
        self._out, self._pos, self._ended = b"", 0, False
        self.problem: str | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while self._pos >= len(self._out) and not self._ended:
            self._out, self._pos = self._decode(self._raw.read(self.INPUT_CHUNK)), 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decode(self, data: bytes) -> bytes:
        if not data:
            self._ended = True
            if self._inside_frame:
                self.problem = "the compressed stream ends before its end marker (truncated)"
            return b""
        out = []
        while data:
            try:
                out.append(self._decoder.decompress(data))
            except Exception as e:  # zlib.error, zstandard.ZstdError: corrupt input
                self._ended = True
                self.problem = f"corrupt compressed data: {type(e).__name__}: {e}"
                break
            self._inside_frame = not self._decoder.eof
            if self._inside_frame:
                break
            data = self._decoder.unused_data
            if not data.strip(b"\x00"):  # trailing zero padding after the last gzip member
                break
            self._decoder = self._new_decoder()
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()


class Decompressed(io.BufferedReader):
    """A buffered, decompressing stream; ``truncation_problem`` is set once a cut input is read to its end."""

    def __init__(self, raw: IO[bytes], new_decoder: Callable[[], _Decoder]):
        super().__init__(_DecompressedRaw(raw, new_decoder), buffer_size=1 << 16)

    @property
    def truncation_problem(self) -> str | None:
        return self.raw.problem  # type: ignore[attr-defined]


def truncation_problem(f: IO[bytes]) -> str | None:
    """Why a stream from ``open_binary`` ended early (truncated or corrupt), once read to its end; else None."""
    return getattr(f, "truncation_problem", None)


READ_ERRORS = (EOFError, OSError, zlib.error, ValueError)


def read_records(
    file: SourceFile, max_doc_bytes: int, split: Literal["file", "paragraph"]
) -> Iterator[Record | Rejected]:
    """Dispatch on format; every reader turns failures into Rejected records."""
    if file.format == "pydocs":
        yield from read_pydocs(file)
    elif file.format == "text":
        yield from read_text(file, max_doc_bytes, split)
    elif file.format == "jsonl":
        yield from read_jsonl(file, max_doc_bytes)
    elif file.format == "parquet":
        yield from read_parquet(file, max_doc_bytes)
    elif file.format == "csv":
        yield from read_csv(file, max_doc_bytes)
    else:  # pragma: no cover - Format is a closed set
        raise ValueError(f"unknown format {file.format}")


def _decode(data: bytes) -> tuple[str | None, str]:
    """(text, "") or (None, detail) naming the first bad byte."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}: {data[e.start:e.start + 4]!r}"


def _looks_binary(head: bytes) -> bool:
    return b"\x00" in head


def read_text(file: SourceFile, max_doc_bytes: int, split: Literal["file", "paragraph"]) -> Iterator[Record | Rejected]:
    try:
        with open_binary(file.path) as f:
            head = f.read(BINARY_SNIFF_BYTES)
            if not head and (problem := truncation_problem(f)):
                yield Rejected("ingest_truncated", "L1", f"{problem}: nothing could be read")
                return
            if not head:
                yield Rejected("ingest_empty_file", "L1", "file is empty")
                return
            if _looks_binary(head):
                yield Rejected("ingest_binary_file", "L1", "NUL bytes in the first 8 KiB: not a text file")
                return
            if split == "file":
                yield from _text_whole(f, head, max_doc_bytes)
            else:
                yield from _text_paragraphs(f, head, max_doc_bytes)
    except READ_ERRORS as e:
        yield Rejected("ingest_read_error", "L?", f"{type(e).__name__}: {e}")


def _text_whole(f: IO[bytes], head: bytes, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    data = head + f.read(max_doc_bytes + 1 - len(head)) if len(head) <= max_doc_bytes else head
    if len(data) > max_doc_bytes:
        size = len(data) + _drain(f)
        yield Rejected("ingest_doc_too_large", "L1", f"document of {size} bytes > max_doc_bytes={max_doc_bytes}")
        return
    if problem := truncation_problem(f):
        yield Rejected("ingest_truncated", "L1", f"{problem}: the document is incomplete", data.decode("utf-8", "replace"))
        return
    text, problem = _decode(data)
    if text is None:
        yield Rejected("ingest_invalid_utf8", "L1", problem, data.decode("utf-8", "replace"))
    else:
        yield Record(text=text, position="L1")


def _drain(f: IO[bytes]) -> int:
    n = 0
    while block := f.read(1 << 20):
        n += len(block)
    return n


def _text_paragraphs(f: IO[bytes], head: bytes, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    """Split at blank lines, streaming; a paragraph keeps the line number it starts on.

    Lines are read with a bound, so one huge line (a minified file, a 200 MB dump) is
    measured and rejected, never held in memory whole.
    """
    stream = io.BufferedReader(_Prepend(head, f))  # type: ignore[arg-type]
    para: list[bytes] = []
    size = 0
    start = 1
    too_large = False
    line_no = 0
    for line_no, (line, line_size) in enumerate(_bounded_lines(stream, max_doc_bytes), start=1):
        over_limit = line_size > 0 and not line  # longer than max_doc_bytes: only its size was kept
        if over_limit or line.strip():
            if not para and not too_large:
                start = line_no
            size += line_size
            if over_limit or size > max_doc_bytes:
                too_large, para = True, []
            elif not too_large:
                para.append(line)
            continue
        if para or too_large:
            yield _paragraph(para, start, size, too_large, max_doc_bytes)
        para, size, too_large = [], 0, False
    if (para or too_large) and (problem := truncation_problem(f)):
        partial = b"".join(para).decode("utf-8", "replace")
        yield Rejected("ingest_truncated", f"L{start}", f"{problem}: the paragraph starting at line {start} is incomplete", partial)
    elif para or too_large:
        yield _paragraph(para, start, size, too_large, max_doc_bytes)
    if line_no == 0:
        yield Rejected("ingest_empty_file", "L1", "file is empty")


def _paragraph(lines: list[bytes], start: int, size: int, too_large: bool, max_doc_bytes: int) -> Record | Rejected:
    pos = f"L{start}"
    if too_large:
        return Rejected("ingest_doc_too_large", pos, f"paragraph of over {size} bytes > max_doc_bytes={max_doc_bytes}")
    data = b"".join(lines).rstrip(b"\r\n")
    text, problem = _decode(data)
    if text is None:
        return Rejected("ingest_invalid_utf8", pos, problem, data.decode("utf-8", "replace"))
    return Record(text=text, position=pos)


class _Prepend(io.RawIOBase):
    """A raw stream that first returns ``head``, then the rest of ``f``."""

    def __init__(self, head: bytes, f: IO[bytes]):
        self._head, self._f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


def _bounded_lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, int]]:
    """Lines split on b'\\n' only (U+2028 inside JSON strings stays), each with its full size;
    a line longer than ``limit`` is yielded as b'' with its size, never held in memory whole."""
    buf = io.BufferedReader(f) if not isinstance(f, io.BufferedReader) else f  # type: ignore[arg-type]
    while True:
        line = buf.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            size = len(line)
            while True:
                rest = buf.readline(1 << 20)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            yield b"", size
        else:
            yield line, len(line)


def read_jsonl(file: SourceFile, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    text_field, id_field = file.source.text_field, file.source.id_field
    line_no = 0
    try:
        with open_binary(file.path) as f:
            for line_no, (line, size) in enumerate(_bounded_lines(f, max_doc_bytes * 2), start=1):
                pos = f"L{line_no}"
                if size and not line:
                    yield Rejected("ingest_doc_too_large", pos, f"line of {size} bytes > limit {max_doc_bytes * 2}")
                    continue
                if not line.endswith(b"\n") and (problem := truncation_problem(f)):
                    # The cut fell inside this line: every line before it was whole and is kept.
                    yield _truncated(line_no, problem, line)
                    return
                if not line.strip():
                    continue
                yield _json_record(line, pos, text_field, id_field, max_doc_bytes)
            if problem := truncation_problem(f):
                yield _truncated(line_no + 1, problem, b"")
                return
    except READ_ERRORS as e:
        yield Rejected("ingest_truncated", f"L{line_no + 1}", f"stopped reading after line {line_no}: {type(e).__name__}: {e}")
        return
    if line_no == 0:
        yield Rejected("ingest_empty_file", "L1", "file is empty")


def _truncated(line_no: int, problem: str, partial: bytes) -> Rejected:
    """The incomplete tail of a cut file, with the line it starts on."""
    detail = f"{problem}: stopped after line {line_no - 1}"
    if partial:
        detail += f"; line {line_no} is incomplete ({len(partial)} bytes)"
    return Rejected("ingest_truncated", f"L{line_no}", detail, partial.decode("utf-8", "replace"))


def _json_record(line: bytes, pos: str, text_field: str, id_field: str | None, max_doc_bytes: int) -> Record | Rejected:
    raw, problem = _decode(line)
    if raw is None:
        return Rejected("ingest_invalid_utf8", pos, problem, line.decode("utf-8", "replace"))
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return Rejected("ingest_malformed_json", pos, f"{e.msg} at column {e.colno}", raw)
    if not isinstance(obj, dict):
        return Rejected("ingest_not_an_object", pos, f"a JSON {type(obj).__name__}, not an object", raw)
    return _field_record(obj, pos, text_field, id_field, max_doc_bytes, raw)


def _field_record(
    obj: dict, pos: str, text_field: str, id_field: str | None, max_doc_bytes: int, raw: str
) -> Record | Rejected:
    if text_field not in obj or obj[text_field] is None:
        return Rejected("ingest_missing_field", pos, f"no field {text_field!r} (fields: {sorted(obj)[:10]})", raw)
    text = obj[text_field]
    if not isinstance(text, str):
        return Rejected("ingest_wrong_type", pos, f"field {text_field!r} is {type(text).__name__}, not a string", raw)
    if len(text.encode("utf-8", "surrogatepass")) > max_doc_bytes:
        return Rejected("ingest_doc_too_large", pos, f"text of {len(text)} chars > max_doc_bytes={max_doc_bytes}")
    if _has_surrogates(text):
        return Rejected("ingest_invalid_utf8", pos, "lone surrogate escape in JSON string", text.encode("utf-8", "replace").decode())
    own = obj.get(id_field) if id_field else None
    return Record(
        text=text,
        position=pos,
        own_id=None if own is None else str(own),
        license=license_from_record(obj),
        url=url_from_record(obj),
    )


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def read_parquet(file: SourceFile, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    text_field, id_field = file.source.text_field, file.source.id_field
    try:
        pf = pq.ParquetFile(fsspec.open(file.path, "rb").open())
        names = pf.schema_arrow.names
        if text_field not in names:
            yield Rejected("ingest_missing_field", "row=0", f"no column {text_field!r} (columns: {names[:10]})")
            return
        columns = [c for c in (text_field, id_field, "license", "url", "metadata", "attributes") if c and c in names]
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for obj in batch.to_pylist():
                row += 1
                yield _field_record(obj, f"row={row}", text_field, id_field, max_doc_bytes, "")
    except READ_ERRORS + (Exception,) as e:  # pyarrow raises ArrowInvalid & co on corrupt files
        yield Rejected("ingest_read_error", "row=?", f"{type(e).__name__}: {e}")


def read_csv(file: SourceFile, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    """Rows as documents. A malformed row (a stray or unterminated quote, a wrong number of
    fields) is rejected with its line, and the lines it swallowed are read again as rows."""
    text_field, id_field = file.source.text_field, file.source.id_field
    csv.field_size_limit(max(max_doc_bytes, 1 << 20))
    delimiter = "\t" if file.path.lower().endswith(".tsv") else ","
    lines: _CsvLines | None = None
    try:
        with open_binary(file.path) as f:
            lines = _CsvLines(f, max_doc_bytes)
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            header = _csv_header(reader, lines)
            if header is None:
                yield from lines.take_rejected()
                if not lines.consumed_any:
                    yield Rejected("ingest_empty_file", "L1", "file is empty")
                return
            row_no = 0
            for start, row, problem in _csv_rows(reader, lines, len(header)):
                if problem:
                    yield Rejected("ingest_malformed_csv", f"L{start}", f"row starting at line {start}: {problem}", lines.text_of(start))
                elif row:
                    row_no += 1
                    yield _field_record(dict(zip(header, row)), f"row={row_no}", text_field, id_field, max_doc_bytes, "")
                yield from lines.take_rejected()
            yield from lines.take_rejected()
    except READ_ERRORS as e:
        where = lines.line_no + 1 if lines else 1
        yield Rejected("ingest_read_error", f"L{where}", f"{type(e).__name__}: {e}; stopped reading")


def _csv_header(reader: Iterator[list[str]], lines: "_CsvLines") -> list[str] | None:
    try:
        header: list[str] = []
        while not header:  # blank lines before the header
            header = next(reader)
        return header
    except StopIteration:
        return None
    except csv.Error as e:
        lines.rejected.append(Rejected("ingest_malformed_csv", "L1", f"header: {e}; file not read", lines.text_of(1)))
        return None


def _csv_rows(
    reader: Iterator[list[str]], lines: "_CsvLines", fields: int
) -> Iterator[tuple[int, list[str], str | None]]:
    """(first line, row, problem) per row. A bad row spanning several lines gives back all but its
    first line, so a quote that never closes costs one line, not every row after it."""
    while True:
        lines.start_row()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield lines.row_start, [], str(e)
            lines.replay_after_first()
            continue
        if row and len(row) != fields:
            yield lines.row_start, [], f"{len(row)} fields, the header has {fields}"
            lines.replay_after_first()
            continue
        yield lines.row_start, row, None


class _CsvLines:
    """Decoded lines for ``csv.reader`` with their numbers; remembers the lines of the current row
    so a malformed one can be re-read, and turns undecodable, oversized or cut lines into rejections."""

    def __init__(self, f: IO[bytes], max_doc_bytes: int):
        self._f = f
        self._source = enumerate(_bounded_lines(f, max_doc_bytes), start=1)
        self._replay: list[tuple[int, str]] = []
        self._row: list[tuple[int, str]] = []
        self.rejected: list[Rejected] = []
        self.line_no = 0
        self.consumed_any = False
        self._ended = False

    def __iter__(self) -> "_CsvLines":
        return self

    def __next__(self) -> str:
        while True:
            if self._replay:
                no, text = self._replay.pop(0)
            else:
                no, text = self._read()
            self._row.append((no, text))
            return text

    def _read(self) -> tuple[int, str]:
        for no, (raw, size) in self._source:
            self.line_no, self.consumed_any = no, True
            if size and not raw:
                self.rejected.append(Rejected("ingest_doc_too_large", f"L{no}", f"line of {size} bytes > limit"))
                continue
            if not raw.endswith(b"\n") and (problem := truncation_problem(self._f)):
                self.rejected.append(_truncated(no, problem, raw))
                continue
            text, problem = _decode(raw)
            if text is None:
                self.rejected.append(Rejected("ingest_invalid_utf8", f"L{no}", problem, raw.decode("utf-8", "replace")))
                continue
            return no, text
        if not self._ended and (problem := truncation_problem(self._f)):
            self.rejected.append(_truncated(self.line_no + 1, problem, b""))
        self._ended = True
        raise StopIteration

    def start_row(self) -> None:
        self._row = []

    @property
    def row_start(self) -> int:
        return self._row[0][0] if self._row else self.line_no

    def text_of(self, line_no: int) -> str:
        return next((t for no, t in self._row if no == line_no), "")

    def replay_after_first(self) -> None:
        self._replay = self._row[1:] + self._replay
        self._row = []

    def take_rejected(self) -> Iterator[Rejected]:
        out, self.rejected = self.rejected, []
        yield from out


# --- builtin:pydocs: real text that exists on every machine with Python ---

PYDOCS_GROUP_FILES = 200


PYDOCS_ROOTS = {"stdlib": "stdlib", "packages": "purelib"}


def pydocs_units(spec: SourceSpec) -> list[SourceFile]:
    """The builtin corpus in stable groups: stdlib modules; or installed packages and their metadata."""
    kind = "stdlib" if spec.path == BUILTIN_PYDOCS else "packages"
    files = _pydocs_files(kind)
    units = [
        SourceFile(spec, f"{kind}:{n}", f"{kind}/{n}", 0, 0.0, "pydocs")
        for n in range((len(files) + PYDOCS_GROUP_FILES - 1) // PYDOCS_GROUP_FILES)
    ]
    if kind == "packages":
        units.append(SourceFile(spec, "metadata:0", "metadata/0", 0, 0.0, "pydocs"))
    return units


@functools.lru_cache(maxsize=None)
def _pydocs_files(kind: str) -> list[str]:
    root = Path(sysconfig.get_paths()[PYDOCS_ROOTS[kind]])
    if kind == "stdlib":
        return sorted(_python_files(root, skip_site=True))
    return sorted(_python_files(root, skip_site=False)) if root.is_dir() else []


def pydocs_fingerprint_input(path: str = BUILTIN_PYDOCS_PACKAGES) -> str:
    """What a builtin corpus depends on: the Python build; for the packages' corpus, the installed distributions too."""
    if path == BUILTIN_PYDOCS:
        return hashlib.sha256(f"{sys.version}|{sys.implementation.cache_tag}".encode()).hexdigest()
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
    return hashlib.sha256("\n".join([sys.version, *dists]).encode()).hexdigest()


def _python_files(root: Path, skip_site: bool) -> list[str]:
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        parts = rel.parts
        if skip_site and (parts[0] in ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3")):
            continue
        if any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        out.append(str(rel))
    return out


def read_pydocs(file: SourceFile) -> Iterator[Record | Rejected]:
    kind, _, group = file.path.partition(":")
    if kind == "metadata":
        yield from _metadata_descriptions()
        return
    root = Path(sysconfig.get_paths()[PYDOCS_ROOTS[kind]])
    files = _pydocs_files(kind)
    start = int(group) * PYDOCS_GROUP_FILES
    for rel in files[start : start + PYDOCS_GROUP_FILES]:
        text = _module_docs(root / rel)
        if text is None:
            yield Rejected("ingest_read_error", f"{kind}/{rel}", "could not parse module source")
        elif text:
            # Package licenses live in their metadata, not per file: unknown stays unknown.
            yield Record(text=text, position=f"{kind}/{rel}", license="PSF-2.0" if kind == "stdlib" else None)


def _module_docs(path: Path) -> str | None:
    """The docstrings of a module, its classes and functions, in source order (no import)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return None
    chunks = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 8:
                chunks.append(doc)
    seen: set[str] = set()
    unique = [c for c in chunks if not (c in seen or seen.add(c))]
    return "\n\n".join(unique)


def _metadata_descriptions() -> Iterator[Record | Rejected]:
    dists = sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    seen: set[str] = set()
    for d in dists:
        name = d.metadata["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        body = d.metadata.get_payload() if hasattr(d.metadata, "get_payload") else None  # type: ignore[union-attr]
        text = body or d.metadata.get("Description") or ""
        if isinstance(text, str) and text.strip():
            lic = d.metadata.get("License-Expression") or d.metadata.get("License")
            lic = normalize_license(lic) if lic and len(lic) < 64 and "\n" not in lic else None
            yield Record(text=text, position=f"metadata/{name}", license=lic)
