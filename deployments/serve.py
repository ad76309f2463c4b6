"""The deployments of lmwright, served from one process (``lmwright serve``): no work pool needed.

The same deployments are declared for work pools in deployments/prefect.yaml, with the same
parameters: both name the preset (``preset: tiny``) rather than copying its values, so the two
routes give the same form, and a run that changes one threshold keeps the deployment's preset,
workdir and sources (see flows/forms.py: Prefect replaces parameters per top-level key).
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from lmwright.flows.config import PipelineConfig, apply_overrides
from lmwright.flows.forms import SCHEDULE_FIELDS, CurateForm, PipelineForm, RefreshForm, shown_fields

# One refresh at a time: a second nightly run that finds one still going is cancelled,
# not queued (two refreshes would race for the same ledger and corpus version).
REFRESH_LIMIT = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)

DESCRIPTIONS = {
    "pipeline": "Raw text to a trained, evaluated, exported model (manual trigger).",
    "curate": "Raw sources to a clean, deduplicated corpus and its data card.",
    "refresh": "Nightly corpus refresh; continues training from the promoted model.",
}


def _shown(form: type[Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides ``form`` has fields for; the others are parameters of their own or have no effect there."""
    return {k: v for k, v in overrides.items() if k in shown_fields(form)}


def deployment_parameters(
    preset: str | None = None,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    sources: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each deployment's parameters: the preset by name, plus only what ``lmwright serve`` was told.

    ``--set`` overrides go to each flow's ``config`` (the refresh section to refresh's
    ``settings``, its cron/timezone to the schedule only); workdir and sources are parameters
    of their own, so a run's partial ``config`` cannot drop them.
    """
    changes = apply_overrides({}, list(overrides or []))
    workdir = workdir or changes.get("workdir")
    sources = sources or (changes.get("ingest") or {}).pop("sources", None)
    if changes.get("ingest") == {}:
        del changes["ingest"]
    common: dict[str, Any] = {k: v for k, v in (("preset", preset), ("workdir", workdir), ("sources", sources)) if v}
    settings = {k: v for k, v in (changes.get("refresh") or {}).items() if k not in SCHEDULE_FIELDS}

    def with_config(params: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        return {**params, "config": config} if config else params

    return {
        "pipeline": with_config({**common, "until": "export"}, _shown(PipelineForm, changes)),
        "curate": with_config(dict(common), _shown(CurateForm, changes)),
        "refresh": with_config(dict(common), _shown(RefreshForm, changes)) | ({"settings": settings} if settings else {}),
    }


def build_deployments(
    config: PipelineConfig, parameters: dict[str, dict[str, Any]], schedule_refresh: bool = True
) -> list[Any]:
    """pipeline (manual), curate (manual), refresh (nightly cron from ``config.refresh``, concurrency 1)."""
    from lmwright.flows.curate import curate
    from lmwright.flows.pipeline import pipeline
    from lmwright.flows.refresh import refresh

    schedules = [config.refresh.schedule()] if schedule_refresh else []
    return [
        pipeline.to_deployment(
            name="pipeline", parameters=parameters["pipeline"], description=DESCRIPTIONS["pipeline"], tags=["lmwright"]
        ),
        curate.to_deployment(
            name="curate", parameters=parameters["curate"], description=DESCRIPTIONS["curate"], tags=["lmwright"]
        ),
        refresh.to_deployment(
            name="refresh",
            parameters=parameters["refresh"],
            schedules=schedules,
            concurrency_limit=REFRESH_LIMIT,
            description=DESCRIPTIONS["refresh"],
            tags=["lmwright", "nightly"],
        ),
    ]


def serve_all(config: PipelineConfig, parameters: dict[str, dict[str, Any]], schedule_refresh: bool = True) -> None:
    serve(*build_deployments(config, parameters, schedule_refresh))

