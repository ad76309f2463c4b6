"""evaluate: held-out loss, perplexity, bits per byte, fit diagnosis, samples, and the promotion gate.

Bits per byte divides the loss by the tokenizer's bytes per token, so models with
different vocabularies compare. Overfitting shows as validation loss rising from its
best while training loss keeps falling; underfitting as validation loss that stays near
the unigram baseline (a model that learned only token frequencies) or a flat curve.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lmwright.models.gpt import GPT
from lmwright.tasks.train.params import EvalParams, GateParams  # noqa: F401 - defined without torch, for configs

LN2 = math.log(2)


@torch.no_grad()
def block_losses(
    model: GPT, tokens: np.ndarray, params: EvalParams, device: str = "cpu", on_blocks: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Mean next-token loss of each non-overlapping block of ``tokens`` (deterministic: no sampling).

    Every block scores the same number of tokens, so their mean is the token mean and their spread
    gives its standard error. ``on_blocks(done, total)`` after every batch of blocks (live progress)."""
    model.eval()
    T = model.config.block_size
    n = min(len(tokens) - 1, params.max_tokens)
    blocks = max(1, n // T)
    span = min(T, len(tokens) - 1)
    out = np.zeros(blocks, dtype=np.float64)
    for start in range(0, blocks, params.batch_size):
        idx = [i * T for i in range(start, min(blocks, start + params.batch_size))]
        x = torch.from_numpy(np.stack([tokens[i : i + span] for i in idx]).astype(np.int64)).to(device)
        y = torch.from_numpy(np.stack([tokens[i + 1 : i + 1 + span] for i in idx]).astype(np.int64)).to(device)
        logits, _ = model(x)
        per_token = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
        out[start : start + len(idx)] = per_token.mean(dim=1).cpu().numpy()
        if on_blocks:
            on_blocks(start + len(idx), blocks)
    return out


def heldout_loss(
    model: GPT, tokens: np.ndarray, params: EvalParams, device: str = "cpu", on_blocks: Callable[[int, int], None] | None = None
) -> tuple[float, int]:
    """Mean next-token loss over non-overlapping blocks of ``tokens`` and the number of tokens scored."""
    losses = block_losses(model, tokens, params, device, on_blocks)
    return float(losses.mean()), len(losses) * min(model.config.block_size, len(tokens) - 1)


def interval95(values: np.ndarray) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean of ``values`` (blocks, questions): mean -/+ 1.96 standard errors."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean - half, mean + half


@torch.no_grad()
def response_loss(model: GPT, ids: np.ndarray, mask: np.ndarray, batch_size: int, device: str = "cpu") -> float:
    """Held-out SFT loss on response tokens only (rows of block+1 ids with their token-aligned mask)."""
    model.eval()
    total, count = 0.0, 0.0
    for s in range(0, len(ids), batch_size):
        seq = torch.from_numpy(ids[s : s + batch_size].astype(np.int64)).to(device)
        m = torch.from_numpy(mask[s : s + batch_size, 1:].astype(np.float32)).to(device)
        _, loss = model(seq[:, :-1], seq[:, 1:], loss_mask=m)
        total += loss.item() * float(m.sum())
        count += float(m.sum())
    return total / max(count, 1.0)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross entropy of val under train's add-one unigram distribution: the floor a model must beat."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val].mean()) if len(val) else float("nan")


def fit_diagnosis(history: list[dict[str, Any]], val_loss: float, unigram: float, params: EvalParams) -> dict[str, Any]:
    """Overfitting / underfitting signals from the training curve and the baselines."""
    out: dict[str, Any] = {"overfitting": False, "underfitting": False, "reasons": []}
    if len(history) >= 2:
        best = min(history, key=lambda r: r["val_loss"])
        last = history[-1]
        if last["val_loss"] - best["val_loss"] > params.overfit_tolerance and last["train_loss"] < best["train_loss"]:
            out["overfitting"] = True
            out["reasons"].append(
                f"val loss rose from {best['val_loss']:.4f} (step {best['step']}) to {last['val_loss']:.4f} while train loss "
                f"fell to {last['train_loss']:.4f}: more data, dropout/weight decay, or stop earlier"
            )
        first = history[0]
        if first["val_loss"] - best["val_loss"] < params.flat_tolerance * first["val_loss"]:
            out["underfitting"] = True
            out["reasons"].append("val loss barely moved over training: raise the learning rate, steps, or capacity")
    if not math.isnan(unigram) and val_loss > unigram * 0.98:
        out["underfitting"] = True
        out["reasons"].append(
            f"val loss {val_loss:.4f} is no better than the unigram baseline {unigram:.4f}: more capacity or training"
        )
    out["train_val_gap"] = round(history[-1]["val_loss"] - history[-1]["train_loss"], 4) if history else None
    return out


def samples(model: GPT, tokenizer: Any, params: EvalParams, device: str = "cpu") -> list[dict[str, str]]:
    out = []
    for k, prompt in enumerate(params.sample_prompts):
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [0]
        gen = torch.Generator(device="cpu").manual_seed(params.sample_seed + k)
        x = torch.tensor([ids], dtype=torch.long, device=device)
        y = model.generate(x, params.sample_tokens, temperature=params.temperature, top_k=params.top_k, generator=gen)
        out.append({"prompt": prompt, "completion": tokenizer.decode(y[0, len(ids) :].tolist())})
    return out


def gate_failures(metrics: dict[str, Any], gate: GateParams) -> list[str]:
    """Every gate threshold the metrics miss, in words (empty: promote)."""
    failures = []
    if gate.max_val_bpb is not None and metrics["val_bpb"] > gate.max_val_bpb:
        failures.append(f"val_bpb {metrics['val_bpb']:.4f} > max_val_bpb {gate.max_val_bpb}")
    if gate.max_val_loss is not None and metrics["val_loss"] > gate.max_val_loss:
        failures.append(f"val_loss {metrics['val_loss']:.4f} > max_val_loss {gate.max_val_loss}")
    if gate.min_gain_over_unigram is not None:
        needed = metrics["unigram_loss"] * (1 - gate.min_gain_over_unigram)
        if metrics["val_loss"] > needed:
            failures.append(
                f"val_loss {metrics['val_loss']:.4f} does not beat the unigram baseline {metrics['unigram_loss']:.4f} "
                f"by {gate.min_gain_over_unigram:.0%}"
            )
    if not gate.allow_overfitting and metrics.get("overfitting"):
        failures.append("overfitting signal raised (see fit.reasons)")
    if gate.min_task_scores:
        from lmwright.tasks.train.harness import task_gate_failures

        failures += task_gate_failures(metrics.get("tasks") or {}, gate.min_task_scores)
    if gate.max_response_loss is not None and metrics.get("sft_response_loss") is not None:
        if metrics["sft_response_loss"] > gate.max_response_loss:
            failures.append(f"sft_response_loss {metrics['sft_response_loss']:.4f} > {gate.max_response_loss}")
    return failures


def read_history(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "metrics.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []
