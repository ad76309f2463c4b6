"""Persisted results are typed JSON: they round-trip as lmwright's types, and a planted record
(a cloudpickle payload, or JSON naming a foreign type) is refused, never executed."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import cloudpickle
import pytest
from prefect import flow
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer
from prefect.settings import get_current_settings

from lmwright.flows.curate import CuratedCorpus
from lmwright.flows.pipeline import PipelineResult
from lmwright.flows.train import Evaluation, TrainedModels
from lmwright.tasks.core.dataset import DatasetRef, ShardStats, write_json
from lmwright.models.run import ModelRef
from lmwright.tasks.core.results import (
    PERSISTED_RESULTS,
    RESULT_SERIALIZER,
    SERIALIZER_TYPE,
    PersistedFailure,
    UnsafeResultError,
    check_record,
)
from lmwright.tasks.core.stage import StageWork, stage_task
from lmwright.tasks.core.ref import Ref
from lmwright.tasks.train.sft import SftDatasetRef
from lmwright.tasks.train.token_dataset import TokenDatasetRef
from tests.prefect_states import task_states

REF = DatasetRef(stage="quality", fingerprint="f" * 20, path="/w/datasets/quality/fff")
TOKENS = TokenDatasetRef.at("/w/datasets/tokenize/" + "t" * 20)
MODEL = ModelRef.at("/w/models/pretrain/" + "m" * 20)
SFT = SftDatasetRef.at("/w/datasets/sft/" + "s" * 20)
RESULTS = [
    REF,
    [ShardStats("part-00000", docs_in=3, kept=2, rejected=1, reasons={"gopher_short_doc": 1}, energy={"kwh": 0.5})],
    StageWork("dedup", "a" * 20, "/w/datasets/dedup/aaa", unit="sig-part-00000"),
    TOKENS,
    MODEL,
    SFT,
    CuratedCorpus(corpus=REF, card="/w/c/card.md", stages={"quality": REF}),
    PipelineResult(
        corpus=REF,
        card="/w/c/card.md",
        models=TrainedModels(tokens=TOKENS, pretrained=MODEL, finetuned=None, sft=SFT),
        evaluation=Evaluation(report="/w/e", metrics={"val_loss": 2.5, "gate": {"passed": True}}, export=None, promoted=False, reasons=["x"]),
    ),
    {"clusters": 3, "path": "/w/clusters.parquet", "energy": None, "ratio": 0.25},
    (False, ["val_bpb above the gate"]),
    {"__type__": "os:system"},  # a plain dict that happens to use a tag as key stays a dict
]


@pytest.mark.parametrize("kind", [DatasetRef, TokenDatasetRef, ModelRef, SftDatasetRef], ids=lambda k: k.__name__)
def test_every_ref_kind_is_the_one_ref_built_and_persisted_one_way(kind):
    """The kinds add readers only: the same three fields, built from a directory, persisted as the same JSON."""
    assert issubclass(kind, Ref) and dataclasses.fields(kind) == dataclasses.fields(Ref)
    ref = kind.at("/w/models/finetune/abc")
    assert (ref.stage, ref.fingerprint, ref.path) == ("finetune", "abc", "/w/models/finetune/abc")
    assert json.loads(RESULT_SERIALIZER.dumps(ref)) == {
        "__type__": f"{kind.__module__}:{kind.__qualname__}",
        "fields": {"stage": "finetune", "fingerprint": "abc", "path": "/w/models/finetune/abc"},
    }
    assert RESULT_SERIALIZER.loads(RESULT_SERIALIZER.dumps(ref)) == ref and ref != Ref.at(ref.path)  # a kind stays its kind


@pytest.mark.parametrize("value", RESULTS, ids=lambda v: type(v).__name__)
def test_results_round_trip_as_their_types(value):
    blob = RESULT_SERIALIZER.dumps(value)
    back = RESULT_SERIALIZER.loads(blob)
    assert type(back) is type(value)
    assert back == value
    assert b"pickle" not in blob


def test_a_persisted_failure_comes_back_as_text_not_as_its_class():
    back = RESULT_SERIALIZER.loads(RESULT_SERIALIZER.dumps(OSError(28, "No space left on device")))
    assert isinstance(back, PersistedFailure) and "builtins:OSError" in str(back) and "No space" in str(back)


@pytest.mark.parametrize(
    "name",
    ["os:system", "subprocess:Popen", "builtins:eval", "lmwright.tasks.core.stage:run_shard_stage", "lmwright.tasks.nonexistent:Thing", "antigravity:x"],
)
def test_a_result_naming_a_foreign_type_is_refused_without_importing_it(name):
    blob = json.dumps({"__type__": name, "fields": {"args": ["true"]}}).encode()
    with pytest.raises(UnsafeResultError, match="refused|does not exist"):
        RESULT_SERIALIZER.loads(blob)
    assert "antigravity" not in sys.modules


def test_a_record_naming_another_serializer_is_refused_with_its_name():
    planted = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer()), result=1).serialize()
    with pytest.raises(UnsafeResultError, match="serializer 'pickle'.*never deserialized"):
        check_record(planted, "the-key")
    check_record(b'{"metadata": {"serializer": {"type": "lmwright-json"}}, "result": "1"}', "k")  # ours passes


# --- through Prefect: a cached stage task whose record is replaced ------------------------------

RUNS: list[str] = []


@stage_task(task_run_name="probe-{work.unit}")
def probe(work: StageWork) -> DatasetRef:
    """A stage task like the real ones: output marker written last, a DatasetRef returned."""
    RUNS.append(work.unit or "")
    write_json(work.marker, {"done": True})
    return DatasetRef(work.stage, work.fingerprint, work.out_dir)


@flow(persist_result=False)
def probe_flow(work: StageWork) -> DatasetRef:
    return probe(work)


class Payload:
    """What an attacker plants: unpickling it creates ``path`` (it would run any code)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def run_probe(work: StageWork) -> tuple[DatasetRef, str]:
    state = probe_flow(work, return_state=True)
    states = task_states(state.state_details.flow_run_id)
    return state.result(), states[f"probe-{work.unit}"]


