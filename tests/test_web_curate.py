"""Crawls through the curate flow: small files packed by bytes, and `lmwright curate` on a directory of WARCs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from prefect import flow

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.ingest import IngestParams, pack_files, run_ingest
from lmwright.tasks.curate.sources import SourceSpec, list_source_files
from tests.prefect_states import task_states
from tests.test_cli import lmwright


def tiny_files(folder: Path, n: int, size: int) -> int:
    """``n`` JSONL files of one document, ``size`` bytes each; their total bytes."""
    folder.mkdir()
    for i in range(n):
        line = json.dumps({"id": f"d{i}", "text": f"document {i} "})
        (folder / f"f{i:03d}.jsonl").write_text(line[:-1] + " " * (size - len(line) - 1) + "}\n")
    return sum(p.stat().st_size for p in folder.iterdir())


def test_pack_files_follows_bytes_and_keeps_order(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src", 10, 100)
    files, _ = list_source_files(SourceSpec(path=str(tmp_path / "src")))
    units = pack_files(files, 300)
    assert [len(u) for u in units] == [3, 3, 3, 1]
    assert [f for u in units for f in u] == files  # every file once, in order
    assert [len(u) for u in pack_files(files, 50)] == [1] * 10  # a file larger than the target is a unit alone


@flow
def ingest_only(workdir: str, params: IngestParams) -> DatasetRef:
    return run_ingest(workdir, params, ValidationSettings())


@pytest.mark.usefixtures("prefect_harness")
def test_many_tiny_files_become_shards_by_bytes_not_by_file(tmp_path: Path) -> None:
    total = tiny_files(tmp_path / "src", 60, 500)
    params = IngestParams(sources=[SourceSpec(path=str(tmp_path / "src"))], shard_bytes=6_000)
    state = ingest_only(str(tmp_path / "w"), params, return_state=True)
    ref = state.result()
    manifest = ref.manifest()
    assert manifest["rows"] == 60
    expected = math.ceil(total / params.shard_bytes)  # 30,000 bytes in units of 6,000: 5 shards, not 60
    assert len(manifest["shards"]) == expected == 5
    runs = [name for name in task_states(state.state_details.flow_run_id) if name.startswith("ingest-unit")]
    assert len(runs) == expected


@pytest.mark.e2e
def test_curate_a_directory_of_warcs_with_reasons_in_the_card(tmp_path: Path, shared_data: Path) -> None:
    workdir = tmp_path / "w"
    mine = tmp_path / "mine.txt"
    mine.write_text("commoncrawl.org\n")  # the user's own block list: five pages of the crawl
    done = lmwright(
        "curate", "--source", str(shared_data / "web" / "warc"), "--workdir", str(workdir), "--config", "tiny",
        "--set", f"urlfilter.block_lists=[adult, spam, {mine}]", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    corpus = Path(done.stdout.strip().splitlines()[-1])
    card = json.loads((corpus / "card.json").read_text())
    by_stage = {row["stage"]: row for row in card["funnel"]}
    ingest = by_stage["ingest"]
    assert ingest["in"] == 82 and ingest["kept"] == 37  # every WARC record: a page or a reason
    assert ingest["rejected_by_reason"] == {"ingest_warc_request": 37, "ingest_warc_warcinfo": 2,
                                            "ingest_warc_metadata": 2, "ingest_not_html": 4}
    assert by_stage["urlfilter"]["rejected_by_reason"] == {"url_blocked_mine": 5}
    text = (corpus / "card.md").read_text()
    assert "ingest_warc_request" in text and "url_blocked_mine" in text
    kept = DatasetRef(stage="dedup", fingerprint=corpus.name, path=str(corpus)).read()
    assert kept.height > 0 and kept["url"].str.starts_with("https://").all()
    assert kept["warc_record_id"].str.starts_with("urn:uuid:").all() and kept["warc_date"].is_not_null().all()
    assert (kept["content_type"] == "text/html").all()
