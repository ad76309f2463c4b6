"""README's first command twice: as the machine is, then with two processes spinning on the cores.

The exported weights must be identical (CPU, same seed): load changes how long a run
takes, never what it trains. Prints both runs' time, throughput and the weights' sha256.

    python benchmarks/same_model_under_load.py [--config tiny] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def run(workdir: Path, config: str, busy: int, limit_s: float) -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=limit_s)]) for _ in range(busy)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        done = subprocess.run(["lmwright", "run", "--config", config, "--workdir", str(workdir)],
                              capture_output=True, text=True, timeout=limit_s)
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lmwright run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    export = Path(done.stdout.strip().splitlines()[-1])
    weights = hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    pretrain = json.loads(next((workdir / "models" / "pretrain").glob("*/result.json")).read_text())
    return {"busy_processes": busy, "seconds": round(seconds, 1), "load_before": round(load_before, 1),
            "load_after": round(os.getloadavg()[0], 1), "pretrain_tokens_per_s": pretrain["tokens_per_second"],
            "pretrain_steps": pretrain["steps"], "best_val_loss": round(pretrain["best_val_loss"], 4),
            "promoted": "promoted" in done.stderr.splitlines()[-1] if done.stderr else None, "weights_sha256": weights}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--keep", type=Path, help="keep the two workdirs here")
    ap.add_argument("--limit-s", type=float, default=3600)
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="same-model-"))
    rows = [run(root / "as-is", args.config, 0, args.limit_s), run(root / "busy", args.config, 2, args.limit_s)]
    for r in rows:
        print(json.dumps(r))
    same = rows[0]["weights_sha256"] == rows[1]["weights_sha256"]
    print(f"same exported weights: {same}; time busy/as-is: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
