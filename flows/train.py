"""Training flows: tokenize -> pretrain -> finetune, and evaluate -> export -> promote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from pydantic import BaseModel

from lmwright.flows.runners import default_task_runner
from lmwright.flows.config import PipelineConfig
from lmwright.tasks.core.dataset import DatasetRef, write_json
from prefect.artifacts import create_table_artifact

from lmwright.tasks.core.energy import energy_table
from lmwright.tasks.train.carbon_window import wait_for_window
from lmwright.models.run import ModelRef
from lmwright.tasks.train.modeling import (
    evaluate_model, evaluation_work, export_model, export_work, finetune_model, model_work, pretrain_model,
)
from lmwright.tasks.train.model_card import render_model_card
from lmwright.tasks.refresh.withdraw import render_withdrawals_markdown, withdrawal_report
from lmwright.tasks.train.decontaminate import render_contamination_markdown, run_decontaminate
from lmwright.tasks.train.sft import SftDatasetRef, run_sft_data
from lmwright.tasks.core.results import PERSISTED_RESULTS
from lmwright.tasks.core.files import append_line_once
from lmwright.tasks.core.stage import is_not_data_quality_error
from lmwright.tasks.train.token_dataset import TokenDatasetRef
from lmwright.tasks.train.tokenize import run_tokenize

PROMOTED = "promoted.json"


class TrainedModels(BaseModel):
    """What training hands on: the tokens, the pretrained model and, when fine-tuned, its data and model."""

    tokens: TokenDatasetRef
    pretrained: ModelRef | None = None  # None: stopped after tokenize
    finetuned: ModelRef | None = None
    sft: SftDatasetRef | None = None
    decontamination: dict[str, Any] | None = None  # what decontaminate found: the cards show it

    @property
    def final(self) -> ModelRef:
        """The model the run ends with: fine-tuned when it was, else pretrained."""
        final = self.finetuned or self.pretrained
        if final is None:
            raise ValueError("no model was trained (the run stopped after tokenize)")
        return final


@flow(name="train", log_prints=True, persist_result=True, **PERSISTED_RESULTS, task_runner=default_task_runner())
def train_flow(config: PipelineConfig, corpus: DatasetRef, until: str = "finetune") -> TrainedModels:
    """Tokenize the corpus, pretrain on next-token prediction, then fine-tune on pairs."""
    workdir, checks = config.workdir, config.validation

    found = None
    if config.evaluate.decontaminate.enabled:  # no evaluation set's text may be trained on
        corpus, found = run_decontaminate(workdir, corpus, config.evaluate.decontaminate, config.tokenize.val_fraction,
                                          config.tokenize.split_seed, config.evaluate.tasks, checks, config.energy)
    tokens = run_tokenize(workdir, corpus, config.tokenize, checks, config.energy)
    if until == "tokenize":
        return TrainedModels(tokens=tokens, decontamination=found)
    work = model_work(workdir, "pretrain", config.pretrain, [tokens.fingerprint])
    if config.carbon_window and not work.done():
        wait_for_window(config.carbon_window)  # the run shows as Paused in the UI until the window opens
    pretrained = pretrain_model(work, tokens, config.pretrain, energy=config.energy)
    if until == "pretrain" or not config.finetune.enabled:
        return TrainedModels(tokens=tokens, pretrained=pretrained, decontamination=found)

    sft, finetuned = finetune(config, tokens, pretrained)
    return TrainedModels(tokens=tokens, pretrained=pretrained, finetuned=finetuned, sft=sft, decontamination=found)


def finetune(config: PipelineConfig, tokens: TokenDatasetRef, pretrained: ModelRef) -> tuple[SftDatasetRef, ModelRef]:
    """Fine-tuning pairs encoded at the pretrained model's context, then SFT from it (the pipeline's and the refresh's)."""
    block = pretrained.result()["model_config_json"]["block_size"]  # result.json: no torch, no weights
    sft = run_sft_data(config.workdir, tokens, config.finetune.data, block, config.validation)
    ft_params = {"train": config.finetune.train, "lora": config.finetune.lora}
    work = model_work(config.workdir, "finetune", ft_params, [pretrained.fingerprint, sft.fingerprint])
    return sft, finetune_model(work, pretrained, sft, config.finetune.train, config.finetune.lora, energy=config.energy)


class Evaluation(BaseModel):
    report: str  # the evaluation directory: metrics.json
    metrics: dict[str, Any]
    export: str | None
    promoted: bool
    reasons: list[str]


