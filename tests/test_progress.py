"""Live progress lines: throttled, with rate and ETA, following the real end of a run."""

from __future__ import annotations

import io
import logging

from lmwright.tasks.core.progress import LINE_SECONDS, LiveProgress, _RoutineStateLines, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    live = LiveProgress("pretrain", 100, unit="steps", stream=out, rate_unit="tokens", rate_scale=1000, clock=clock)
    live.update(0, loss=8.0)
    for step in range(1, 51):
        clock.now = step * 0.5  # 2 steps/s
        live.update(step, loss=8.0 - step / 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + int(25 // LINE_SECONDS)  # one at the start, then one per interval, not one per step
    last = lines[-1]
    assert "pretrain 30/100 steps (30%)" in last and "2,000 tokens/s" in last and "ETA 35s" in last


def test_the_bar_follows_the_real_end_when_a_run_stops_early() -> None:
    out, clock = io.StringIO(), Clock()
    live = LiveProgress("pretrain", 600, stream=out, clock=clock)
    live.update(0)
    clock.now = 100.0
    live.finish(140)  # early stopping at step 140 of 600
    assert out.getvalue().splitlines()[-1].startswith("pretrain 140/140 steps (100%)")


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_routine_task_state_lines_are_dropped_from_the_terminal_only() -> None:
    keep = _RoutineStateLines()

    def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)

    assert not keep.filter(record("Finished in state Completed()"))
    assert not keep.filter(record("Finished in state Cached(type=COMPLETED)"))
    assert keep.filter(record("quality: 700 in, 650 kept"))
    assert keep.filter(record("Finished in state Failed('boom')", logging.ERROR))


def test_a_stage_name_with_underscores_gives_a_valid_artifact_key(prefect_harness: None) -> None:
    """Prefect keys allow lowercase letters, digits and dashes: the refresh's dedup_previous stage failed here."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow
    def shards() -> None:
        LiveProgress("dedup_previous", 2, unit="shards", artifact_key="dedup_previous-progress", stream=io.StringIO())

    shards()
    with get_client(sync_client=True) as client:
        assert "dedup-previous-progress" in {a.key for a in client.read_artifacts()}


def test_the_filter_sits_on_prefects_console_handler() -> None:
    """Prefect's console handler is on the root logger (run loggers propagate to it): a filter elsewhere filters nothing."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from lmwright.tasks.core.progress import quiet_routine_task_lines

    quiet_routine_task_lines()
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert consoles and all(any(isinstance(f, _RoutineStateLines) for f in h.filters) for h in consoles)


def test_a_stage_reports_documents_done_of_total_with_docs_per_second(
    prefect_harness: None, tmp_path, capsys
) -> None:
    """The curate stages' live line counts the input's documents (docs/s, ETA), not shards of unequal size."""
    import polars as pl
    from prefect import flow

    from lmwright.data_quality import ValidationSettings
    from lmwright.tasks.core.dataset import DOC_SCHEMA, write_manifest, write_shard
    from lmwright.tasks.core.energy import EnergySettings
    from lmwright.tasks.core.stage import ShardStage, run_shard_stage

    src, shards = tmp_path / "src", []
    for k, n in enumerate((3, 5)):
        docs = pl.DataFrame({"id": [f"d{k}-{i}" for i in range(n)], "text": ["some words here"] * n}).with_columns(
            **{c: pl.lit(None, dtype=t) for c, t in DOC_SCHEMA.items() if c not in ("id", "text")}
        )
        shards.append(write_shard(src, f"part-{k:05d}", "ingest", n, 0, docs, docs.head(0), 0.0))
    source = write_manifest(src, "ingest", "fp", {}, "1", [], shards)
    keep_all = ShardStage("keep_all", "1", lambda d, p: d.with_columns(reason=pl.lit(None, dtype=pl.String)))

    @flow
    def one_stage() -> None:
        run_shard_stage(tmp_path / "w", keep_all, source, {}, ValidationSettings(enabled=False), EnergySettings(enabled=False))

    one_stage()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("keep_all ")]
    assert lines[-1].startswith("keep_all 8/8 docs (100%)") and "shards 2/2" in lines[-1], lines
