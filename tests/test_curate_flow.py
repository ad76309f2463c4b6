"""The stage contract under Prefect's engine: cached by fingerprint, retryable, crash-safe."""

from __future__ import annotations

import lmwright.tasks.core.stage as stage_module

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

import lmwright.flows.curate as curate_module
from lmwright.flows.config import CurateConfig, load_config
from lmwright.flows.curate import curate
from lmwright.tasks.core.dataset import IncompleteDatasetError, read_manifest
from lmwright.tasks.core.stage import ShardStage
from tests.prefect_states import by_stage, retry_delays, task_states

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def corpus_dir(tmp_path: Path, shared_data: Path) -> Path:
    """Real English documents (C4 sample) plus a planted duplicate and a French page."""
    src = tmp_path / "src"
    src.mkdir()
    lines = (shared_data / "web" / "c4_en_sample_olmo.jsonl").read_text().splitlines()
    docs = [json.loads(line) for line in lines]
    with open(src / "c4.jsonl", "w") as f:
        for i, d in enumerate(docs + [docs[0]]):
            f.write(json.dumps({"id": f"c4-{i}", "text": d["text"]}) + "\n")
    fr = (shared_data / "multilingual" / "udhr" / "fra.txt").read_text()
    (src / "udhr_fra.txt").write_text(fr)
    return src


def config_for(workdir: Path, src: Path, *overrides: str) -> CurateConfig:
    return load_config(
        CurateConfig,
        "tiny",
        [f"ingest.sources=[{src}]", "ingest.shard_docs=12", *overrides],
        workdir=str(workdir),
    )


def run(config: CurateConfig) -> tuple[curate_module.CuratedCorpus, dict[str, str]]:
    state = curate(config, return_state=True)
    result = state.result()
    return result, task_states(state.state_details.flow_run_id)


def test_curate_caches_by_fingerprint_and_reruns_only_what_changed(tmp_path: Path, corpus_dir: Path) -> None:
    workdir = tmp_path / "work"
    config = config_for(workdir, corpus_dir)
    first, states = run(config)
    assert set(states.values()) == {"Completed"}
    assert {"ingest", "normalize", "langid", "quality", "pii", "dedup", "card"} <= set(by_stage(states))
    corpus = first.corpus.read()
    assert corpus.height > 0 and corpus["id"].is_unique().all()
    assert "c4-30" not in corpus["id"].to_list()  # the planted duplicate of c4-0
    assert set(corpus["lang"].to_list()) == {"en"}
    assert (first.corpus.dir / "card.md").exists()

    # (a) an unchanged rerun recomputes nothing
    again, states = run(config)
    assert again.corpus == first.corpus
    assert set(states.values()) == {"Cached"}, states

    # (b) one quality threshold changed: quality and what follows rerun, ingest/normalize/langid do not
    changed, states = run(config_for(workdir, corpus_dir, "quality.gopher_quality.min_doc_words=60"))
    stages = by_stage(states)
    for upstream in ("ingest", "normalize", "langid"):
        assert stages[upstream] == {"Cached"}, (upstream, stages)
    for downstream in ("quality", "pii", "dedup", "card"):
        assert stages[downstream] == {"Completed"}, (downstream, stages)
    assert changed.corpus != first.corpus

    # (c) a deleted stage output reruns that stage; the rest stays cached
    shutil.rmtree(first.stages["normalize"].dir)
    _, states = run(config)
    stages = by_stage(states)
    assert stages["normalize"] == {"Completed"}
    assert all(stages[s] == {"Cached"} for s in ("ingest", "langid", "quality", "pii", "dedup", "card")), stages


