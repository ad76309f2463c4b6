"""The deployments of lmwright, served from one process (``lmwright serve``): no work pool needed.

The same deployments are declared for work pools in deployments/prefect.yaml.
Parameters default to a preset (tiny unless told otherwise), so the Prefect UI opens a
form already filled in; every section keeps its own defaults when an API caller sends
only part of a config.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

from flows.config import PipelineConfig

# One refresh at a time: a second nightly run that finds one still going is cancelled,
# not queued (two refreshes would race for the same ledger and corpus version).
REFRESH_LIMIT = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def deployment_parameters(config: PipelineConfig) -> dict[str, Any]:
    return {"config": config.model_dump(mode="json")}


def build_deployments(config: PipelineConfig, schedule_refresh: bool = True) -> list[Any]:
    """pipeline (manual), curate (manual), refresh (nightly cron, concurrency 1)."""
    from flows.curate import curate
    from flows.pipeline import pipeline
    from flows.refresh import refresh

    params = deployment_parameters(config)
    settings = config.refresh
    schedules = [Cron(settings.cron, timezone=settings.timezone)] if schedule_refresh else []
    return [
        pipeline.to_deployment(
            name="pipeline",
            parameters={**params, "until": "export"},
            description="Raw text to a trained, evaluated, exported model.",
            tags=["lmwright"],
        ),
        curate.to_deployment(
            name="curate",
            parameters={"config": {k: v for k, v in params["config"].items() if k in curate_fields()}},
            description="Raw sources to a clean, deduplicated corpus and its data card.",
            tags=["lmwright"],
        ),
        refresh.to_deployment(
            name="refresh",
            parameters=params,
            schedules=schedules,
            concurrency_limit=REFRESH_LIMIT,
            description="Nightly: ingest what is new, dedup against every earlier version, continue training, promote.",
            tags=["lmwright", "nightly"],
        ),
    ]


def curate_fields() -> set[str]:
    from flows.config import CurateConfig

    return set(CurateConfig.model_fields)


def serve_all(config: PipelineConfig, schedule_refresh: bool = True) -> None:
    serve(*build_deployments(config, schedule_refresh))
