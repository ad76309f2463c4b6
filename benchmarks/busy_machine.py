"""Benchmark: training and evaluation of the tiny model on the machine as found and made busier, OpenMP defaults vs lmwright's setting.

    uptime; python benchmarks/busy_machine.py [--steps 6] [--load-procs 2] [--eval-tokens 2048]
        [--variants defaults,lmwright,one-thread] [--repeat 1] [--json out.json]; uptime

Each measurement is a fresh Python process (OpenMP reads its settings once, when torch loads it)
that trains the ``tiny`` preset for ``--steps`` steps of 32 x 128 tokens through
``tasks.train.loop.train`` (tokens/s = the run's tokens_seen / seconds, as the pretrain stage reports
it), then evaluates the trained weights as the evaluate stage does: ``heldout_loss`` on val and on
train (``--eval-tokens`` each, batch 8) and the three fixed-seed ``samples`` (48 tokens each).
The user's environment is stripped of OMP_WAIT_POLICY / OMP_NUM_THREADS first, so each variant
starts from torch's defaults:

* ``defaults``: torch is imported before any lmwright module, so OpenMP starts with its own
  defaults (what every process ran with before ``tasks/core/cpu_threads.py``);
* ``lmwright``: lmwright's modules are imported first, as every entry point does, so OpenMP
  starts with ``apply_cpu_defaults`` (OMP_WAIT_POLICY=PASSIVE);
* ``one-thread``: the defaults with OMP_NUM_THREADS=1 (the other cure the first probe tried).

Each child runs with OMP_DISPLAY_ENV=VERBOSE and the table shows the GOMP_SPINCOUNT libgomp
reports, so the variant really is what it says. Every variant runs twice: on the machine as found
(nothing added), then "busy", with ``--load-procs`` pure-Python spinning processes started by this
script (bounded in time, stopped at the end). Other users' work is not controlled: each row carries
the 1-minute load average before and after it; compare ratios within one run.
``--table-from run.json`` prints the tables of a saved run.

Data: the first 90% / last 10% of ../shared/data/tinyshakespeare/input.txt (BPE vocabulary 4,096,
as the tiny config's tokenizer); without it, random tokens (speed does not depend on the text).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
VOCAB = 4096
VARIANTS = ("defaults", "lmwright", "one-thread")
CLEARED = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------- parent


def prepare_data(folder: Path) -> None:
    """train.npy / val.npy token arrays and tokenizer.json in ``folder`` (once per run, outside the timings)."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    if TEXT.is_file():
        from lmwright.models.tokenizer import SpecialTokens, train_bpe

        text = TEXT.read_text()
        cut = int(len(text) * 0.9)
        tok = train_bpe(iter([text[:cut]]), VOCAB, 2, SpecialTokens())
        tok.save(str(folder / "tokenizer.json"))
        train = np.array(tok.encode(text[:cut]).ids, dtype=np.uint16)
        val = np.array(tok.encode(text[cut:]).ids, dtype=np.uint16)
    else:
        rng = np.random.default_rng(0)
        train, val = rng.integers(0, VOCAB, 300_000, dtype=np.uint16), rng.integers(0, VOCAB, 30_000, dtype=np.uint16)
    np.save(folder / "train.npy", train)
    np.save(folder / "val.npy", val)


def start_load(procs: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    """Competing work: pure-Python processes that spin until ``seconds`` have passed (or they are stopped)."""
    spin = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(procs)]


def stop_load(load: list[subprocess.Popen[bytes]]) -> None:
    for p in load:
        p.terminate()
    for p in load:
        p.wait()


