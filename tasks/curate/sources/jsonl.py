"""JSON Lines (plain, .gz, .zst): one document per line, a bad line is rejected with its number."""

from __future__ import annotations

import json
from typing import Iterator

from lmwright.tasks.curate.sources.fields import field_record
from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS, checked_lines, open_binary


def read_jsonl(file: SourceFile, max_doc_bytes: int) -> Iterator[Record | Rejected]:
    text_field, id_field = file.source.text_field, file.source.id_field
    line_no = 0
    try:
        with open_binary(file.path) as f:
            for line_no, line in checked_lines(f, max_doc_bytes * 2):
                if isinstance(line, Rejected):
                    yield line
                elif line.strip():
                    yield _json_record(line, f"L{line_no}", text_field, id_field, max_doc_bytes)
    except READ_ERRORS as e:
        yield Rejected("ingest_truncated", f"L{line_no + 1}", f"stopped reading after line {line_no}: {type(e).__name__}: {e}")
        return
    if line_no == 0:
        yield Rejected("ingest_empty_file", "L1", "file is empty")


def _json_record(raw: str, pos: str, text_field: str, id_field: str | None, max_doc_bytes: int) -> Record | Rejected:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return Rejected("ingest_malformed_json", pos, f"{e.msg} at column {e.colno}", raw)
    if not isinstance(obj, dict):
        return Rejected("ingest_not_an_object", pos, f"a JSON {type(obj).__name__}, not an object", raw)
    return field_record(obj, pos, text_field, id_field, max_doc_bytes, raw)
