"""GPU check of the training code: CUDA with bf16 autocast, DDP over NCCL under torchrun, and
throughput against the CPU peer measured in the same run.

    LMWRIGHT_SHARED_DATA=<dir with tinyshakespeare/> python benchmarks/gpu_check.py [--steps 600] [--json out.json]

1. Tokens: tinyshakespeare, byte-level BPE (vocab 1024, ``models.tokenizer``), first 90% train, rest validation.
2. ``tasks.train.loop.train`` on CUDA in this process, the ``tiny`` preset, ``--steps`` steps: loss curve,
   tokens/s. Loss must fall well below its start (the run learns).
3. The same params through the training task's launch path: ``python -m torch.distributed.run
   --standalone --nproc_per_node=1 -m tasks.train.worker spec.json`` (the NCCL process group on
   CUDA, rank 0 writing the result). Its validation curve must match step 2's (same seed, same
   data order) within 0.05 nats (bf16 and kernel choice differ run to run). What one GPU cannot
   check: with a single rank ``train`` does not wrap the model in DDP (it does when world > 1), so
   no gradient is all-reduced here; 2-rank DDP is checked on the CPU with gloo
   (tests/test_train.py, same losses as one process), and 2-rank NCCL needs two GPUs.
4. The peer: the same model on the CPU (all cores) for a few steps -> tokens/s; printed as a ratio.
5. The ``gpt2-124m`` preset on CUDA for a few steps: tokens/s and MFU against a bf16 matmul
   peak measured in this process.
"""

from __future__ import annotations

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmwright.models.gpt import GPT  # noqa: E402
from lmwright.models.tokenizer import SpecialTokens, train_bpe, vocab_size_of  # noqa: E402
from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LMWRIGHT_SHARED_DATA") or ROOT.parent / "shared" / "data")


def shakespeare_tokens(out: Path) -> tuple[dict[str, str], int]:
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    special = SpecialTokens()
    tok = train_bpe([text[i : i + 4096] for i in range(0, len(text), 4096)], 1024, 2, special)
    ids = np.asarray(tok.encode(text).ids, dtype="<u2")
    cut = int(len(ids) * 0.9)
    paths = {"train": str(out / "train.bin"), "val": str(out / "val.bin")}
    ids[:cut].tofile(paths["train"])
    ids[cut:].tofile(paths["val"])
    return paths, vocab_size_of(tok)


def batches_of(paths: dict[str, str]) -> Batches:
    return Batches(train=np.fromfile(paths["train"], dtype="<u2"), val=np.fromfile(paths["val"], dtype="<u2"))


def curve(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def single(out: Path, paths: dict[str, str], params: TrainParams, vocab: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = train(out, batches_of(paths), params, vocab)
    seconds = time.perf_counter() - start
    return {"result": result.model_dump(), "curve": curve(out), "wall_s": seconds}


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
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    nccl = "nccl" in (proc.stdout + proc.stderr).lower()
    result = json.loads((out / "train_result.json").read_text())
    return {"result": result, "curve": curve(out), "wall_s": seconds, "log_mentions_nccl": nccl}


def matmul_peak(device: str, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--cpu-steps", type=int, default=20)
    ap.add_argument("--big-steps", type=int, default=30)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of steps 1-3 (gloo) on a machine without a GPU.")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; CPU threads {torch.get_num_threads()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lmwright-gpu-"))
    paths, vocab = shakespeare_tokens(work)
    report: dict[str, Any] = {"device": name, "torch": torch.__version__}

    common = dict(model=ModelSpec(preset="tiny"), batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                  eval_interval=50, eval_batches=8, patience=None, checkpoint_interval=100_000, seed=1337)
    gpu = TrainParams(**common, max_steps=args.steps, device=args.device)
    one = single(work / "single", paths, gpu, vocab)
    first, last = one["curve"][0]["val_loss"], one["curve"][-1]["val_loss"]
    tps_gpu = one["result"]["tokens_seen"] / one["result"]["seconds"]
    print(f"{args.device}, one process: {one['result']['steps']} steps, val {first:.3f} -> {last:.3f}, {tps_gpu:,.0f} tokens/s", flush=True)
    assert last < first - 1.0, "training on CUDA did not learn"

    ddp = torchrun(work / "torchrun", paths, gpu, vocab)
    pairs = [(a["step"], a["val_loss"], b["val_loss"]) for a, b in zip(one["curve"], ddp["curve"])]
    worst = max(abs(a - b) for _, a, b in pairs)
    print(f"{args.device}, torchrun (1 rank: process group {'NCCL' if args.device == 'cuda' else 'gloo'}, no DDP wrapper): {ddp['result']['steps']} steps, val {ddp['curve'][-1]['val_loss']:.3f}; "
          f"max |val difference| vs one process over {len(pairs)} evaluations: {worst:.4f}", flush=True)
    assert len(pairs) == len(one["curve"]) and worst < 0.05, pairs
    report |= {"tiny_cuda": {"tokens_per_s": tps_gpu, "val_first": first, "val_last": last, "wall_s": one["wall_s"]},
               "tiny_torchrun": {"max_val_diff": worst, "wall_s": ddp["wall_s"], "pairs": pairs}}
    if args.device == "cpu":
        return 0

    cpu = TrainParams(**common, max_steps=args.cpu_steps, device="cpu", threads=torch.get_num_threads())
    peer = single(work / "cpu", paths, cpu, vocab)
    tps_cpu = peer["result"]["tokens_seen"] / peer["result"]["seconds"]
    print(f"cpu peer ({torch.get_num_threads()} threads): {tps_cpu:,.0f} tokens/s -> GPU/CPU = {tps_gpu / tps_cpu:.1f}x", flush=True)

    big = TrainParams(model=ModelSpec(preset="gpt2-124m"), batch_size=16, lr=6e-4, warmup_steps=5, eval_interval=10_000,
                      eval_batches=1, patience=None, checkpoint_interval=100_000, seed=1337, max_steps=args.big_steps,
                      device="cuda")
    large = single(work / "big", paths, big, vocab)
    fpt = GPT(big.model.build(vocab)).flops_per_token()
    tps_big = large["result"]["tokens_seen"] / large["result"]["seconds"]
    peak = matmul_peak("cuda")
    mfu = fpt * tps_big / peak  # flops_per_token counts training FLOPs (6N + attention)
    print(f"gpt2-124m on cuda: {tps_big:,.0f} tokens/s; bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; MFU {mfu:.1%}", flush=True)

    report |= {
        "tiny_cpu": {"tokens_per_s": tps_cpu, "threads": torch.get_num_threads()},
        "gpu_over_cpu": tps_gpu / tps_cpu,
        "gpt2_124m": {"tokens_per_s": tps_big, "mfu": mfu, "peak_tflops": peak / 1e12},
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
