"""Benchmark: transfer learning. Fine-tune a pretrained tiny model vs train it from scratch, to the same loss.

    flock /tmp/lmwright-bench.lock python benchmarks/transfer.py [--pretrain-seconds 90 | --pretrain-steps N]
        [--scratch-seconds 90 | --scratch-steps N] [--narrow shakespeare|gsm8k] [--pretrain-data gutenberg,web]
        [--ft-lr 1e-3 --ft-warmup 5] [--target LOSS] [--device cpu|cuda] [--batch-size 16] [--threads 2]
        [--eval-interval 10] [--workdir DIR] [--json out.json]

Step budgets make the FLOPs comparison independent of machine load; seconds and kWh still
depend on it. ``--workdir`` keeps the runs and reuses the pretraining and from-scratch runs
when their settings match, so fine-tuning recipes can be compared against the same two.

1. Tokenizer: ``models.tokenizer.train_bpe`` (byte-level BPE, vocab 1024) on the pretraining text
   only; the narrow set is encoded with it as is (what reusing a pretrained model means).
2. Pretrain: the ``tiny`` preset with ``tasks.train.loop.train`` on a broad corpus (default:
   Project Gutenberg novels in 4 KB pieces plus the crawled web pages of shared/data/web,
   shuffled, 5% held out).
3. The narrow set: ``shakespeare`` (tinyshakespeare, 90/10 split: verse drama, a style the
   broad corpus does not have) or ``gsm8k`` (math word problems with worked answers and
   calculator annotations: a far domain).
4. From scratch: the same architecture, randomly initialized, trained on the narrow set for
   its budget (cosine schedule over that budget). The target is the best validation loss it
   reaches (or ``--target``): on a small narrow set that is its early-stopping point.
5. From pretrained: the pretrained weights (best checkpoint), trained on the narrow set with
   the fine-tuning recipe until its validation loss reaches the target (it stops there), or
   until the same budget.

Compute to the target, for each: training FLOPs (``GPT.flops_per_token`` x tokens up to the
validation that first met the target; evaluations excluded), wall-clock seconds to that
validation, and energy from ``tasks.core.energy.track`` (codecarbon; the from-scratch energy is
prorated to its seconds-to-target when it met the target before its budget ended). The
validation interval bounds the resolution of "steps to target". The pretraining cost is
printed too: the ratio leaves it out (the pretrained model is reused by every fine-tune),
the "incl. pretraining" line puts it in.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmwright.models.gpt import GPT  # noqa: E402
from lmwright.tasks.core.energy import EnergySettings, track  # noqa: E402
from lmwright.models.tokenizer import SpecialTokens, train_bpe, vocab_size_of  # noqa: E402
from lmwright.tasks.train.loop import Batches, ModelSpec, TrainParams, batch_at, train  # noqa: E402

# ../shared/data beside the checkout; LMWRIGHT_SHARED_DATA points elsewhere (e.g. a copy on a GPU machine)
DATA = Path(os.environ.get("LMWRIGHT_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
VOCAB = 1024


class ReachedTarget(Exception):
    def __init__(self, step: int, record: dict[str, float]):
        super().__init__(f"target reached at step {step}")
        self.step, self.record = step, record


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def read_pretraining_docs(names: list[str]) -> list[str]:
    """The broad corpus: Gutenberg novels (split into 4 KB pieces) and/or crawled web pages."""
    docs: list[str] = []
    for name in names:
        if name == "gutenberg":
            for p in sorted((DATA / "gutenberg").glob("*.txt")):
                text = p.read_text(encoding="utf-8", errors="replace")
                docs += [text[i : i + 4096] for i in range(0, len(text), 4096)]
        elif name == "web":
            for p in sorted((DATA / "web").glob("*.jsonl")):
                docs += [r["text"] for r in _jsonl(p)]
        else:
            raise SystemExit(f"unknown pretraining source {name!r} (gutenberg, web)")
    return docs


def read_narrow(name: str) -> tuple[list[str], list[str]]:
    """(train, validation) documents of the narrow set."""
    if name == "gsm8k":
        def rows(split: str) -> list[str]:
            return [f"{r['question']}\n{r['answer']}" for r in _jsonl(DATA / "instructions" / f"gsm8k_{split}.jsonl")]
        return rows("train"), rows("test")
    if name == "shakespeare":  # the play text in 4 KB pieces; the last 10% is validation (nanoGPT's split)
        text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        cut = int(len(text) * 0.9)
        pieces = lambda t: [t[i : i + 4096] for i in range(0, len(t), 4096)]  # noqa: E731
        return pieces(text[:cut]), pieces(text[cut:])
    raise SystemExit(f"unknown narrow set {name!r} (gsm8k, shakespeare)")


def encode_docs(tok: Any, docs: list[str], eot: int) -> np.ndarray:
    out: list[int] = []
    for enc in tok.encode_batch(docs):
        out.extend(enc.ids)
        out.append(eot)
    return np.asarray(out, dtype=np.uint16)


def steps_per_second(params: TrainParams, vocab: int, data: np.ndarray, steps: int = 6) -> float:
    """A short timed calibration on a throwaway model, so a cosine schedule can end with the budget."""
    cfg = params.model.build(vocab)
    device = params.device if params.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        x, y, _ = batch_at(data, None, cfg.block_size, params.batch_size, 0, i, 0, device)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def run(
    name: str,
    out: Path,
    batches: Batches,
    params: TrainParams,
    vocab: int,
    energy: EnergySettings,
    init_from: Path | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    history: list[dict[str, float]] = []

    def progress(step: int, record: dict[str, float]) -> None:
        history.append({"step": step, **record})
        if target is not None and record["val_loss"] <= target:
            raise ReachedTarget(step, record)

    shutil.rmtree(out, ignore_errors=True)  # a fresh run: train() would resume from checkpoints left there
    stopped, steps = "budget", None
    with track(name, energy) as rec:
        try:
            steps = train(out, batches, params, vocab, init_from=init_from, progress=progress).steps
        except ReachedTarget as hit:
            stopped, steps = "target", hit.step
    return {"name": name, "history": history, "energy": rec.to_json(), "stopped": stopped, "steps": steps}


def cached(work: Path, name: str, key: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``fn()``'s result, saved as ``work/<name>.json``; reused when the same key ran there before
    (``--workdir``: try fine-tuning recipes against one pretrained model and one from-scratch run)."""
    path = work / f"{name}.json"
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            print(f"{name}: reused from {path}", flush=True)
            return saved["result"]
    result = fn()
    path.write_text(json.dumps({"key": key, "result": result}))
    return result


