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
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw; or muon: Muon for the blocks' weight matrices (at muon_lr), AdamW for embeddings and gains."
    )
    muon_lr: float = Field(0.02, gt=0, description="Muon's peak learning rate; it follows the same warmup and decay as lr.")
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
    weight_decay: float = Field(
        0.1, ge=0, description="Decoupled weight decay on matrices only (regularization); under Muon its matrices decay at muon_lr."
    )
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
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, fp32 on CPU. bfloat16 on a CPU with bf16 instructions (AVX512-BF16, AMX): ~1.75x the steps.",
    )
    compile: bool | None = Field(
        None, description="torch.compile the model and its loss; null: on CUDA, off on the CPU (compiling costs a minute there)."
    )
    fused_adamw: bool | None = Field(None, description="AdamW's fused kernel (one launch for all parameters); null: on CUDA.")
    tf32: bool = Field(True, description="CUDA: TF32 tensor cores for the matmuls that stay fp32 outside bf16 autocast.")
    pin_memory: bool | None = Field(
        None, description="Batches from pinned host memory, copied without blocking while the previous step runs; null: on CUDA."
    )
    vocab_multiple: int | None = Field(
        None, ge=1, description="Round the model's vocabulary up to a multiple of this (tensor-core friendly shapes); null: 64 on CUDA, 1 on the CPU."
    )
    peak_flops: float | None = Field(
        None, gt=0, description="Peak FLOP/s that MFU is reported against; null: measured at the start (a large matmul, bf16 on CUDA)."
    )
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
    min_task_scores: dict[str, float] = Field(
        default_factory=dict, description="Lowest acceptable benchmark scores, as task/metric: score (e.g. lmwright_word_order/acc: 0.6)."
    )
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


class DecontaminateParams(BaseModel):
    """Remove training documents that overlap an evaluation set (the held-out split, each local benchmark task)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Check the training corpus against every evaluation set in use before tokenizing.")
    n: int = Field(13, ge=1, description="Words per n-gram: a shared n-gram makes a training document contaminated (13: GPT-3, the Pile).")
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop: reject with reason decontam_<set>; flag: keep, with the set in a contaminated_with column."
    )


class TaskParams(BaseModel):
    """Benchmarks run with lm-evaluation-harness on the exported model (optional extra: pip install 'lmwright[eval]')."""

    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(
        default_factory=list, description="lm-eval task names (its registry, or tasks defined in include_path); empty: none."
    )
    include_path: str | None = Field(
        None, description="Directory of local lm-eval task YAMLs (data_files relative to each YAML); configs/eval_tasks ships two."
    )
    limit: int | None = Field(None, ge=1, description="Score at most this many examples per task; null: all.")
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")


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
    tasks: TaskParams = Field(default_factory=TaskParams, description="lm-evaluation-harness benchmarks and their data.")
    decontaminate: DecontaminateParams = Field(
        default_factory=DecontaminateParams, description="Keep every evaluation set's text out of the training data."
    )
    gate: GateParams = Field(default_factory=GateParams, description="Promotion thresholds.")
    card: CardParams = Field(default_factory=CardParams, description="Name, licence and dataset ids of the model card.")
