"""The lmwright command end to end: embedded Prefect, real stages, the result on the last line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def lmwright(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect-home"), "PREFECT_API_URL": "", "PREFECT_LOGGING_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "lmwright.deployments.cli", *args],
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
    # the stable pointer to what the run produced, and the status command that reads it
    assert (workdir / "latest" / "dedup").resolve() == corpus.resolve()
    status = lmwright("status", "--workdir", str(workdir), cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-3000:]
    dedup = next(line for line in status.stdout.splitlines() if line.startswith("dedup "))
    assert str(corpus.relative_to(workdir)) in dedup and f"{manifest['rows']} kept" in dedup


def test_invalid_config_exits_2_naming_every_field(tmp_path: Path) -> None:
    done = lmwright("curate", "--workdir", str(tmp_path / "w"), "--set", "ingest.shard_docs=0",
                    "--set", "langid.min_prob=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "ingest.shard_docs" in done.stderr and "langid.min_prob" in done.stderr


# -- one-line errors, before Prefect starts (in-process: nothing here reaches a flow) ---------------


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from lmwright.deployments.cli import main

    assert main(list(args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmwright: "), captured.err
    return lines[0]


def test_a_missing_source_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "notes.txt"
    line = one_line_error(capsys, "curate", "--source", str(missing), "--workdir", str(tmp_path / "w"))
    assert line == f"lmwright: source {str(missing)!r} does not exist"


def test_an_unreachable_url_says_unreachable_not_missing(tmp_path: Path, capsys) -> None:
    pytest.importorskip("aiohttp")  # fsspec's http:// needs it (the remote extra)
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/corpus.jsonl"
    line = one_line_error(capsys, "pretrain", "--source", url, "--workdir", str(tmp_path / "w"))
    assert url in line and "unreachable" in line and "does not exist" not in line
    assert not (tmp_path / "w" / "datasets").exists()  # nothing ran


def test_a_flow_started_without_the_cli_names_an_unreachable_source_too() -> None:
    """The UI starts flows without the CLI's up-front check: listing the source raises the same clear error."""
    pytest.importorskip("aiohttp")
    import socket

    from lmwright.tasks.core.errors import UserError
    from lmwright.tasks.curate.sources import SourceSpec, SourceUnavailable, list_source_files

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnavailable, match=rf"source 'http://127.0.0.1:{port}/a.txt' is unreachable: ") as e:
        list_source_files(SourceSpec(path=f"http://127.0.0.1:{port}/a.txt"))
    assert isinstance(e.value, UserError)  # not retried, printed as one line


def test_a_bad_set_value_is_blamed_on_the_set_item_not_the_preset(tmp_path: Path, capsys) -> None:
    from lmwright.deployments.cli import main

    assert main(["config", "--config", "tiny", "--set", "ingest.shard_docs=0"]) == 2
    assert capsys.readouterr().err.splitlines() == [  # a config error lists its fields, one line each
        "lmwright: --set 'ingest.shard_docs=0': 1 invalid field(s):",
        "  ingest.shard_docs: Input should be greater than 0 (got 0)",
    ]
    preset = tmp_path / "mine.yaml"
    preset.write_text("langid:\n  min_prob: 3\n")
    assert main(["config", "--config", str(preset), "--set", "ingest.shard_docs=0"]) == 2
    err = capsys.readouterr().err
    assert f"langid.min_prob: Input should be less than or equal to 1 (got 3)  [from {preset}]" in err
    assert "ingest.shard_docs: Input should be greater than 0 (got 0)  [from --set 'ingest.shard_docs=0']" in err


