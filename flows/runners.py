"""Task runners: the config decides where shard-wise tasks run, never the tasks themselves."""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from lmwright.flows.config import RunnerSettings
from lmwright.tasks.core.cpu_threads import cpu_env


def default_task_runner() -> ThreadPoolTaskRunner:
    """What flows use unless a config picks another runner: threads, one per core."""
    return ThreadPoolTaskRunner(max_workers=os.cpu_count() or 2)


def build_task_runner(settings: RunnerSettings) -> Any:
    if settings.kind == "threads":
        # Bounded: every running shard task holds its shard in memory, so an unbounded pool
        # (Prefect's default) makes peak memory grow with the number of shards.
        return ThreadPoolTaskRunner(max_workers=settings.max_workers or os.cpu_count() or 2)
    if settings.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("runner.kind=dask needs the 'dask' extra: pip install 'lmwright[dask]'") from None
        if settings.address:
            return DaskTaskRunner(address=settings.address)
        # Each worker's Nanny sets these before the worker runs a task (hence before it imports torch).
        cluster = {"n_workers": settings.max_workers or 2, "processes": True, "env": cpu_env()}
        return DaskTaskRunner(cluster_kwargs=cluster)
    raise ValueError(f"unknown runner.kind {settings.kind!r}")
