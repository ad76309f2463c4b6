"""WARC and WET files: one document per HTML page, streamed record by record (fastwarc).

Every record is a document or a reason: requests, metadata and other non-page records
(``ingest_warc_<type>``), non-HTML payloads (``ingest_not_html``), non-200 responses
(``ingest_http_<status>``), pages with no main text (``extract_empty``). A damaged file
never stops the run: a record cut short, a bad chunked body or a garbage header becomes a
rejection naming the file and the byte offset (in the uncompressed stream), and reading
resumes at the next record header it can find.
"""

from __future__ import annotations

import io
import re
import zlib
from types import ModuleType
from typing import IO, Generator, Iterator

from lmwright.tasks.curate.sources.extract import HtmlExtraction, decode_html, main_text, require
from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS, open_binary, truncation_problem

HTML_TYPES = ("text/html", "application/xhtml+xml")
RECORD_MARKER = re.compile(rb"WARC/1\.[01]\r?\n")  # every record starts with its version line
SCAN_CHUNK = 1 << 20


def read_warc(file: SourceFile, max_doc_bytes: int, html: HtmlExtraction) -> Iterator[Record | Rejected]:
    """Documents and rejections of one WARC/WET file; a damaged stretch is skipped with its offsets."""
    warc = require("fastwarc.warc", "reading WARC files")
    damage: dict[int, tuple[int, int, str]] = {}  # damaged gzip members seen, by output offset
    blamed: set[int] = set()  # those a record was rejected for
    pos: int | None = 0
    read_any = False
    while pos is not None and (start := _next_record_start(file.path, pos)) is not None:
        if pos == 0 and start > 0:
            yield Rejected("ingest_warc_malformed", "offset=0", f"bytes 0-{start} before the first record header: skipped")
        read_any = True
        pos = yield from _read_from(warc, file, start, max_doc_bytes, html, damage, blamed)
    for lo, (_, hi, why) in sorted(damage.items()):
        if lo not in blamed:  # a member whose bytes reached no record: lost between two records
            yield Rejected("ingest_truncated", f"damaged={lo}", f"{why}: a damaged gzip member at offset {lo} is skipped")
    if not read_any:
        yield _why_no_record(file.path)


def _read_from(
    warc: ModuleType,
    file: SourceFile,
    start: int,
    max_doc_bytes: int,
    html: HtmlExtraction,
    damage: dict[int, tuple[int, int, str]],
    blamed: set[int],
) -> Generator[Record | Rejected, None, int | None]:
    """The records from offset ``start`` on; returns where to resume after a damaged stretch, None at the end."""
    last: int | None = None
    pending: tuple[int, Record | Rejected] | None = None  # a record is judged once the next one starts
    seen: list[tuple[int, int, str]] = []
    try:
        with open_binary(file.path, resync=True) as f:
            seen = getattr(f, "damaged_ranges", seen)  # the stream's own list: it grows as it reads
            _skip(f, start)
            outcome: Record | Rejected | None = None
            for rec in warc.ArchiveIterator(_Tell(f), parse_http=False, stream_detect=False):
                offset = start + rec.stream_pos
                if pending is not None:
                    yield _unless_damaged(*pending, offset, seen, blamed)
                last, outcome = offset, _record(rec, offset, max_doc_bytes, html)
                pending = (offset, outcome)
            if pending is not None:
                yield _unless_damaged(*pending, None, seen, blamed)
            cut_record = isinstance(outcome, Rejected) and outcome.reason == "ingest_truncated"
            if (problem := truncation_problem(f)) and not cut_record:  # a record cut short already says so
                where = start if last is None else last
                yield Rejected("ingest_truncated", f"after={where}", f"{problem}: the file ends inside or after the record at offset {where}")
        damage.update((d[0], d) for d in seen)
        if cut_record and last is not None and _next_record_start(file.path, last + 1) is not None:
            return last + 1  # a Content-Length past the records that follow: read them
        return None
    except BaseException as e:  # fastwarc raises OSError on a header it cannot parse, a panic on worse
        if not isinstance(e, READ_ERRORS) and type(e).__name__ != "PanicException":
            raise
        damage.update((d[0], d) for d in seen)
        if pending is not None:
            yield _unless_damaged(*pending, None, seen, blamed)
        if last is None:
            yield Rejected("ingest_warc_malformed", f"offset={start}", f"{type(e).__name__}: {e}: the record at offset {start} is skipped")
            return start + 1
        yield Rejected("ingest_warc_malformed", f"after={last}", f"{type(e).__name__}: {e}: unreadable data after the record at offset {last} is skipped")
        return last + 1


