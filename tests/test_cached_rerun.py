"""A cached rerun stays cheap: what a command imports before its flow runs, and the server lmwright starts.

Timings are in benchmarks/cached_rerun.py; these tests guard the causes, without timing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Seconds to import each on a quiet 2-core machine; none of them is needed to find that a stage is done.
HEAVY = ("torch", "datasketch", "scipy", "great_expectations", "transformers", "prefect.server.api.server")


def heavy_modules_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_what_lmwright_curate_imports_before_its_flow_runs_is_light() -> None:
    # the CLI, the config (every stage's parameters), the curate flow and its task runner
    assert heavy_modules_after("import lmwright.deployments.cli, lmwright.flows.config, lmwright.flows.curate, lmwright.flows.runners, lmwright.deployments.embedded_server") == []


def test_what_lmwright_run_imports_before_its_flow_runs_is_light() -> None:
    # the pipeline imports the train and evaluate flows and their tasks; torch only loads when one trains or scores
    assert heavy_modules_after("import lmwright.deployments.cli, lmwright.flows.pipeline, lmwright.tasks.train.modeling, lmwright.tasks.train.model_card") == []


def test_the_parameter_models_stay_importable_from_where_they_were() -> None:
    from lmwright.tasks.train import evaluate, loop as train, params as train_params

    assert train.TrainParams is train_params.TrainParams and train.LoraParams is train_params.LoraParams
    assert train.ModelSpec is train_params.ModelSpec
    assert evaluate.EvalParams is train_params.EvalParams and evaluate.GateParams is train_params.GateParams


EMBEDDED = """
import json, sys
from lmwright.deployments.embedded_server import embedded_server, wait_for_server

with embedded_server() as server:  # before Prefect is imported, as the CLI does: the server process decides
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    @task(persist_result=False)
    def double(x):
        return 2 * x

    @flow
    def doubled(x):
        return double(x)

    wait_for_server()
    out = {"url": get_current_settings().api.url, "server": server.api_url, "result": doubled(21)}
    with get_client(sync_client=True) as client:
        out["flow_runs"] = len(client.read_flow_runs())
    process = server.process
out["exit_code"] = process.poll()
out["heartbeat"] = get_current_settings().flows.heartbeat_frequency
out["server_package_imported"] = "prefect.server.api.server" in sys.modules
print(json.dumps(out))
"""


@pytest.mark.parametrize("prefect_first", [False, True], ids=["from-the-cli", "prefect-imported-first"])
def test_lmwright_starts_the_embedded_server_serves_flows_on_it_and_stops_it(tmp_path: Path, prefect_first: bool) -> None:
    # from the CLI the server is launched before Prefect is imported; a caller that imported Prefect gets it at wait_for_server()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    env.pop("PREFECT_API_URL", None)
    script = ("import prefect\n" if prefect_first else "") + EMBEDDED
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["url"] == out["server"] and out["result"] == 42
    assert out["flow_runs"] == 1  # the flow ran against lmwright's server (its own SQLite in PREFECT_HOME)
    assert out["exit_code"] is not None, "the server outlived its block"
    assert out["heartbeat"] == 180  # only inside the block are heartbeats off; settings are restored
    assert not out["server_package_imported"]  # the server runs in its own process only


def test_a_configured_server_is_used_and_nothing_is_started(monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lmwright.deployments import embedded_server as es

    started = []
    monkeypatch.setattr(es.EmbeddedServer, "start", lambda self, env=None: started.append(self) or self)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        with es.embedded_server() as server:
            es.wait_for_server()
    assert server is None and started == []


def test_block_types_are_checked_until_the_database_has_them(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lmwright.deployments.embedded_server import blocks_registered

    settings = SimpleNamespace(home=tmp_path, server=SimpleNamespace(memo_store_path=tmp_path / "memo_store.toml"))
    assert not blocks_registered(settings)  # a new PREFECT_HOME: Prefect registers them, as always
    (tmp_path / "memo_store.toml").write_text('block_auto_registration = "44be0f"\n')
    assert blocks_registered(settings)
