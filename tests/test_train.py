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

from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, batch_at, lr_at, train

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
    history = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lowest = min(history, key=lambda r: r["val_loss"])  # best is the lowest loss, even by less than min_delta
    assert (result.best_step, result.best_val_loss) == (lowest["step"], lowest["val_loss"])


def test_wall_clock_budget(tmp_path: Path) -> None:
    result = train(tmp_path, BATCHES, params(max_steps=100_000, max_seconds=1.0), VOCAB)
    assert result.stopped == "max_seconds" and 0 < result.steps < 100_000


TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_train import BATCHES, VOCAB, params
from lmwright.tasks.train.loop import train
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
    from lmwright.tasks.core.dataset import write_json

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
         "-m", "lmwright.tasks.train.worker", str(tmp_path / "spec.json")],
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


def test_schedule_is_a_function_of_steps_alone() -> None:
    guarded = params(max_steps=1000, warmup_steps=0, lr=1.0, min_lr=0.0, max_seconds=100)
    plain = params(max_steps=1000, warmup_steps=0, lr=1.0, min_lr=0.0)
    assert [lr_at(s, guarded) for s in (0, 10, 500, 1000)] == [lr_at(s, plain) for s in (0, 10, 500, 1000)]


def test_a_slow_machine_trains_the_same_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock says 90 of the guard's 100 s went by before the first step (a busy start): same model, only later.

    Before, the cosine followed the clock under a wall-clock limit, so this run decayed its
    learning rate at once and trained other weights."""
    p = params(max_steps=30, max_seconds=100.0)
    train(tmp_path / "quiet", BATCHES, p, VOCAB)
    calls = {"n": 0}

    def slow_clock() -> float:
        calls["n"] += 1
        return 0.0 if calls["n"] == 1 else 90.0 + calls["n"] * 1e-3

    monkeypatch.setattr("lmwright.tasks.train.loop.time.perf_counter", slow_clock)
    result = train(tmp_path / "slow", BATCHES, p, VOCAB)
    assert result.stopped == "max_steps" and result.steps == 30
    quiet_w = load_file(str(tmp_path / "quiet" / "checkpoints" / "best" / "model.safetensors"))
    slow_w = load_file(str(tmp_path / "slow" / "checkpoints" / "best" / "model.safetensors"))
    assert all(torch.equal(quiet_w[k], slow_w[k]) for k in quiet_w)


def _history(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _best_state(out: Path) -> dict:
    return json.loads((out / "checkpoints" / "best" / "state.json").read_text())["train"]


@pytest.mark.parametrize(
    "stop, kw",
    [
        ("max_steps", dict(max_steps=25)),
        ("early_stopping", dict(max_steps=500, lr=1e-9, min_lr=0.0, patience=2)),
        ("max_seconds", dict(max_steps=100_000, eval_interval=10**6, max_seconds=1.0)),
    ],
)
def test_every_stop_ends_with_a_validation_of_the_final_weights(tmp_path: Path, stop: str, kw: dict) -> None:
    result = train(tmp_path, BATCHES, params(**kw), VOCAB)
    history = _history(tmp_path)
    assert result.stopped == stop
    assert history[-1]["step"] == result.steps  # the weights that training ended with were scored
    lowest = min(history, key=lambda r: r["val_loss"])
    assert (result.best_step, result.best_val_loss) == (lowest["step"], lowest["val_loss"])
    assert _best_state(tmp_path)["best_step"] == lowest["step"]


def test_a_run_cut_by_the_guard_keeps_its_trained_weights_not_the_initialisation(tmp_path: Path) -> None:
    """The guard fired before the first scheduled validation: best must be the final weights, not step 0."""
    result = train(tmp_path, BATCHES, params(max_steps=100_000, eval_interval=10**6, max_seconds=1.0), VOCAB)
    assert result.stopped == "max_seconds" and result.steps > 10
    assert result.best_step == result.steps
    history = _history(tmp_path)
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.3


BUSY = "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end:\n    pass\n"


def test_same_weights_on_a_busy_machine(tmp_path: Path) -> None:
    """The same command on a quiet and on a busy machine (two processes spinning on the cores) trains the same model."""
    p = params(max_steps=60, max_seconds=3600.0)  # the guard is set, as in the presets, and never fires
    train(tmp_path / "quiet", BATCHES, p, VOCAB)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
    try:
        train(tmp_path / "busy", BATCHES, p, VOCAB)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    quiet_w = load_file(str(tmp_path / "quiet" / "checkpoints" / "best" / "model.safetensors"))
    busy_w = load_file(str(tmp_path / "busy" / "checkpoints" / "best" / "model.safetensors"))
    assert quiet_w.keys() == busy_w.keys()
    assert all(torch.equal(quiet_w[k], busy_w[k]) for k in quiet_w)


def test_max_epochs_caps_the_steps(tmp_path: Path) -> None:
    p = params(max_steps=1000, max_epochs=0.5, eval_interval=1000)
    result = train(tmp_path, BATCHES, p, VOCAB)
    tokens_per_step = 4 * 32
    assert result.steps == result.planned_steps == int(0.5 * BATCHES.train.size / tokens_per_step)


def test_too_few_validation_tokens_is_one_clear_error(tmp_path: Path) -> None:
    from lmwright.tasks.core.errors import TrainingDataError

    with pytest.raises(TrainingDataError, match="the val split has 0 tokens; training needs at least 34"):
        train(tmp_path, Batches(train=toy_tokens(20_000, 0), val=toy_tokens(0, 1)), params(), VOCAB)