def _unless_damaged(
    offset: int, outcome: Record | Rejected, end: int | None, damage: list[tuple[int, int, str]], blamed: set[int]
) -> Record | Rejected:
    """The record's outcome, or ``ingest_truncated`` when a damaged gzip member (cut short or corrupt inside
    the file) fed bytes into it, or lost bytes inside it, between its start and the next record's."""
    for lo, hi, why in damage:
        if _overlaps(lo, hi, offset, end):
            blamed.add(lo)
            if isinstance(outcome, Rejected) and outcome.reason == "ingest_truncated":
                return outcome
            return Rejected("ingest_truncated", f"offset={offset}", f"{why}: the record holds bytes {lo}-{hi} of a damaged gzip member")
    return outcome


def _overlaps(lo: int, hi: int, start: int, end: int | None) -> bool:
    """Whether the damaged output ``[lo, hi)`` touches a record spanning ``[start, end)`` (``end`` None: to the
    stream's end). A member that gave no bytes at all (``lo == hi``) counts when it falls inside the record."""
    stop = end if end is not None else float("inf")
    if lo == hi:
        return start < lo < stop
    return lo < stop and hi > start


def _record(rec: object, offset: int, max_doc_bytes: int, html: HtmlExtraction) -> Record | Rejected:
    """One WARC record as a document or a rejection."""
    pos = f"offset={offset}"
    headers = rec.headers  # type: ignore[attr-defined]
    kind = str(rec.record_type)  # type: ignore[attr-defined]
    url = _strip_brackets(headers.get("WARC-Target-URI"))
    meta = {
        "url": url,
        "warc_date": headers.get("WARC-Date"),
        "warc_record_id": _strip_brackets(headers.get("WARC-Record-ID")),
    }
    length = rec.content_length  # type: ignore[attr-defined]
    is_page = kind in ("response", "resource", "conversion")
    if is_page and length <= max_doc_bytes:
        block = rec.reader.read(length)  # type: ignore[attr-defined]
        got = len(block)
    else:  # not read into memory, only measured: a cut record is still found
        block, got = b"", rec.reader.consume(length)  # type: ignore[attr-defined]
    if got < length:
        return Rejected("ingest_truncated", pos, f"the record ends after {got} of its {length} bytes ({url})")
    if not is_page:
        return Rejected(f"ingest_warc_{kind}", pos, f"a {kind} record, not a page ({url})")
    if length > max_doc_bytes:
        return Rejected("ingest_doc_too_large", pos, f"record of {length} bytes > max_doc_bytes={max_doc_bytes} ({url})")
    if kind == "response" and (headers.get("Content-Type") or "").startswith("application/http"):
        return _http_response(block, pos, meta, max_doc_bytes, html)
    return _payload(block, headers.get("Content-Type"), None, pos, meta, html, plain_text=kind == "conversion")


def _http_response(block: bytes, pos: str, meta: dict, max_doc_bytes: int, html: HtmlExtraction) -> Record | Rejected:
    warc = require("fastwarc.warc", "reading WARC files")
    http = warc.HeaderMap()
    try:
        size = http.parse(io.BytesIO(block))
    except (OSError, ValueError) as e:
        return Rejected("ingest_http_malformed", pos, f"HTTP header: {type(e).__name__}: {e} ({meta['url']})")
    status = http.status_code
    if status is None:
        return Rejected("ingest_http_malformed", pos, f"no HTTP status line ({meta['url']})")
    if status != 200:
        return Rejected(f"ingest_http_{status}", pos, f"HTTP {status} {http.reason_phrase or ''} ({meta['url']})".replace("  ", " "))
    body = block[size:]
    try:
        if "chunked" in (http.get("Transfer-Encoding") or "").lower():
            body = dechunk(body)
        body = decode_content(body, http.get("Content-Encoding"), max_doc_bytes)
    except ValueError as e:
        return Rejected("ingest_http_body", pos, f"{e} ({meta['url']})")
    content_type = http.get("Content-Type")
    return _payload(body, content_type, _charset(content_type), pos, meta, html, plain_text=False)


