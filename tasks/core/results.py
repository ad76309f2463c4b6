"""Persisted Prefect results as typed JSON, read back only from records lmwright wrote.

Prefect persists a task's (or flow's) result as a record file whose metadata names the
serializer to read it with. Its default is cloudpickle, and even with ``result_serializer="json"``
a record that *says* "pickle" is unpickled, and Prefect's "json" decoder builds any importable
class the file names. Whoever could replace a record under PREFECT_HOME ran code in the next
run that hit that cache. lmwright's results are small typed records (dataclasses such as
DatasetRef and ShardStats, pydantic models, dicts of numbers and strings), so:

- ``TypedJSONSerializer`` writes them as JSON, each dataclass or pydantic model tagged with its
  class, and reads back only dataclasses and pydantic models defined in lmwright's own packages:
  no pickle, no import of anything else, no other constructor.
- ``refuse_foreign_record`` runs before Prefect looks a cached result up (in the stage cache
  policy) and deletes a record that names any other serializer, with a warning: Prefect then
  sees no record, the task runs again and its fresh result replaces the planted file.
  (Prefect accepts only storage blocks saved on a server, so the check cannot live in a storage
  block; lmwright never reads a flow's result file back, only other processes' ``state.result()``.)
- ``RecordLocks`` lets one run at a time hold a cache key, so two runs on one workdir do each
  unit of work once.

Tasks and flows with persisted results take ``**PERSISTED_RESULTS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import importlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from prefect.logging import get_logger
from prefect.serializers import Serializer
from prefect.settings import get_current_settings
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

SERIALIZER_TYPE = "lmwright-json"
# Only classes from lmwright's own namespace are rebuilt from a record.
RESULT_NAMESPACE = "lmwright"
# Keys that tag a JSON object as something other than a plain dict.
TYPE_TAG, FIELDS, TUPLE_TAG, DICT_TAG, ERROR_TAG = "__type__", "fields", "__tuple__", "__dict__", "__error__"
RESERVED = {TYPE_TAG, TUPLE_TAG, DICT_TAG, ERROR_TAG}

logger = get_logger("lmwright.results")


class UnsafeResultError(ValueError):
    """A persisted result that lmwright did not write, or that names a type it does not rebuild."""


class PersistedFailure(RuntimeError):
    """A failed run's exception read back from its record: its type's name and message, never its class."""


# --- encoding ---------------------------------------------------------------------------


def class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def encode(value: Any, in_model: bool = False) -> Any:
    """``value`` as JSON data; dataclasses and pydantic models tagged with their class."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [encode(v, in_model) for v in value]
        return {TUPLE_TAG: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"result dicts need string keys, got {sorted({type(k).__name__ for k in value})}")
        items = {k: encode(v, in_model) for k, v in value.items()}
        return {DICT_TAG: items} if RESERVED & items.keys() else items
    if isinstance(value, BaseModel):  # field by field: Field(exclude=True) values survive too
        fields = {name: encode(getattr(value, name), in_model=True) for name in type(value).model_fields}
        return {TYPE_TAG: class_name(type(value)), FIELDS: fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: encode(getattr(value, f.name), in_model) for f in dataclasses.fields(value) if f.init}
        return {TYPE_TAG: class_name(type(value)), FIELDS: fields}
    if isinstance(value, BaseException):  # Prefect persists a failed run's exception too
        return {ERROR_TAG: {"type": class_name(type(value)), "message": str(value)}}
    if in_model:  # Path, datetime, enum ...: the model's validation turns them back into their type
        return to_jsonable_python(value)
    raise TypeError(f"cannot persist a {type(value).__name__} as a typed JSON result")


def decode(data: Any) -> Any:
    """The inverse of ``encode``; refuses any class outside lmwright's packages."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if TUPLE_TAG in data:
        return tuple(decode(v) for v in data[TUPLE_TAG])
    if DICT_TAG in data:
        return {k: decode(v) for k, v in data[DICT_TAG].items()}
    if ERROR_TAG in data:
        error = data[ERROR_TAG]
        return PersistedFailure(f"{error.get('type')}: {error.get('message')}")
    if TYPE_TAG in data:
        cls = result_class(data[TYPE_TAG])
        fields = {k: decode(v) for k, v in data.get(FIELDS, {}).items()}
        return cls.model_validate(fields) if issubclass(cls, BaseModel) else cls(**fields)
    return {k: decode(v) for k, v in data.items()}


def result_class(name: Any) -> type:
    """The dataclass or pydantic model ``module:Qualname`` names, if lmwright defines it; else refuse."""
    module, _, qualname = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not qualname or module.split(".")[0] != RESULT_NAMESPACE:
        raise UnsafeResultError(f"a persisted result names type {name!r}, which is not one of lmwright's: refused")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UnsafeResultError(f"a persisted result names type {name!r}, which does not exist ({e})") from None
    if not isinstance(obj, type) or not (issubclass(obj, BaseModel) or dataclasses.is_dataclass(obj)):
        raise UnsafeResultError(f"a persisted result names {name!r}, which is not a dataclass or pydantic model: refused")
    return obj


class TypedJSONSerializer(Serializer):
    """Prefect serializer for lmwright's results: tagged JSON, rebuilt only as lmwright's own types."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(encode(obj), sort_keys=True).encode()

    def loads(self, blob: bytes) -> Any:
        try:
            return decode(json.loads(blob))
        except UnsafeResultError as e:
            logger.warning("%s; the task runs again", e)
            raise


# --- records on disk ----------------------------------------------------------------------


