"""Training: schedule, budgets, early stopping, and resuming a killed run to identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tasks.train import Batches, ModelSpec, TrainParams, batch_at, lr_at, train

TINY = ModelSpec(preset="tiny", overrides={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.1})
VOCAB = 64


def toy_tokens(n: int, seed: int) -> np.ndarray:
    """A learnable sequence: a repeating ramp with noise."""
    rng = np.random.default_rng(seed)
    base = np.arange(n) % 17
    noise = rng.integers(0, VOCAB, n)
    return np.where(rng.random(n) < 0.1, noise, base).astype(np.uint16)


BATCHES = Batches(train=toy_tokens(20_000, 0), val=toy_tokens(4_000, 1))


def params(**kw) -> TrainParams:
    base = dict(model=TINY, batch_size=4, max_steps=40, eval_interval=10, checkpoint_interval=10, patience=None,
                warmup_steps=5, lr=3e-3, eval_batches=2, threads=1)
    return TrainParams(**{**base, **kw})


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    p = params(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, p) == pytest.approx(0.1)
    assert lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(55, p) == pytest.approx(0.55)
    assert lr_at(100, p) == pytest.approx(0.1)


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    a = batch_at(BATCHES.train, None, 32, 4, 7, 3, 0, "cpu")
    b = batch_at(BATCHES.train, None, 32, 4, 7, 3, 0, "cpu")
    c = batch_at(BATCHES.train, None, 32, 4, 7, 4, 0, "cpu")
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one


def test_training_learns_and_keeps_best_and_last(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(max_steps=60), VOCAB)
    history = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 60 and result.stopped == "max_steps"
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5
    assert (tmp_path / "checkpoints" / "best" / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "last" / "optimizer.safetensors").exists()
    assert result.flops > 0 and result.tokens_seen == 60 * 4 * 32


def test_early_stopping_when_validation_stops_improving(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(lr=1e-9, min_lr=0.0, max_steps=200, patience=2), VOCAB)
    assert result.stopped == "early_stopping"
    assert result.steps == 20  # evals at 0 (best), 10 and 20 (no gain) -> stop
    assert result.best_step == 0


def test_wall_clock_budget(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(max_steps=100_000, max_seconds=1.0), VOCAB)
    assert result.stopped == "max_seconds" and 0 < result.steps < 100_000


TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_train import BATCHES, VOCAB, params
from tasks.train import train
train(Path({out!r}), BATCHES, params(max_steps={steps}), VOCAB)
"""


def test_killed_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    """kill -9 mid-run, rerun: the final weights equal an uninterrupted run's, bit for bit (CPU, same seed)."""
    steps = 400
    straight = tmp_path / "straight"
    train(straight, BATCHES, params(max_steps=steps), VOCAB)

    killed = tmp_path / "killed"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT.format(root=root, out=str(killed), steps=steps)])
    state = killed / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["train"]["step"] >= 50:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["train"]["step"]
    assert 0 < killed_at < steps

    resumed = train(killed, BATCHES, params(max_steps=steps), VOCAB)
    assert resumed.steps == steps
    a = load_file(str(straight / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    logged = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # evaluations after the checkpoint were not logged twice


def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks with gloo, batch 4 each == 1 process with 2 micro-batches of 4."""
    from tasks.dataset import write_json

    data = {"kind": "tokens", "train": str(tmp_path / "train.bin"), "val": str(tmp_path / "val.bin"), "dtype": "uint16"}
    BATCHES.train.tofile(data["train"])
    BATCHES.val.tofile(data["val"])
    common = dict(max_steps=30, model=ModelSpec(preset="tiny", overrides={**TINY.overrides, "dropout": 0.0}))
    single = train(tmp_path / "single", BATCHES, params(grad_accum=2, **common), VOCAB)

    spec = {"out_dir": str(tmp_path / "ddp"), "data": data, "vocab_size": VOCAB, "init_from": None, "lora": None,
            "params": params(grad_accum=1, nproc=2, **common).model_dump(mode="json")}
    write_json(tmp_path / "spec.json", spec)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "tasks.train_worker", str(tmp_path / "spec.json")],
        cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "train_result.json").read_text())
    assert ddp["steps"] == single.steps == 30
    assert ddp["tokens_seen"] == single.tokens_seen
    curve = lambda d: [json.loads(l)["val_loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]
    a, b = curve(tmp_path / "single"), curve(tmp_path / "ddp")
    assert len(a) == len(b)
    # Same batches, same averaged gradients; only the order of float additions differs.
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3, (a, b)


def test_wall_clock_budget_drives_the_decay() -> None:
    p = params(max_steps=1000, warmup_steps=0, lr=1.0, min_lr=0.0, max_seconds=100)
    assert lr_at(10, p, seconds=50) == pytest.approx(0.5)  # halfway by the clock, 1% by steps
    assert lr_at(10, p, seconds=100) == pytest.approx(0.0)
