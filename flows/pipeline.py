"""The whole pipeline as one Prefect flow with subflows: curate -> train -> evaluate."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel

from lmwright.flows.runners import build_task_runner, default_task_runner
from lmwright.flows.config import PipelineConfig
from lmwright.flows.curate import curate
from lmwright.flows.forms import DEFAULT_PRESET, PipelineForm, resolve_config
from lmwright.flows.train import Evaluation, TrainedModels, evaluate_flow, train_flow
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.core.results import PERSISTED_RESULTS
from lmwright.tasks.curate.sources import SourceInput

Until = Literal["curate", "tokenize", "pretrain", "finetune", "evaluate", "export"]


class PipelineResult(BaseModel):
    corpus: DatasetRef
    card: str
    models: TrainedModels | None = None
    evaluation: Evaluation | None = None

    def result_dir(self, until: Until) -> str:
        """The directory of the last stage asked for: what the CLI prints last."""
        if until == "curate" or self.models is None:
            return self.corpus.path
        if until == "tokenize" or self.models.pretrained is None:
            return self.models.tokens.path
        if until == "pretrain":
            return self.models.pretrained.path
        if until == "finetune":
            return self.models.final.path
        assert self.evaluation is not None
        if until == "evaluate":
            return self.evaluation.report
        return self.evaluation.export or self.evaluation.report


@flow(name="pipeline", log_prints=True, persist_result=True, **PERSISTED_RESULTS, task_runner=default_task_runner())
def pipeline(
    config: PipelineForm | None = None,
    until: Until = "export",
    preset: str | None = DEFAULT_PRESET,
    workdir: str | None = None,
    sources: list[SourceInput] | None = None,
) -> PipelineResult:
    """Raw text to a trained, evaluated, exported model; every stage cached and validated.

    Args:
        config: What this run changes in the preset; an empty field keeps the preset's value. A full config works too.
        until: The last stage to run.
        preset: A preset name (tiny, small, gpt2-124m) or a YAML file; none: every field's model default.
        workdir: Directory for datasets, models, caches and reports; empty: the preset's.
        sources: Paths, directories, fsspec URLs or builtin:pydocs (a string is a path); empty: the preset's.
    """
    config = resolve_config(PipelineConfig, config, preset, workdir, sources)
    # The data stages run where the config says (threads or Dask: runner.kind); training has its own launcher.
    curated = curate.with_options(task_runner=build_task_runner(config.runner))(config)
    if until == "curate":
        return PipelineResult(corpus=curated.corpus, card=curated.card)
    models = train_flow(config, curated.corpus, until="finetune" if until in ("evaluate", "export") else until)
    if until in ("tokenize", "pretrain", "finetune"):
        return PipelineResult(corpus=curated.corpus, card=curated.card, models=models)
    evaluation = evaluate_flow(config, models, curated.card, export=until == "export")
    logger = get_run_logger()
    logger.info("model: %s", models.final.path)
    logger.info("report: %s; data card: %s", evaluation.report, curated.card)
    if evaluation.export:
        logger.info("export: %s (%s)", evaluation.export, "promoted" if evaluation.promoted else "not promoted")
    return PipelineResult(corpus=curated.corpus, card=curated.card, models=models, evaluation=evaluation)


if __name__ == "__main__":
    result = pipeline()
    print(result.result_dir("export"))
