"""Readers for every source format: each yields raw records, or a rejection with a reason.

A reader never raises on bad content: a malformed line, an undecodable file, a
truncated archive all become ``Rejected`` records carrying the file and line, so the
ingest stage can count them and nothing disappears silently.
"""

from __future__ import annotations

import ast
import functools
import csv
import gzip
import hashlib
import io
import json
import sys
import sysconfig
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Iterator, Literal

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.license import license_from_record, normalize_license, url_from_record

BUILTIN_PYDOCS = "builtin:pydocs"  # stdlib docstrings + installed packages' long descriptions (~3 MB)
BUILTIN_PYDOCS_PACKAGES = "builtin:pydocs-packages"  # docstrings of every installed package (tens of MB)
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


def list_source_files(spec: SourceSpec) -> tuple[list[SourceFile], list[dict[str, str]]]:
    """Expand a source into files (sorted, so shard order is stable) and skipped entries."""
    if spec.path in BUILTINS:
        return pydocs_units(spec), []
    fs, root = fsspec.core.url_to_fs(spec.path)
    if not fs.exists(root):
        raise FileNotFoundError(f"source {spec.path!r} does not exist")
    if fs.isdir(root):
        paths = sorted(p for p in fs.find(root) if not Path(p).name.startswith("."))
    else:
        paths = [root]
    files: list[SourceFile] = []
    skipped: list[dict[str, str]] = []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    for p in paths:
        fmt = spec.format if spec.format != "auto" else _suffix_format(p)
        url = p if protocol in ("file", "local") else f"{protocol}://{p}"
        if fmt is None:
            skipped.append({"file": url, "reason": "ingest_unsupported_format", "detail": "unknown file suffix"})
            continue
        relpath = Path(p).name if p == root else str(Path(p).relative_to(root))
        if spec.files is not None and relpath not in spec.files:
            continue
        info = fs.info(p)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
        files.append(SourceFile(spec, url, relpath, int(info.get("size") or 0), _as_float(mtime), fmt))
    return files, skipped


def _as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float(hashlib.sha1(str(value).encode()).hexdigest()[:8], 16) if value else 0.0


def open_binary(path: str) -> IO[bytes]:
    """Open a file (local or fsspec) decompressing by suffix; errors surface while reading."""
    raw = fsspec.open(path, "rb").open()
    lower = path.lower()
    if lower.endswith((".gz", ".gzip")):
        return gzip.GzipFile(fileobj=raw)
    if lower.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)  # type: ignore[return-value]
    return raw


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
    """Split at blank lines, streaming; a paragraph keeps the line number it starts on."""
    stream = io.BufferedReader(_Prepend(head, f))  # type: ignore[arg-type]
    para: list[bytes] = []
    size = 0
    start = 1
    too_large = False
    line_no = 0
    for line_no, line in enumerate(stream, start=1):
        if line.strip():
            if not para and not too_large:
                start = line_no
            size += len(line)
            if size > max_doc_bytes:
                too_large, para = True, []
            elif not too_large:
                para.append(line)
            continue
        if para or too_large:
            yield _paragraph(para, start, size, too_large, max_doc_bytes)
        para, size, too_large = [], 0, False
    if para or too_large:
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
                if not line.strip():
                    continue
                yield _json_record(line, pos, text_field, id_field, max_doc_bytes)
    except READ_ERRORS as e:
        yield Rejected("ingest_truncated", f"L{line_no + 1}", f"stopped reading after line {line_no}: {type(e).__name__}: {e}")
        return
    if line_no == 0:
        yield Rejected("ingest_empty_file", "L1", "file is empty")


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
    text_field, id_field = file.source.text_field, file.source.id_field
    csv.field_size_limit(max(max_doc_bytes, 1 << 20))
    delimiter = "\t" if file.path.lower().endswith(".tsv") else ","
    row = 0
    try:
        with open_binary(file.path) as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""), delimiter=delimiter)
            if reader.fieldnames is None:
                yield Rejected("ingest_empty_file", "row=0", "file is empty")
                return
            for row, obj in enumerate(reader, start=1):
                yield _field_record(obj, f"row={row}", text_field, id_field, max_doc_bytes, "")
    except UnicodeDecodeError as e:
        yield Rejected("ingest_invalid_utf8", f"row={row + 1}", f"invalid UTF-8 at byte {e.start}; stopped reading")
    except (csv.Error, *READ_ERRORS) as e:
        yield Rejected("ingest_read_error", f"row={row + 1}", f"{type(e).__name__}: {e}; stopped reading")


# --- builtin:pydocs: real text that exists on every machine with Python ---

PYDOCS_GROUP_FILES = 200


PYDOCS_ROOTS = {"stdlib": "stdlib", "packages": "purelib"}


def pydocs_units(spec: SourceSpec) -> list[SourceFile]:
    """The builtin corpus in stable groups: stdlib modules, installed packages, package metadata."""
    units = []
    kinds = ["stdlib"] if spec.path == BUILTIN_PYDOCS else ["packages"]
    for kind in kinds:
        files = _pydocs_files(kind)
        for g in range(0, len(files), PYDOCS_GROUP_FILES):
            n = g // PYDOCS_GROUP_FILES
            units.append(SourceFile(spec, f"{kind}:{n}", f"{kind}/{n}", 0, 0.0, "pydocs"))
    if spec.path == BUILTIN_PYDOCS:
        units.append(SourceFile(spec, "metadata:0", "metadata/0", 0, 0.0, "pydocs"))
    return units


@functools.lru_cache(maxsize=None)
def _pydocs_files(kind: str) -> list[str]:
    root = Path(sysconfig.get_paths()[PYDOCS_ROOTS[kind]])
    if kind == "stdlib":
        return sorted(_python_files(root, skip_site=True))
    return sorted(_python_files(root, skip_site=False)) if root.is_dir() else []


def pydocs_fingerprint_input() -> str:
    """What the builtin corpus depends on: the Python build and the installed distributions."""
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
