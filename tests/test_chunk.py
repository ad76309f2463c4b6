"""Long documents become chunks at paragraph boundaries: stable ids, provenance, one split per book."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DOC_SCHEMA, DatasetRef, write_manifest, write_shard
from lmwright.tasks.curate.chunk import ChunkParams, chunk_documents, chunk_spans
from lmwright.tasks.curate.dedup.clusters import cluster_frame
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.curate.dedup.signatures import signature_frame
from lmwright.tasks.curate.langid import LangidParams, apply_langid
from lmwright.tasks.curate.normalize import NormalizeParams, apply_normalize
from lmwright.tasks.curate.quality import QualityParams, apply_quality
from lmwright.tasks.train.token_dataset import TokenDatasetRef
from lmwright.tasks.train.tokenize import TokenizeParams, run_tokenize


def paragraph(i: int, words: int = 30) -> str:
    return " ".join(f"w{i}x{k}" for k in range(words)) + "."


def test_cuts_fall_between_paragraphs_and_lose_nothing():
    text = "\n\n".join(paragraph(i) for i in range(40))  # ~40 paragraphs of ~200 characters
    spans = chunk_spans(text, 1_000)
    pieces = [text[s:e] for s, e in spans]
    assert len(pieces) > 5 and all(len(p) <= 1_000 for p in pieces)
    assert "\n\n".join(pieces) == text  # cut only where a blank line was
    assert all(p.startswith("w") and p.endswith(".") for p in pieces)


def test_a_long_paragraph_is_cut_between_lines_and_a_long_line_stays_whole():
    lines = "\n".join(paragraph(i, 10) for i in range(30))  # one paragraph, 30 lines of ~70 characters
    long_line = "x" * 900
    text = lines + "\n\n" + long_line
    pieces = [text[s:e] for s, e in chunk_spans(text, 500)]
    assert all(len(p) <= 500 for p in pieces[:-1]) and pieces[-1] == long_line
    assert all(not p.startswith("\n") and not p.endswith("\n") for p in pieces)
    assert "\n".join(pieces[:-1]) == lines


def test_a_short_tail_joins_the_chunk_before_it():
    text = "a" * 900 + "\n\n" + "b" * 100
    assert chunk_spans(text, 1_000) == [(0, len(text))]
    text = "a" * 900 + "\n\n" + "b" * 900 + "\n\n" + "c" * 50
    assert [e - s for s, e in chunk_spans(text, 1_000)] == [900, 952]


def test_chunks_carry_stable_ids_and_their_parents_columns():
    book = "\n\n".join(paragraph(i) for i in range(200))
    docs = pl.DataFrame(
        {"id": ["short", "book"], "text": ["A short note.", book], "source": ["notes", "gutenberg"],
         "uri": ["file:///n.txt", "file:///b.txt"], "license": [None, "public-domain"]},
        schema_overrides={"license": pl.String},
    )
    params = ChunkParams(max_chars=5_000, target_chars=2_000)
    out = chunk_documents(docs, params)
    assert out.columns == [*docs.columns, "parent_id", "chunk", "chunks"]
    assert out.row(0, named=True) == {**docs.row(0, named=True), "parent_id": "short", "chunk": 0, "chunks": 1}
    chunks = out.filter(pl.col("parent_id") == "book")
    n = chunks.height
    assert n > 10 and chunks["chunks"].to_list() == [n] * n and chunks["chunk"].to_list() == list(range(n))
    assert chunks["id"].to_list() == [f"book#{k:05d}" for k in range(n)]
    assert set(chunks["uri"]) == {"file:///b.txt"} and set(chunks["license"]) == {"public-domain"}
    assert "\n\n".join(chunks["text"]) == book
    assert chunk_documents(docs, params).equals(out)  # the same text and settings cut the same way
    assert chunk_documents(docs, ChunkParams(max_chars=None))["id"].to_list() == ["short", "book"]


def test_a_novel_becomes_training_text(shared_data: Path):
    """Pride and Prejudice through normalize -> langid -> quality: one long document dropped whole, or chunks kept."""
    text = (shared_data / "gutenberg/pg1342_pride_and_prejudice.txt").read_text(encoding="utf-8")
    book = pl.DataFrame({"id": ["pg1342"], "text": [text], "source": ["gutenberg"]})

    def curate(chunk: dict) -> pl.DataFrame:
        normalized = apply_normalize(book, NormalizeParams(chunk=chunk)).drop("reason")
        identified = apply_langid(normalized, LangidParams(processes=1)).drop("reason", "detail")
        return apply_quality(identified, QualityParams())

    whole = curate({"max_chars": None})
    assert whole["reason"].to_list() == ["gopher_long_doc"]
    chunked = curate({})  # the defaults: documents over 100,000 characters, chunks of ~20,000
    assert chunked.height >= 30 and set(chunked["parent_id"]) == {"pg1342"}
    assert chunked["text"].str.len_chars().max() <= 20_000
    kept = chunked.filter(pl.col("reason").is_null())
    assert kept["text"].str.len_chars().sum() >= 0.9 * chunked["text"].str.len_chars().sum()
    assert "gopher_long_doc" not in chunked["reason"].to_list()


def test_dedup_drops_a_second_copy_of_a_book_chunk_by_chunk(shared_data: Path):
    """Two editions of one novel (a few words differ) and another novel: the second edition's chunks all go."""
    first = (shared_data / "gutenberg/pg1342_pride_and_prejudice.txt").read_text(encoding="utf-8")
    paragraphs = first.split("\n\n")
    for k in range(0, len(paragraphs), 40):  # an edited reprint: a word changed every 40 paragraphs
        paragraphs[k] = paragraphs[k].replace(" the ", " that ", 1)
    second = "\n\n".join(paragraphs)
    other = (shared_data / "gutenberg/pg2701_moby_dick.txt").read_text(encoding="utf-8-sig")
    books = pl.DataFrame({"id": ["pp-1894", "pp-reprint", "moby"], "text": [first, second, other]})
    chunks = apply_normalize(books, NormalizeParams()).drop("reason")
    docs = chunks.select(
        [pl.col(c) if c in chunks.columns else pl.lit(None, dtype=t).alias(c) for c, t in DOC_SCHEMA.items()]
    )
    clusters = cluster_frame(signature_frame(docs, "part-00000", DedupParams()), DedupParams())[0]
    decided = chunks.select("id", "parent_id").with_columns(clusters.select("reason", "dup_of"))
    by_book = decided.group_by("parent_id").agg(n=pl.len(), dropped=pl.col("reason").is_not_null().sum())
    dropped = dict(zip(by_book["parent_id"], by_book["dropped"]))
    total = dict(zip(by_book["parent_id"], by_book["n"]))
    assert dropped == {"pp-1894": 0, "pp-reprint": total["pp-reprint"], "moby": 0}
    reprint = decided.filter(pl.col("parent_id") == "pp-reprint")
    assert reprint["dup_of"].str.starts_with("pp-1894#").all()  # each points at a chunk of the first edition


