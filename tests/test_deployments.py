"""Both documented routes to the deployments give the same, complete forms; a run's partial config
keeps the deployment's preset, workdir and sources. Against a real Prefect server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from lmwright.deployments.serve import deployment_parameters
from tests.test_server_e2e import ROOT, prefect_server, stop, wait_until  # noqa: F401 (prefect_server: a fixture)

NAMES = ("pipeline/pipeline", "curate/curate", "refresh/refresh")
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
# English prose the tiny preset keeps: enough words per document for its quality rules.
PROSE = (
    "The river ran quietly past the old mill, and the miller's daughter watched the water carry leaves "
    "toward the town. Every morning she walked along the bank, counting the herons that stood in the shallows "
    "and listening to the bells of the church on the hill. Her father said that the river had changed its course "
    "twice in his lifetime, and that one day it would take the mill with it. She did not believe him, but she "
    "wrote his stories down in a small notebook that she kept under her pillow."
)


def yaml_parameters() -> dict[str, dict[str, Any]]:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d.get("parameters") or {} for d in spec["deployments"]}


def test_serve_and_prefect_yaml_declare_the_same_parameters() -> None:
    assert deployment_parameters("tiny") == yaml_parameters()


def test_serve_parameters_keep_what_serve_was_told() -> None:
    params = deployment_parameters(
        "tiny", ["quality.c4.min_num_sentences=2", "refresh.replay_fraction=0.3", "refresh.cron=0 3 * * *"], "/w", ["/data/a"]
    )
    assert params["curate"] == {"preset": "tiny", "workdir": "/w", "sources": ["/data/a"],
                                "config": {"quality": {"c4": {"min_num_sentences": 2}}}}
    assert params["refresh"]["settings"] == {"replay_fraction": 0.3}  # the cron goes to the schedule only
    assert "refresh" not in params["pipeline"]["config"]
    with_window = deployment_parameters("tiny", ["carbon_window={start: '22:00', end: '06:00'}"])
    assert "carbon_window" in with_window["pipeline"]["config"] and "config" not in with_window["refresh"]


def api_deployments(api: str) -> dict[str, dict[str, Any]]:
    """What the UI reads to draw a deployment's run form: its parameters and parameter schema."""
    out = {}
    for name in NAMES:
        flow, deployment = name.split("/")
        r = httpx.get(f"{api}/deployments/name/{flow}/{deployment}", timeout=10)
        r.raise_for_status()
        out[name] = r.json()
    return out