@flow(name="evaluate", log_prints=True, persist_result=True, **PERSISTED_RESULTS, task_runner=default_task_runner())
def evaluate_flow(
    config: PipelineConfig,
    models: TrainedModels,
    corpus_card: str | None = None,
    export: bool = True,
    withdrawn: str | None = None,
) -> Evaluation:
    """Score the final model on held-out data, gate it, export it, promote it if the gate passes.

    ``withdrawn``: the record of documents whose consent was withdrawn (default: the current
    corpus version's); the model card names the models that still contain them."""
    workdir, tokens, sft, final = config.workdir, models.tokens, models.sft, models.final

    work = evaluation_work(workdir, final, tokens, config.evaluate)
    metrics = evaluate_model(work, final, tokens, sft, config.evaluate)
    base_metrics = None
    if config.finetune.enabled and models.finetuned and models.pretrained:  # the pretrained model too, to show what fine-tuning changed
        base = models.pretrained
        base_metrics = evaluate_model(evaluation_work(workdir, base, tokens, config.evaluate), base, tokens, sft, config.evaluate)
    if not export:
        return Evaluation(report=work.out_dir, metrics=metrics, export=None, promoted=False, reasons=["export skipped"])

    energy = run_energy(corpus_card, tokens, [models.pretrained, models.finetuned])
    withdrawals = render_withdrawals_markdown(withdrawal_report(workdir, withdrawn), model=final.path, heading="###")
    card = render_model_card(config, final, metrics, corpus_card, tokens.meta(), withdrawals, energy, base_metrics,
                             models.decontamination)
    publish_energy(energy)
    contamination = render_contamination_markdown(models.decontamination) if models.decontamination else ""
    hf_dir = export_model(export_work(workdir, final, card), final, metrics, card, corpus_card, contamination)
    promoted, reasons = promote(workdir, hf_dir, metrics)
    return Evaluation(report=work.out_dir, metrics=metrics, export=hf_dir, promoted=promoted, reasons=reasons)


def run_energy(corpus_card: str | None, tokens: TokenDatasetRef | None, models: list[ModelRef | None]) -> dict[str, Any]:
    """The run's energy blocks, in pipeline order: each curation stage, tokenize, each training run."""
    blocks: dict[str, Any] = {}
    if corpus_card:
        card = json.loads(Path(corpus_card).with_suffix(".json").read_text())
        blocks.update({row["stage"]: row["energy"] for row in card["funnel"] if row.get("energy")})
    if tokens and (tokens.dir / "stats.json").is_file():
        stats = json.loads((tokens.dir / "stats.json").read_text())
        if not stats.get("energy") and stats.get("new"):  # a refresh's replay mix: its new tokens were measured
            stats = json.loads((Path(stats["new"]) / "stats.json").read_text())
        if stats.get("energy"):
            blocks["tokenize"] = stats["energy"]
    for model in filter(None, models):
        result = model.result()
        if result.get("energy"):
            blocks[model.stage] = result["energy"]
    return blocks


@task(persist_result=False)  # nothing to reuse: no record to read back
def publish_energy(blocks: dict[str, Any]) -> list[dict[str, Any]]:
    """One table per run: time, energy and CO2 of every curation stage and training run, and the total."""
    rows = energy_table(blocks)
    create_table_artifact(table=rows, key="energy-per-stage", description="Energy and CO2 per stage of this run")
    return rows


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=is_not_data_quality_error, persist_result=False)
def promote(workdir: str, hf_dir: str, metrics: dict[str, Any]) -> tuple[bool, list[str]]:
    """Move the promoted-model pointer to this export if the gate passed; else keep the old one and say why."""
    logger = get_run_logger()
    gate = metrics["gate"]
    pointer = Path(workdir) / PROMOTED
    entry = {"export": hf_dir, "model": metrics["model"], "val_bpb": metrics["val_bpb"], "val_loss": metrics["val_loss"]}
    append_line_once(Path(workdir) / "promotions.jsonl", json.dumps({**entry, "promoted": gate["passed"], "failures": gate["failures"]}))
    if not gate["passed"]:
        previous = json.loads(pointer.read_text())["export"] if pointer.exists() else "none"
        logger.warning("not promoted (%s); the promoted model stays %s", "; ".join(gate["failures"]), previous)
        return False, gate["failures"]
    if not (pointer.is_file() and json.loads(pointer.read_text()) == entry):  # a cached rerun: already there
        write_json(pointer, entry)
    logger.info("promoted %s", hf_dir)
    return True, []
