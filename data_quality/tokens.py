"""The suites of token datasets (tasks/train/token_dataset.py), over one summary row per split.

- tokenize: every token id < the vocabulary size; train.bin/val.bin hold as many tokens as
  meta.json and docs.parquet (tokens x repeats) say; docs.parquet has the documents meta.json
  counts; UTF-8 bytes per token > 1; decode(encode(text)) == text on a sample, each document
  ending with end-of-text; no id in both splits (or twice in one); no document missing.

The summary frame is computed by ``tasks.train.token_dataset.token_summary``; a suite here is a
pure description (building it imports GX), run by ``validate.validate_summary``.
"""

from __future__ import annotations

from typing import Any, Callable


def _zero(column: str) -> Any:
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=0)


def tokenize_suite() -> tuple[str, Callable[[], list[Any]]]:
    """Over token_summary's frame: split, vocab_size, max_id, tokens_on_disk/meta/docs, docs_meta/index, ..."""

    def build() -> list[Any]:
        import great_expectations as gx

        e = gx.expectations
        return [
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="vocab_size", column_B="max_id"),
            e.ExpectColumnPairValuesToBeEqual(column_A="tokens_on_disk", column_B="tokens_meta"),
            e.ExpectColumnPairValuesToBeEqual(column_A="tokens_on_disk", column_B="tokens_docs"),
            e.ExpectColumnPairValuesToBeEqual(column_A="docs_meta", column_B="docs_index"),
            e.ExpectColumnValuesToBeBetween(column="bytes_per_token", min_value=1.0, strict_min=True),
            _zero("roundtrip_mismatches"),
            _zero("eot_missing"),
            _zero("ids_in_both_splits"),
            _zero("docs_missing"),
        ]

    return "tokenize_summary", build