def test_a_planted_record_is_refused_and_the_task_runs_again(prefect_harness, tmp_path):
    RUNS.clear()
    work = StageWork("probe", "p" * 20, str(tmp_path / "out"), unit=tmp_path.name)
    record = Path(get_current_settings().results.local_storage_path) / work.cache_key

    first, state = run_probe(work)
    assert (state, RUNS) == ("Completed", [work.unit])
    saved = json.loads(record.read_text())
    assert saved["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}
    again, state = run_probe(work)
    assert state == "Cached" and type(again) is DatasetRef and again == first and len(RUNS) == 1

    # A cloudpickle payload, in the record format Prefect reads (metadata names "pickle").
    pwned = tmp_path / "pwned-by-pickle"
    planted = ResultRecord(
        metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(record)), result=Payload(pwned)
    )
    record.write_bytes(planted.serialize())
    assert b"cloudpickle" in record.read_bytes() and cloudpickle  # the payload really is a pickle
    after, state = run_probe(work)
    assert not pwned.exists()
    assert state == "Completed" and len(RUNS) == 2 and after == first
    assert json.loads(record.read_text())["metadata"]["serializer"] == {"type": SERIALIZER_TYPE}  # replaced

    # Our serializer's name, but a result naming a foreign type (and Prefect's "json" naming a class).
    pwned_json = tmp_path / "pwned-by-json"
    saved = json.loads(record.read_text())
    saved["result"] = json.dumps({"__type__": "subprocess:Popen", "fields": {"args": ["mkdir", str(pwned_json)]}})
    record.write_text(json.dumps(saved))
    after, state = run_probe(work)
    assert state == "Completed" and len(RUNS) == 3 and after == first and not pwned_json.exists()

    saved = json.loads(record.read_text())
    saved["metadata"]["serializer"] = {"type": "json"}
    saved["result"] = json.dumps({"__class__": "subprocess.Popen", "data": {"args": ["mkdir", str(pwned_json)]}})
    record.write_text(json.dumps(saved))
    after, state = run_probe(work)
    assert state == "Completed" and len(RUNS) == 4 and after == first and not pwned_json.exists()

    # Ours, naming one of our classes, with fields it no longer has (a ref an older version wrote):
    # a cache miss, not a crash
    saved = json.loads(record.read_text())
    saved["result"] = json.dumps({"__type__": "lmwright.tasks.core.dataset:DatasetRef", "fields": {"path": "/old", "fingerprint": "f"}})
    record.write_text(json.dumps(saved))
    with pytest.raises(UnsafeResultError, match="does not build"):
        check_record(record.read_bytes(), "k")
    after, state = run_probe(work)
    assert state == "Completed" and len(RUNS) == 5 and after == first


# --- flow results --------------------------------------------------------------------------------


def test_every_flow_persists_its_result_as_typed_json():
    from lmwright.flows.curate import curate
    from lmwright.flows.pipeline import pipeline
    from lmwright.flows.refresh import refresh
    from lmwright.flows.train import evaluate_flow, train_flow

    for f in (curate, pipeline, train_flow, evaluate_flow, refresh):
        assert f.persist_result and f.result_serializer is RESULT_SERIALIZER, f.name


@flow(persist_result=True, **PERSISTED_RESULTS)
def corpus_flow(path: str) -> CuratedCorpus:
    return CuratedCorpus(corpus=DatasetRef.at(path), card=f"{path}/card.md", stages={"dedup": DatasetRef.at(path)})


def test_a_flow_result_on_disk_is_typed_json_and_reads_back_as_its_type(prefect_harness, tmp_path):
    state = corpus_flow(str(tmp_path), return_state=True)
    assert state.data.metadata.serializer == RESULT_SERIALIZER  # what the API records for readers
    blob = Path(state.data.metadata.storage_key).read_bytes()  # a flow's file holds the result alone
    assert json.loads(blob)["__type__"] == "lmwright.flows.curate:CuratedCorpus"
    back = RESULT_SERIALIZER.loads(blob)
    assert type(back) is CuratedCorpus and back == state.result()
