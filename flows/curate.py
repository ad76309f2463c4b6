"""The curate flow: raw sources -> a clean, deduplicated, validated corpus and its data card."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from lmwright.flows.runners import default_task_runner
from lmwright.flows.config import CurateConfig
from lmwright.flows.forms import DEFAULT_PRESET, CurateForm, resolve_config
from lmwright.tasks.curate.bias.filter import BIAS_STAGE
from lmwright.tasks.curate.card import CardInputs, card_work, require_documents, write_card
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.dedup.stage import run_dedup
from lmwright.tasks.curate.ingest import run_ingest
from lmwright.tasks.curate.langid import LANGID_STAGE
from lmwright.tasks.curate.license.optout import resolve_optouts
from lmwright.tasks.curate.license.stage import LICENSE_STAGE
from lmwright.tasks.curate.normalize import NORMALIZE_STAGE
from lmwright.tasks.curate.pii import PII_STAGE, resolve_pii
from lmwright.tasks.curate.quality import QUALITY_STAGE, resolve_quality
from lmwright.tasks.core.dataset import TextDroppedError, forget_text_dropped, require_text
from lmwright.tasks.curate.retention import run_retention
from lmwright.tasks.curate.urlfilter import URLFILTER_STAGE, resolve_block_lists
from lmwright.tasks.curate.sources import SourceInput
from lmwright.tasks.core.results import PERSISTED_RESULTS
from lmwright.tasks.core.stage import run_shard_stage


class CuratedCorpus(BaseModel):
    """What curate hands on: the corpus, its card, and every stage's dataset."""

    corpus: DatasetRef
    card: str
    stages: dict[str, DatasetRef]


def resolved_validation(config: CurateConfig) -> CurateConfig:
    """Data Docs go under the workdir unless the config says otherwise."""
    if config.validation.docs_dir:
        return config
    docs = str(Path(config.workdir).resolve() / "data_docs")
    return config.model_copy(update={"validation": config.validation.model_copy(update={"docs_dir": docs})})


@flow(name="curate", log_prints=True, persist_result=True, **PERSISTED_RESULTS, task_runner=default_task_runner())
def curate(
    config: CurateForm | None = None,
    preset: str | None = DEFAULT_PRESET,
    workdir: str | None = None,
    sources: list[SourceInput] | None = None,
) -> CuratedCorpus:
    """Ingest -> urlfilter -> license -> normalize -> langid -> quality -> pii -> bias -> dedup -> data card.

    Args:
        config: What this run changes in the preset; an empty field keeps the preset's value. A full config works too.
        preset: A preset name (tiny, small, gpt2-124m) or a YAML file; none: every field's model default.
        workdir: Directory for datasets, caches, Data Docs and reports; empty: the preset's.
        sources: Paths, directories, fsspec URLs or builtin:pydocs (a string is a path); empty: the preset's.
    """
    config = resolved_validation(resolve_config(CurateConfig, config, preset, workdir, sources))
    workdir = config.workdir
    try:
        stages, card = curate_once(config)
    except TextDroppedError as dropped:
        # An earlier run's retention dropped text this run needs: rebuild it from the sources, once.
        removed = forget_text_dropped(dropped.dataset)
        get_run_logger().info("%s; rebuilding %d dataset(s)", dropped, len(removed))
        stages, card = curate_once(config)
    corpus = stages[-1]
    # Retention: once the corpus and its card exist, the raw copies before pii may go
    before_pii = stages[: [s.stage for s in stages].index("pii")]
    run_retention(workdir, before_pii, config.retention, config.rejected, resolve_pii(config.pii, workdir))

    get_run_logger().info("corpus: %s (%d documents)", corpus.path, corpus.manifest()["rows"])
    return CuratedCorpus(corpus=corpus, card=card, stages={s.stage: s for s in stages})


def curate_once(config: CurateConfig) -> tuple[list[DatasetRef], str]:
    """Every stage's dataset (the corpus last) and the card; TextDroppedError if retention dropped text it needs."""
    workdir, checks, energy = config.workdir, config.validation, config.energy

    # Extract
    raw = run_ingest(workdir, config.ingest, checks, energy)
    require_documents(raw, [raw])  # sources that give nothing: say so now, in one line
    # Transform: each stage keeps or rejects documents with a reason
    allowed = run_shard_stage(workdir, URLFILTER_STAGE, raw, resolve_block_lists(config.urlfilter, workdir), checks, energy)
    licensed = run_shard_stage(workdir, LICENSE_STAGE, allowed, resolve_optouts(config.license, workdir), checks, energy)
    normalized = run_shard_stage(workdir, NORMALIZE_STAGE, licensed, config.normalize, checks, energy)
    identified = run_shard_stage(workdir, LANGID_STAGE, normalized, config.langid, checks, energy)
    good = run_shard_stage(workdir, QUALITY_STAGE, identified, resolve_quality(config.quality), checks, energy)
    scrubbed = run_shard_stage(workdir, PII_STAGE, good, resolve_pii(config.pii, workdir), checks, energy)
    fair = run_shard_stage(workdir, BIAS_STAGE, scrubbed, config.bias, checks, energy)
    corpus = run_dedup(workdir, fair, config.dedup, checks, energy)
    # Report
    stages = [raw, allowed, licensed, normalized, identified, good, scrubbed, fair, corpus]
    require_documents(corpus, stages)  # every document dropped: the message lists by whom, not a card over nothing
    report = CardInputs(
        license=config.license, bias=config.bias, bias_audit=config.bias_audit, validation=checks,
        retention=config.retention, rejected=config.rejected,
    )
    work = card_work(corpus, report)
    if not work.done():
        require_text(*stages)  # the bias audit reads every stage's documents
    return stages, write_card(work, corpus, stages, report)


if __name__ == "__main__":
    print(curate().corpus.path)
