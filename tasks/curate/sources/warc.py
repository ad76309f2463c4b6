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
from typing import IO, Iterator

from lmwright.tasks.curate.sources.extract import HtmlExtraction, decode_html, main_text, require
from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS, open_binary, truncation_problem

HTML_TYPES = ("text/html", "application/xhtml+xml")
RECORD_MARKER = re.compile(rb"WARC/1\.[01]\r?\n")  # every record starts with its version line
SCAN_CHUNK = 1 << 20


def read_warc(file: SourceFile, max_doc_bytes: int, html: HtmlExtraction) -> Iterator[Record | Rejected]:
    """Documents and rejections of one WARC/WET file; a damaged stretch is skipped with its offsets."""
    warc = require("fastwarc.warc", "reading WARC files")
    pos = 0
    while (start := _next_record_start(file.path, pos)) is not None:
        if pos == 0 and start > 0:
            yield Rejected("ingest_warc_malformed", "offset=0", f"bytes 0-{start} before the first record header: skipped")
        last = None
        try:
            with open_binary(file.path) as f:
                _skip(f, start)
                outcome: Record | Rejected | None = None
                for rec in warc.ArchiveIterator(_Tell(f), parse_http=False, stream_detect=False):
                    last = start + rec.stream_pos
                    outcome = _record(rec, last, max_doc_bytes, html)
                    yield outcome
                cut_record = isinstance(outcome, Rejected) and outcome.reason == "ingest_truncated"
                if (problem := truncation_problem(f)) and not cut_record:  # a record cut short already says so
                    where = start if last is None else last
                    yield Rejected("ingest_truncated", f"after={where}", f"{problem}: the file ends inside or after the record at offset {where}")
            if cut_record and last is not None and _next_record_start(file.path, last + 1) is not None:
                pos = last + 1  # a Content-Length past the records that follow: read them
                continue
            return
        except BaseException as e:  # fastwarc raises OSError on a header it cannot parse, a panic on worse
            if not isinstance(e, READ_ERRORS) and type(e).__name__ != "PanicException":
                raise
            if last is None:
                yield Rejected("ingest_warc_malformed", f"offset={start}", f"{type(e).__name__}: {e}: the record at offset {start} is skipped")
                pos = start + 1
            else:
                yield Rejected("ingest_warc_malformed", f"after={last}", f"{type(e).__name__}: {e}: unreadable data after the record at offset {last} is skipped")
                pos = last + 1
    if pos == 0:
        empty = not _has_content_after(file.path, 0)
        yield Rejected("ingest_empty_file" if empty else "ingest_warc_malformed", "offset=0", "file is empty" if empty else "no WARC record header in the file")


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
        with open_binary(path) as f:
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


def _has_content_after(path: str, at: int) -> bool:
    try:
        with open_binary(path) as f:
            _skip(f, at)
            while block := f.read(SCAN_CHUNK):
                if block.strip():
                    return True
    except READ_ERRORS:
        return False
    return False
