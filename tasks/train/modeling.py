"""Training, evaluation and export as cached Prefect tasks over model directories.

``<workdir>/models/<stage>/<fingerprint>/`` holds ``checkpoints/{last,best}``,
``metrics.jsonl``, ``loss.png``, ``result.json`` and ``manifest.json`` (written last).
A retried or re-run training task resumes from ``checkpoints/last``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)

from lmwright.models.run import ModelRef
from lmwright.models.tokenizer import CHAT_TEMPLATE
from lmwright.tasks.core.files import atomic_copy, atomic_write_text, write_json
from lmwright.tasks.core.shipped import ROOT
from lmwright.tasks.core.files import disk_problem
from lmwright.tasks.train.probes import load_probes, probe_bias, probe_gate_failures, probe_metrics
from lmwright.tasks.core.energy import EnergyRecord, EnergySettings, training_efficiency
from lmwright.tasks.train.sft import SftDatasetRef
from lmwright.tasks.core.stage import Made, StageWork, latest_as_stage, plan_stage, stage_step, stage_task
from lmwright.models.tokenizer import load_tokenizer
from lmwright.tasks.train.token_dataset import TokenDatasetRef
from lmwright.tasks.core.progress import LiveProgress
from lmwright.tasks.train.params import EvalParams, LoraParams, TrainParams

if TYPE_CHECKING:  # torch: imported by the functions that train, evaluate or export, not by a cached run
    from lmwright.tasks.train.loop import Batches, TrainResult
    from lmwright.tasks.train.plan import TrainingPlan

VERSION = "1"


def model_work(workdir: str | Path, stage: str, params: Any, inputs: list[str]) -> StageWork:
    return plan_stage(workdir, stage, VERSION, params, inputs, area="models")


def evaluation_work(
    workdir: str | Path, model: ModelRef, tokens: TokenDatasetRef, params: EvalParams, name: str | None = None
) -> StageWork:
    """Where ``model``'s evaluation on ``tokens`` lives, and its cache identity: one per model, tokens and
    settings, whichever flow asks (the refresh's regression check and the evaluate flow share it).
    ``name`` (default: the model's stage) names the unit: its task run, artifacts and latest/ pointer."""
    work = plan_stage(workdir, "evaluate", "1", params, [model.fingerprint, tokens.fingerprint], area="evals")
    return work.for_unit(name or model.stage)


def export_work(workdir: str | Path, model: ModelRef, model_card: str) -> StageWork:
    """Where ``model``'s Hugging Face export with ``model_card`` lives, and its cache identity."""
    return plan_stage(workdir, "export", "1", {"card": model_card}, [model.fingerprint], area="exports")


def speed_text(tokens_per_s: float | None, mfu: float | None, peak: float | None = None) -> str:
    """'  12,345 tokens/s  MFU 41.2%' as the loop measured them (training steps only), the same on a CPU and a GPU."""
    if not tokens_per_s:
        return ""
    of_peak = f" of {peak / 1e12:.3g} TFLOP/s measured" if peak else ""
    return f"  {tokens_per_s:,.0f} tokens/s in training steps  MFU {mfu:.1%}{of_peak}" if mfu else f"  {tokens_per_s:,.0f} tokens/s"


class TrainingProgress:
    """What a user sees of a training run: the plan, a live line, every validation, and why it stopped.

    The live line (steps done of the planned steps, tokens/s, loss, ETA) and the Prefect
    progress artifact follow the run's real budget: steps, capped by max_epochs, ended
    early by early stopping or the max_seconds guard.
    """

    def __init__(self, stage: str, planned_steps: int, tokens_per_step: int):
        self.stage = stage
        self.logger = get_run_logger()
        self.live = LiveProgress(
            stage, planned_steps, unit="steps", artifact_key=f"{stage}-progress",
            rate_unit="tokens", rate_scale=tokens_per_step,
        )
        self.last_val: float | None = None

    def plan(self, plan: TrainingPlan) -> None:
        for line in plan.lines(self.stage):
            (self.logger.warning if "WARNING" in line else self.logger.info)(line)

    def __call__(self, step: int, record: dict[str, float]) -> None:
        """A validation: always logged (it is where best and early stopping are decided)."""
        self.last_val = record["val_loss"]
        self.logger.info(
            "%s step %d/%d  train %.4f  val %.4f  lr %.2e  %.0fs%s",
            self.stage, step, self.live.total, record["train_loss"], record["val_loss"], record["lr"], record["seconds"],
            speed_text(record.get("tokens_per_s"), record.get("mfu")),
        )
        self.live.update(step, force=True, loss=record["train_loss"], val=record["val_loss"])

    def step(self, step: int, total: int, loss: Callable[[], float]) -> None:
        self.live.set_total(total)
        if self.live.due():
            self.live.update(step, loss=loss(), val=self.last_val)

    def finished(self, result: TrainResult) -> None:
        self.live.finish(result.steps, val=self.last_val)
        if result.stopped == "max_seconds":
            self.logger.warning(
                "%s: the max_seconds guard (%s s) cut training short at step %d of %d; the model is the best "
                "validation so far, not what the budget asked for, and depends on this machine's speed. Raise "
                "max_seconds (a guard, set well above the expected time) or lower max_steps.",
                self.stage, f"{result.seconds:.0f}", result.steps, result.planned_steps,
            )


def plot_losses(model_dir: Path) -> Path | None:
    """loss.png beside the run's records: the same picture the model card shows."""
    from lmwright.tasks.train.evaluate import read_history
    from lmwright.tasks.train.model_card import plot_loss_curves

    return plot_loss_curves(read_history(model_dir), model_dir / "loss.png", model_dir.parent.name)


def fit(
    stage: str,
    out: Path,
    data: dict[str, Any],
    params: TrainParams,
    vocab: int,
    init_from: Path | None,
    energy: EnergySettings | None = None,
    lora: LoraParams | None = None,
) -> tuple[TrainResult, TrainingPlan]:
    """Plan, then train in this process, or launch ``torchrun`` (DDP) when ``nproc * nnodes > 1``.

    ``data`` says where examples come from ({kind: tokens, train, val, dtype} or
    {kind: sft, dir}); the ranks read it themselves, so nothing large crosses processes.
    """
    from lmwright.tasks.train.loop import train
    from lmwright.tasks.train.worker import load_batches

    batches = load_batches({"data": data})  # memory maps: cheap, and the plan needs their sizes
    plan = make_plan(params, vocab, init_from, batches, energy)
    if data.get("heldout_tail"):
        plan.warnings.append(
            f"the corpus has too few documents for a document-level validation split: the last "
            f"{data['heldout_tail']:,} tokens of its {data['heldout_from']} split validate instead, so validation "
            "loss reads optimistic"
        )
    progress = TrainingProgress(stage, plan.steps, plan.tokens_per_step)
    progress.plan(plan)
    if params.nproc * params.nnodes == 1:
        result = train(out, batches, params, vocab, init_from, progress, lora=lora, on_step=progress.step)
    else:
        result = _torchrun(out, data, params, vocab, init_from, lora, progress)
    progress.finished(result)
    return result, plan


def make_plan(
    params: TrainParams, vocab: int, init_from: Path | None, batches: Batches, energy: EnergySettings | None
) -> TrainingPlan:
    """The run's plan from the data sizes and a short timing of the model on this machine."""
    import torch

    from lmwright.models.gpt import GPT
    from lmwright.tasks.train.loop import model_config, resolve_device, step_budget
    from lmwright.tasks.train.plan import measure_step_seconds, plan_training

    cfg = model_config(params, vocab, init_from)
    batches.check(cfg.block_size)
    world = params.nproc * params.nnodes
    tokens_per_step = params.batch_size * params.grad_accum * cfg.block_size * world
    if params.threads:
        torch.set_num_threads(params.threads)
    device = resolve_device(params)
    step_seconds = measure_step_seconds(GPT(cfg).to(device), params.batch_size, params.grad_accum, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # hand the timing model's memory back before training (or torchrun ranks) start
    settings = energy or EnergySettings()
    return plan_training(
        cfg,
        train_tokens=batches.train_tokens,
        val_tokens=int(batches.val.size),
        tokens_per_step=tokens_per_step,
        steps=step_budget(params, batches.train_tokens, tokens_per_step),
        max_steps=params.max_steps,
        max_seconds=params.max_seconds,
        step_seconds=step_seconds,
        watts=settings.resolved_cpu_watts() + settings.resolved_ram_watts(),
        warmup_steps=params.warmup_steps,
    )


def _torchrun(
    out: Path, data: dict[str, Any], params: TrainParams, vocab: int, init_from: Path | None,
    lora: LoraParams | None, progress: TrainingProgress,
) -> TrainResult:
    spec = {
        "out_dir": str(out),
        "data": data,
        "params": params.model_dump(mode="json"),
        "vocab_size": vocab,
        "init_from": str(init_from) if init_from else None,
        "lora": lora.model_dump() if lora else None,
    }
    write_json(out / "train_spec.json", spec)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={params.nproc}", f"--nnodes={params.nnodes}"]
    cmd += ["--standalone"] if params.nnodes == 1 else [f"--rdzv_endpoint={params.rdzv_endpoint}", "--rdzv_backend=c10d"]
    cmd += ["-m", "lmwright.tasks.train.worker", str(out / "train_spec.json")]
    env = {**os.environ, "OMP_NUM_THREADS": str(params.threads or 1)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    seen = 0
    while proc.poll() is None:  # relay the lead rank's validations to the progress artifact
        time.sleep(1.0)
        seen = _relay_progress(out / "metrics.jsonl", seen, progress)
    _relay_progress(out / "metrics.jsonl", seen, progress)
    if proc.returncode != 0:
        if (full := disk_problem(out)) is not None:  # the rank's own error stayed in its process
            raise full
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {' '.join(cmd)}")
    from lmwright.tasks.train.loop import TrainResult

    return TrainResult.model_validate_json((out / "train_result.json").read_text())


def _relay_progress(path: Path, seen: int, progress: TrainingProgress) -> int:
    if not path.exists():
        return seen
    lines = path.read_text().splitlines()
    for line in lines[seen:]:
        record = json.loads(line)
        progress(record["step"], record)
    return len(lines)


def _finish(work: StageWork, result: TrainResult, extra: dict[str, Any]) -> dict[str, Any]:
    """Loss curves and result.json of a training run; returns its marker's record."""
    out = Path(work.out_dir)
    plot_losses(out)
    tps = result.tokens_seen / max(result.seconds, 1e-9)
    summary = {**result.model_dump(), "tokens_per_second": round(tps, 1), **extra}
    write_json(out / "result.json", summary)
    get_run_logger().info(
        "%s: %d steps (%s), best val loss %.4f at step %d, %.0f tokens/s overall%s",
        work.stage, result.steps, result.stopped, result.best_val_loss, result.best_step, tps,
        speed_text(result.tokens_per_s, result.mfu, result.peak_flops),
    )
    return {"stage": work.stage, "fingerprint": work.fingerprint, "version": VERSION, **extra}


def trained_model(work: StageWork) -> ModelRef:
    return ModelRef.at(work.out_dir)


@stage_task(task_run_name="{work.stage}", retries=2)
@stage_step(read=trained_model, latest=latest_as_stage)
def pretrain_model(
    work: StageWork,
    tokens: TokenDatasetRef,
    params: TrainParams,
    init_from: str | None = None,
    energy: EnergySettings | None = None,
) -> Made:
    """Next-token training on the token arrays (from scratch, or continuing a checkpoint)."""
    out = Path(work.out_dir)
    atomic_copy(Path(tokens.path) / "tokenizer.json", out / "tokenizer.json")
    from lmwright.tasks.train.loop import model_config

    meta = tokens.meta()
    block = model_config(params, meta["vocab_size"], Path(init_from) if init_from else None).block_size
    data = tokens.training_data(block)
    result, plan = fit(work.stage, out, data, params, meta["vocab_size"], Path(init_from) if init_from else None, energy)
    extra = {"tokens": tokens.path, "init_from": init_from, "plan": plan.to_json()}
    return lambda used: _finish(work, result, {**extra, **_energy_extra(result, used)})


@stage_task(task_run_name="{work.stage}", retries=2)
@stage_step(read=trained_model, latest=latest_as_stage)
def finetune_model(
    work: StageWork,
    base: ModelRef,
    sft: SftDatasetRef,
    params: TrainParams,
    lora: LoraParams | None,
    energy: EnergySettings | None = None,
) -> Made:
    """Supervised fine-tuning from a pretrained checkpoint, loss on response tokens only."""
    out = Path(work.out_dir)
    atomic_copy(base.tokenizer_path, out / "tokenizer.json")
    from lmwright.models.checkpoint import load_config

    vocab = load_config(base.best)["vocab_size"]
    result, plan = fit(work.stage, out, {"kind": "sft", "dir": sft.path}, params, vocab, base.best, energy, lora=lora)
    extra = {"base": base.path, "sft": sft.path, "lora": lora.model_dump() if lora else None, "plan": plan.to_json()}
    return lambda used: _finish(work, result, {**extra, **_energy_extra(result, used)})


def _energy_extra(result: TrainResult, used: EnergyRecord) -> dict[str, Any]:
    """Energy, CO2, FLOPs, tokens/s and tokens per joule of a training run (a resumed run: its last attempt)."""
    return {
        "energy": used.to_json(),
        "efficiency": training_efficiency(result.flops, result.tokens_seen, result.seconds, used.energy_kwh),
    }


def metrics_of(work: StageWork) -> dict[str, Any]:
    return json.loads((Path(work.out_dir) / "metrics.json").read_text())


def evaluation_name(work: StageWork) -> str:
    return f"evaluate-{work.unit or 'model'}"


@stage_task(task_run_name="evaluate-{work.unit}")
@stage_step(read=metrics_of, metered=False, latest=evaluation_name)
def evaluate_model(
    work: StageWork, model_ref: ModelRef, tokens: TokenDatasetRef, sft: SftDatasetRef | None, params: EvalParams
) -> dict[str, Any]:
    """Held-out loss, perplexity, bits per byte, fit diagnosis, samples and the promotion gate -> metrics.json."""
    out = Path(work.out_dir)
    import torch

    from lmwright.tasks.train.evaluate import (
        block_losses, fit_diagnosis, gate_failures, heldout_loss, interval95, read_history, response_loss, samples, unigram_loss,
    )

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_ref.load(device)
    meta = tokens.meta()
    live = LiveProgress(f"evaluate {model_ref.stage}", 1, unit="blocks", artifact_key=f"evaluate-{work.unit or 'model'}-progress")
    train_tokens, val_tokens = tokens.heldout_split(model.config.block_size)
    val_blocks = block_losses(model, val_tokens, params, device, on_blocks=_blocks_progress(live, 0))
    val_loss, scored = float(val_blocks.mean()), len(val_blocks) * min(model.config.block_size, len(val_tokens) - 1)
    val_low, val_high = interval95(val_blocks)  # over blocks: neighbouring tokens are not independent
    train_loss, _ = heldout_loss(model, train_tokens, params, device, on_blocks=_blocks_progress(live, 1))
    live.finish(live.total)
    unigram = unigram_loss(np.asarray(train_tokens), np.asarray(val_tokens), meta["vocab_size"])
    bytes_per_token = meta["bytes_per_token"]["val"]
    history = read_history(Path(model_ref.path))
    fit = fit_diagnosis(history, val_loss, unigram, params)
    metrics: dict[str, Any] = {
        "model": model_ref.path,
        "stage": model_ref.stage,
        "val_loss": round(val_loss, 5),
        "val_loss_ci95": [round(val_low, 5), round(val_high, 5)],
        "val_ppl": round(math.exp(val_loss), 3),
        "val_bpb": round(val_loss / math.log(2) / bytes_per_token, 5),
        "val_bpb_ci95": [round(v / math.log(2) / bytes_per_token, 5) for v in (val_low, val_high)],
        "val_blocks": len(val_blocks),
        "train_loss": round(train_loss, 5),
        "unigram_loss": round(unigram, 5),
        "val_tokens_scored": scored,
        "bytes_per_token": bytes_per_token,
        "params": model.num_params(non_embedding=False),
        "overfitting": fit["overfitting"],
        "underfitting": fit["underfitting"],
        "fit": fit,
    }
    if sft is not None:
        ids, mask = sft.arrays("val")
        metrics["sft_response_loss"] = round(response_loss(model, ids, mask, params.batch_size, device), 5)
    tokenizer = load_tokenizer(model_ref.tokenizer_path)
    metrics["samples"] = samples(model, tokenizer, params, device)
    if params.tasks.names:  # benchmarks score the export, as anyone who downloads it would
        from lmwright.tasks.train.harness import lm_eval_missing, run_tasks

        if missing := lm_eval_missing():  # an optional extra: the card and the gate say what was not scored
            metrics["tasks_skipped"] = missing
            get_run_logger().warning("benchmarks %s not run: %s", params.tasks.names, missing)
        else:
            metrics["tasks"] = run_tasks(write_hf(model.to("cpu"), model_ref.tokenizer_path, out / "hf"), params.tasks, "cpu")
            model.to(device)
    failures = gate_failures(metrics, params.gate)
    if params.bias_probes:
        try:
            probes = probe_bias(model, tokenizer, load_probes(params.bias_probes), device)
        except ValueError as e:  # e.g. a probe longer than the model's context
            metrics["bias_probes_skipped"] = str(e)
        else:
            metrics["bias_probes"] = probes
            metrics.update(probe_metrics(probes))
            failures += probe_gate_failures(probes, params.gate.max_bias_gap, params.gate.max_valence_gap)
    metrics["gate"] = {"passed": not failures, "failures": failures}
    write_json(out / "metrics.json", metrics)
    _publish_metrics(work.unit or "model", metrics)
    return {"stage": "evaluate", "fingerprint": work.fingerprint}


def _blocks_progress(live: LiveProgress, part: int) -> Callable[[int, int], None]:
    """Evaluation scores two equal budgets of blocks (validation, then training): one bar across both."""

    def on_blocks(done: int, total: int) -> None:
        live.set_total(2 * total)
        live.update(part * total + done)

    return on_blocks


def _publish_card_figures(hf_dir: Path) -> None:
    """The loss curves beside the model card, as image artifacts the Prefect UI shows."""
    from lmwright.tasks.core.plots import publish_png

    for png in sorted(hf_dir.glob("loss_*.png")):
        publish_png(png, f"{png.stem.replace('_', '-')}-curves", f"Training and validation loss ({png.stem.removeprefix('loss_')})")


def _publish_metrics(name: str, metrics: dict[str, Any]) -> None:
    rows = [
        {"metric": k, "value": metrics[k]}
        for k in ("val_loss", "val_ppl", "val_bpb", "train_loss", "unigram_loss", "sft_response_loss", "overfitting",
                  "underfitting", "bias_gap_max", "bias_valence_gap_max", "params")
        if k in metrics
    ]
    for task, scores in (metrics.get("tasks") or {}).items():
        rows += [{"metric": f"{task}/{m}", "value": f"{v['value']:.3f} (95% {v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})"}
                 for m, v in scores["metrics"].items()]
    create_table_artifact(table=rows, key=f"metrics-{name}", description=f"Evaluation of {metrics['model']}")
    lines = [f"# Samples ({name})", ""]
    for s in metrics["samples"]:
        lines += [f"**{s['prompt']!r}** → {s['completion']!r}", ""]
    gate = metrics["gate"]
    lines += ["## Promotion gate", "", "passed" if gate["passed"] else "failed: " + "; ".join(gate["failures"])]
    create_markdown_artifact(markdown="\n".join(lines), key=f"samples-{name}")


def exported(work: StageWork) -> str:
    """The export's Hugging Face directory; its loss curves shown in the UI (a cached run's too)."""
    hf_dir = Path(work.out_dir) / "hf"
    _publish_card_figures(hf_dir)
    return str(hf_dir)


def write_hf(model: Any, tokenizer_path: Path, out_dir: Path, model_card: str | None = None) -> Path:
    """The Hugging Face directory of a model: what export ships and what benchmarks score."""
    from lmwright.models.export import export_hf

    return export_hf(model, model.config, tokenizer_path, out_dir, model_card=model_card,
                     additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"], chat_template=CHAT_TEMPLATE)


@stage_task(task_run_name="export")
@stage_step(read=exported, metered=False, latest=latest_as_stage)
def export_model(
    work: StageWork, model_ref: ModelRef, metrics: dict[str, Any], model_card: str, data_card: str | None = None,
    data_card_extra: str = "",
) -> dict[str, Any]:
    """A Hugging Face directory: LlamaForCausalLM + tokenizer files + model card, its loss curves and the data card."""
    out = Path(work.out_dir)
    from lmwright.tasks.train.model_card import DATA_CARD, card_figures

    write_hf(model_ref.load("cpu"), model_ref.tokenizer_path, out / "hf", model_card)
    write_json(out / "hf" / "metrics.json", {k: v for k, v in metrics.items() if k != "samples"})
    card_figures(model_ref, out / "hf")
    if data_card:  # the model card links it; its pictures travel with it
        # what happened to the corpus after curation (decontamination) joins the card that describes it
        atomic_write_text(out / "hf" / DATA_CARD, Path(data_card).read_text().rstrip() + "\n\n" + data_card_extra if data_card_extra
                          else Path(data_card).read_text())
        for png in sorted(Path(data_card).parent.glob("*.png")):
            atomic_copy(png, out / "hf" / png.name)
    return {"stage": "export", "fingerprint": work.fingerprint}
