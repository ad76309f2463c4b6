"""The suite of fine-tuning data (tasks/train/sft.py), over one summary row per example.

- sft: every example whose prompt fits its block has at least one loss-masked target token
  (an example whose prompt alone fills the block teaches nothing: counted in the notes);
  no prompt, marker or padding token carries loss; mask values are 0 or 1; every token id is
  below the vocabulary size.

The summary frame is computed by ``tasks.train.sft.sft_summary``; run by ``validate.validate_summary``.
"""

from __future__ import annotations

from typing import Any, Callable


def sft_suite() -> tuple[str, Callable[[], list[Any]]]:
    """Over sft_summary's frame: example, target_tokens, prompt_fits, fitting_without_target, ..."""

    def build() -> list[Any]:
        import great_expectations as gx

        e = gx.expectations
        zero = lambda col: e.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=0)  # noqa: E731
        return [
            e.ExpectColumnValuesToBeBetween(
                column="target_tokens", min_value=1, condition_parser="pandas", row_condition="prompt_fits == 1"
            ),
            zero("masked_prompt_tokens"),
            zero("masked_pad_tokens"),
            e.ExpectColumnValuesToBeBetween(column="mask_max", min_value=0, max_value=1),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="vocab_size", column_B="max_id"),
        ]

    return "sft_examples", build
