"""The training and evaluation parameters that configs are made of, without torch.

``flows.config`` (and so every command, form and deployment) builds its models from these;
``tasks.train.loop`` and ``tasks.train.evaluate`` re-export them. They live here so that loading a config,
or a cached run that trains nothing, does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from lmwright.models.gpt import GPTConfig


class ModelSpec(BaseModel):
    """Which architecture: a named preset plus field overrides."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="Model preset: tiny (2 CPU cores, minutes), small, gpt2-124m (GPU).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="GPTConfig fields to change, e.g. {dropout: 0.1}.")

    def build(self, vocab_size: int) -> GPTConfig:
        from lmwright.models.gpt import GPTConfig  # torch: only where a model is built

        return GPTConfig.preset(self.preset, **{**self.overrides, "vocab_size": vocab_size})


class TrainParams(BaseModel):
    """One training run: model, optimizer, schedule, budgets, regularization, early stopping."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=ModelSpec, description="Architecture (ignored when continuing from a checkpoint).")
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr: float = Field(2e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps.")
    max_steps: int = Field(1000, ge=1, description="Optimizer steps: the budget; the cosine schedule spans them.")
    max_epochs: float | None = Field(
        None, gt=0, description="Cap the steps so no training token is seen more than this many times (overfitting guard); null: no cap."
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Wall-clock guard, not a budget: set it well above the expected time. A run it cuts short says so and keeps its best.",
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay, on matrices only (regularization).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm; null: no clipping.")
    eval_interval: int = Field(100, ge=1, description="Steps between validations (and early-stopping checks).")
    eval_batches: int = Field(10, ge=1, description="Micro-batches per validation estimate.")
    patience: int | None = Field(5, ge=1, description="Stop after this many validations without improvement; null: never.")
    min_delta: float = Field(1e-3, ge=0, description="Improvement in val loss that resets patience.")
    checkpoint_interval: int = Field(100, ge=1, description="Steps between resumable checkpoints (at most this much work is lost to a kill).")
    seed: int = Field(1337, description="Seed of initialization, batches and dropout.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA when available, else CPU.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the model (GPU).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice.")
    nproc: int = Field(1, ge=1, description="Data-parallel processes per node (torchrun + DDP: gloo on CPU, NCCL on GPU).")
    nnodes: int = Field(1, ge=1, description="Nodes taking part in data-parallel training.")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous when nnodes > 1.")


class LoraParams(BaseModel):
    """Low-rank adapters: train few parameters on top of frozen pretrained weights, merged for export."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="Rank of the adapters.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is (alpha / rank) * B A.")
    targets: list[str] = Field(
        default_factory=lambda: ["q", "k", "v", "o"], description="Linear layers that get adapters (q k v o gate up down)."
    )


class GateParams(BaseModel):
    """Promotion gate: a model is promoted only if every threshold holds (null: not checked)."""

    model_config = ConfigDict(extra="forbid")

    max_val_bpb: float | None = Field(None, gt=0, description="Highest acceptable validation bits per byte.")
    max_val_loss: float | None = Field(None, gt=0, description="Highest acceptable validation loss (nats/token).")
    min_gain_over_unigram: float | None = Field(
        0.05, description="Validation loss must beat the unigram baseline by this fraction (underfitting guard)."
    )
    allow_overfitting: bool = Field(False, description="Promote even when the overfitting signal is raised.")
    max_response_loss: float | None = Field(None, gt=0, description="Highest acceptable held-out SFT response loss.")
    max_bias_gap: float | None = Field(None, gt=0, description="Highest acceptable per-axis gap in mean log-likelihood across groups.")
    max_valence_gap: float | None = Field(
        None, gt=0, description="Highest acceptable per-axis gap in (negative - positive) continuation likelihood across groups."
    )


class CardParams(BaseModel):
    """What the model card says that the run cannot know: its name on the Hub, licence and dataset ids."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, description="The card's title (the model's name); null: lmwright-<params>-<sources>-<stage>.")
    license: str | None = Field(
        None, description="Hub licence id of the weights (apache-2.0, mit, other, ...); null: other, naming the training data's licences."
    )
    datasets: list[str] = Field(
        default_factory=list, description="Hub dataset ids the training corpus is published as (the card's datasets: field)."
    )


class EvalParams(BaseModel):
    """What evaluation measures and how a model is judged."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(100_000, ge=1, description="Held-out tokens scored (in full, non-overlapping blocks).")
    batch_size: int = Field(8, ge=1, description="Blocks per forward pass.")
    overfit_tolerance: float = Field(
        0.02, ge=0, description="Raise overfitting when final val loss exceeds its best by this much while train loss fell."
    )
    flat_tolerance: float = Field(0.01, ge=0, description="Raise underfitting when val loss improved less than this fraction overall.")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["The ", "Return the ", "This module "],
        description="Prompts for fixed-seed samples shown in the report.",
    )
    sample_tokens: int = Field(48, ge=1, description="Tokens generated per sample.")
    sample_seed: int = Field(0, description="Seed of the sampling generator.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")
    top_k: int | None = Field(50, ge=1, description="Sample among the top k tokens; null: all.")
    bias_probes: str | None = Field(
        "configs/lexicons/probes.yaml", description="Counterfactual probe templates (YAML); null: no bias probes."
    )
    gate: GateParams = Field(default_factory=GateParams, description="Promotion thresholds.")
    card: CardParams = Field(default_factory=CardParams, description="Name, licence and dataset ids of the model card.")