def to_target(res: dict[str, Any], target: float, flops_per_token: int, tokens_per_step: int) -> dict[str, Any] | None:
    """Compute up to the first validation at or below the target (None: never reached)."""
    hit = next((h for h in res["history"] if h["val_loss"] <= target), None)
    if hit is None:
        return None
    tracked_s = res["energy"]["duration_s"]
    share = min(1.0, hit["seconds"] / tracked_s) if res["stopped"] == "budget" and tracked_s > 0 else 1.0
    return {
        "step": hit["step"],
        "val_loss": hit["val_loss"],
        "tokens": hit["step"] * tokens_per_step,
        "flops": float(flops_per_token) * hit["step"] * tokens_per_step,
        "seconds": hit["seconds"],
        "energy_kwh": res["energy"]["energy_kwh"] * share,
        "co2_kg": res["energy"]["co2_kg"] * share,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-seconds", type=float, default=90.0)
    ap.add_argument("--scratch-seconds", type=float, default=90.0)
    ap.add_argument("--pretrain-steps", type=int, default=None, help="Budget in optimizer steps instead of seconds (load-independent).")
    ap.add_argument("--scratch-steps", type=int, default=None, help="Budget in optimizer steps instead of seconds (load-independent).")
    ap.add_argument("--target", type=float, default=None, help="Target validation loss (default: the best from scratch reaches).")
    ap.add_argument("--pretrain-data", default="gutenberg,web", help="Comma-separated: gutenberg, web.")
    ap.add_argument("--narrow", default="shakespeare", choices=["shakespeare", "gsm8k"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (the training code's device setting).")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-interval", type=int, default=10)
    ap.add_argument("--ft-lr", type=float, default=1e-3, help="Peak learning rate of the fine-tune (from scratch: 3e-3).")
    ap.add_argument("--ft-warmup", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None, help="Keep runs here and reuse pretraining/from-scratch runs with the same settings.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    energy = EnergySettings(measure_power_secs=5)
    t_start = time.perf_counter()
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)

    special = SpecialTokens()
    pre_docs = read_pretraining_docs(args.pretrain_data.split(","))
    random.Random(0).shuffle(pre_docs)  # a held-out split drawn from every source
    tok = train_bpe(pre_docs, VOCAB, 2, special)  # the pretrained model's tokenizer, reused as is for the narrow set
    vocab = vocab_size_of(tok)
    eot = tok.token_to_id(special.eot)
    cut = int(len(pre_docs) * 0.95)
    pre = Batches(train=encode_docs(tok, pre_docs[:cut], eot), val=encode_docs(tok, pre_docs[cut:], eot))
    narrow_train, narrow_val = read_narrow(args.narrow)
    narrow = Batches(train=encode_docs(tok, narrow_train, eot), val=encode_docs(tok, narrow_val, eot))
    print(
        f"tokens: pretrain {len(pre.train):,} train / {len(pre.val):,} val ({args.pretrain_data}); "
        f"narrow {len(narrow.train):,} train / {len(narrow.val):,} val ({args.narrow}); vocab {vocab}",
        flush=True,
    )

    common = dict(
        model=ModelSpec(preset="tiny"), batch_size=args.batch_size, eval_batches=8, eval_interval=args.eval_interval,
        patience=None, checkpoint_interval=100_000, device=args.device, threads=args.threads, seed=1337,
    )
    rate = steps_per_second(TrainParams(**common), vocab, pre.train)
    print(f"calibration: {rate:.2f} steps/s", flush=True)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lmwright-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    data_key = {"pretrain_data": args.pretrain_data, "narrow": args.narrow, "vocab": vocab}
    pre_steps = args.pretrain_steps or max(50, int(rate * args.pretrain_seconds))
    pre_params = TrainParams(**common, lr=3e-3, min_lr=3e-4, warmup_steps=20, max_steps=pre_steps,
                             max_seconds=None if args.pretrain_steps else args.pretrain_seconds)
    pre_res = cached(work, "pretrain", {**data_key, "params": pre_params.model_dump(), "budget": args.pretrain_steps or args.pretrain_seconds},
                     lambda: run("pretrain", work / "pretrain", pre, pre_params, vocab, energy))
    print(f"pretrain: {pre_res['steps']} steps, last val {pre_res['history'][-1]['val_loss']:.3f} "
          f"({args.pretrain_data}), {pre_res['energy']['energy_kwh']:.3g} kWh", flush=True)
    best = work / "pretrain" / "checkpoints" / "best"

    narrow_steps = args.scratch_steps or max(50, int(rate * args.scratch_seconds))
    narrow_budget = None if args.scratch_steps else args.scratch_seconds
    scratch_params = TrainParams(**common, lr=3e-3, min_lr=3e-4, warmup_steps=20, max_steps=narrow_steps, max_seconds=narrow_budget)
    scratch = cached(work, "scratch", {**data_key, "params": scratch_params.model_dump(), "target": args.target,
                                       "budget": args.scratch_steps or args.scratch_seconds},
                     lambda: run("from-scratch", work / "scratch", narrow, scratch_params, vocab, energy, target=args.target))
    target = args.target if args.target is not None else min(h["val_loss"] for h in scratch["history"])
    print(f"from scratch: {scratch['steps']} steps, best val {min(h['val_loss'] for h in scratch['history']):.4f}; "
          f"target {target:.4f}", flush=True)

    ft_params = TrainParams(**common, lr=args.ft_lr, min_lr=args.ft_lr / 10, warmup_steps=args.ft_warmup,
                            max_steps=narrow_steps, max_seconds=narrow_budget)
    ft = run("from-pretrained", work / "finetune", narrow, ft_params, vocab, energy, init_from=best, target=target)
    print(f"from pretrained: start val {ft['history'][0]['val_loss']:.4f}, "
          f"{ft['steps']} steps, stopped at {ft['stopped']}", flush=True)

    model = GPT(TrainParams(**common).model.build(vocab))
    fpt = model.flops_per_token()
    tps = common["batch_size"] * model.config.block_size
    a = to_target(scratch, target, fpt, tps)
    b = to_target(ft, target, fpt, tps)
    pre_cost = {"steps": pre_res["steps"], "flops": float(fpt) * pre_res["steps"] * tps,
                "seconds": pre_res["energy"]["duration_s"], "energy_kwh": pre_res["energy"]["energy_kwh"]}

    print()
    print(f"target validation loss on {args.narrow} validation: {target:.4f} nats/token")
    print(f"{'run':<18}{'steps':>7}{'FLOPs':>12}{'seconds':>10}{'kWh':>12}{'gCO2e':>9}")
    for name, r in (("from scratch", a), ("from pretrained", b)):
        if r is None:
            print(f"{name:<18}  did not reach the target within its budget ({narrow_steps} steps / {narrow_budget} s)")
            continue
        print(f"{name:<18}{r['step']:>7}{r['flops']:>12.3e}{r['seconds']:>10.1f}{r['energy_kwh']:>12.3e}{r['co2_kg'] * 1000:>9.4f}")
    print(f"{'(pretraining)':<18}{pre_cost['steps']:>7}{pre_cost['flops']:>12.3e}{pre_cost['seconds']:>10.1f}{pre_cost['energy_kwh']:>12.3e}")
    result: dict[str, Any] = {"target": target, "scratch": a, "pretrained": b, "pretraining": pre_cost,
                              "mode": scratch["energy"]["mode"], "steps_per_second": rate}
    if a and b and a["flops"] > 0:
        ratio = {k: b[k] / a[k] for k in ("flops", "seconds", "energy_kwh") if a[k] > 0}
        result["ratio"] = ratio
        print(f"ratio from-pretrained / from-scratch: FLOPs {ratio['flops']:.3f}, seconds {ratio['seconds']:.3f}, "
              f"kWh {ratio['energy_kwh']:.3f}  (target <= 0.20: {'met' if ratio['flops'] <= 0.2 else 'NOT met'})")
        incl = (b["flops"] + pre_cost["flops"]) / a["flops"]
        result["ratio_incl_pretraining"] = (b["flops"] + pre_cost["flops"]) / a["flops"]
        print(f"incl. pretraining: FLOPs {incl:.3f} of from-scratch")
    print(f"energy mode: {scratch['energy']['mode']}")
    print(f"total wall clock {time.perf_counter() - t_start:.0f} s; uptime: {os.popen('uptime').read().strip()}")
    if args.json:
        result["histories"] = {"scratch": scratch["history"], "pretrained": ft["history"], "pretrain": pre_res["history"]}
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
