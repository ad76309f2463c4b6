"""The training loop's speed switches (compile, fused AdamW, TF32, pinned memory, vocab padding) and its MFU.

Each switch is a TrainParams field whose null default turns it on for CUDA only; on the CPU the
loop must train the same model either way, and ``benchmarks/gpu_check.py --smoke`` runs the whole
GPU check (every switch in turn, compiled vs eager) on the CPU so the GPU run is never the first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmwright.models.checkpoint import load_checkpoint, save_checkpoint
from lmwright.models.gpt import GPT
from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, batch_at, build_optimizer, on_cuda, padded_vocab, train
from lmwright.tasks.train.muon import orthogonalize

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelSpec(preset="tiny", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32})
BATCHES = Batches(train=(np.arange(12_000) % 23).astype(np.uint16), val=(np.arange(3_000) % 23).astype(np.uint16))


def params(**kw) -> TrainParams:
    base = dict(model=TINY, batch_size=4, max_steps=12, eval_interval=4, checkpoint_interval=100, patience=None,
                warmup_steps=2, lr=3e-3, eval_batches=1, threads=1, device="cpu")
    return TrainParams(**{**base, **kw})


def test_switches_left_at_null_turn_on_for_cuda_only() -> None:
    cpu, cuda = params(), params(device="cuda")
    assert not on_cuda(cpu) and on_cuda(cuda)
    assert padded_vocab(50257, cpu) == 50257  # the CPU keeps the tokenizer's size
    assert padded_vocab(50257, cuda) == 50304  # nanoGPT's padding of GPT-2's vocabulary
    assert padded_vocab(1000, params(vocab_multiple=128)) == 1024
    assert padded_vocab(1024, params(vocab_multiple=64)) == 1024
    model = GPT(TINY.build(64))
    assert build_optimizer(model, cpu, "cpu").defaults["fused"] is False
    assert build_optimizer(model, params(fused_adamw=True), "cpu").defaults["fused"] is True


def test_a_padded_vocabulary_trains_and_is_saved_in_the_model_config(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(vocab_multiple=64, max_steps=60, eval_interval=20, lr=1e-2), vocab_size=23)
    assert result.model_config_json["vocab_size"] == 64
    assert result.best_val_loss < 0.5 * np.log(23)  # learns the ramp; the padded rows are never targets


def test_fused_adamw_and_pinned_memory_train_the_same_model_on_the_cpu(tmp_path: Path) -> None:
    plain = train(tmp_path / "plain", BATCHES, params(fused_adamw=False, pin_memory=False), 23)
    fast = train(tmp_path / "fast", BATCHES, params(fused_adamw=True, pin_memory=True), 23)
    assert fast.best_val_loss == pytest.approx(plain.best_val_loss, abs=1e-4)


def test_mfu_is_logged_at_every_validation_and_in_the_result(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(peak_flops=1e9, grad_accum=2), 23)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["mfu"] is None  # nothing trained before the first validation
    for r in records[1:]:
        assert r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * GPT(TINY.build(23)).flops_per_token() / 1e9)
    assert result.peak_flops == 1e9 and result.tokens_per_s > 0
    assert result.mfu == pytest.approx(result.tokens_per_s * result.flops / result.tokens_seen / 1e9)


def test_the_peak_is_measured_when_not_given(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(max_steps=4), 23)
    assert result.peak_flops > 1e8  # a matmul on one CPU thread reaches well over 0.1 GFLOP/s
    assert 0 < result.mfu < 5  # an fp32 matmul peak measured on a busy machine can read low, never by this much


def test_gpu_check_runs_end_to_end_on_the_cpu(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    env = {**os.environ, "LMWRIGHT_SHARED_DATA": str(shared_data)}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    ladder = report["ladder"]
    assert ladder[0]["switches"] == {"dtype": "float32", "tf32": False, "fused_adamw": False, "pin_memory": False,
                                     "vocab_multiple": 1, "compile": False}
    assert ladder[-1]["switches"]["compile"] is True and ladder[-1]["switches"]["dtype"] == "bfloat16"
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in ladder)
    assert report["failures"] == []
    assert report["compiled_vs_eager"]["max_abs_diff"] <= 0.05
    assert any("scaled_dot_product" in op for op in report["attention"]["aten_ops"])
    assert report["tiny"]["val_last"] < report["tiny"]["val_first"]


def test_muon_orthogonalizes_each_matrix_of_a_stack() -> None:
    g = torch.randn(3, 48, 16, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-3, 1.0, 50.0]).view(3, 1, 1)
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert singular.min() > 0.6 and singular.max() < 1.25  # the quintic's band around 1, whatever the scale
    assert torch.allclose(orthogonalize(g)[1], orthogonalize(g[1]), atol=1e-5)  # stacked = one at a time


def test_muon_trains_and_resumes_from_its_checkpoint_exactly(tmp_path: Path) -> None:
    p = params(optimizer="muon", muon_lr=0.02)
    torch.manual_seed(0)
    model = GPT(TINY.build(23))
    opt = build_optimizer(model, p, "cpu")
    assert [g["muon"] for g in opt.param_groups] == [True, False, False]
    assert len(opt.param_groups[0]["params"]) == 7 * TINY.build(23).n_layer  # q k v o gate up down of each block

    def steps(m: GPT, o: torch.optim.Optimizer, first: int, n: int) -> float:
        for step in range(first, first + n):
            x, y, _ = batch_at(BATCHES.train, None, 32, 4, 1, step, 0, "cpu")
            _, loss = m(x, y)
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)
        return float(loss.detach())

    start = steps(model, opt, 0, 1)
    assert steps(model, opt, 1, 20) < start - 1.0  # it learns the ramp
    save_checkpoint(tmp_path / "ck", model, opt, {})
    again = GPT(TINY.build(23))
    again_opt = build_optimizer(again, p, "cpu")
    load_checkpoint(tmp_path / "ck", again, again_opt, restore_rng=False)
    steps(model, opt, 21, 3)
    steps(again, again_opt, 21, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_training_log_states_throughput_and_mfu_the_same_way_on_every_device() -> None:
    from lmwright.tasks.train.modeling import speed_text

    assert speed_text(12_345.6, 0.4123, 8.9e13) == "  12,346 tokens/s in training steps  MFU 41.2% of 89 TFLOP/s measured"
    assert speed_text(12_345.6, 0.4123) == "  12,346 tokens/s in training steps  MFU 41.2%"
    assert speed_text(None, None) == ""  # the first validation: nothing trained yet


def test_cpu_bf16_attention_computes_causal_sdpa_without_its_slow_cpu_kernel() -> None:
    """Under bf16 autocast on the CPU, SDPA's flash kernel is slower than in fp32: attention there is two bf16
    matmuls around an fp32 softmax. It must be the same causal function, with gradients, and not call SDPA."""
    from torch.nn import functional as F
    from torch.profiler import ProfilerActivity, profile

    from lmwright.models.gpt import causal_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen, requires_grad=True) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.autocast("cpu", dtype=torch.bfloat16):
        got = causal_attention(q, k, v, 0.0)
    got_grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    assert got.dtype == torch.bfloat16
    assert not [e.key for e in prof.key_averages() if "scaled_dot_product" in e.key]
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)  # bf16 rounding, nothing more
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=0.1, rtol=0.05)
    later = v.detach().clone()
    later[:, :, 9:] += 1.0  # the future changes; positions 0..8 must not see it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(causal_attention(q, k, later, 0.0)[:, :, :9], got.detach()[:, :, :9])
        dropped = causal_attention(q, k, v, 0.5)
    assert dropped.shape == got.shape and not torch.equal(dropped, got.detach())


@pytest.mark.parametrize("dtype, iterates_in", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_muon_iterates_in_the_precision_the_model_trains_in(dtype: str, iterates_in: torch.dtype) -> None:
    """bf16 matmuls are 2-4x fp32's on CPUs with bf16 instructions: a bf16 run's Newton-Schulz iterations use them."""
    opt = build_optimizer(GPT(TINY.build(23)), params(optimizer="muon", dtype=dtype), "cpu")
    assert opt.ns_dtype == iterates_in
    g = torch.randn(4, 48, 16, generator=torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(orthogonalize(g, dtype=iterates_in).float())
    assert singular.min() > 0.6 and singular.max() < 1.25


def test_muon_matrices_take_the_runs_weight_decay_at_muons_rate() -> None:
    """weight_decay is on matrices under either optimizer; a Muon matrix shrinks by muon_lr * weight_decay a step."""
    p = params(optimizer="muon", lr=1e-3, muon_lr=0.04, weight_decay=0.5)
    model = GPT(TINY.build(23))
    opt = build_optimizer(model, p, "cpu")
    before = {name: t.detach().clone() for name, t in model.named_parameters()}
    for t in model.parameters():
        t.grad = torch.zeros_like(t)  # no gradient: only the decay moves a weight
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["blocks.0.attn.q.weight"], before["blocks.0.attn.q.weight"] * (1 - 0.04 * 0.5))
    torch.testing.assert_close(after["tok_emb.weight"], before["tok_emb.weight"] * (1 - 1e-3 * 0.5))  # AdamW's rate
    assert torch.equal(after["norm.weight"], before["norm.weight"])  # gains never decay
