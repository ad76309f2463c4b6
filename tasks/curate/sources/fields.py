"""A record with named fields (a JSON object, a Parquet or CSV row) as a document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmwright.tasks.curate.license.spdx import license_from_record
from lmwright.tasks.curate.sources.spec import Record, Rejected


def field_record(
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


def url_from_record(obj: Mapping[str, Any]) -> str | None:
    """The page URL of a crawled record (top-level ``url`` or dolma's ``metadata.warc_url``/``url``)."""
    candidates = [obj.get("url")]
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        candidates = [meta.get("warc_url"), obj.get("url"), meta.get("url")]
    for c in candidates:
        if isinstance(c, str) and c.strip():
            return c.strip()
    return None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True

