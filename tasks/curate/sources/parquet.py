"""Parquet files: one document per row, read batch by batch."""

from __future__ import annotations

from typing import Iterator

import fsspec
import pyarrow.parquet as pq

from lmwright.tasks.curate.sources.fields import field_record
from lmwright.tasks.curate.sources.spec import Record, Rejected, SourceFile
from lmwright.tasks.curate.sources.streams import READ_ERRORS


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
                yield field_record(obj, f"row={row}", text_field, id_field, max_doc_bytes, "")
    except READ_ERRORS + (Exception,) as e:  # pyarrow raises ArrowInvalid & co on corrupt files
        yield Rejected("ingest_read_error", "row=?", f"{type(e).__name__}: {e}")

