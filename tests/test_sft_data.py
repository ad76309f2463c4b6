"""The sft suite: real fine-tuning examples pass; planted mask and id faults fail, or warn under severity warn."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lmwright.data_quality import DataQualityError, ValidationSettings, validate_summary
from lmwright.data_quality.sft import sft_suite
from lmwright.models.tokenizer import SpecialTokens, load_tokenizer, train_bpe
from lmwright.tasks.train.sft import builtin_pairs, encode_sft, sft_summary

BLOCK = 128  # the tiny preset's context: some builtin prompts fill it whole


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, shared_data: Path):
    text = (shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt").read_text()
    tok = train_bpe([p for p in text.split("\n\n") if p.strip()][:400], 800, 2, SpecialTokens())
    path = tmp_path_factory.mktemp("sft") / "tokenizer.json"
    tok.save(str(path))
    tok = load_tokenizer(path)
    pairs = [(p, r) for _, p, r in builtin_pairs()][:400]
    ids, mask = encode_sft(tok, pairs, BLOCK + 1)
    return tok, ids, mask


def check(tok, ids: np.ndarray, mask: np.ndarray, severity: str = "fail") -> None:
    validate_summary("sft", sft_suite(), sft_summary("train", ids, mask, tok), ValidationSettings(severity=severity),
                     "examples", index_column="example")


def failure(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    with pytest.raises(DataQualityError) as exc:
        check(tok, ids, mask)
    return str(exc.value)


def test_real_examples_pass_including_prompts_that_fill_the_block(encoded) -> None:
    tok, ids, mask = encoded
    summary = sft_summary("train", ids, mask, tok)
    assert summary.height == 400 and summary["target_tokens"].min() >= 0
    assert (summary["prompt_fits"] == 0).sum() > 0, "the sample should hold a prompt longer than the block"
    assert (summary.filter(pl.col("prompt_fits") == 1)["target_tokens"] >= 1).all()
    check(tok, ids, mask)


def test_an_example_that_fits_but_carries_no_loss_fails(encoded) -> None:
    tok, ids, mask = encoded
    fits = sft_summary("train", ids, mask, tok)["prompt_fits"].to_numpy()
    row = int(np.flatnonzero(fits)[5])
    bad = mask.copy()
    bad[row] = 0
    msg = failure(tok, ids, bad)
    assert "column 'target_tokens', min_value=1.0)" in msg and f"'train#{row}'" in msg


def test_loss_on_the_prompt_or_padding_fails(encoded) -> None:
    tok, ids, mask = encoded
    shifted = np.roll(mask, -1, axis=1)  # off by one: the newline after the assistant marker carries loss
    assert "column 'masked_prompt_tokens'" in failure(tok, ids, shifted)
    padded = mask.copy()
    pad_row, pad_pos = map(int, np.argwhere(ids == tok.token_to_id("<|pad|>"))[0])
    padded[pad_row, pad_pos] = 1
    assert "column 'masked_pad_tokens'" in failure(tok, ids, padded)


def test_token_id_beyond_the_vocabulary_fails(encoded) -> None:
    tok, ids, mask = encoded
    bad = ids.copy()
    bad[3, 10] = 60_000
    assert "expect_column_pair_values_a_to_be_greater_than_b (columns ['vocab_size', 'max_id']" in failure(tok, bad, mask)


def test_severity_warn_logs_instead_of_failing(encoded, caplog: pytest.LogCaptureFixture) -> None:
    tok, ids, mask = encoded
    with caplog.at_level(logging.WARNING, logger="lmwright.data_quality"):
        check(tok, ids, np.roll(mask, -1, axis=1), severity="warn")
    seen = [r.getMessage() for r in caplog.records]
    assert any("data quality warning: stage 'sft'" in m and "masked_prompt_tokens" in m for m in seen)


@pytest.mark.usefixtures("prefect_harness")
def test_the_sft_stage_validates_what_it_writes(tmp_path: Path, encoded, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    import lmwright.tasks.train.sft as sft
    from lmwright.tasks.train.token_dataset import TokenDatasetRef

    tok, _, _ = encoded
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    tok.save(str(tokens / "tokenizer.json"))
    ref = TokenDatasetRef.at(tokens)  # the stage reads only its tokenizer
    params = sft.SftDataParams(max_pairs=300)

    @flow
    def build(workdir: str, severity: str) -> str:
        return sft.run_sft_data(workdir, ref, params, BLOCK, ValidationSettings(severity=severity)).path

    out = Path(build(str(tmp_path / "good"), "fail"))
    assert np.load(out / "train_ids.npy").shape[1] == BLOCK + 1
    # an encoder that puts loss on the prompt's last token (the newline after the assistant marker)
    real = sft.encode_sft
    monkeypatch.setattr(sft, "encode_sft", lambda *a, **k: (lambda ids, mask: (ids, np.roll(mask, -1, axis=1)))(*real(*a, **k)))
    with pytest.raises(DataQualityError, match="stage 'sft'") as exc:
        build(str(tmp_path / "bad"), "fail")
    assert "column 'masked_prompt_tokens'" in str(exc.value)

