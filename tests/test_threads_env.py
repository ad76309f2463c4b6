"""Every kind of lmwright process starts torch's OpenMP with idle threads that sleep (OMP_WAIT_POLICY=PASSIVE).

libgomp reads its settings once, when torch loads it; with OMP_DISPLAY_ENV=VERBOSE it prints
them, so the subprocess tests read what OpenMP really started with (GOMP_SPINCOUNT 0 = passive,
300000 = the default busy-wait), not just an environment variable. The subprocesses start
from the environment of a user who never set an OpenMP variable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prefect import flow, task

REPO = Path(__file__).resolve().parents[1]
PASSIVE_SPIN = "0"
ACTIVE_SPIN = "30000000000"


def user_env(**extra: str) -> dict[str, str]:
    """This environment without OpenMP settings, plus libgomp asked to print the ones it starts with."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return {**env, "OMP_DISPLAY_ENV": "VERBOSE", **extra}


def spin_counts(stderr: str) -> list[str]:
    """GOMP_SPINCOUNT of each process whose libgomp started (one line per process that imported torch)."""
    return re.findall(r"GOMP_SPINCOUNT = '(\d+)'", stderr)


def read_env(name: str) -> tuple[str | None, int]:
    return os.environ.get(name), os.getpid()


@task
def read_env_task(name: str) -> tuple[str | None, int]:
    return read_env(name)


@pytest.mark.parametrize("choice, spin", [(None, PASSIVE_SPIN), ("ACTIVE", ACTIVE_SPIN)], ids=["default", "user-choice-wins"])
def test_flow_module_a_deployment_loads_starts_openmp_passive(choice: str | None, spin: str) -> None:
    # What a worker's flow-run process does with deployments/prefect.yaml's entrypoint; torch loads
    # later, when a training or evaluation task first needs it (the flow modules import it lazily).
    code = ("from prefect.flows import load_flow_from_entrypoint; load_flow_from_entrypoint('flows/pipeline.py:pipeline'); "
            "import torch")
    env = user_env(**({"OMP_WAIT_POLICY": choice} if choice else {}))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert spin_counts(done.stderr) == [spin]


@pytest.mark.e2e
def test_cli_and_torchrun_ranks_start_openmp_passive(tmp_path: Path, shared_data: Path) -> None:
    script = Path(sys.executable).with_name("lmwright")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "lmwright.deployments.cli"]
    # A generous server start-up: this test is about threads, and runs while the machine is busy.
    env = user_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL="",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    done = subprocess.run(
        [*command, "pretrain", "--source", str(shared_data / "web" / "c4_en_sample_olmo.jsonl"),
         "--workdir", str(tmp_path / "w"), "--config", "tiny", "--max-steps", "2",
         "--set", "quality.gopher_quality.min_doc_words=20", "--set", "langid.languages=null",
         "--set", "tokenize.vocab_size=512", "--set", "pretrain.batch_size=2", "--set", "pretrain.eval_interval=1",
         "--set", "pretrain.eval_batches=1", "--set", "pretrain.nproc=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = Path(done.stdout.strip().splitlines()[-1])
    assert json.loads((model / "train_spec.json").read_text())["params"]["nproc"] == 2  # trained by torchrun ranks
    spins = spin_counts(done.stderr)
    # the CLI process (where single-process training and evaluation run), torchrun's launcher, its two ranks
    assert len(spins) >= 4 and set(spins) == {PASSIVE_SPIN}, spins


def test_langid_pool_workers_start_passive(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmwright.tasks.curate import langid

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    langid.shutdown_pool()  # a fresh pool, started from this environment
    try:
        value, pid = langid._pool(2).submit(read_env, "OMP_WAIT_POLICY").result(timeout=300)
    finally:
        langid.shutdown_pool()
    assert pid != os.getpid() and value == "PASSIVE"


@pytest.mark.e2e
@pytest.mark.usefixtures("prefect_harness")
def test_dask_workers_start_passive(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prefect_dask")
    from lmwright.flows.config import RunnerSettings
    from lmwright.flows.runners import build_task_runner

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # so only the runner can give it to the workers

    @flow(task_runner=build_task_runner(RunnerSettings(kind="dask", max_workers=1)))
    def probe() -> tuple[str | None, int]:
        return read_env_task.submit("OMP_WAIT_POLICY").result()

    value, pid = probe()
    assert pid != os.getpid() and value == "PASSIVE"