def prefect_env(api: str, home: Path) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def ui_validate(api: str, schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The check the UI's form runs before it creates a run."""
    r = httpx.post(f"{api}/ui/schemas/validate", json={"schema": schema, "values": values}, timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.mark.e2e
def test_both_routes_register_the_same_complete_forms(prefect_server: str, tmp_path: Path) -> None:  # noqa: F811
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lmwright.deployments.serve import build_deployments
    from lmwright.flows.config import PipelineConfig, load_config

    api = prefect_server
    # Route 1: what `lmwright serve --config tiny` registers (serve() applies these, then polls)
    with temporary_settings({PREFECT_API_URL: api}):
        for deployment in build_deployments(load_config(PipelineConfig, "tiny"), deployment_parameters("tiny")):
            deployment.apply()
    served = api_deployments(api)
    # Route 2: the work-pool route of the README, over the same names (it updates them in place)
    env = prefect_env(api, tmp_path / "home")
    subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "lmwright-local", "--type", "process"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(PREFECT_YAML)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    deployed = api_deployments(api)

    for name in NAMES:
        a, b = served[name], deployed[name]
        assert b["id"] == a["id"] and b["work_pool_name"] == "lmwright-local"
        assert a["parameters"] == b["parameters"] and b["parameters"]["preset"] == "tiny", name
        assert a["parameter_openapi_schema"] == b["parameter_openapi_schema"], name
        assert a["description"] == b["description"], name
    cron = [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deployed["refresh/refresh"]["schedules"]]
    assert cron == [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in served["refresh/refresh"]["schedules"]]

    # The form accepts what its fields promise: a source as a plain path, a partial config
    schema = deployed["curate/curate"]["parameter_openapi_schema"]
    ok = {"sources": ["/data/udhr", {"path": "/data/c4.jsonl", "format": "jsonl"}],
          "config": {"quality": {"gopher_quality": {"min_doc_words": 20}}}}
    assert ui_validate(api, schema, ok)["valid"], ui_validate(api, schema, ok)
    # ... and says where a value is wrong
    bad = ui_validate(api, schema, {"config": {"langid": {"min_prob": 7}}})
    assert not bad["valid"] and "min_prob" in json.dumps(bad["errors"])
    # workdir is a parameter of its own: the form does not show it twice, and the server says so
    twice = ui_validate(api, schema, {"config": {"workdir": "/elsewhere"}})
    assert not twice["valid"] and "workdir" in json.dumps(twice["errors"])


@pytest.fixture
def served_tiny(prefect_server: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """`lmwright serve --config tiny --workdir W --source S`, as the README says, on a tiny inline corpus."""
    source = tmp_path / "notes"
    source.mkdir()
    for i in range(4):
        (source / f"note{i}.txt").write_text(f"Chapter {i + 1}. " + PROSE.replace("river", ["river", "brook", "stream", "canal"][i]))
    workdir = tmp_path / "w"
    env = {**prefect_env(prefect_server, tmp_path / "home"), "PREFECT_LOGGING_LEVEL": "INFO"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmwright.deployments.cli", "serve", "--config", "tiny", "--workdir", str(workdir),
             "--source", str(source), "--no-schedule"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def registered() -> bool:
        r = httpx.get(f"{prefect_server}/deployments/name/curate/curate", timeout=5)
        return r.status_code == 200 and r.json()["parameters"].get("workdir") == str(workdir)

    try:
        wait_until(registered, 120, "lmwright serve to register its deployments")
        yield {"api": prefect_server, "workdir": workdir, "source": source, "log": log_path}
    finally:
        stop(proc)


@pytest.mark.e2e
def test_partial_config_run_keeps_the_deployments_preset_workdir_and_sources(served_tiny: dict[str, Any], tmp_path: Path) -> None:
    from lmwright.flows.config import CurateConfig, load_config

    # The README's trigger with only the change, as a form that changed one threshold sends it
    change = json.dumps({"quality": {"gopher_quality": {"min_doc_words": 5}}})
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "curate/curate", "-p", f"config={change}",
         "--watch", "--watch-timeout", "300"],
        env=prefect_env(served_tiny["api"], tmp_path / "cli-home"), cwd=tmp_path, capture_output=True, text=True, timeout=360,
    )
    assert done.returncode == 0 and "Completed" in done.stdout, (done.stdout[-2000:], served_tiny["log"].read_text()[-3000:])

    def manifest(stage: str) -> dict[str, Any]:
        found = list((served_tiny["workdir"] / "datasets" / stage).glob("*/manifest.json"))
        assert len(found) == 1, (stage, found)
        return json.loads(found[0].read_text())

    tiny = load_config(CurateConfig, "tiny")
    quality = manifest("quality")["params"]
    assert quality["gopher_quality"]["min_doc_words"] == 5  # the run's change
    assert quality["gopher_quality"]["max_non_alpha_words_ratio"] == tiny.quality.gopher_quality.max_non_alpha_words_ratio
    assert quality["gopher_repetition"]["top_2_gram_frac"] == tiny.quality.gopher_repetition.top_2_gram_frac
    assert manifest("langid")["params"]["languages"] == tiny.langid.languages
    assert [s["path"] for s in manifest("ingest")["params"]["sources"]] == [str(served_tiny["source"])]
    assert manifest("dedup")["rows"] > 0
