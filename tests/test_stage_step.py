"""stage_step, the one body of a cached step: done -> read back; else metered, computed, marker last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import ShardStats
from lmwright.tasks.core.energy import EnergyRecord, EnergySettings
from lmwright.tasks.core.stage import ShardStage, StageWork, latest_as_stage, plan_stage, process_shard, stage_step

OFF = EnergySettings(enabled=False)  # the meter records the duration only: no codecarbon in a unit test


def _work(tmp_path: Path, unit: str | None = "u1") -> StageWork:
    work = plan_stage(tmp_path / "w", "demo", "1", {"x": 1}, ["in"])
    return work.for_unit(unit) if unit else work


def test_a_step_runs_once_and_a_rerun_reads_what_the_first_wrote(tmp_path: Path) -> None:
    runs: list[int] = []

    @stage_step()
    def step(work: StageWork, n: int, energy: EnergySettings | None = None) -> dict[str, Any]:
        runs.append(n)
        return {"n": n, "path": str(Path(work.out_dir) / "thing")}

    work = _work(tmp_path)
    first = step(work, 3, energy=OFF)
    assert runs == [3] and work.done()
    marker = json.loads(work.marker.read_text())
    assert marker["n"] == 3 and marker["energy"]["mode"] == "disabled" and marker["energy"]["stage"] == "demo"
    again = step(work, 4, energy=OFF)  # done: the body does not run, whatever the arguments
    assert runs == [3] and again == first == marker


def test_a_failing_step_writes_no_marker_and_runs_again(tmp_path: Path) -> None:
    calls = []

    @stage_step(metered=False)
    def step(work: StageWork) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("killed half-way")
        return {"ok": True}

    work = _work(tmp_path)
    with pytest.raises(RuntimeError):
        step(work)
    assert not work.marker.exists()
    assert step(work) == {"ok": True} and len(calls) == 2  # unmetered: the record as the body gave it


def test_a_record_that_needs_the_energy_gets_it_and_the_latest_pointer_follows(tmp_path: Path) -> None:
    seen: list[EnergyRecord] = []

    def as_ref(work: StageWork) -> str:
        return f"ref:{work.fingerprint}"

    @stage_step(read=as_ref, latest=latest_as_stage)
    def step(work: StageWork, energy: EnergySettings | None = None) -> Any:
        def record(used: EnergyRecord) -> dict[str, Any]:
            seen.append(used)
            return {"seconds_metered": used.duration_s >= 0, "energy_mode": used.mode}

        return record

    work = _work(tmp_path, unit=None)
    assert step(work, OFF) == f"ref:{work.fingerprint}"
    assert json.loads(work.marker.read_text()) == {"seconds_metered": True, "energy_mode": "disabled"}  # no extra key
    assert len(seen) == 1 and seen[0].stage == "demo"
    latest = json.loads((tmp_path / "w" / "latest" / "demo.json").read_text())
    assert latest["path"] == str(Path(work.out_dir).resolve())


def test_a_shard_step_marker_is_its_stats_with_energy_and_a_rerun_hits(tmp_path: Path) -> None:
    """process_shard through stage_step: the marker holds what ShardStats always held, energy included."""
    part = tmp_path / "in" / "part-00000.parquet"
    part.parent.mkdir()
    pl.DataFrame({"id": ["a", "b"], "text": ["keep me", "x"]}).write_parquet(part)
    applied: list[int] = []

    def short(docs: pl.DataFrame, params: Any) -> pl.DataFrame:
        applied.append(docs.height)
        return docs.with_columns(pl.when(pl.col("text").str.len_chars() < 3).then(pl.lit("demo_short")).alias("reason"))

    stage = ShardStage(name="demo", version="1", apply=short)
    work = _work(tmp_path, unit="part-00000")
    stats = process_shard.fn(work, stage, str(part), {}, ValidationSettings(enabled=False), OFF)
    marker = json.loads(work.marker.read_text())
    assert set(marker) == set(ShardStats.from_json(marker).to_json()) and marker["energy"]["mode"] == "disabled"
    assert (stats.kept, stats.rejected, stats.reasons) == (1, 1, {"demo_short": 1})
    assert process_shard.fn(work, stage, str(part), {}, ValidationSettings(enabled=False), OFF) == stats and applied == [2]
