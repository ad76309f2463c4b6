"""Milliseconds per training step of the tinyshakespeare benchmark's model on the CPU, one speed change at a time.

    python benchmarks/cpu_step.py [--threads 2] [--batch 32] [--steps 30] [--json out.json]

Each row adds one change to the row above it and times the same step (forward, backward, clip,
optimizer) on the same batch: the median of ``--steps`` steps after 3 warm-up steps, rows
interleaved over ``--rounds`` rounds so a neighbour's burst hits every row alike. The model is
``tasks/train/loop.py``'s: the ``tiny`` preset (4 layers, 128 wide, block 128), vocab 1024, Muon.

1. fp32 (the CPU default): SDPA's flash kernel, Newton-Schulz iterations in fp32;
2. bf16 autocast (``dtype: bfloat16``), attention still through SDPA, iterations in fp32;
3. + attention as two bf16 matmuls around an fp32 softmax (``models.gpt.causal_attention``);
4. + Newton-Schulz iterations in bf16 (``MuonAdamW.ns_dtype``: the model's matmul precision).

Before the table it times the parts the rows change, each the median of ``--steps`` x ``--rounds`` calls,
interleaved the same way:
the fp32 and bf16 matmul rates of one of the model's shapes (whether this CPU has bf16 units,
AVX512-BF16 or AMX, decides whether rows 2-4 help at all); forward + backward of one layer's
attention (32 x 4 heads x 128 tokens x 32) through SDPA in fp32, SDPA under bf16 autocast, and
``causal_attention`` under bf16 autocast; the Newton-Schulz iterations of the model's three stacks of
same-shaped matrices in fp32 and in bf16.
"""

from __future__ import annotations

import lmwright.tasks  # noqa: F401 - sets OMP_WAIT_POLICY before torch loads OpenMP

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

import lmwright.models.gpt as gpt
from lmwright.tasks.train.loop import ModelSpec, TrainParams, autocast_for, build_optimizer
from lmwright.tasks.train.muon import orthogonalize

ROWS = [
    ("fp32 (CPU default)", "float32", False, False),
    ("bf16 autocast, SDPA attention, fp32 Newton-Schulz", "bfloat16", False, False),
    ("+ attention as bf16 matmuls, fp32 softmax (rotary in bf16)", "bfloat16", True, False),
    ("+ Newton-Schulz in bf16", "bfloat16", True, True),
]


def matmul_rate(dtype: torch.dtype, m: int = 4096, k: int = 128, n: int = 384, reps: int = 30) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def median_ms(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median milliseconds of each function, the functions interleaved round by round (a burst hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def attention_ms(calls: int, rounds: int) -> dict[str, float]:
    """Forward + backward of one layer's attention at the benchmark's shapes, three ways."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(32, 4, 128, 32, generator=gen, requires_grad=True) for _ in range(3))

    def run(bf16: bool, own_path: bool) -> Callable[[], None]:
        def once() -> None:
            with mock.patch.object(gpt, "_cpu_bf16", lambda t: own_path), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = gpt.causal_attention(q, k, v, 0.0)
            y.float().sum().backward()
        return once

    fns = {"sdpa_fp32": run(False, False), "sdpa_bf16_autocast": run(True, False), "causal_attention_bf16": run(True, True)}
    return median_ms(fns, calls, rounds)


def newton_schulz_ms(calls: int, rounds: int) -> dict[str, float]:
    """One optimizer step's iterations: the model's q/k/v/o, gate/up and down stacks."""
    gen = torch.Generator().manual_seed(0)
    stacks = [torch.randn(16, 128, 128, generator=gen), torch.randn(8, 384, 128, generator=gen), torch.randn(4, 128, 384, generator=gen)]
    fns = {str(dtype).removeprefix("torch."): (lambda dtype=dtype: [orthogonalize(g, dtype=dtype) for g in stacks])
           for dtype in (torch.float32, torch.bfloat16)}
    return median_ms(fns, calls, rounds)


def step_fn(dtype: str, manual_attention: bool, ns_bf16: bool, batch: int) -> Callable[[], None]:
    params = TrainParams(model=ModelSpec(preset="tiny"), optimizer="muon", batch_size=batch, device="cpu", dtype=dtype)
    torch.manual_seed(0)
    model = gpt.GPT(params.model.build(1024))
    opt = build_optimizer(model, params, "cpu")
    opt.ns_dtype = torch.bfloat16 if ns_bf16 else torch.float32
    T = model.config.block_size
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 1024, (batch, T), generator=gen), torch.randint(0, 1024, (batch, T), generator=gen)

    def step() -> None:
        # row 2 sends bf16 attention (and rotary) back to SDPA and fp32: what the model did before its CPU bf16 path
        with mock.patch.object(gpt, "_cpu_bf16", lambda t: manual_attention), autocast_for(params, "cpu"):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rates = {str(dt): matmul_rate(dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"matmul 4096x128 @ 128x384 on {args.threads} threads: fp32 {rates['torch.float32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {rates['torch.bfloat16'] / 1e9:.0f} GFLOP/s")
    attention = attention_ms(args.steps, args.rounds)
    print("attention, one layer forward + backward (32 x 4 x 128 x 32): "
          + ", ".join(f"{name} {ms:.1f} ms" for name, ms in attention.items()))
    newton_schulz = newton_schulz_ms(args.steps, args.rounds)
    print("Newton-Schulz, the model's three stacks: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in newton_schulz.items()))
    steps = [step_fn(dtype, manual, ns, args.batch) for _, dtype, manual, ns in ROWS]
    times: list[list[float]] = [[] for _ in ROWS]
    for _ in range(args.rounds):
        for fn, out in zip(steps, times):
            for _ in range(args.steps):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
    tokens = args.batch * 128
    print(f"\n| change (cumulative) | ms/step (median of {args.steps * args.rounds}) | tokens/s | vs fp32 |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times[0])
    rows = []
    for (name, *_), t in zip(ROWS, times):
        ms = statistics.median(t)
        rows.append({"change": name, "ms_per_step": ms * 1e3, "tokens_per_s": tokens / ms, "speedup": base / ms})
        print(f"| {name} | {ms * 1e3:.0f} | {tokens / ms:,.0f} | {base / ms:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"matmul_flops": rates, "attention_ms": attention, "newton_schulz_ms": newton_schulz,
                                          "batch": args.batch, "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
