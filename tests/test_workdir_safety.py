"""A workdir in a hostile world: a full disk, a read-only mount, two runs at once.

The full and read-only disks are real: a small tmpfs mounted for the test (root, or a user
namespace where the kernel allows it). Where no mount can be made here the tests skip and say
so; ``test_retry_condition_*`` covers the decision without a mount.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import polars as pl
import pytest

from lmwright.tasks.core.files import DiskError, atomic_path, disk_errno, disk_problem
from lmwright.tasks.core.dataset import write_parquet
from lmwright.tasks.core.stage import is_not_data_quality_error

REPO = Path(__file__).resolve().parents[1]

# --- a real small disk --------------------------------------------------------------------------


def _mount(args: list[str]) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``tmp_path/disk``, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]):
        pytest.skip("mounting a tmpfs needs root here: no real full disk can be made")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def remount_read_only(disk: Path) -> None:
    assert _mount(["-o", "remount,ro", str(disk)]), "remounting the tmpfs read-only failed"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


# --- an inline English corpus ---------------------------------------------------------------------

NOUNS = ("garden river school library market bridge village teacher farmer doctor window kitchen "
         "mountain forest harbour station museum letter story winter summer festival council "
         "bakery orchard meadow lantern painter sailor").split()
VERBS = "visited repaired painted opened described watched found carried cleaned built".split()
ADJS = "old quiet busy small bright famous narrow green wooden friendly".split()


def english_docs(n: int, seed: int = 0, sentences: int = 12) -> list[dict[str, str]]:
    """``n`` distinct English-looking documents (they pass langid and the quality rules)."""
    rng = random.Random(seed)

    def sentence() -> str:
        a, b, c = rng.sample(NOUNS, 3)
        return (f"The {rng.choice(ADJS)} {a} {rng.choice(VERBS)} the {b} with a {rng.choice(ADJS)} {c}, "
                f"and that was to be the {rng.choice(ADJS)} part of the day.")

    return [{"id": f"doc-{seed}-{i}", "text": " ".join(sentence() for _ in range(sentences)), "license": "CC-BY-4.0"}
            for i in range(n)]


def write_corpus(path: Path, docs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


# --- the lmwright command against the test server ------------------------------------------------


def lmwright_cmd(*args: str, home: Path) -> tuple[list[str], dict[str, str]]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": PREFECT_API_URL.value() or "",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    return [sys.executable, "-m", "lmwright.deployments.cli", *args], env


def lmwright(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    cmd, env = lmwright_cmd(*args, home=home)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


CURATE = ("--config", "tiny", "--set", "ingest.shard_docs=20", "--set", "quality.gopher_quality.min_doc_words=20")


# --- disk full --------------------------------------------------------------------------------------


def test_retry_condition_gives_up_on_a_full_or_read_only_disk() -> None:
    class State:
        def __init__(self, exc: BaseException):
            self.exc = exc

        def result(self):
            raise self.exc

    polars_style = pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)")
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EROFS, "Read-only file system"),
                polars_style, DiskError(errno.ENOSPC, "No space left on device", "/w/x")):
        assert is_not_data_quality_error(None, None, State(exc)) is False, exc
    for exc in (OSError("injected fault: disk hiccup"), ConnectionResetError(), TimeoutError()):
        assert is_not_data_quality_error(None, None, State(exc)) is True, exc
    assert disk_errno(RuntimeError("outer")) is None


def test_every_stage_and_training_task_uses_that_retry_condition() -> None:
    from lmwright.tasks.curate.dedup.stage import compute_signatures, find_clusters
    from lmwright.tasks.train.modeling import evaluate_model, export_model, finetune_model, pretrain_model
    from lmwright.tasks.core.stage import finalize_stage, process_shard

    for t in (process_shard, finalize_stage, compute_signatures, find_clusters, pretrain_model, finetune_model,
              evaluate_model, export_model):
        assert t.retry_condition_fn is is_not_data_quality_error, t.name


def test_a_write_that_fills_the_disk_leaves_no_temp_file_and_names_the_file(small_disk: Path) -> None:
    shard = small_disk / "datasets" / "ingest" / "fp" / "part-00000.parquet"
    docs = pl.DataFrame({"text": [os.urandom(256).hex() for _ in range(8000)]})  # ~4 MB, incompressible
    with pytest.raises(DiskError) as e:
        write_parquet(docs, shard)
    assert e.value.errno == errno.ENOSPC and str(shard) in str(e.value) and "the disk is full" in str(e.value)
    assert not shard.exists() and temp_files(small_disk) == []
    with pytest.raises(DiskError), atomic_path(small_disk / "big.bin") as tmp:  # plain Python writes too
        tmp.write_bytes(os.urandom(2 << 20))
    assert temp_files(small_disk) == [] and not (small_disk / "big.bin").exists()


def test_a_disk_probe_tells_a_full_or_read_only_disk_and_leaves_nothing(small_disk: Path) -> None:
    """What a training task checks when a torchrun rank died: its exception stayed in the rank."""
    assert disk_problem(small_disk, probe_bytes=64 << 10) is None
    (small_disk / "checkpoint.bin").write_bytes(b"x" * (1000 << 10))  # as if a rank filled it
    full = disk_problem(small_disk, probe_bytes=64 << 10)
    assert full is not None and full.errno == errno.ENOSPC and str(small_disk) in str(full)
    (small_disk / "checkpoint.bin").unlink()
    remount_read_only(small_disk)
    assert disk_problem(small_disk, probe_bytes=64 << 10).errno == errno.EROFS
    assert sorted(p.name for p in small_disk.iterdir()) == []


@pytest.mark.e2e
def test_a_full_disk_is_one_line_without_retries_or_temp_files(prefect_harness, small_disk: Path, tmp_path: Path) -> None:
    src = write_corpus(tmp_path / "corpus.jsonl", english_docs(3000))  # ~3 MB of text for a 1 MiB disk
    done = lmwright("curate", "--source", str(src), "--workdir", str(small_disk / "w"), *CURATE, home=tmp_path / "home")
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    if "Stopping temporary server" in last:  # an embedded server's goodbye, when no API URL was given
        last = done.stderr.strip().splitlines()[-2]
    assert last.startswith("lmwright: cannot write ") and "the disk is full (No space left on device)" in last
    assert "Traceback" not in done.stderr
    assert " - Retry " not in done.stderr  # no pointless retries
    assert temp_files(small_disk) == []


# --- a read-only workdir -----------------------------------------------------------------------------


def test_a_cached_curate_succeeds_on_a_read_only_workdir(prefect_harness, small_disk: Path, tmp_path: Path) -> None:
    from lmwright.flows.config import CurateConfig, load_config
    from lmwright.flows.curate import curate
    from tests.prefect_states import task_states

    src = write_corpus(tmp_path / "corpus.jsonl", english_docs(40))
    config = load_config(CurateConfig, "tiny", [f"ingest.sources=[{src}]", "ingest.shard_docs=20",
                                                "quality.gopher_quality.min_doc_words=20"], workdir=str(small_disk / "w"))
    first = curate(config)
    before = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*"))
    remount_read_only(small_disk)
    with pytest.raises(OSError):  # the mount really is read-only
        (small_disk / "w" / "probe").write_text("x")
    state = curate(config, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == first
    assert set(task_states(state.state_details.flow_run_id).values()) == {"Cached"}
    assert sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*")) == before


def test_a_repeated_promotion_decision_writes_nothing(prefect_harness, small_disk: Path) -> None:
    """A cached `lmwright run` ends by promoting the same export again: on a read-only workdir too."""
    from prefect import flow

    from lmwright.flows.train import promote

    workdir = small_disk / "w"
    workdir.mkdir()
    passed = {"gate": {"passed": True, "failures": []}, "model": "m", "val_bpb": 1.5, "val_loss": 2.5}
    failed = {**passed, "gate": {"passed": False, "failures": ["val_bpb 1.5 > 1.2"]}}

    @flow
    def decide(metrics: dict) -> tuple[bool, list[str]]:
        return promote(str(workdir), str(workdir / "exports" / "hf"), metrics)

    assert decide(failed) == (False, ["val_bpb 1.5 > 1.2"])
    assert decide(passed) == (True, [])
    log = (workdir / "promotions.jsonl").read_text()
    remount_read_only(small_disk)
    assert decide(passed) == (True, [])  # the same decision again: nothing to write
    assert (workdir / "promotions.jsonl").read_text() == log and len(log.splitlines()) == 2


# --- two runs, one workdir ----------------------------------------------------------------------------


def curate_runs_since(started: datetime) -> list:
    """Ids of the curate flow runs that started after ``started`` (on the test server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["curate"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
    return [r.id for r in runs]


def task_runs(flow_run_id) -> dict[str, tuple[str, int]]:
    """task run name -> (final state name, times its function ran), read from the API once settled."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.prefect_states import task_states

    names = task_states(flow_run_id)  # waits until every task run reached a final state
    with get_client(sync_client=True) as client:
        found = []
        while page := client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=len(found)
        ):
            found += page
    return {r.name: (names.get(r.name, "None"), r.run_count) for r in found}


@pytest.mark.e2e
def test_two_curates_on_one_workdir_agree_without_retries(prefect_harness, tmp_path: Path) -> None:
    docs = english_docs(80, sentences=6)
    src = write_corpus(tmp_path / "corpus.jsonl", docs + [{**d, "id": f"again-{d['id']}"} for d in docs[:10]])
    workdir = tmp_path / "w"
    cmd, env = lmwright_cmd("curate", "--source", str(src), "--workdir", str(workdir), *CURATE, home=tmp_path / "home")
    started = datetime.now(timezone.utc)
    runs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in runs]
    for r, (out, err) in zip(runs, outputs):
        assert r.returncode == 0, err[-3000:]
        assert " - Retry " not in err, [line for line in err.splitlines() if " - Retry " in line]
    corpora = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert corpora[0] == corpora[1]
    # Each unit of work was done by one run; the other waited for its lock and read it from the cache.
    runs_states = [task_runs(run_id) for run_id in curate_runs_since(started)]
    assert len(runs_states) == 2
    ran = [{name for name, (state, _) in states.items() if state == "Completed"} for states in runs_states]
    assert ran[0] | ran[1] and not ran[0] & ran[1], sorted(ran[0] & ran[1])
    assert all(count <= 1 for states in runs_states for _, count in states.values())  # no task ran twice
    manifest = json.loads((corpora[0] / "manifest.json").read_text())
    stats = json.loads((corpora[0] / "stats.json").read_text())
    assert manifest["rows"] > 0 and stats["rejected_by_reason"].get("dedup_exact", 0) >= 10  # the repeated 10
    for shard in manifest["shards"]:
        from lmwright.tasks.core.dataset import file_sha256

        assert file_sha256(corpora[0] / shard["path"]) == shard["sha256"]
    assert temp_files(workdir) == []
    assert list(workdir.glob("datasets/dedup/*/spill*")) == []
