"""The suites of token datasets (tasks/train/token_dataset.py), over one summary row per split.

- tokenize: every token id < the vocabulary size; train.bin/val.bin hold as many tokens as
  meta.json and docs.parquet (tokens x repeats) say; docs.parquet has the documents meta.json
  counts; UTF-8 bytes per token > 1; decode(encode(text)) == text on a sample, each document
  ending with end-of-text; no id in both splits (or twice in one); no document missing.
- refresh_mix (the replay mix of a refresh, tasks/refresh/mix.py): every token id < the vocabulary
  size; train.bin/val.bin hold as many tokens as meta.json and docs.parquet say, and meta.json's
  tokens are the new tokens plus the replayed ones; docs.parquet has the documents meta.json
  counts; no document in the mix twice or in both splits.

The summary frame is computed by ``tasks.train.token_dataset.token_summary`` (the mix adds
new_tokens and replay_tokens per split); a suite here is a
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
            *_arrays_agree(),
            e.ExpectColumnValuesToBeBetween(column="bytes_per_token", min_value=1.0, strict_min=True),
            _zero("roundtrip_mismatches"),
            _zero("eot_missing"),
            _zero("docs_missing"),
        ]

    return "tokenize_summary", build


def _arrays_agree() -> list[Any]:
    """What every token dataset satisfies: ids < vocab, the arrays, meta.json and docs.parquet agree."""
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="vocab_size", column_B="max_id"),
        e.ExpectColumnPairValuesToBeEqual(column_A="tokens_on_disk", column_B="tokens_meta"),
        e.ExpectColumnPairValuesToBeEqual(column_A="tokens_on_disk", column_B="tokens_docs"),
        e.ExpectColumnPairValuesToBeEqual(column_A="docs_meta", column_B="docs_index"),
        _zero("ids_in_both_splits"),
    ]


def mix_suite() -> tuple[str, Callable[[], list[Any]]]:
    """Over token_summary's frame plus new_tokens and replay_tokens per split."""

    def build() -> list[Any]:
        from lmwright.data_quality.expectations import ExpectFirstColumnToEqualSumOfOthers

        return [*_arrays_agree(), ExpectFirstColumnToEqualSumOfOthers(column_list=["tokens_meta", "new_tokens", "replay_tokens"])]

    return "refresh_mix_summary", build
