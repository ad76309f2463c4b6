"""Plain text files (.txt, .md, ...): one document per file or per blank-line-separated paragraph."""

from __future__ import annotations

import io
from typing import IO, Iterator, Literal

from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS, bounded_lines, decode_utf8, open_binary, truncation_problem

BINARY_SNIFF_BYTES = 8192


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
    text, problem = decode_utf8(data)
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
    for line_no, (line, line_size) in enumerate(bounded_lines(stream, max_doc_bytes), start=1):
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
    text, problem = decode_utf8(data)
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
