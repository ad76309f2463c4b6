"""End to end against a real Prefect server: serve the deployments, trigger them as the UI does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # SIGINT is ignored by background jobs
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1, SQLite in a temp dir; stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": url}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 90, "the Prefect server")
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def served(prefect_server: str, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[dict]:
    """`lmwright serve` with the deployments registered on the server."""
    work = tmp_path_factory.mktemp("served")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_HOME": str(work / "client-home")}
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmwright.deployments.cli", "serve", "--config", "tiny", "--workdir", str(work / "w"), "--no-schedule"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def registered() -> bool:
        r = httpx.post(f"{prefect_server}/deployments/filter", json={}, timeout=5)
        return {d["name"] for d in r.json()} >= {"pipeline", "curate", "refresh"}

    try:
        wait_until(registered, 120, "lmwright serve to register its deployments")
        yield {"api": prefect_server, "work": work, "log": work / "serve.log"}
    finally:
        stop(proc)


def trigger(api: str, name: str, parameters: dict, timeout: float = 600) -> dict:
    """Create a run of a deployment through the API, as the UI's 'Custom run' does, and wait for it."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        run = run_deployment(name, parameters=parameters, timeout=timeout)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts()
    return {"run": run, "artifact_keys": {a.key for a in artifacts if a.flow_run_id == run.id}}


def test_ui_style_trigger_with_custom_parameters(served: dict, shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "web" / "c4_en_sample_olmo.jsonl"
    workdir = tmp_path / "custom-work"
    # As the form sends it: workdir and a source given as a plain path, one changed threshold;
    # every other field keeps the deployment's preset (tiny).
    params = {"workdir": str(workdir), "sources": [str(src)], "config": {"quality": {"gopher_quality": {"min_doc_words": 20}}}}
    out = trigger(served["api"], "curate/curate", params)
    run = out["run"]
    assert run.state.is_completed(), (run.state, served["log"].read_text()[-3000:])
    assert "data-card" in out["artifact_keys"]
    manifests = list((workdir / "datasets" / "dedup").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["rows"] > 0


def wait_final(api: str, run_id, timeout: float = 600):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run_id} still {run.state}")
            time.sleep(1)


def test_refresh_runs_one_at_a_time_then_only_new_files(served: dict, shared_data: Path, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.test_refresh import SETTINGS, paragraphs, refresh_config, write_paragraphs

    src = tmp_path / "src"
    src.mkdir()
    paras = paragraphs(shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt")
    write_paragraphs(src / "part1.txt", paras[:120])
    workdir = tmp_path / "w"
    from lmwright.flows.forms import SCHEDULE_FIELDS, RefreshForm, run_parameters

    # A whole config through the API: workdir and sources as their own parameters, no schedule in a run's settings
    params = {**run_parameters(refresh_config(workdir, src), RefreshForm),
              "settings": SETTINGS.model_dump(mode="json", exclude=set(SCHEDULE_FIELDS))}
    api = served["api"]
    with temporary_settings({PREFECT_API_URL: api}):
        first = run_deployment("refresh/refresh", parameters=params, timeout=0)
        wait_until(lambda: wait_state(api, first.id) in ("RUNNING", "COMPLETED"), 120, "the first refresh to start")
        second = run_deployment("refresh/refresh", parameters=params, timeout=0)
    first, second = wait_final(api, first.id), wait_final(api, second.id)
    assert first.state.is_completed(), (first.state, served["log"].read_text()[-3000:])
    assert second.state.is_cancelled(), second.state  # the concurrency limit (1, CANCEL_NEW) held
    latest = json.loads((workdir / "corpus" / "latest.json").read_text())
    assert latest["version"] == "v0001"

    write_paragraphs(src / "part2.txt", paras[120:200])
    with temporary_settings({PREFECT_API_URL: api}):
        third = run_deployment("refresh/refresh", parameters=params, timeout=600)
    assert third.state.is_completed(), third.state
    manifest = json.loads((workdir / "corpus" / "v0002" / "manifest.json").read_text())
    assert [Path(f).name for f in manifest["refresh"]["new_files"]] == ["part2.txt"]
    assert manifest["rows"] > json.loads((workdir / "corpus" / "v0001" / "manifest.json").read_text())["rows"]


def wait_state(api: str, run_id) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return run.state.type.value if run.state else None