def check_record(content: bytes, where: str) -> None:
    """Raise UnsafeResultError unless ``content`` is a record that names TypedJSONSerializer and
    holds a value this version of lmwright builds.

    Content that is not JSON at all (a record being written, a truncated file) passes: Prefect
    cannot parse it either and falls back to the task's serializer, which is ours. A record of a
    class that has changed since it was written (a ref with other fields, a class that moved) is
    refused too: for the cache that is a miss and the task runs again, not a crash on reading it.
    """
    try:
        record = json.loads(content)
    except ValueError:
        return
    meta = record.get("metadata") if isinstance(record, dict) else None
    serializer = meta.get("serializer") if isinstance(meta, dict) else None
    if serializer != {"type": SERIALIZER_TYPE}:
        kind = serializer.get("type") if isinstance(serializer, dict) else None
        raise UnsafeResultError(
            f"result record {where} was not written by lmwright (serializer {kind!r}, expected "
            f"{SERIALIZER_TYPE!r}): refused and deleted, never deserialized; the task runs again"
        )
    try:
        decode(json.loads(record["result"]))
    except UnsafeResultError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise UnsafeResultError(
            f"result record {where} holds a value this version of lmwright does not build "
            f"({type(e).__name__}: {str(e)[:200]}): deleted; the task runs again"
        ) from None


def refuse_foreign_record(store: Any, key: str) -> None:
    """Delete the record under ``key`` in ``store`` unless lmwright's serializer wrote it.

    Prefect reads a record with the serializer the record itself names, so a planted pickle
    would be unpickled whatever the task's ``result_serializer`` says: the check runs before
    Prefect looks the key up (in the cache policy), and a deleted record is a cache miss.
    """
    storage = getattr(store, "result_storage", None)
    if storage is None:
        return
    try:
        content = storage.read_path(key, _sync=True)
    except (OSError, ValueError):  # no record under the key (LocalFileSystem says ValueError)
        return
    try:
        check_record(content, key)
    except UnsafeResultError as e:
        logger.warning("%s", e)
        delete_record(storage, key)


# --- where a record lives: the one use of a private Prefect member ----------------------------

# Prefect's storage blocks have no public "where is the file of this key": LocalFileSystem and
# RemoteFileSystem resolve it with this private method. Only record_path calls it, and
# tests/test_prefect_records.py fails, naming it, when a Prefect upgrade renames or changes it.
RESOLVE_PATH = "_resolve_path"


def record_path(storage: Any, key: str) -> str | None:
    """The file of ``key`` in a Prefect storage block; None for a block that cannot say (logged, naming why)."""
    resolve = getattr(storage, RESOLVE_PATH, None)
    if resolve is None:
        logger.warning(
            "result storage %s has no %s(): lmwright cannot delete its record %r (a stale cache entry may be reused)",
            type(storage).__name__, RESOLVE_PATH, key,
        )
        return None
    return str(resolve(key))


def delete_record(storage: Any, key: str) -> None:
    """Delete the record file of ``key`` in ``storage`` (a local folder or an fsspec RemoteFileSystem), if there is one."""
    path = record_path(storage, key)
    if path is None:
        return
    fs = getattr(storage, "filesystem", None)
    if fs is not None:  # a RemoteFileSystem block (fsspec)
        if fs.exists(path):
            fs.rm(path)
    else:
        Path(path).unlink(missing_ok=True)


# --- one run at a time per record ------------------------------------------------------------


class RecordLocks:
    """Prefect lock manager on flock(2): one holder per cache key across threads and processes.

    With ``isolation_level="SERIALIZABLE"`` a task takes the lock of its cache key before it looks
    its record up, so of two runs on one workdir the second waits for the first's shard and then
    reads it from the cache instead of writing the same files again. The kernel drops a lock when
    its process dies, so a kill -9 leaves no stale lock behind (Prefect's file lock manager would
    wait for ever on it). Lock files live under ``PREFECT_HOME/locks`` (a read-only workdir is fine).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._directory = Path(directory) if directory else None
        self._held: dict[str, tuple[str, int]] = {}  # key -> (holder, fd)
        self._guard = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # shipped to Dask workers: locks stay with their process
        return {"_directory": self._directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_directory"])

    def _path(self, key: str) -> Path:
        directory = self._directory or Path(get_current_settings().home) / "locks"
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{key}.lock"

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        path = self._path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if _flock(fd, deadline) and _still_named(fd, path):  # not a file its last holder just removed
                with self._guard:
                    self._held[key] = (holder, fd)
                return True
            os.close(fd)
            if deadline is not None and time.monotonic() >= deadline:
                return False

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._guard:
            if self._held.get(key, ("", -1))[0] != holder:
                return  # Prefect also releases after a failure that came before the lock was taken
            _, fd = self._held.pop(key)
        self._path(key).unlink(missing_ok=True)  # while still holding it: a waiter re-checks the name
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def is_locked(self, key: str) -> bool:
        with self._guard:
            if key in self._held:
                return True
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we just took
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._guard:
            return self._held.get(key, ("", -1))[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)


def _flock(fd: int, deadline: float | None) -> bool:
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


RESULT_SERIALIZER = TypedJSONSerializer()
# For @task and @flow: results persisted as typed JSON. Prefect only accepts storage blocks saved
# on a server, so the check on records read back lives in the cache policy (tasks.core.stage).
PERSISTED_RESULTS: dict[str, Any] = {"result_serializer": RESULT_SERIALIZER}

__all__ = [
    "PERSISTED_RESULTS",
    "PersistedFailure",
    "RecordLocks",
    "RESULT_SERIALIZER",
    "refuse_foreign_record",
    "TypedJSONSerializer",
    "UnsafeResultError",
    "decode",
    "encode",
]
