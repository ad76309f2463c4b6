"""The lmwright command end to end: embedded Prefect, real stages, the result on the last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def lmwright(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect-home"), "PREFECT_API_URL": "", "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_curate_command_prints_the_corpus_directory_last(tmp_path: Path, shared_data: Path) -> None:
    workdir = tmp_path / "w"
    src = shared_data / "web" / "c4_en_sample_olmo.jsonl"
    done = lmwright("curate", "--source", str(src), "--workdir", str(workdir), "--config", "tiny",
                    "--set", "quality.gopher_quality.min_doc_words=20", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    corpus = Path(done.stdout.strip().splitlines()[-1])
    assert corpus.parent.parent == workdir / "datasets"
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["stage"] == "dedup" and manifest["rows"] > 0
    assert (corpus / "card.md").is_file()
    assert "Task run 'quality-" in done.stderr  # progress went to the terminal


def test_invalid_config_exits_2_naming_every_field(tmp_path: Path) -> None:
    done = lmwright("curate", "--workdir", str(tmp_path / "w"), "--set", "ingest.shard_docs=0",
                    "--set", "langid.min_prob=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "ingest.shard_docs" in done.stderr and "langid.min_prob" in done.stderr
