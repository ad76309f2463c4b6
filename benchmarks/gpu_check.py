"""GPU check of the training loop: gpt2-124m tokens/s and MFU with each optimisation switched on in
turn, compiled vs eager losses, the attention kernel SDPA really runs, the tiny preset, and torchrun.

    python benchmarks/gpu_check.py [--json out.json]   # CUDA: about 5-6 minutes on an H100/H200
    python benchmarks/gpu_check.py --smoke             # the same code paths on the CPU at tiny sizes (a test runs it)

Every run goes through ``tasks.train.loop.train``; only ``TrainParams`` switches change between rows.

1. Peak: a bf16 8192^3 matmul measured here (``tasks.train.plan.measure_peak_flops``; smoke: fp32 on
   the CPU). Every MFU below is against it: ``GPT.flops_per_token`` x tokens/s / peak.
2. Attention: one bf16 forward+backward of the model under ``torch.profiler``; the SDPA kernels it
   ran are listed (flash, memory-efficient, cuDNN or math), and flash is then forced with
   ``sdpa_kernel(FLASH_ATTENTION)`` to show it is usable for these shapes.
3. The ladder (``LADDER``): ``gpt2-124m`` (12 x 768, context 1024), batch 32 x 1024 tokens, the
   tokenizer's vocabulary declared as GPT-2's 50,257 (the ids come from a BPE trained on
   tinyshakespeare; the output layer has GPT-2's width, which is what costs). First everything
   off (fp32, eager, unfused AdamW, pageable memory, no vocab padding), then one switch on per row,
   each kept: TF32, bf16 autocast, fused AdamW, pinned memory + prefetch, vocab padded to a
   multiple of 64 (50,304), torch.compile. Tokens/s and MFU are the loop's own numbers (the
   ``metrics.jsonl`` record of the last window of ``--steps // 3`` steps: warm-up and compilation
   are in the earlier windows). The last row's switches are what ``TrainParams`` turns on by
   default on CUDA (checked: the defaults resolve to them).
4. Correctness: the same 50 steps (same seed, same batches) eager and compiled, all other switches
   on; the per-step training losses must agree within ``--tolerance`` nats (bf16 rounding differs
   between fused and unfused kernels, so they drift slightly, they must not diverge).
5. The ``tiny`` preset with its defaults (compile on CUDA) for ``--tiny-steps`` steps: tokens/s, MFU,
   and that it learns.
6. The same tiny run through ``torchrun --standalone --nproc_per_node=1 -m lmwright.tasks.train.worker``
   (NCCL process group, rank 0 writes): its validation losses must match step 5's. What one GPU does
   NOT check: a 1-rank run is not wrapped in DDP, so no gradient is all-reduced and ``no_sync`` on
   non-final micro-steps is not exercised; 2-rank DDP runs on the CPU with gloo (tests/test_train.py,
   same losses as one process), 2-rank NCCL needs two GPUs.

``--smoke`` runs 1-5 on the CPU with a 1-layer, 64-wide model, a few steps and a 1,000-token
vocabulary (padded to 1,024): the same code, so the GPU run is not the first time it executes.
"""

from __future__ import annotations

import lmwright.tasks  # noqa: F401 - lmwright's CPU thread settings before torch loads

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmwright.models.gpt import GPT
from lmwright.models.tokenizer import SpecialTokens, train_bpe, vocab_size_of
from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, model_config, on_cuda, padded_vocab, train
from lmwright.tasks.train.plan import measure_peak_flops

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LMWRIGHT_SHARED_DATA") or ROOT.parent / "shared" / "data")
GPT2_VOCAB = 50257

# (row, the switch it turns on); each row keeps the switches of the rows above it.
LADDER: list[tuple[str, dict[str, Any]]] = [
    ("everything off: fp32, eager, unfused AdamW, pageable memory, vocab unpadded", {}),
    ("+ TF32 matmuls", {"tf32": True}),
    ("+ bf16 autocast", {"dtype": "bfloat16"}),
    ("+ fused AdamW", {"fused_adamw": True}),
    ("+ pinned memory, non-blocking copies, prefetch", {"pin_memory": True}),
    ("+ vocab padded to a multiple of 64", {"vocab_multiple": 64}),
    ("+ torch.compile (model and loss)", {"compile": True}),
]
ALL_OFF: dict[str, Any] = {"dtype": "float32", "tf32": False, "fused_adamw": False, "pin_memory": False,
                           "vocab_multiple": 1, "compile": False}


def shakespeare_tokens(out: Path, vocab: int, chars: int | None) -> tuple[dict[str, str], int]:
    """tinyshakespeare as BPE ids: first 90% train, the rest validation (uint16 files)."""
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:chars]
    tok = train_bpe([text[i : i + 4096] for i in range(0, len(text), 4096)], vocab, 2, SpecialTokens())
    ids = np.asarray(tok.encode(text).ids, dtype="<u2")
    cut = int(len(ids) * 0.9)
    paths = {"train": str(out / "train.bin"), "val": str(out / "val.bin")}
    ids[:cut].tofile(paths["train"])
    ids[cut:].tofile(paths["val"])
    return paths, vocab_size_of(tok)


