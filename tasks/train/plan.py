"""The plan printed before training: what the budget buys on this data, and what to expect.

From the token count alone it says how many parameters meet how many tokens, how many
times each training token is seen (epochs), the time and energy to expect, and warns
when that predicts overfitting (many epochs: the model memorizes its data) or
underfitting (far fewer tokens than parameters, or a model too small to use the data).

Thresholds, with their sources:
- ``MAX_EPOCHS_BEFORE_WARNING`` = 4: up to about 4 epochs, repeated tokens are worth
  almost as much as new ones; past that their value decays fast (Muennighoff et al.
  2023, "Scaling Data-Constrained Language Models").
- ``MIN_TOKENS_PER_PARAM`` = 1 and ``COMPUTE_OPTIMAL_TOKENS_PER_PARAM`` = 20: Chinchilla
  (Hoffmann et al. 2022) trains ~20 tokens per parameter; a run that shows each
  parameter less than one token, with data left unseen, has barely started.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lmwright.models.gpt import GPT, GPTConfig

MAX_EPOCHS_BEFORE_WARNING = 4.0
MIN_TOKENS_PER_PARAM = 1.0
COMPUTE_OPTIMAL_TOKENS_PER_PARAM = 20.0
# Forward + backward + optimizer costs about this many forward passes (backward ~2x forward).
STEP_COST_IN_FORWARDS = 3.0


@dataclass
class TrainingPlan:
    params: int  # unique parameters (a tied embedding counted once)
    non_embedding_params: int
    train_tokens: int
    val_tokens: int
    tokens_per_step: int
    steps: int
    max_steps: int
    epochs: float
    tokens_per_param: float
    flops: float
    expected_seconds: float | None
    expected_kwh: float | None
    max_seconds: float | None
    warmup_steps: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self, stage: str) -> list[str]:
        from lmwright.tasks.core.progress import format_seconds

        capped = f" (max_steps {self.max_steps}, capped by max_epochs)" if self.steps < self.max_steps else ""
        out = [
            f"{stage} plan: {self.params:,} parameters ({self.non_embedding_params:,} non-embedding); "
            f"{self.train_tokens:,} training tokens, {self.val_tokens:,} validation tokens",
            f"{stage} plan: {self.steps:,} steps{capped} x {self.tokens_per_step:,} tokens = "
            f"{self.steps * self.tokens_per_step:,} tokens: {self.epochs:.1f} epochs, "
            f"{self.tokens_per_param:.2f} tokens per parameter, {self.flops:.3g} FLOPs",
        ]
        if self.expected_seconds is not None:
            energy = f", about {self.expected_kwh * 1000:.2f} Wh" if self.expected_kwh else ""
            guard = f" (guard: max_seconds {self.max_seconds:g})" if self.max_seconds else ""
            out.append(f"{stage} plan: expected {format_seconds(self.expected_seconds)} on this machine now{energy}{guard}")
        out += [f"{stage} plan: WARNING {w}" for w in self.warnings]
        return out


def plan_training(
    config: GPTConfig,
    train_tokens: int,
    val_tokens: int,
    tokens_per_step: int,
    steps: int,
    max_steps: int,
    max_seconds: float | None = None,
    step_seconds: float | None = None,
    watts: float | None = None,
    warmup_steps: int = 0,
) -> TrainingPlan:
    """The plan for ``steps`` optimizer steps of a model of ``config`` on ``train_tokens`` tokens."""
    with torch.device("meta"):  # shapes only: counting parameters allocates nothing
        model = GPT(config)
    n = model.num_params(non_embedding=False)
    total_tokens = steps * tokens_per_step
    epochs = total_tokens / max(1, train_tokens)
    per_param = total_tokens / max(1, n)
    seconds = steps * step_seconds if step_seconds is not None else None
    plan = TrainingPlan(
        params=n,
        non_embedding_params=model.num_params(non_embedding=True),
        train_tokens=train_tokens,
        val_tokens=val_tokens,
        tokens_per_step=tokens_per_step,
        steps=steps,
        max_steps=max_steps,
        epochs=round(epochs, 3),
        tokens_per_param=round(per_param, 4),
        flops=float(model.flops_per_token() * total_tokens),
        expected_seconds=round(seconds, 1) if seconds is not None else None,
        expected_kwh=round(seconds * watts / 3.6e6, 6) if seconds is not None and watts else None,
        max_seconds=max_seconds,
        warmup_steps=warmup_steps,
    )
    plan.warnings = fit_warnings(plan)
    return plan


def fit_warnings(plan: TrainingPlan) -> list[str]:
    out = []
    if plan.epochs > MAX_EPOCHS_BEFORE_WARNING:
        out.append(
            f"overfitting likely: each training token is seen {plan.epochs:.1f} times (more than "
            f"{MAX_EPOCHS_BEFORE_WARNING:g}); add data, lower max_steps or set max_epochs, raise dropout "
            "or weight_decay, or choose a smaller model (early stopping keeps the best validation loss)"
        )
    if plan.tokens_per_param < MIN_TOKENS_PER_PARAM and plan.epochs < 1:
        # Fewer tokens than parameters *and* data left unseen: the budget, not the data, is short.
        # (With every token seen, a low ratio means the data is small for the model: the epoch
        # warning above is the one that applies.)
        out.append(
            f"underfitting likely: {plan.tokens_per_param:.2f} tokens per parameter (compute-optimal is about "
            f"{COMPUTE_OPTIMAL_TOKENS_PER_PARAM:g}) and {plan.epochs:.2f} of the data seen; train longer (max_steps) "
            "or choose a smaller model"
        )
    if plan.warmup_steps >= plan.steps:
        out.append(
            f"warmup_steps ({plan.warmup_steps}) is not below the run's {plan.steps} steps: the learning rate "
            "never reaches its peak; lower warmup_steps"
        )
    if plan.expected_seconds and plan.max_seconds and plan.expected_seconds > plan.max_seconds:
        out.append(
            f"the max_seconds guard ({plan.max_seconds:g} s) is below the expected time; the run will be cut "
            "short and its result will depend on this machine's speed: raise max_seconds or lower max_steps"
        )
    return out


def measure_step_seconds(model: GPT, batch_size: int, grad_accum: int, device: str, repeats: int = 3) -> float:
    """Seconds per optimizer step, estimated from timed forward passes (no gradients, no RNG drawn).

    Eval-mode forwards touch neither dropout's RNG nor the weights, so measuring before
    training leaves the run bit-identical to one that did not measure.
    """
    block = model.config.block_size
    x = torch.from_numpy(np.zeros((batch_size, block), dtype=np.int64)).to(device)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    model.train(was_training)
    return min(times[1:] or times) * STEP_COST_IN_FORWARDS * grad_accum


def measure_peak_flops(device: str, threads: int | None = None, dtype: torch.dtype | None = None) -> float:
    """The FLOP/s a large square matmul reaches here now: the peak that MFU is measured against.

    Measured, not a datasheet number, so MFU reads the same way on a CPU and a GPU: the share of
    what a matmul gets on this machine. CPU: fp32 (what training runs), 1024^3, best of 5 (about
    0.1 s on 2 cores). CUDA: bf16 by default (what autocast runs), 8192^3, after a warm-up.
    """
    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    n = 8192 if cuda else 1024
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    own = torch.Generator(device=device).manual_seed(0)  # the global RNG feeds dropout: a resumed run must not see a draw here
    a = torch.randn(n, n, device=device, dtype=dtype, generator=own)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=own)
    best = float("inf")
    for rep in range(6):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(10 if cuda else 1):
            a @ b
        if cuda:
            torch.cuda.synchronize(device)
        if rep:  # the first round warms up the BLAS / the GPU clocks
            best = min(best, (time.perf_counter() - start) / (10 if cuda else 1))
    return 2 * n**3 / best
