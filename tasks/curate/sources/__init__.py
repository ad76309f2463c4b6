"""Readers for every source format, one module per format; each yields raw records, or a rejection with a reason.

A reader never raises on bad content: a malformed line, an undecodable file, a truncated
archive, a damaged WARC record all become ``Rejected`` records carrying the file and line
(or byte offset), so the ingest stage can count them and nothing disappears silently.

Every public name is importable from here (``from lmwright.tasks.curate.sources import ...``).
"""

from __future__ import annotations

from typing import Iterator, Literal

from lmwright.tasks.curate.sources.delimited import read_csv
from lmwright.tasks.curate.sources.extract import HtmlExtraction, MissingExtra
from lmwright.tasks.curate.sources.jsonl import read_jsonl
from lmwright.tasks.curate.sources.listing import (
    SourceMissing,
    SourceUnavailable,
    check_source,
    list_source_files,
    skipped_file,
)
from lmwright.tasks.curate.sources.parquet import read_parquet
from lmwright.tasks.curate.sources.pydocs import pydocs_files, pydocs_fingerprint_input, pydocs_units, read_pydocs
from lmwright.tasks.curate.sources.spec import (
    BUILTIN_PYDOCS,
    BUILTIN_PYDOCS_PACKAGES,
    BUILTINS,
    FileFormat,
    Format,
    Record,
    Rejected,
    SourceFile,
    SourceInput,
    SourceSpec,
)
from lmwright.tasks.curate.sources.streams import open_binary, truncation_problem
from lmwright.tasks.curate.sources.text import read_text
from lmwright.tasks.curate.sources.warc import read_warc

def read_records(
    file: SourceFile,
    max_doc_bytes: int,
    split: Literal["file", "paragraph"],
    html: HtmlExtraction | None = None,
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
    elif file.format == "warc":
        yield from read_warc(file, max_doc_bytes, html or HtmlExtraction())
    else:  # pragma: no cover - Format is a closed set
        raise ValueError(f"unknown format {file.format}")


__all__ = [
    "BUILTINS",
    "BUILTIN_PYDOCS",
    "BUILTIN_PYDOCS_PACKAGES",
    "FileFormat",
    "Format",
    "HtmlExtraction",
    "MissingExtra",
    "Record",
    "Rejected",
    "SourceFile",
    "SourceInput",
    "SourceMissing",
    "SourceSpec",
    "SourceUnavailable",
    "check_source",
    "list_source_files",
    "open_binary",
    "pydocs_files",
    "pydocs_fingerprint_input",
    "pydocs_units",
    "read_records",
    "skipped_file",
    "truncation_problem",
]