def test_failed_task_succeeds_on_retry_without_rerunning_upstream(
    tmp_path: Path, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "work"
    run(config_for(workdir, corpus_dir))
    real = curate_module.QUALITY_STAGE
    calls = {"n": 0}

    def flaky(docs: pl.DataFrame, params):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("injected fault: disk hiccup")
        return real.apply(docs, params)

    monkeypatch.setattr(curate_module, "QUALITY_STAGE", ShardStage(real.name, real.version, flaky))
    # Prefect reads the delays from the task object when it retries (the task took its own
    # reference to RETRY_DELAYS when stage_task was built: rebinding that name would change nothing).
    assert stage_module.process_shard.retry_delay_seconds == stage_module.RETRY_DELAYS != [0]
    monkeypatch.setattr(stage_module.process_shard, "retry_delay_seconds", [0])
    state = curate(config_for(workdir, corpus_dir, "quality.gopher_quality.min_doc_words=55"), return_state=True)
    result, states = state.result(), task_states(state.state_details.flow_run_id)
    stages = by_stage(states)
    assert stages["ingest"] == stages["normalize"] == stages["langid"] == {"Cached"}
    assert stages["quality"] == {"Completed"}
    assert calls["n"] >= 2
    # the retry waited what the test set, not the stage's default (RETRY_DELAYS[0] = 1 s): as Prefect recorded it
    delays = retry_delays(state.state_details.flow_run_id, "quality-")
    assert len(delays) == 1 and delays[0] < stage_module.RETRY_DELAYS[0] / 2, delays
    assert result.corpus.manifest()["rows"] > 0


def test_directory_without_manifest_is_never_read(tmp_path: Path, corpus_dir: Path) -> None:
    workdir = tmp_path / "work"
    config = config_for(workdir, corpus_dir)
    first, _ = run(config)
    langid_dir = first.stages["langid"].dir
    (langid_dir / "manifest.json").unlink()  # as if killed between the last shard and the manifest
    with pytest.raises(IncompleteDatasetError, match="half-written"):
        read_manifest(langid_dir)
    # A half-written shard without its stats marker is garbage too: it is redone, not read.
    shard = sorted(langid_dir.glob("part-*.parquet"))[0]
    (langid_dir / "stats" / f"{shard.stem}.json").unlink()
    shard.write_bytes(b"garbage from a killed writer")
    second, states = run(config)
    stages = by_stage(states)
    assert states.get(f"langid-{shard.stem}") == "Completed", sorted(states.items())
    assert states["langid-finalize"] == "Completed"
    assert stages["quality"] == {"Cached"}
    assert second.corpus == first.corpus
    assert pl.read_parquet(shard).height > 0


def test_planted_violation_stops_the_flow_at_the_right_stage(tmp_path: Path, corpus_dir: Path) -> None:
    from lmwright.data_quality import DataQualityError

    leak = corpus_dir / "leak.txt"
    leak.write_text(
        "The annual meeting of the village garden club will take place on the first Saturday of May. "
        "Members are asked to bring seedlings, spare tools and their favourite recipes for the shared lunch. "
        "Last year we planted more than two hundred trees along the river path, and the children from the "
        "local school painted new signs for the allotments. This spring we hope to repair the old greenhouse "
        "and to start a seed library that everyone in the valley can use. If you would like to help with the "
        "preparations or have questions about membership, please write to jane.doe@example.org before the end "
        "of April, and tell your neighbours about the meeting as well.\n"
    )
    workdir = tmp_path / "work"
    # Switching e-mail redaction off plants the violation: the pii suite must catch it.
    state = curate(config_for(workdir, corpus_dir, "pii.email=false"), return_state=True)
    assert state.is_failed()
    with pytest.raises(DataQualityError) as e:
        state.result()
    message = str(e.value)
    assert "stage 'pii'" in message and "email" in message
    assert "index.html" in message and (workdir / "data_docs").is_dir()
    datasets = workdir / "datasets"
    assert (datasets / "quality").is_dir() and not (datasets / "dedup").exists()
    assert not list((datasets / "pii").glob("*/manifest.json"))


def test_links_that_cannot_be_read_and_invisible_characters_show_in_stats_and_card(tmp_path: Path, corpus_dir: Path) -> None:
    (corpus_dir / "loop_a.txt").symlink_to(corpus_dir / "loop_b.txt")
    (corpus_dir / "loop_b.txt").symlink_to(corpus_dir / "loop_a.txt")
    (corpus_dir / "dangling.jsonl").symlink_to(tmp_path / "moved_away.jsonl")
    c4 = corpus_dir / "c4.jsonl"
    lines = c4.read_text().splitlines()
    first = json.loads(lines[0])
    first["text"] = first["text"].replace(" ", " \u200b", 3) + " \u202eevil\u202c"
    c4.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")

    result, states = run(config_for(tmp_path / "work", corpus_dir))
    assert set(states.values()) == {"Completed"}
    ingest = result.stages["ingest"].stats()
    assert ingest["skipped_by_reason"] == {"ingest_broken_symlink": 1, "ingest_symlink_loop": 2}
    normalize = result.stages["normalize"].stats()
    assert normalize["counts"] == {"invisible_chars_stripped": 5}
    card = (result.corpus.dir / "card.md").read_text()
    assert "ingest_symlink_loop 2" in card and "dangling.jsonl" in card
    assert "| normalize | invisible_chars_stripped | 5 |" in card
    corpus = result.corpus.read()
    assert not corpus["text"].str.contains("[\u200b\u202e\u202c]").any()


def test_sources_without_documents_stop_with_one_clear_error(tmp_path: Path) -> None:
    from lmwright.tasks.curate.card import EmptyCorpusError

    src = tmp_path / "src"
    src.mkdir()
    (src / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (src / "archive.7z").write_bytes(b"7z\xbc\xaf")
    (src / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    state = curate(config_for(tmp_path / "work", src), return_state=True)
    assert state.is_failed()
    with pytest.raises(EmptyCorpusError) as e:
        state.result()
    message = str(e.value)
    assert message.startswith("no documents: 0 files read, 3 skipped (reasons: ingest_unsupported_format 2, ingest_broken_symlink 1")
    assert "\n" not in message and "photo.png" in message
