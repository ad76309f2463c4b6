"""normalize: Unicode NFC, control characters, whitespace, line endings; optional boilerplate stripping;
long documents split into chunks at paragraph boundaries (tasks/curate/chunk.py)."""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.curate.chunk import ChunkParams, chunk_documents

VERSION = "3"  # 3: long documents become chunks (parent_id, chunk, chunks columns)

# C0 controls except \t and \n, DEL, C1 controls, and the BOM / zero-width no-break space.
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{feff}]"
# Invisible characters that change no rendering yet split words for tokenizers and dedup, or
# reorder how text displays (bidi controls, the "Trojan Source" trick): zero-width space,
# non-joiner and joiner, bidi embeddings/overrides (U+202A-E) and isolates (U+2066-9).
INVISIBLE_CHARS = r"[\x{200b}-\x{200d}\x{202a}-\x{202e}\x{2066}-\x{2069}]"
# Unicode spaces that render as a plain space (NBSP, en/em spaces, ideographic space ...).
UNICODE_SPACES = r"[\x{00a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}]"
# Project Gutenberg wraps every e-book between these markers; the rest is licence boilerplate.
GUTENBERG_START = r"(?s)\A.*?\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*\*\*\*[^\n]*\n"
GUTENBERG_END = r"(?s)\n[^\n]*\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*\z"


class NormalizeParams(BaseModel):
    """Text normalization applied to every document."""

    model_config = ConfigDict(extra="forbid")

    unicode_form: str | None = Field("NFC", description="Unicode normal form (NFC, NFKC, ...); None leaves text as is.")
    strip_control_chars: bool = Field(True, description="Remove C0/C1 control characters (tab and newline stay).")
    normalize_whitespace: bool = Field(
        True,
        description="CRLF/CR to LF, Unicode spaces to ' ', inner runs of spaces/tabs to one (indentation kept), trailing spaces cut, "
        "3+ newlines to 2.",
    )
    strip_invisible: bool = Field(
        True,
        description="Remove zero-width characters (U+200B/C/D) and bidi controls (U+202A-E, U+2066-9); counted in the "
        "stage's stats. Note: U+200C/D are meaningful in Persian, Indic scripts and emoji sequences.",
    )
    strip_gutenberg: bool = Field(True, description="Cut Project Gutenberg headers and licence footers.")
    min_chars: int = Field(1, ge=0, description="Documents shorter than this after normalization are dropped (normalize_empty).")
    chunk: ChunkParams = Field(
        default_factory=ChunkParams,
        description="Long documents (books) split at paragraph boundaries into chunks that the quality rules can judge.",
    )


def apply_normalize(docs: pl.DataFrame, params: NormalizeParams) -> pl.DataFrame:
    """Rewrite ``text``, split long documents into chunks; drop only documents that normalization leaves (nearly) empty."""
    text = pl.col("text")
    if params.unicode_form:
        text = text.str.normalize(params.unicode_form)  # type: ignore[arg-type]
    if params.strip_gutenberg:
        text = text.str.replace(GUTENBERG_START, "").str.replace(GUTENBERG_END, "")
    if params.normalize_whitespace:
        text = text.str.replace_all("\r\n?", "\n")
    if params.strip_control_chars:
        text = text.str.replace_all(CONTROL_CHARS, "")
    if params.strip_invisible:
        text = text.str.replace_all(INVISIBLE_CHARS, "")
    if params.normalize_whitespace:
        text = (
            text.str.replace_all(UNICODE_SPACES, " ")
            .str.replace_all(r"[ \t]+\n", "\n")
            .str.replace_all(r"(\S)[ \t]{2,}", "${1} ")  # inner runs only: indentation stays
            .str.replace_all(r"\n{3,}", "\n\n")
            .str.strip_chars()
        )
    # Chunks are cut after whitespace is normalized: paragraph boundaries are then exactly blank lines.
    out = chunk_documents(docs.with_columns(text.alias("text")), params.chunk)
    return out.with_columns(
        pl.when(pl.col("text").str.len_chars() < max(params.min_chars, 1))
        .then(pl.lit("normalize_empty"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("reason")
    )


def count_normalize(docs: pl.DataFrame, params: NormalizeParams) -> dict[str, int]:
    """Invisible characters in a shard's input: stripped when ``strip_invisible``, else left (and still counted)."""
    found = int(docs["text"].str.count_matches(INVISIBLE_CHARS).sum() or 0) if docs.height else 0
    return {"invisible_chars_stripped" if params.strip_invisible else "invisible_chars_kept": found}


NORMALIZE_STAGE = ShardStage(name="normalize", version=VERSION, apply=apply_normalize, count=count_normalize)