def measure(variant: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    if variant == "one-thread":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, __file__, "--child", variant, "--data", str(data), "--steps", str(args.steps),
           "--eval-tokens", str(args.eval_tokens)]
    load_before = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    spin = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    return {**result, "variant": variant, "spincount": spin[0] if spin else "?",
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


MACHINES = ("as found", "busy")  # as found: nothing added by this script; busy: + --load-procs spinners


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="busy-machine-") as tmp:
        data = Path(tmp)
        prepare_data(data)
        for machine in MACHINES:
            load = start_load(args.load_procs, args.load_seconds) if machine == "busy" else []
            try:
                time.sleep(2.0 if load else 0.0)  # let the spinners take the cores
                for _ in range(args.repeat):
                    for variant in args.variants:
                        row = {"machine": machine, **measure(variant, data, args)}
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                stop_load(load)
    return rows


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def times(x: float) -> str:
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def table(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [
        f"tiny preset, {settings['steps']} steps x 32 x 128 tokens; eval = heldout_loss on {settings['eval_tokens']:,} val + "
        f"{settings['eval_tokens']:,} train tokens (batch 8) + 3 samples x 48 tokens; busy = as found + "
        f"{settings['load_procs']} spinning processes; {settings['cpus']} CPUs",
        "",
        "| machine | variant | GOMP_SPINCOUNT | torch threads | train tokens/s | train s | eval s | 1-min load avg before -> after |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['machine']} | {r['variant']} | {r['spincount']} | {r['threads']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['train_s']:.1f} | {r['eval_s']:.2f} | {r['load_before']} -> {r['load_after']} |")
    med = {(m, v): (median([r["tokens_per_s"] for r in rows if (r["machine"], r["variant"]) == (m, v)]),
                    median([r["eval_s"] for r in rows if (r["machine"], r["variant"]) == (m, v)]))
           for m in MACHINES for v in variants}
    lines += ["", "Speed-ups (medians of the rows above; > 1x: faster):", "",
              "| comparison | training (tokens/s) | evaluation (seconds) |", "|---|---:|---:|"]
    for v in variants:
        for m in MACHINES:
            if v != "defaults" and "defaults" in variants:
                (dt, de), (vt, ve) = med[(m, "defaults")], med[(m, v)]
                lines.append(f"| {v} vs defaults, {m} | {times(vt / dt)} | {times(de / ve)} |")
    for v in variants:
        (qt, qe), (bt, be) = med[(MACHINES[0], v)], med[(MACHINES[1], v)]
        lines.append(f"| {v}: busy vs as found | {times(bt / qt)} | {times(qe / be)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- child


def child(variant: str, data: Path, steps: int, eval_tokens: int) -> dict[str, float]:
    """One measurement in this fresh process; what is imported first decides OpenMP's settings."""
    sys.path.insert(0, str(REPO))
    if variant == "lmwright":
        import lmwright.tasks  # noqa: F401  (the product's entry points import lmwright's packages first)
    import torch  # noqa: F401  (for "defaults"/"one-thread": OpenMP starts before lmwright's settings)
    import numpy as np
    from tokenizers import Tokenizer

    from lmwright.tasks.train.evaluate import EvalParams, heldout_loss, samples
    from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, train

    train_ids, val_ids = np.load(data / "train.npy"), np.load(data / "val.npy")
    params = TrainParams(model=ModelSpec(preset="tiny"), batch_size=32, max_steps=steps, warmup_steps=5,
                         eval_interval=steps, eval_batches=2, checkpoint_interval=steps, patience=None, device="cpu")
    with tempfile.TemporaryDirectory(prefix="busy-child-") as out:
        result = train(Path(out), Batches(train=train_ids, val=val_ids), params, VOCAB)
        from lmwright.models.checkpoint import load_checkpoint
        from lmwright.models.gpt import GPT, GPTConfig

        model = GPT(GPTConfig(**result.model_config_json))
        load_checkpoint(Path(out) / "checkpoints" / "best", model, restore_rng=False)
    tokenizer_path = data / "tokenizer.json"
    eval_params = EvalParams(max_tokens=eval_tokens, batch_size=8)
    start = time.perf_counter()
    heldout_loss(model, val_ids, eval_params)
    heldout_loss(model, train_ids, eval_params)
    if tokenizer_path.is_file():
        samples(model, Tokenizer.from_file(str(tokenizer_path)), eval_params)
    eval_s = time.perf_counter() - start
    return {"tokens_per_s": result.tokens_seen / result.seconds, "train_s": result.seconds, "eval_s": eval_s,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--load-seconds", type=float, default=1800.0, help="upper bound on the competing load's life")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the settings and rows here")
    ap.add_argument("--table-from", type=Path, help="print the table of a --json file, measure nothing")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.steps, args.eval_tokens)))
        return
    if args.table_from:
        saved = json.loads(args.table_from.read_text())
        print(table(saved["rows"], saved["settings"]))
        return
    settings = {"steps": args.steps, "eval_tokens": args.eval_tokens, "load_procs": args.load_procs, "cpus": os.cpu_count()}
    # A stopped benchmark (timeout, kill) still stops its competing load (run_all's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = run_all(args)
    print(table(rows, settings))
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