def book_corpus(root: Path, books: int, chunks: int) -> DatasetRef:
    rows = [
        {"id": f"book{b}#{c:05d}", "parent_id": f"book{b}", "text": f"Book {b}, part {c}. " + paragraph(b * 100 + c)}
        for b in range(books)
        for c in range(chunks)
    ]
    schema = {**DOC_SCHEMA, "parent_id": pl.String()}
    kept = pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema)
    stats = write_shard(root, "part-00000", "dedup", kept.height, 0, kept, kept.clear(), 0.0)
    return write_manifest(root, "dedup", "books-fp", {}, "1", [], [stats])


@flow(persist_result=True)
def tokenize_flow(workdir: str, corpus: DatasetRef, params: TokenizeParams) -> TokenDatasetRef:
    return run_tokenize(workdir, corpus, params, ValidationSettings())


@pytest.mark.usefixtures("prefect_harness")
def test_the_chunks_of_one_book_share_a_split(tmp_path: Path):
    corpus = book_corpus(tmp_path / "corpus", books=24, chunks=6)
    params = TokenizeParams.model_validate({"vocab_size": 300, "val_fraction": 0.3, "roundtrip_sample_docs": 8})
    index = tokenize_flow(str(tmp_path / "work"), corpus, params).docs()
    per_book = index.with_columns(book=pl.col("id").str.extract(r"^(book\d+)#")).group_by("book").agg(
        splits=pl.col("split").n_unique(), split=pl.col("split").first()
    )
    assert per_book["splits"].to_list() == [1] * 24  # no book straddles train and val
    assert set(per_book["split"]) == {"train", "val"}