def test_a_directory_named_like_a_preset_does_not_hide_it(tmp_path: Path, capsys, monkeypatch) -> None:
    from lmwright.deployments.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert main(["config", "--show", "--config", "tiny"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["ingest"]["shard_docs"] == yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["ingest"]["shard_docs"]
    line = one_line_error(capsys, "config", "--config", "./tiny")
    assert "'./tiny' is a directory" in line
    (tmp_path / "tiny.yaml").write_text("ingest:\n  shard_docs: 3\n")  # a file path still wins
    assert main(["config", "--show", "--config", "tiny.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["ingest"]["shard_docs"] == 3


def test_a_workdir_that_is_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "w").write_text("")
    line = one_line_error(capsys, "curate", "--workdir", str(tmp_path / "w"))
    assert line.startswith(f"lmwright: workdir {tmp_path / 'w'}: cannot be created")


# -- what the command offers -------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(capsys) -> None:
    from importlib.metadata import version

    from lmwright.deployments.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lmwright {version('lmwright')}"


@pytest.mark.parametrize("command", ["curate", "tokenize", "pretrain", "finetune", "evaluate", "run", "serve",
                                     "generate", "status", "config"])
def test_every_subcommand_help_has_a_description_and_an_example(command: str, capsys) -> None:
    from lmwright.deployments.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: lmwright {command}") and len(description.split()) >= 5
    assert f"example:\n  lmwright {command}" in text or f"example:\n  prefect server start &  lmwright {command}" in text


def test_training_budgets_go_to_the_stage_that_trains(capsys) -> None:
    from lmwright.deployments.cli import main, parser, resolve_config

    finetune = resolve_config(parser().parse_args(["finetune", "--max-steps", "7", "--max-seconds", "30"]))
    assert finetune.finetune.train.max_steps == 7 and finetune.finetune.train.max_seconds == 30
    pretrain = resolve_config(parser().parse_args(["run", "--max-steps", "9"]))
    assert pretrain.pretrain.max_steps == 9 and pretrain.finetune.train.max_steps != 9
    for command in ("evaluate", "tokenize", "curate"):  # they train nothing of their own: no silent budget
        with pytest.raises(SystemExit) as refused:
            main([command, "--max-steps", "5"])
        assert refused.value.code == 2 and "unrecognized arguments: --max-steps" in capsys.readouterr().err


def test_config_list_names_every_set_key_with_its_default(capsys) -> None:
    from lmwright.deployments.cli import main
    from lmwright.flows.config import PipelineConfig, load_config

    assert main(["config", "--list", "--config", "tiny"]) == 0
    rows = [re.split(r"\s{2,}", line, maxsplit=2) for line in capsys.readouterr().out.splitlines()]
    keys = {row[0]: row for row in rows}
    assert keys["ingest.shard_docs"][1] == str(load_config(PipelineConfig, "tiny").ingest.shard_docs)  # the preset's
    assert keys["langid.min_prob"][2].startswith(PipelineConfig.model_fields["langid"].annotation.model_fields["min_prob"].description[:20])
    assert "finetune.lora.rank" in keys and "carbon_window.timezone" in keys  # optional sections, off by default
    # every listed key is one --set accepts, with the listed value
    for key, value, *_ in rows:
        if value in ("(required)",) or value.endswith("..."):
            continue
        load_config(PipelineConfig, "tiny", [f"{key}={value}"])
    assert len(rows) > 150


def test_config_show_prints_a_yaml_that_loads_back_to_the_same_config(tmp_path: Path, capsys) -> None:
    from lmwright.deployments.cli import main
    from lmwright.flows.config import PipelineConfig, load_config

    sets = ["pretrain.max_steps=77", "langid.languages=[en, de]"]
    assert main(["config", "--show", "--config", "tiny", *[a for s in sets for a in ("--set", s)]]) == 0
    saved = tmp_path / "resolved.yaml"
    saved.write_text(capsys.readouterr().out)
    assert load_config(PipelineConfig, str(saved)) == load_config(PipelineConfig, "tiny", sets)


def test_no_config_means_the_tiny_preset(capsys) -> None:
    """`lmwright run` with no --config trained the models' bare defaults and memorized the corpus."""
    import yaml

    from lmwright.deployments.cli import main
    from lmwright.flows.config import PipelineConfig, load_config

    assert main(["config", "--show"]) == 0
    shown = PipelineConfig.model_validate(yaml.safe_load(capsys.readouterr().out))
    assert shown == load_config(PipelineConfig, "tiny")
    assert shown.pretrain.max_epochs == 4


def test_the_embedded_server_gets_time_to_start_on_a_busy_machine(monkeypatch, capsys) -> None:
    """Prefect waits 20 s for its embedded server; a busy 2-core machine missed that in three runs a week."""
    from lmwright.deployments.cli import EMBEDDED_SERVER_STARTUP_SECONDS, main

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert main(["config", "--show"]) == 0
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) == EMBEDDED_SERVER_STARTUP_SECONDS >= 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")  # the user's choice wins
    assert main(["config", "--show"]) == 0
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "600"
