from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lmwright.tasks.core.dataset import (
    DatasetRef,
    IncompleteDatasetError,
    fingerprint,
    ShardStats,
    split_decisions,
    write_manifest,
    write_shard,
)
from lmwright.tasks.curate.normalize import NormalizeParams


def test_fingerprint_is_canonical_and_sensitive() -> None:
    a = fingerprint("quality", "1", {"x": 1, "y": [1, 2]}, ["in1"])
    assert a == fingerprint("quality", "1", {"y": [1, 2], "x": 1}, ["in1"])
    assert a != fingerprint("quality", "2", {"x": 1, "y": [1, 2]}, ["in1"])
    assert a != fingerprint("quality", "1", {"x": 2, "y": [1, 2]}, ["in1"])
    assert a != fingerprint("quality", "1", {"x": 1, "y": [1, 2]}, ["in2"])
    assert a != fingerprint("pii", "1", {"x": 1, "y": [1, 2]}, ["in1"])
    assert fingerprint("n", "1", NormalizeParams(), []) == fingerprint("n", "1", NormalizeParams().model_dump(), [])


def test_split_write_and_manifest_round_trip(tmp_path: Path) -> None:
    docs = pl.DataFrame({"id": ["a", "b", "c"], "text": ["x", "yy", "zzz"], "reason": [None, "r_short", None]})
    kept, rejected = split_decisions(docs, "s")
    assert kept.columns == ["id", "text"] and rejected["stage"].to_list() == ["s"]
    stats = write_shard(tmp_path, "part-00000", "s", 3, 6, kept, rejected, 0.1)
    assert ShardStats.from_json(stats.to_json()) == stats  # what a step's marker holds
    assert not (tmp_path / "stats").exists()  # the marker is the step's to write (stage_step), not the writer's
    assert stats.reasons == {"r_short": 1}
    with pytest.raises(IncompleteDatasetError):
        DatasetRef("s", "fp", str(tmp_path)).parts()
    ref = write_manifest(tmp_path, "s", "fp", {}, "1", [], [stats])
    assert ref.read()["id"].to_list() == ["a", "c"]
    assert ref.manifest()["shards"][0]["rows"] == 2
    assert [p.name for p in ref.rejected_parts()] == ["part-00000.parquet"]


def test_accounting_mismatch_is_refused(tmp_path: Path) -> None:
    kept = pl.DataFrame({"id": ["a"], "text": ["x"]})
    with pytest.raises(AssertionError, match="2 in != 1 kept"):
        write_shard(tmp_path, "p", "s", 2, 1, kept, kept.clear().with_columns(pl.lit("r").alias("reason")), 0.0)