def _payload(
    body: bytes, content_type: str | None, charset: str | None, pos: str, meta: dict, html: HtmlExtraction, plain_text: bool
) -> Record | Rejected:
    mime = (content_type or "").split(";")[0].strip().lower()
    if plain_text:  # a WET conversion record: the text is already extracted (UTF-8)
        text = body.decode("utf-8", "replace").strip()
    elif mime in HTML_TYPES or (not mime and b"<html" in body[:1024].lower()):
        text = main_text(decode_html(body, charset), html, meta["url"])
    else:
        return Rejected("ingest_not_html", pos, f"content type {mime or 'unknown'} ({meta['url']})")
    if not text:
        return Rejected("extract_empty", pos, f"no main text in the page ({meta['url']})")
    return Record(text=text, position=pos, url=meta["url"], warc_date=meta["warc_date"],
                  content_type=mime or ("text/plain" if plain_text else None), warc_record_id=meta["warc_record_id"])


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body decoded; ValueError names the offset of a bad chunk header."""
    out, pos = [], 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise ValueError(f"bad chunked encoding: no chunk header at body offset {pos}")
        size_field = body[pos:end].split(b";")[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise ValueError(f"bad chunked encoding: chunk header {size_field[:20]!r} at body offset {pos}") from None
        if size == 0:
            return b"".join(out)
        chunk = body[end + 2 : end + 2 + size]
        if len(chunk) < size:
            raise ValueError(f"bad chunked encoding: chunk of {size} bytes at body offset {pos} is cut short")
        out.append(chunk)
        pos = end + 2 + size + 2  # the chunk's trailing CRLF


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body with its Content-Encoding (gzip, deflate, br) undone, at most ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("identity", "none", ""):
        return body
    try:
        if enc in ("gzip", "x-gzip", "deflate"):
            # deflate in the wild is raw or zlib-wrapped: wbits 47 takes gzip and zlib, -15 raw.
            wbits = 16 + zlib.MAX_WBITS if "gzip" in enc else (zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
            out = zlib.decompressobj(wbits).decompress(body, limit + 1)
        elif enc == "br":
            stream_io = require("fastwarc.stream_io", "reading brotli-compressed WARC payloads")
            out = stream_io.BrotliReader(io.BytesIO(body)).read(limit + 1)
        else:
            raise ValueError(f"unsupported Content-Encoding {enc!r}")
    except (zlib.error, OSError) as e:
        raise ValueError(f"Content-Encoding {enc}: {type(e).__name__}: {e}") from None
    if len(out) > limit:
        raise ValueError(f"Content-Encoding {enc}: the page expands past {limit} bytes")
    return out


_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\s;\"']+)", re.I)


def _charset(content_type: str | None) -> str | None:
    found = _CHARSET.search(content_type or "")
    return found.group(1) if found else None


def _strip_brackets(value: str | None) -> str | None:
    """WARC/1.0 writers put URIs in angle brackets (``<https://...>``); the value inside is the URI."""
    if value is None:
        return None
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


class _Tell:
    """A stream fastwarc can read: it asks ``tell()`` once, which a decompressing stream cannot answer."""

    def __init__(self, f: IO[bytes]):
        self._f, self._pos = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos


def _skip(f: IO[bytes], n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, SCAN_CHUNK)))
        if not got:
            return
        n -= got


def _next_record_start(path: str, at: int) -> int | None:
    """Offset of the first record header (its version line) at or after ``at`` in the uncompressed stream."""
    try:
        with open_binary(path, resync=True) as f:
            _skip(f, at)
            base, tail, chunk = at, b"", 1 << 12  # small first: the header is usually right there
            while block := f.read(chunk):
                data = tail + block
                if found := RECORD_MARKER.search(data):
                    return base - len(tail) + found.start()
                tail = data[-16:]  # a version line cut by the chunk boundary is found in the next round
                base += len(block)
                chunk = min(chunk * 4, SCAN_CHUNK)
    except READ_ERRORS:
        return None
    return None


def _why_no_record(path: str) -> Rejected:
    """Why a file gave no record at all: empty, damaged compressed data, or no record header anywhere."""
    try:
        with open_binary(path, resync=True) as f:
            content = False
            while block := f.read(SCAN_CHUNK):
                content = content or bool(block.strip())
            damaged = getattr(f, "damaged_ranges", [])
            problem = truncation_problem(f) or (damaged[0][2] if damaged else None)
    except READ_ERRORS as e:
        return Rejected("ingest_read_error", "offset=0", f"{type(e).__name__}: {e}")
    if problem:
        return Rejected("ingest_truncated", "offset=0", f"{problem}: no record could be read")
    if not content:
        return Rejected("ingest_empty_file", "offset=0", "file is empty")
    return Rejected("ingest_warc_malformed", "offset=0", "no WARC record header in the file")
