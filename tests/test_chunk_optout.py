"""Consent withdrawn for a book reaches every chunk of it: an opt-out naming the parent's id matches its chunks."""

from __future__ import annotations

import polars as pl

from lmwright.tasks.curate.chunk import ChunkParams, chunk_documents
from lmwright.tasks.curate.license.optout import optout_matches


def paragraph(i: int, words: int = 30) -> str:
    return " ".join(f"w{i}x{k}" for k in range(words)) + "."


def test_an_optout_naming_a_book_withdraws_all_its_chunks():
    book = "\n\n".join(paragraph(i) for i in range(200))
    docs = pl.DataFrame({"id": ["book", "other"], "text": [book, book.upper()], "uri": ["b.txt", "o.txt"]})
    chunks = chunk_documents(docs, ChunkParams(max_chars=5_000, target_chars=2_000))
    registry = pl.DataFrame({"kind": ["id"], "value": ["book"], "where": ["optout/x.txt:1"]})
    matched = chunks.with_columns(optout_matches(chunks, registry).alias("optout"))
    assert matched.filter(pl.col("parent_id") == "book")["optout"].to_list() == ["id:book @ optout/x.txt:1"] * (
        chunks.height // 2
    )
    assert matched.filter(pl.col("parent_id") == "other")["optout"].is_null().all()
