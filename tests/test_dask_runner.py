"""The curate flow on a local Dask cluster of 2 worker processes gives the same corpus as threads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmwright.flows.config import CurateConfig, load_config
from lmwright.flows.curate import curate
from lmwright.flows.runners import build_task_runner
from lmwright.tasks.curate.pii import IDENTIFIER_KEY_FILE

pytest.importorskip("prefect_dask")
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.e2e]


def corpus_signature(corpus: str) -> list[tuple[str, int, str]]:
    manifest = json.loads((Path(corpus) / "manifest.json").read_text())
    return [(s["path"], s["rows"], s["sha256"]) for s in manifest["shards"]]


def test_dask_cluster_gives_the_same_corpus_as_threads(tmp_path: Path, shared_data: Path) -> None:
    web = shared_data / "web"
    sources = f"[{web / 'c4_en_sample_olmo.jsonl'}]"
    common = [f"ingest.sources={sources}", "ingest.shard_docs=8", "langid.languages=null",
              "quality.gopher_quality.min_doc_words=20"]
    threads = load_config(CurateConfig, "tiny", common, workdir=str(tmp_path / "threads"))
    dask = load_config(CurateConfig, "tiny", [*common, "runner.kind=dask", "runner.max_workers=2"],
                       workdir=str(tmp_path / "dask"))
    a = curate.with_options(task_runner=build_task_runner(threads.runner))(threads)
    # The identifier-hashing key is the workdir's secret (in the pii fingerprint): the same data
    # in another workdir with another key is other data. A cluster reads the same workdir's key.
    key = tmp_path / "dask" / IDENTIFIER_KEY_FILE
    key.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "threads" / IDENTIFIER_KEY_FILE, key)
    b = curate.with_options(task_runner=build_task_runner(dask.runner))(dask)
    assert corpus_signature(a.corpus.path) == corpus_signature(b.corpus.path)
    assert a.corpus.fingerprint == b.corpus.fingerprint  # the runner is not part of the data
    assert len(corpus_signature(a.corpus.path)) >= 4
