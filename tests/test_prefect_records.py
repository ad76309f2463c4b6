"""Where Prefect keeps a result record: lmwright's one use of a private Prefect member.

Prefect's storage blocks have no public way to say which file holds a key, so
tasks.core.results.record_path calls their private ``_resolve_path``. These tests write records
through Prefect's own public API and fail, naming that member, when an upgrade moves them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import prefect
import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.results import ResultStore

from lmwright.tasks.core.results import RESOLVE_PATH, TypedJSONSerializer, delete_record, record_path
from lmwright.tasks.core.stage import expire_record

STORAGES = {
    "LocalFileSystem": lambda root: LocalFileSystem(basepath=str(root)),
    "RemoteFileSystem": lambda root: RemoteFileSystem(basepath=f"memory://lmwright-test/{root.name}"),
}


@pytest.mark.parametrize("kind", sorted(STORAGES))
def test_record_path_is_the_file_prefect_wrote(kind: str, tmp_path: Path) -> None:
    storage = STORAGES[kind](tmp_path)
    assert callable(getattr(storage, RESOLVE_PATH, None)), (
        f"prefect {prefect.__version__}: {kind}.{RESOLVE_PATH} is gone; update tasks/core/results.py record_path"
    )
    storage.write_path("stage-key", b"record", _sync=True)
    path = record_path(storage, "stage-key")
    fs = getattr(storage, "filesystem", None)  # fsspec behind a RemoteFileSystem
    assert path is not None and (fs.cat(path) if fs is not None else Path(path).read_bytes()) == b"record", (
        f"prefect {prefect.__version__}: {kind}.{RESOLVE_PATH}('stage-key') = {path!r} is not the file "
        "write_path wrote; update tasks/core/results.py record_path"
    )
    delete_record(storage, "stage-key")
    with pytest.raises((OSError, ValueError)):
        storage.read_path("stage-key", _sync=True)
    delete_record(storage, "stage-key")  # nothing left to delete: no error


def test_expire_record_makes_a_persisted_result_a_cache_miss(tmp_path: Path) -> None:
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)), serializer=TypedJSONSerializer())
    store.write({"rows": 3}, key="dedup-fp-manifest")
    assert store.exists("dedup-fp-manifest"), f"prefect {prefect.__version__}: ResultStore.write/exists changed"
    expire_record(store, "dedup-fp-manifest")
    assert not store.exists("dedup-fp-manifest"), (
        f"prefect {prefect.__version__}: the record survived expire_record: {RESOLVE_PATH} no longer names "
        "the file ResultStore writes; update tasks/core/results.py record_path"
    )


def test_a_storage_without_the_member_is_named_in_a_warning() -> None:
    class Bucket:  # a block that cannot say where a key lives (e.g. another storage integration)
        pass

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log = results_logger()
    log.addHandler(handler)
    try:
        assert record_path(Bucket(), "k") is None
        delete_record(Bucket(), "k")  # nothing it can do: it says so and returns
    finally:
        log.removeHandler(handler)
    assert len(seen) == 2 and all(f"Bucket has no {RESOLVE_PATH}()" in m for m in seen)


def results_logger() -> logging.Logger:
    from lmwright.tasks.core import results

    return results.logger
