"""Benchmarks of a trained export against the same architecture at random initialisation, with intervals.

    python benchmarks/eval_tasks.py EXPORT_DIR [--tasks configs/eval_tasks] [--seeds 3] [--out DIR]

EXPORT_DIR is an lmwright export (``lmwright run`` prints it last). The random models have the
export's config and tokenizer and differ only in their weights (``--seeds`` initialisations, torch
seeds 0..n-1). Every task in ``--tasks`` (a directory of lm-eval YAMLs) is scored through the same
``tasks.train.harness.run_tasks`` the evaluate stage uses. Printed: each task's accuracy with its
95% Wilson interval, and the trained-minus-random difference with a 95% interval
(``1.96 * sqrt(se_a^2 + se_b^2)``, the two scores treated as independent). Results go to
``--out``/eval_tasks.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from lmwright.models.export import export_hf
from lmwright.models.generate import load_generator
from lmwright.models.gpt import GPT
from lmwright.models.tokenizer import CHAT_TEMPLATE
from lmwright.tasks.train.harness import run_tasks, task_documents
from lmwright.tasks.train.params import TaskParams


def random_export(export: Path, seed: int, into: Path) -> Path:
    """The export's architecture and tokenizer with freshly initialised weights."""
    config = load_generator(export).model.config
    torch.manual_seed(seed)
    return export_hf(GPT(config).eval(), config, export / "tokenizer.json", into,
                     additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"], chat_template=CHAT_TEMPLATE)


def difference(a: dict, b: dict) -> dict:
    diff = a["value"] - b["value"]
    half = 1.96 * math.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2)
    return {"value": round(diff, 4), "ci95": [round(diff - half, 4), round(diff + half, 4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--tasks", default="configs/eval_tasks")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"eval-tasks-{time.strftime('%Y-%m-%d')}")
    args = ap.parse_args()
    params = TaskParams(names=sorted(task_documents(args.tasks)), include_path=args.tasks)
    started = time.time()
    trained = run_tasks(args.export, params)
    randoms = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            randoms.append(run_tasks(random_export(args.export, seed, Path(tmp) / f"random-{seed}"), params))
    rows = []
    for task in params.names:
        for metric, score in trained[task]["metrics"].items():
            for seed, r in enumerate(randoms):
                rows.append({"task": task, "metric": metric, "examples": trained[task]["examples"], "trained": score,
                             "random_seed": seed, "random": r[task]["metrics"][metric],
                             "trained_minus_random": difference(score, r[task]["metrics"][metric])})
    print(f"{'task':28} {'metric':9} {'n':>4} {'trained (95%)':>22} {'random seed':>11} {'random (95%)':>22} {'difference (95%)':>24}")
    for row in rows:
        t, r, d = row["trained"], row["random"], row["trained_minus_random"]
        print(f"{row['task']:28} {row['metric']:9} {row['examples']:>4} {t['value']:.3f} ({t['ci95'][0]:.3f}-{t['ci95'][1]:.3f})"
              f" {row['random_seed']:>11} {r['value']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
              f" {d['value']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"export": str(args.export), "tasks": args.tasks, "seeds": args.seeds, "seconds": round(time.time() - started, 1),
              "model_card_title": (args.export / "README.md").read_text().split("\n# ", 1)[-1].split("\n", 1)[0]
              if (args.export / "README.md").is_file() else None, "rows": rows}
    (args.out / "eval_tasks.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'eval_tasks.json'} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
