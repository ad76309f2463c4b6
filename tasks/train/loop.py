"""pretrain / finetune: next-token training on token arrays, resumable from its last checkpoint.

The loop fits on one screen and calls named helpers (``lr_at``, ``batch_at``,
``estimate_loss``, ``save``). Batches are a pure function of (seed, step), and the
dropout RNG state travels in the checkpoint, so a run killed at any point and resumed
ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from pydantic import BaseModel

from lmwright.models.checkpoint import load_checkpoint, load_config, save_checkpoint
from lmwright.models.gpt import GPT, GPTConfig, apply_lora, merge_lora
from lmwright.tasks.core.errors import TrainingDataError
from lmwright.tasks.core.files import atomic_write_text
from lmwright.tasks.train.params import LoraParams, ModelSpec, TrainParams  # noqa: F401 - defined without torch, for configs
from lmwright.tasks.train.muon import MuonAdamW
from lmwright.tasks.train.plan import measure_peak_flops

VERSION = "1"
CLOCK_EVERY = 10  # steps between the ranks' agreement on the clock (a collective and a device sync)


@dataclass(frozen=True)
class Batches:
    """Where training examples come from: flat token arrays, or fixed-length SFT rows with loss masks."""

    train: np.ndarray
    val: np.ndarray
    train_mask: np.ndarray | None = None  # SFT: (rows, block) 0/1, rows of ids in train/val
    val_mask: np.ndarray | None = None

    @property
    def is_rows(self) -> bool:
        return self.train_mask is not None

    @property
    def train_tokens(self) -> int:
        """Tokens one epoch covers (SFT: every position of every row)."""
        return int(self.train.size)

    def check(self, block: int) -> None:
        """Fail with one line saying what is missing, before any work (a draw from too few tokens fails deep in numpy)."""
        need = 1 if self.is_rows else block + 2
        for split, data in (("train", self.train), ("val", self.val)):
            have = len(data)
            if have < need:
                unit = "rows" if self.is_rows else "tokens"
                hint = (
                    "the validation split holds out whole documents (tokenize.val_fraction): give more documents, "
                    "e.g. one per paragraph with --set ingest.text_split=paragraph"
                    if split == "val"
                    else "add text, or choose a smaller model.block_size"
                )
                raise TrainingDataError(
                    f"the {split} split has {have} {unit}; training needs at least {need} (block_size {block}): {hint}"
                )


def resolve_device(params: TrainParams) -> str:
    if params.device != "auto":
        return params.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_cuda(params: TrainParams, device: str | None = None) -> bool:
    """Where a switch left at null (compile, fused AdamW, pinned memory, vocab padding) turns on."""
    return (device or resolve_device(params)).startswith("cuda")


def padded_vocab(vocab_size: int, params: TrainParams) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to ``vocab_multiple`` (64 on CUDA: tensor-core shapes).

    The extra rows are never a target, so training pushes their logits down; nanoGPT pads GPT-2's
    50257 to 50304 the same way."""
    multiple = params.vocab_multiple or (64 if on_cuda(params) else 1)
    return -(-vocab_size // multiple) * multiple


def build_optimizer(model: GPT, params: TrainParams, device: str) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only (the fused kernel, one launch for every parameter, by default on CUDA);
    or Muon for the blocks' matrices with AdamW for the embedding and the gains (``tasks.train.muon``)."""
    betas = (params.beta1, params.beta2)
    if params.optimizer == "muon":
        hidden = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
        decay, no_decay = (g["params"] for g in model.param_groups(params.weight_decay))
        groups = [
            {"params": [p for p in decay if id(p) in hidden], "muon": True, "weight_decay": params.weight_decay},
            {"params": [p for p in decay if id(p) not in hidden], "weight_decay": params.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return MuonAdamW(
            groups, lr=params.lr, betas=betas, lr_scale=params.muon_lr / params.lr, ns_dtype=_matmul_dtype(params, device)
        )
    fused = params.fused_adamw if params.fused_adamw is not None else on_cuda(params, device)
    return torch.optim.AdamW(model.param_groups(params.weight_decay), lr=params.lr, betas=betas, fused=fused)


def lr_at(step: int, p: TrainParams, total_steps: int | None = None) -> float:
    """Linear warmup, then cosine decay to min_lr over the run's steps.

    The schedule is a function of the step alone, never of the clock: a busy machine
    makes a run slower, not different.
    """
    total = total_steps or p.max_steps
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    progress = min(1.0, (step - p.warmup_steps) / max(1, total - p.warmup_steps))
    return p.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (p.lr - p.min_lr)


def step_budget(p: TrainParams, train_tokens: int, tokens_per_step: int) -> int:
    """Optimizer steps of the run: max_steps, capped so no training token is seen more than max_epochs times."""
    if p.max_epochs is None or train_tokens <= 0:
        return p.max_steps
    return max(1, min(p.max_steps, int(p.max_epochs * train_tokens / tokens_per_step)))


def batch_at(
    data: np.ndarray, mask: np.ndarray | None, block: int, batch: int, seed: int, step: int, micro: int, device: str,
    pin: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The micro-batch for (step, micro): a pure function of the seed, so resuming replays it exactly.

    ``pin``: copy from page-locked host memory without blocking, so the copy overlaps the GPU's work."""

    def to_device(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.pin_memory().to(device, non_blocking=True) if pin else t.to(device)

    rng = np.random.default_rng([seed, step, micro])
    if mask is None:
        ix = rng.integers(0, len(data) - block - 1, size=batch)
        x = np.stack([data[i : i + block] for i in ix]).astype(np.int64)
        y = np.stack([data[i + 1 : i + 1 + block] for i in ix]).astype(np.int64)
        return to_device(x), to_device(y), None
    rows = rng.integers(0, len(data), size=batch)
    seq = data[rows].astype(np.int64)  # (B, block + 1)
    m = mask[rows][:, 1:].astype(np.float32)  # the mask of each target token
    return to_device(seq[:, :-1]), to_device(seq[:, 1:]), to_device(m)


@torch.no_grad()
def estimate_loss(model: GPT, batches: Batches, p: TrainParams, block: int, device: str, ctx: Any) -> dict[str, float]:
    """Mean loss on fixed held-out and training batches (the same ones every time)."""
    model.eval()
    out = {}
    for split, data, mask in (("train", batches.train, batches.train_mask), ("val", batches.val, batches.val_mask)):
        losses = []
        for k in range(p.eval_batches):
            x, y, m = batch_at(data, mask, block, p.batch_size, p.seed + 1, 0, k, device)  # fixed held-out batches
            with ctx:
                _, loss = model(x, y, loss_mask=m)
            losses.append(loss.item())
        out[f"{split}_loss"] = float(np.mean(losses))
    model.train()
    return out


class TrainResult(BaseModel):
    out_dir: str
    steps: int
    planned_steps: int
    best_val_loss: float
    best_step: int
    stopped: str
    tokens_seen: int
    seconds: float
    flops: float
    model_config_json: dict[str, Any]
    tokens_per_s: float | None = None  # in training steps (validations and the final checkpoint left out)
    peak_flops: float | None = None  # what MFU is measured against (measured at the start unless given)
    mfu: float | None = None  # model FLOPs utilisation of the training steps


StepHook = Callable[[int, int, Callable[[], float]], None]


def train(
    out_dir: Path,
    batches: Batches,
    params: TrainParams,
    vocab_size: int,
    init_from: Path | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    lora: LoraParams | None = None,
    on_step: StepHook | None = None,
) -> TrainResult:
    """Train into ``out_dir``; resumes from ``out_dir/checkpoints/last`` when a previous attempt left one.

    ``progress(step, record)`` sees every validation; ``on_step(step, total, loss)`` every
    optimizer step (``loss()`` reads the last micro-batch's loss: a device sync, so call it
    only when printing). Every stop (steps spent, early stopping, the max_seconds guard)
    ends with a validation of the final weights, and ``checkpoints/best`` is the best of all
    validations, final weights included. It ends as a plain model (LoRA adapters merged).
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    lead = rank == 0  # only the lead rank writes checkpoints, metrics and progress
    device = resolve_device(params)
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if params.threads:
        torch.set_num_threads(params.threads)
    if on_cuda(params, device):  # TF32 for the matmuls autocast leaves in fp32 (process-wide, as nanoGPT sets it)
        torch.set_float32_matmul_precision("high" if params.tf32 else "highest")
    last, best = out_dir / "checkpoints" / "last", out_dir / "checkpoints" / "best"
    torch.manual_seed(params.seed)
    cfg = model_config(params, vocab_size, init_from)
    batches.check(cfg.block_size)
    model = GPT(cfg).to(device)
    if init_from is not None and not last.exists():
        load_checkpoint(init_from, model, restore_rng=False)  # transfer learning: start from pretrained weights
    if lora is not None:
        apply_lora(model, lora.rank, lora.alpha, targets=tuple(lora.targets))
    optimizer = build_optimizer(model, params, device)
    state = {"step": 0, "best_val_loss": float("inf"), "best_step": 0, "bad_evals": 0, "tokens_seen": 0, "seconds": 0.0,
             "validated_step": -1}
    if last.exists():  # a killed or retried attempt: continue where its last checkpoint left off
        state = {"validated_step": -1, **load_checkpoint(last, model, optimizer)["train"]}
        _truncate_metrics(out_dir / "metrics.jsonl", state["step"])
    ctx = autocast_for(params, device)
    if world > 1:  # dropout streams differ per rank (a single process keeps its restored RNG: exact resume)
        torch.manual_seed(params.seed + 7919 * rank + state["step"])
    # compiled: the forward including the loss (one graph), so the logits' float copy is fused away
    runnable = torch.compile(model) if (params.compile if params.compile is not None else on_cuda(params, device)) else model
    # DDP averages gradients across ranks; each rank draws its own micro-batches, so the
    # global batch equals a single process's with grad_accum * world micro-batches.
    trainable = DistributedDataParallel(runnable) if world > 1 else runnable
    block = cfg.block_size
    tokens_per_step = params.batch_size * params.grad_accum * block * world
    pin = (params.pin_memory is not False) and on_cuda(params, device)
    flops_per_token = model.flops_per_token()
    peak = (params.peak_flops or measure_peak_flops(device, params.threads, _matmul_dtype(params, device))) if lead else None
    # training since the last validation (its throughput and MFU) and in total; validations are not training
    window = {"start": time.perf_counter(), "tokens": 0, "train_s": 0.0, "train_tokens": 0}
    metrics = open(out_dir / "metrics.jsonl", "a") if lead else open(os.devnull, "w")
    started = time.perf_counter() - state["seconds"]

    def throughput() -> dict[str, float | None]:
        """Tokens/s and MFU of the steps since the last validation (a sync: the queued work is timed too)."""
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - window["start"]
        window["train_s"] += elapsed
        window["train_tokens"] += window["tokens"]
        speed = window["tokens"] / elapsed if window["tokens"] and elapsed > 0 else None
        return {"tokens_per_s": speed, "mfu": speed * flops_per_token / peak if speed and peak else None}

    def validate(step: int) -> bool:
        """Validate the current weights, keep them if best; True when patience ran out."""
        speed = throughput()
        losses = estimate_loss(runnable, batches, params, block, device, ctx)
        record = {"step": step, **losses, "lr": lr_at(step, params, step_budget(params, batches.train_tokens, tokens_per_step)),
                  "seconds": time.perf_counter() - started, **speed}
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        state["validated_step"] = step
        if progress and lead:
            progress(step, record)
        improved = losses["val_loss"] < state["best_val_loss"] - params.min_delta
        if losses["val_loss"] < state["best_val_loss"]:  # best is the lowest loss seen; patience wants real progress
            state.update(best_val_loss=losses["val_loss"], best_step=step)
            if lead:
                save_checkpoint(best, model, None, _state(state, step))
        state["bad_evals"] = 0 if improved else state["bad_evals"] + 1
        window.update(start=time.perf_counter(), tokens=0)
        return params.patience is not None and state["bad_evals"] >= params.patience

    def fetch(at: int, micro: int) -> tuple[int, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        index = rank * params.grad_accum + micro
        return at, micro, batch_at(batches.train, batches.train_mask, block, params.batch_size, params.seed, at, index, device, pin)

    stopped = "max_steps"
    step = state["step"]
    loss = torch.zeros(())
    queued = fetch(step, 0)
    while step < (total := step_budget(params, batches.train_tokens, tokens_per_step)):
        if step % params.eval_interval == 0 and state["validated_step"] != step and validate(step):
            stopped = "early_stopping"
            break
        lr = lr_at(step, params, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(params.grad_accum):
            x, y, m = queued[2] if queued[:2] == (step, micro) else fetch(step, micro)[2]
            sync = world == 1 or micro == params.grad_accum - 1  # all-reduce once per step, not per micro-batch
            with ctx, (contextlib.nullcontext() if sync else trainable.no_sync()):
                _, loss = trainable(x, y, loss_mask=m)
                # the next micro-batch is drawn (and, pinned, its copy queued) while the device runs this one
                queued = fetch(step, micro + 1) if micro + 1 < params.grad_accum else fetch(step + 1, 0)
                (loss / params.grad_accum).backward()
        if params.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        state["tokens_seen"] += tokens_per_step
        window["tokens"] += tokens_per_step
        state["seconds"] = time.perf_counter() - started
        if on_step and lead:
            on_step(step, total, lambda: float(loss.detach().item()))
        if step % params.checkpoint_interval == 0 and lead:
            save_checkpoint(last, model, optimizer, _state(state, step))
        clock_due = world == 1 or step % CLOCK_EVERY == 0  # ranks agree on the clock every few steps, not every step
        if params.max_seconds and clock_due and _lead_clock(state["seconds"], world, device) >= params.max_seconds:
            stopped = "max_seconds"
            break
    if state["validated_step"] != step:  # every stop ends with a validation: best considers the final weights
        validate(step)
    state["step"] = step
    metrics.close()
    result = TrainResult(
        out_dir=str(out_dir),
        steps=step,
        planned_steps=step_budget(params, batches.train_tokens, tokens_per_step),
        best_val_loss=state["best_val_loss"],
        best_step=state["best_step"],
        stopped=stopped,
        tokens_seen=state["tokens_seen"],
        seconds=state["seconds"],
        flops=float(flops_per_token * state["tokens_seen"]),
        model_config_json=cfg.to_dict(),
        tokens_per_s=window["train_tokens"] / window["train_s"] if window["train_s"] > 0 else None,
        peak_flops=peak,
    )
    if result.tokens_per_s and peak:
        result.mfu = result.tokens_per_s * flops_per_token / peak
    if not lead:
        dist.barrier()  # wait for the lead's final checkpoints
        return result
    save_checkpoint(last, model, optimizer, _state(state, step))
    if world > 1:
        dist.barrier()
    if lora is not None:
        load_checkpoint(best, model, restore_rng=False)
        merge_lora(model)
        save_checkpoint(best, model, None, _state(state, step))
    return result


def _lead_clock(seconds: float, world: int, device: str) -> float:
    """The lead rank's elapsed seconds, on every rank: budgets and the schedule must agree across ranks."""
    if world == 1:
        return seconds
    clock = torch.tensor([seconds], dtype=torch.float64, device=device)  # NCCL needs it on the GPU
    dist.broadcast(clock, src=0)
    return float(clock.item())


def model_config(params: TrainParams, vocab_size: int, init_from: Path | None) -> GPTConfig:
    if init_from is None:
        return params.model.build(padded_vocab(vocab_size, params))
    saved = load_config(init_from)
    # The architecture is the checkpoint's; regularization is this run's to choose.
    return GPTConfig.from_dict({**saved, "dropout": params.model.overrides.get("dropout", saved["dropout"])})


def _bf16(params: TrainParams, device: str) -> bool:
    return params.dtype == "bfloat16" or (params.dtype == "auto" and device.startswith("cuda"))


def _matmul_dtype(params: TrainParams, device: str) -> torch.dtype:
    """What the model's matmuls run in: the precision their peak is measured in."""
    return torch.bfloat16 if _bf16(params, device) else torch.float32


def autocast_for(params: TrainParams, device: str) -> Any:
    """The context a training step's forward runs in: bf16 autocast (CUDA's default, ``dtype: bfloat16``), else a no-op."""
    kind = device.split(":")[0]  # a DDP rank trains on "cuda:<local rank>"; autocast wants the device type
    if _bf16(params, device):
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def _state(state: dict[str, Any], step: int) -> dict[str, Any]:
    """What a checkpoint carries besides tensors (save_checkpoint adds RNG states and the model config)."""
    return {"train": {**state, "step": step}}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] < step]
    atomic_write_text(path, "".join(l + "\n" for l in lines))
