"""The training benchmarks run end to end on a small input: a script that rots is found here, not in a benchmark session.

Their numbers mean nothing at these sizes; what is checked is that every row trains, is scored and is written.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_tinyshakespeare_screens_its_settings_and_a_variant_without_the_peer(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "input.txt"
    data.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    out = tmp_path / "screen.json"
    run(["benchmarks/tinyshakespeare.py", "--data", str(data), "--seconds", "3", "--json", str(out),
         "--variant", "adamw: optimizer=adamw dtype=float32"])
    report = json.loads(out.read_text())
    assert report["peer"] is None and report["seconds"] == 3
    rows = report["rows"]
    assert [(r["settings"]["optimizer"], r["settings"]["dtype"]) for r in rows] == [("muon", "bfloat16"), ("adamw", "float32")]
    for r in rows:
        assert r["steps"] >= 1 and r["tokens_seen"] > 0
        assert math.isfinite(r["val_bpb"]) and 0 < r["val_bpb"] < 8  # a byte-level model starts near 8 bits/byte


def test_cpu_step_times_every_change(tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    run(["benchmarks/cpu_step.py", "--batch", "2", "--steps", "1", "--rounds", "1", "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert [r["change"] for r in report["rows"]][0] == "fp32 (CPU default)" and len(report["rows"]) == 4
    assert all(r["ms_per_step"] > 0 for r in report["rows"]) and report["rows"][0]["speedup"] == 1.0
    assert set(report["attention_ms"]) == {"sdpa_fp32", "sdpa_bf16_autocast", "causal_attention_bf16"}
    assert set(report["newton_schulz_ms"]) == {"float32", "bfloat16"}
