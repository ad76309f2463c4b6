"""Byte streams shared by the readers: files opened locally or through fsspec, decompressed frame by
frame with truncation recorded (never raised), bounded line reading, strict UTF-8 decoding."""

from __future__ import annotations

import io
import zlib
from typing import IO, Callable, Iterator, Protocol

import fsspec

from lmwright.tasks.curate.sources.spec import Rejected


GZIP_MAGIC = b"\x1f\x8b\x08"  # every gzip member starts with it (deflate method)


def open_binary(path: str, resync: bool = False) -> IO[bytes]:
    """Open a file (local or fsspec) decompressing by suffix; errors surface while reading.

    A compressed file that ends early gives every byte before the cut, then EOF; its
    ``truncation_problem`` says so (gzip's own reader raises and loses its buffered lines,
    zstandard's readers end silently). With ``resync``, a damaged gzip member (cut short inside
    the file, or corrupt) does not end the stream: decoding resumes at the next member, and
    ``damaged_ranges`` gives the uncompressed byte ranges that came from damaged data.
    """
    raw = fsspec.open(path, "rb").open()
    lower = path.lower()
    if lower.endswith((".gz", ".gzip")):
        return Decompressed(raw, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), GZIP_MAGIC if resync else None)
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

    def __init__(self, raw: IO[bytes], new_decoder: Callable[[], _Decoder], resync_magic: bytes | None = None):
        self._raw, self._new_decoder = raw, new_decoder
        self._decoder = new_decoder()
        self._inside_frame = False
        self._out, self._pos, self._ended = b"", 0, False
        self.problem: str | None = None
        # Resynchronising needs to know where the damaged frame began, in the input and in the output.
        self._resync_magic = resync_magic
        self._raw_pos = 0  # input offset of the next read
        self._frame_raw = 0  # input offset where the current frame starts
        self._out_total = 0  # bytes produced so far
        self._frame_out = 0  # output offset where the current frame's bytes start
        self.damaged: list[tuple[int, int, str]] = []  # (output from, output to, why)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while self._pos >= len(self._out) and not self._ended:
            data = self._raw.read(self.INPUT_CHUNK)
            at, self._raw_pos = self._raw_pos, self._raw_pos + len(data)
            self._out, self._pos = self._decode(data, at), 0
            self._out_total += len(self._out)
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _decode(self, data: bytes, at: int) -> bytes:
        """Output of the input chunk ``data`` that starts at input offset ``at``."""
        if not data:
            self._ended = True
            if self._inside_frame:
                self.problem = "the compressed stream ends before its end marker (truncated)"
            return b""
        end = at + len(data)
        out: list[bytes] = []
        while data:
            try:
                out.append(self._decoder.decompress(data))
            except Exception as e:  # zlib.error, zstandard.ZstdError: corrupt input
                problem = f"corrupt compressed data: {type(e).__name__}: {e}"
                if not self._resume_at_next_frame(problem, self._out_total + sum(map(len, out))):
                    self._ended = True
                    self.problem = problem
                break
            self._inside_frame = not self._decoder.eof
            if self._inside_frame:
                break
            data = self._decoder.unused_data
            self._frame_raw, self._frame_out = end - len(data), self._out_total + sum(map(len, out))
            if not data.strip(b"\x00"):  # trailing zero padding after the last gzip member
                break
            self._decoder = self._new_decoder()
        return b"".join(out)

    def _resume_at_next_frame(self, problem: str, out_now: int) -> bool:
        """With resync on: record the damaged frame's output range and continue at the next frame header
        after its start (a cut frame runs into the next one, so the header may lie before the error)."""
        if self._resync_magic is None or not getattr(self._raw, "seekable", lambda: False)():
            return False
        self._raw.seek(self._frame_raw + 1)
        found, offset, tail = None, self._frame_raw + 1, b""
        while found is None and (block := self._raw.read(1 << 16)):
            i = (tail + block).find(self._resync_magic)
            if i >= 0:
                found = offset - len(tail) + i
            tail, offset = block[-(len(self._resync_magic) - 1) :], offset + len(block)
        self.damaged.append((self._frame_out, out_now, problem))
        if found is None:
            return False
        self._raw.seek(found)
        self._raw_pos = self._frame_raw = found
        self._frame_out = out_now
        self._decoder, self._inside_frame = self._new_decoder(), False
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()


class Decompressed(io.BufferedReader):
    """A buffered, decompressing stream; ``truncation_problem`` is set once a cut input is read to its end."""

    def __init__(self, raw: IO[bytes], new_decoder: Callable[[], _Decoder], resync_magic: bytes | None = None):
        super().__init__(_DecompressedRaw(raw, new_decoder, resync_magic), buffer_size=1 << 16)

    @property
    def truncation_problem(self) -> str | None:
        return self.raw.problem  # type: ignore[attr-defined]

    @property
    def damaged_ranges(self) -> list[tuple[int, int, str]]:
        return self.raw.damaged  # type: ignore[attr-defined]


def truncation_problem(f: IO[bytes]) -> str | None:
    """Why a stream from ``open_binary`` ended early (truncated or corrupt), once read to its end; else None."""
    return getattr(f, "truncation_problem", None)


READ_ERRORS = (EOFError, OSError, zlib.error, ValueError)


def decode_utf8(data: bytes) -> tuple[str | None, str]:
    """(text, "") or (None, detail) naming the first bad byte."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 at byte {e.start}: {data[e.start:e.start + 4]!r}"


def bounded_lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, int]]:
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


def truncated_tail(line_no: int, problem: str, partial: bytes) -> Rejected:
    """The incomplete tail of a cut file, with the line it starts on."""
    detail = f"{problem}: stopped after line {line_no - 1}"
    if partial:
        detail += f"; line {line_no} is incomplete ({len(partial)} bytes)"
    return Rejected("ingest_truncated", f"L{line_no}", detail, partial.decode("utf-8", "replace"))


def checked_lines(f: IO[bytes], limit: int) -> Iterator[tuple[int, str | Rejected]]:
    """(line number, text) for each whole line of a line-per-record file, or the line's rejection:
    longer than ``limit`` (measured, never held whole), not UTF-8, or cut short with the file.

    Every line yields exactly once, so the caller's last number is where reading stopped. A cut
    inside a line ends the lines (every line before it was whole and is kept); a cut between
    lines yields one more rejection, numbered after the last line.
    """
    line_no = 0
    for line_no, (raw, size) in enumerate(bounded_lines(f, limit), start=1):
        if size and not raw:
            yield line_no, Rejected("ingest_doc_too_large", f"L{line_no}", f"line of {size} bytes > limit {limit}")
            continue
        if not raw.endswith(b"\n") and (problem := truncation_problem(f)):
            yield line_no, truncated_tail(line_no, problem, raw)
            return
        text, problem = decode_utf8(raw)
        if text is None:
            yield line_no, Rejected("ingest_invalid_utf8", f"L{line_no}", problem, raw.decode("utf-8", "replace"))
        else:
            yield line_no, text
    if problem := truncation_problem(f):
        yield line_no + 1, truncated_tail(line_no + 1, problem, b"")