def batches_of(paths: dict[str, str]) -> Batches:
    return Batches(train=np.fromfile(paths["train"], dtype="<u2"), val=np.fromfile(paths["val"], dtype="<u2"))


def curve(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run(out: Path, paths: dict[str, str], params: TrainParams, vocab: int, step_losses: bool = False) -> dict[str, Any]:
    """train() once; its result, validation curve, steady-state throughput (the last window) and, if asked, every step's loss."""
    losses: list[float] = []

    def on_step(step: int, total: int, loss: Any) -> None:
        losses.append(loss())  # a device sync per step: only for the correctness check

    start = time.perf_counter()
    result = train(out, batches_of(paths), params, vocab, on_step=on_step if step_losses else None)
    wall = time.perf_counter() - start
    history = curve(out)
    last = history[-1]
    return {"result": result.model_dump(), "curve": history, "wall_s": wall, "losses": losses,
            "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu")}


def attention_kernels(params: TrainParams, vocab: int, device: str) -> dict[str, Any]:
    """The SDPA kernels one forward+backward runs (profiler op names), and whether forcing flash works."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = GPT(model_config(params, vocab, None)).to(device)
    block = model.config.block_size
    x = torch.randint(0, vocab, (2, block), device=device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof, torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype == torch.bfloat16):
        _, loss = model(x, x)
        loss.backward()
    names = sorted({e.name for e in prof.events() if "attention" in e.name.lower() or "flash" in e.name.lower()})
    chosen = sorted({n for n in names if n.startswith("aten::_scaled_dot_product") or n.startswith("aten::_flash")})
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype == torch.bfloat16):
            model(x, x)[1].backward()
        forced = "flash attention runs for these shapes"
    except RuntimeError as e:  # no flash kernel for this device, dtype or head size
        forced = f"flash attention refused: {str(e).splitlines()[0][:200]}"
    return {"aten_ops": chosen, "kernels": [n for n in names if not n.startswith("aten::")][:12], "forced_flash": forced}


def torchrun(out: Path, paths: dict[str, str], params: TrainParams, vocab: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "out_dir": str(out),
        "data": {"kind": "tokens", "train": paths["train"], "val": paths["val"], "dtype": "<u2"},
        "params": params.model_dump(mode="json"),
        "vocab_size": vocab,
        "init_from": None,
        "lora": None,
    }
    (out / "train_spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "lmwright.tasks.train.worker", str(out / "train_spec.json")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return {"curve": curve(out), "wall_s": time.perf_counter() - start}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| switches | tokens/s | MFU | step 0 -> last val loss |", "|---|---:|---:|---|"]
    for r in rows:
        c = r["curve"]
        lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {c[0]['val_loss']:.3f} -> {c[-1]['val_loss']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the CPU, tiny sizes: the same code paths, minutes not hours")
    ap.add_argument("--steps", type=int, default=None, help="steps per ladder row (default 45; smoke 6)")
    ap.add_argument("--batch", type=int, default=None, help="gpt2-124m sequences per step (default 32; smoke 4)")
    ap.add_argument("--check-steps", type=int, default=None, help="steps of the compiled-vs-eager check (default 50; smoke 4)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="largest allowed |compiled - eager| training loss, nats")
    ap.add_argument("--tiny-steps", type=int, default=None, help="steps of the tiny preset (default 300; smoke 6)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    smoke = args.smoke
    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (run with --smoke for the CPU)")
    steps = args.steps or (6 if smoke else 45)
    batch = args.batch or (4 if smoke else 32)
    check_steps = args.check_steps or (4 if smoke else 50)
    tiny_steps = args.tiny_steps or (6 if smoke else 300)
    threads = torch.get_num_threads()
    name = "cpu (smoke)" if smoke else torch.cuda.get_device_name(0)
    print(f"device: {name}; torch {torch.__version__}; CPU threads {threads}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lmwright-gpu-check-"))
    paths, bpe_vocab = shakespeare_tokens(work, 1000 if smoke else 8192, 200_000 if smoke else None)
    big_vocab = bpe_vocab if smoke else GPT2_VOCAB  # ids < bpe_vocab; the output layer is this wide
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "smoke": smoke}

    # 1. the peak every MFU is measured against
    peak = measure_peak_flops(device)
    print(f"measured {'bf16' if not smoke else 'fp32'} matmul peak: {peak / 1e12:.2f} TFLOP/s", flush=True)
    report["peak_flops"] = peak
    failures: list[str] = []

    big_model = ModelSpec(preset="gpt2-124m") if not smoke else ModelSpec(
        preset="tiny", overrides={"n_layer": 1, "n_embd": 64, "n_head": 2, "block_size": 64})
    common = dict(model=big_model, batch_size=batch, lr=6e-4, min_lr=6e-5, warmup_steps=5, patience=None,
                  checkpoint_interval=10**6, seed=1337, device=device, peak_flops=peak, eval_batches=2)
    if smoke:
        common["threads"] = threads

    # 2. the attention kernel SDPA picks
    on = TrainParams(**common, max_steps=steps, eval_interval=max(1, steps // 3))
    kernels = attention_kernels(on, big_vocab, device)
    print(f"SDPA ran: {', '.join(kernels['aten_ops']) or '(no SDPA op seen)'}; kernels: {', '.join(kernels['kernels']) or '-'}; "
          f"{kernels['forced_flash']}", flush=True)
    report["attention"] = kernels

    # 3. one switch on per row
    rows, switches = [], dict(ALL_OFF)
    for label, change in LADDER:
        switches.update(change)
        params = TrainParams(**common, **switches, max_steps=steps, eval_interval=max(1, steps // 3))
        r = run(work / f"ladder-{len(rows)}", paths, params, big_vocab)
        r["name"], r["switches"] = label, dict(switches)
        rows.append(r)
        print(f"{label}: {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%} ({r['wall_s']:.0f} s)", flush=True)
    auto = TrainParams(**common, max_steps=1)
    resolved = {"compile": on_cuda(auto, device), "fused_adamw": on_cuda(auto, device), "pin_memory": on_cuda(auto, device),
                "bf16": auto.dtype == "auto" and on_cuda(auto, device), "tf32": auto.tf32,
                "vocab 50,257 becomes": padded_vocab(GPT2_VOCAB, auto)}
    print(f"\n{table(rows)}\n\nTrainParams defaults on {device}: {resolved}", flush=True)
    report["ladder"] = [{k: r[k] for k in ("name", "switches", "tokens_per_s", "mfu", "wall_s")} | {"curve": r["curve"]} for r in rows]
    report["defaults_resolved"] = resolved

    # 4. compiled vs eager: the same steps, the same batches
    pair = {}
    for compiled in (False, True):
        params = TrainParams(**{**common, **switches, "compile": compiled}, max_steps=check_steps, eval_interval=10**6)
        pair[compiled] = run(work / f"check-{compiled}", paths, params, big_vocab, step_losses=True)["losses"]
    diffs = [abs(a - b) for a, b in zip(pair[False], pair[True], strict=True)]
    print(f"compiled vs eager, {check_steps} steps: losses {pair[False][0]:.4f} -> {pair[False][-1]:.4f} (eager), "
          f"{pair[True][0]:.4f} -> {pair[True][-1]:.4f} (compiled); max |difference| {max(diffs):.4f} (tolerance {args.tolerance})",
          flush=True)
    report["compiled_vs_eager"] = {"eager": pair[False], "compiled": pair[True], "max_abs_diff": max(diffs)}
    if max(diffs) > args.tolerance:
        failures.append(f"compiled and eager losses differ by {max(diffs):.4f} nats (tolerance {args.tolerance})")

    # 5. the tiny preset with its defaults
    tiny = TrainParams(model=ModelSpec(preset="tiny"), batch_size=32, lr=6e-3, min_lr=6e-4, warmup_steps=20,
                       max_steps=tiny_steps, eval_interval=max(1, tiny_steps // 6), eval_batches=4, patience=None,
                       checkpoint_interval=10**6, seed=1337, device=device, peak_flops=peak,
                       **({"threads": threads} if smoke else {}))
    t = run(work / "tiny", paths, tiny, bpe_vocab)
    first, last = t["curve"][0]["val_loss"], t["curve"][-1]["val_loss"]
    print(f"tiny preset, defaults: {tiny_steps} steps, val {first:.3f} -> {last:.3f}, {t['tokens_per_s']:,.0f} tokens/s, "
          f"MFU {t['mfu']:.1%} ({t['wall_s']:.0f} s)", flush=True)
    if not last < first:
        failures.append(f"the tiny preset did not learn (val {first:.3f} -> {last:.3f})")
    report["tiny"] = {"tokens_per_s": t["tokens_per_s"], "mfu": t["mfu"], "val_first": first, "val_last": last, "wall_s": t["wall_s"]}

    # 6. the torchrun path (one rank: the process group and rank-0 writes, not DDP's all-reduce)
    if not smoke:
        ddp = torchrun(work / "torchrun", paths, tiny, bpe_vocab)
        pairs = [(a["step"], a["val_loss"], b["val_loss"]) for a, b in zip(t["curve"], ddp["curve"])]
        worst = max(abs(a - b) for _, a, b in pairs)
        print(f"torchrun, 1 rank (NCCL process group, no DDP wrapper, so no all-reduce): {len(pairs)} validations, "
              f"max |val difference| vs one process {worst:.4f}", flush=True)
        report["tiny_torchrun"] = {"max_val_diff": worst, "pairs": pairs, "wall_s": ddp["wall_s"]}
        if len(pairs) != len(t["curve"]) or worst >= 0.05:
            failures.append(f"torchrun's validations differ from one process's: {pairs}")
    report["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    for failure in failures:  # after every section ran and the report is written: one GPU session sees them all
        print(f"FAILED: {failure}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
