"""Muon for the blocks' weight matrices and AdamW for everything else, as one optimizer.

Muon (Jordan et al. 2024, the optimizer of the modded-nanogpt speedruns; Liu et al. 2025, "Muon is
Scalable for LLM Training"): SGD with Nesterov momentum whose update for each 2-D weight is replaced
by the nearest semi-orthogonal matrix, computed with five Newton-Schulz iterations. Every direction
of the update then moves by the same amount, so rare directions learn as fast as common ones: at
equal steps it reaches a lower loss than AdamW. Embeddings, the output layer and the norm gains are
not hidden matrices and keep AdamW, as in modded-nanogpt. Weight decay is decoupled for both, each
at its own rate (as ``torch.optim.Muon`` does): a Muon matrix shrinks by ``muon_lr * weight_decay``
a step. On tinyshakespeare, where a 2-core budget buys ~6 epochs, 0.5 took the benchmark from
2.175 bits/byte without decay to 2.109 (benchmarks/TRAINING.md).

One ``torch.optim.Optimizer`` (not two) so a checkpoint holds one state dict and resuming is exact.
torch's own ``torch.optim.Muon`` takes only 2-D parameters and always runs its iterations in bf16,
which is slow on a CPU without bf16 matmul instructions; here they run in the precision the model's
matmuls train in (bf16 on CUDA and under ``dtype: bfloat16`` on the CPU, else fp32).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

# Newton-Schulz quintic coefficients tuned for speed of convergence (Keller Jordan, modded-nanogpt).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately U V^T of each matrix g = U S V^T (singular values pushed towards 1), by Newton-Schulz iterations.

    g: (rows, cols) or a stack (n, rows, cols) of same-shaped matrices, done in one batched matmul each step.
    dtype: the iterations' precision; None: bf16 on CUDA, fp32 elsewhere."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT  # iterate on the wide orientation: X X^T is the smaller Gram matrix
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1: the iteration's basin
    for _ in range(steps):
        gram = x @ x.mT  # (..., rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with ``muon: True`` take Muon steps at ``lr * lr_scale``; the others AdamW steps at ``lr``.

    The loop sets every group's ``lr`` from the one schedule; ``lr_scale`` (Muon's lr over AdamW's)
    keeps the two optimizers' rates in their fixed ratio through warmup and decay."""

    def __init__(
        self, groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float], momentum: float = 0.95,
        lr_scale: float = 1.0, eps: float = 1e-8, ns_steps: int = 5, ns_dtype: torch.dtype | None = None,
    ):
        self.ns_dtype = ns_dtype
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0, momentum=momentum, lr_scale=lr_scale,
                        ns_steps=ns_steps, muon=False)
        super().__init__(list(groups), defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            (self._muon if group["muon"] else self._adamw)(group)

    def _muon(self, group: dict[str, Any]) -> None:
        lr = group["lr"] * group["lr_scale"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            by_shape.setdefault(p.shape, []).append((p, p.grad.lerp(buf, group["momentum"])))  # Nesterov
        for shape, pairs in by_shape.items():  # every layer's q (or k, up, ...) at once: small matmuls batched
            updates = orthogonalize(torch.stack([u for _, u in pairs]), group["ns_steps"], self.ns_dtype)
            updates *= max(1.0, shape[0] / shape[1]) ** 0.5  # tall matrices: the same RMS step as wide ones
            for (p, _), update in zip(pairs, updates):
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr)

    def _adamw(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
