"""Long documents become chunks: a book is split at paragraph boundaries into pieces of a target length.

Quality rules are written for web pages: a novel is one document of 100k+ words
(``gopher_long_doc``), and cutting it per paragraph leaves fragments too short for C4's
five sentences. Chunks of ~20k characters (a few thousand words, dozens of paragraphs) read
like long web documents, so the rules judge each on its own.

Every chunk keeps its parent's columns (source, uri, url, licence...: provenance), and adds
``parent_id`` (the parent's id; a document left whole is its own parent), ``chunk`` (0-based
position) and ``chunks`` (how many pieces the parent became). A chunk's id is
``<parent id>#<chunk, 5 digits>``: stable, since the cuts depend only on the text and the
settings. Later stages treat the pieces of one parent together where it matters: the
train/validation split hashes ``parent_id``, so a book never straddles the two.

Cuts fall only between paragraphs (blank lines); a paragraph longer than the target is cut
between its lines, and a single line longer than the target stays whole (text is never cut
inside a line). The chunks, joined with the separators between them, are the parent's text.
"""

from __future__ import annotations

import re

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

# A paragraph: a run of text without a blank line in it. A line: a run without a newline.
_PARAGRAPH = re.compile(r"[^\n](?:[^\n]|\n(?!\n))*")
_LINE = re.compile(r"[^\n]+")
# A last piece shorter than this share of the target joins the chunk before it.
_MIN_TAIL = 0.25


class ChunkParams(BaseModel):
    """How long documents are split (at paragraph boundaries) before language ID and quality."""

    model_config = ConfigDict(extra="forbid")

    max_chars: int | None = Field(
        100_000, ge=1, description="Documents longer than this many characters are split into chunks; null: never split."
    )
    target_chars: int = Field(
        20_000,
        ge=100,
        description="Length a chunk aims at: paragraphs are joined until the next would pass it (a longer paragraph "
        "is cut between lines; a longer line stays whole).",
    )


def chunk_spans(text: str, target: int) -> list[tuple[int, int]]:
    """(start, end) of each chunk of ``text``: cut between paragraphs (or lines), each at most ``target`` when it can be."""
    pieces: list[tuple[int, int]] = []
    for para in _PARAGRAPH.finditer(text):
        if para.end() - para.start() <= target:
            pieces.append(para.span())
        else:  # one long paragraph: its lines are the pieces
            pieces += [(para.start() + m.start(), para.start() + m.end()) for m in _LINE.finditer(para.group())]
    spans: list[tuple[int, int]] = []
    for start, end in pieces:
        if spans and end - spans[-1][0] <= target:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < _MIN_TAIL * target:
        tail = spans.pop()
        spans[-1] = (spans[-1][0], tail[1])
    return spans or [(0, len(text))]


def chunk_documents(docs: pl.DataFrame, params: ChunkParams) -> pl.DataFrame:
    """Every document, long ones replaced by their chunks (in order), with ``parent_id``, ``chunk`` and ``chunks``."""
    whole = docs.with_columns(
        parent_id=pl.col("id"), chunk=pl.lit(0, dtype=pl.Int32), chunks=pl.lit(1, dtype=pl.Int32)
    )
    if params.max_chars is None or docs.height == 0:
        return whole
    long = (docs["text"].str.len_chars() > params.max_chars).fill_null(False)
    if not long.any():
        return whole
    texts = docs["text"].to_list()
    pieces = [
        [texts[i][s:e] for s, e in chunk_spans(texts[i], params.target_chars)] if is_long else [texts[i]]
        for i, is_long in enumerate(long.to_list())
    ]
    split = (
        whole.with_columns(
            text=pl.Series(pieces, dtype=pl.List(pl.String)),
            chunk=pl.Series([list(range(len(p))) for p in pieces], dtype=pl.List(pl.Int32)),
            chunks=pl.Series([len(p) for p in pieces], dtype=pl.Int32),
        )
        .explode("text", "chunk")
        .with_columns(
            id=pl.when(pl.col("chunks") > 1)
            .then(pl.format("{}#{}", pl.col("parent_id"), pl.col("chunk").cast(pl.String).str.zfill(5)))
            .otherwise(pl.col("parent_id"))
        )
    )
    return split.select(whole.columns)


__all__ = ["ChunkParams", "chunk_documents", "chunk_spans"]
