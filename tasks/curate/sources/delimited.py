"""CSV and TSV files: one document per row; a malformed row is rejected and the lines it swallowed are re-read."""

from __future__ import annotations

import csv
from typing import IO, Iterator

from lmwright.tasks.curate.sources.fields import field_record
from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS, checked_lines, open_binary


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
                    yield field_record(dict(zip(header, row)), f"row={row_no}", text_field, id_field, max_doc_bytes, "")
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
        self._source = checked_lines(f, max_doc_bytes)
        self._replay: list[tuple[int, str]] = []
        self._row: list[tuple[int, str]] = []
        self.rejected: list[Rejected] = []
        self.line_no = 0
        self.consumed_any = False

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
        for no, line in self._source:
            self.line_no, self.consumed_any = no, True
            if not isinstance(line, Rejected):
                return no, line
            self.rejected.append(line)
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

