"""The refresh_mix suite: a real replay mix passes; a corrupted one fails, or warns under severity warn."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from lmwright.data_quality import DataQualityError, ValidationSettings
from lmwright.tasks.refresh.mix import run_mix, validate_mix
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.train.token_dataset import TokenDatasetRef
from lmwright.tasks.train.tokenize import TokenizeParams, run_tokenize
from lmwright.tasks.core.dataset import DOC_SCHEMA, DatasetRef, write_manifest, write_shard
from tests.test_tokenize import paragraphs

pytestmark = pytest.mark.usefixtures("prefect_harness")


def corpus(root: Path, version: str, texts: list[str]) -> DatasetRef:
    """One shard of documents whose ids name their version: versions never share an id."""
    n = len(texts)
    cols = {"id": [f"{version}-{i:04d}" for i in range(n)], "text": texts, "source": ["test"] * n,
            "uri": [f"{version}#{i}" for i in range(n)]}
    kept = pl.DataFrame({c: cols.get(c, [None] * n) for c in DOC_SCHEMA}, schema=DOC_SCHEMA)
    shard = write_shard(root, "part-00000", "dedup", n, sum(len(t.encode()) for t in texts), kept, kept.clear(), 0.0)
    return write_manifest(root, "dedup", f"corpus-{version}", {}, "1", [], [shard])


@flow(persist_result=True)
def mix_flow(workdir: str, old_texts: list[str], new_texts: list[str]) -> TokenDatasetRef:
    params = TokenizeParams(vocab_size=600, val_fraction=0.2, roundtrip_sample_docs=16)
    old = run_tokenize(workdir, corpus(Path(workdir) / "old", "v1", old_texts), params, ValidationSettings())
    reuse = params.model_copy(update={"tokenizer_path": str(old.dir / "tokenizer.json")})
    new = run_tokenize(workdir, corpus(Path(workdir) / "new", "v2", new_texts), reuse, ValidationSettings())
    return run_mix(workdir, new, [old], RefreshSettings(replay_fraction=0.5), 16, ValidationSettings())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    texts = paragraphs(shared_data, 160)
    ref = mix_flow(str(tmp_path_factory.mktemp("mix")), texts[:100], texts[100:])
    assert json.loads((ref.dir / "meta.json").read_text())["mix"]["replay_tokens"]["train"] > 0
    return ref.dir


def corrupted(mixed: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(mixed, bad)
    (bad / "manifest.json").unlink()  # as before the manifest, where the suite runs
    return bad


def failure(path: Path) -> str:
    with pytest.raises(DataQualityError) as exc:
        validate_mix(path, ValidationSettings())
    return str(exc.value)


def test_a_real_mix_passes(mixed: Path) -> None:
    validate_mix(mixed, ValidationSettings())


def test_a_stray_token_fails_naming_the_counts(mixed: Path, tmp_path: Path) -> None:
    bad = corrupted(mixed, tmp_path)
    with open(bad / "train.bin", "ab") as f:
        f.write(b"\x01\x00")
    msg = failure(bad)
    assert "stage 'refresh_mix'" in msg and "columns ['tokens_on_disk', 'tokens_meta']" in msg and "tokens on disk" in msg


def test_meta_that_does_not_add_up_to_new_plus_replay_fails(mixed: Path, tmp_path: Path) -> None:
    bad = corrupted(mixed, tmp_path)
    meta = json.loads((bad / "meta.json").read_text())
    meta["mix"]["replay_tokens"]["val"] += 5
    (bad / "meta.json").write_text(json.dumps(meta))
    assert "expect_first_column_to_equal_sum_of_others (columns ['tokens_meta', 'new_tokens', 'replay_tokens']" in failure(bad)


def test_a_document_in_the_mix_twice_fails_and_warns_under_severity_warn(
    mixed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = corrupted(mixed, tmp_path)
    docs = pl.read_parquet(bad / "docs.parquet")
    first_train = docs.filter(pl.col("split") == "train").head(1)
    docs.with_row_index("_r").with_columns(
        pl.when(pl.col("_r") == docs.height - 1).then(pl.lit(first_train["id"][0])).otherwise(pl.col("id")).alias("id")
    ).drop("_r").write_parquet(bad / "docs.parquet")  # the last (val) document renamed after a train one
    assert "column 'ids_in_both_splits'" in failure(bad)

    with caplog.at_level(logging.WARNING, logger="lmwright.data_quality"):
        validate_mix(bad, ValidationSettings(stage_severity={"refresh_mix": "warn"}))
    seen = [r.getMessage() for r in caplog.records]
    assert any("data quality warning: stage 'refresh_mix'" in m and "in both splits" in m for m in seen)
