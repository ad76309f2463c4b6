"""``W/latest/<stage>``: a stable pointer to each stage's last output, and ``lmwright status`` reading them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from lmwright.data_quality import ValidationSettings
from lmwright.deployments.cli import main
from lmwright.tasks.core.dataset import DOC_SCHEMA, DatasetRef, write_manifest, write_shard
from lmwright.tasks.core.files import point_latest, read_latest
from lmwright.tasks.curate.normalize import NORMALIZE_STAGE, NormalizeParams
from lmwright.tasks.core.stage import run_shard_stage


def ingested(root: Path, texts: list[str]) -> DatasetRef:
    docs = pl.DataFrame(
        [{"id": f"d{i}", "text": t, "source": "inline", "uri": f"inline#L{i}", "license": None, "url": None}
         for i, t in enumerate(texts)],
        schema=DOC_SCHEMA,
    )
    rejected = pl.DataFrame(schema={**DOC_SCHEMA, "reason": pl.String(), "detail": pl.String(), "stage": pl.String()})
    stats = write_shard(root, "part-00000", "ingest", docs.height, 0, docs, rejected, 0.0)
    return write_manifest(root, "ingest", root.name, {}, "1", [], [stats])


@flow(persist_result=True)
def normalize_only(workdir: str, source: DatasetRef, min_chars: int) -> DatasetRef:
    return run_shard_stage(workdir, NORMALIZE_STAGE, source, NormalizeParams(min_chars=min_chars),
                           ValidationSettings(enabled=False))


@pytest.mark.usefixtures("prefect_harness")
def test_a_finished_stage_moves_its_latest_pointer_and_status_shows_it(tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "w"
    source = ingested(tmp_path / "src" / "fp-src", ["Hello  world.", "Zweiter\u00a0Text.", "x"])

    first = normalize_only(str(workdir), source, 1)
    pointer = json.loads((workdir / "latest" / "normalize.json").read_text())
    assert Path(pointer["path"]) == Path(first.path).resolve() and pointer["fingerprint"] == first.fingerprint
    assert (workdir / "latest" / "normalize").resolve() == Path(first.path).resolve()

    second = normalize_only(str(workdir), source, 2)  # another parameter, another fingerprint: the pointer follows
    assert second.path != first.path
    assert (workdir / "latest" / "normalize").resolve() == Path(second.path).resolve()
    assert [e["stage"] for e in read_latest(workdir)] == ["normalize"]

    assert main(["status", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("normalize"))
    assert f"datasets/normalize/{second.fingerprint}" in line and "3 in, 2 kept, 1 rejected" in line
    assert "promoted: none yet" in out


def test_status_lists_stages_in_pipeline_order_and_marks_what_is_gone(tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "w"
    done = {}
    for area, stage in [("datasets", "dedup"), ("models", "pretrain"), ("evals", "evaluate")]:
        out = workdir / area / stage / f"fp-{stage}"
        out.mkdir(parents=True)
        done[stage] = out
    (done["pretrain"] / "result.json").write_text(json.dumps({"steps": 120, "best_val_loss": 4.2, "best_step": 100}))
    (done["evaluate"] / "metrics.json").write_text(json.dumps({"val_loss": 4.3, "val_bpb": 2.1, "gate": {"passed": True}}))
    for stage in ("evaluate", "pretrain", "dedup"):  # finished in any order, listed in the pipeline's
        point_latest(done[stage], stage if stage != "evaluate" else "evaluate-pretrain")
    shutil.rmtree(done["dedup"])
    (workdir / "promoted.json").write_text(json.dumps({"export": "/x/hf", "val_loss": 4.3, "val_bpb": 2.1}))

    assert main(["status", "--workdir", str(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [l.split()[0] for l in lines] == ["dedup", "pretrain", "evaluate-pretrain", "promoted:"]
    assert lines[0].endswith("(gone)")
    assert "120 steps, best val_loss 4.2000 at step 100" in lines[1]
    assert "val_loss 4.3, val_bpb 2.1, gate passed" in lines[2]
    assert lines[3] == "promoted: /x/hf (val_loss 4.3, val_bpb 2.1)"


def test_status_of_a_missing_workdir_is_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    assert main(["status", "--workdir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmwright: workdir ") and "nope" in err[0]
