"""Retention: the raw copies before pii go (or rejected text is redacted) once the corpus is finished,
no planted PII survives in ids, URLs, file names or text, and the cache still works."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from lmwright.flows.config import CurateConfig, load_config
from lmwright.flows.curate import curate
from lmwright.tasks.core.dataset import DatasetRef, write_manifest, write_shard
from lmwright.tasks.curate.pii import PiiParams, resolve_pii
from lmwright.tasks.core.dataset import TextDroppedError, forget_text_dropped, require_text, text_dropped
from lmwright.tasks.curate.retention import RejectedSettings, RetentionSettings, redact_rejected, retain
from tests.prefect_states import by_stage, task_states

MAIL, OTHER_MAIL, PHONE = "jane.roe@example.com", "max.muster@example.de", "0171 234567"
PLANTED = (MAIL, OTHER_MAIL, "jane.roe%40example.com", PHONE)
RAW_TEXT = "Jane Roe's"  # not PII: the corpus keeps it, the dropped copies must not


def string_values(path: Path) -> str:
    """Every string value of a Parquet file, joined (Parquet pages are compressed: no byte grep)."""
    df = pl.read_parquet(path)
    return "\n".join(str(v) for c in df.columns if df.schema[c] == pl.String for v in df[c].to_list())


# --- one dataset, no engine ---------------------------------------------------------------


def a_dataset(root: Path, stage: str, inputs: list[DatasetRef] = ()) -> DatasetRef:
    out = root / stage
    kept = pl.DataFrame({"id": [MAIL, "doc-2"], "text": [f"Jane Roe's note, call {PHONE}", "plain"], "uri": ["u/1", "u/2"]})
    rejected = pl.DataFrame({
        "id": [OTHER_MAIL], "text": [f"write to {OTHER_MAIL}"], "uri": [f"mail/{OTHER_MAIL}/x.txt"],
        "reason": ["gopher_short_doc"], "stage": [stage], "detail": [f"opt-out id:{OTHER_MAIL}"],
    })
    stats = write_shard(out, "part-00000", stage, 3, 10, kept, rejected, 0.0)
    return write_manifest(out, stage, stage + "-fp", {}, "1", list(inputs), [stats])


def test_drop_keeps_hashed_ids_and_reasons_only_and_is_idempotent(tmp_path: Path) -> None:
    pii = resolve_pii(PiiParams(), tmp_path)
    first = a_dataset(tmp_path, "ingest")
    second = a_dataset(tmp_path, "license", [first])
    drop = RetentionSettings(intermediate_text="drop")
    report = retain(second, drop, RejectedSettings(), pii)
    assert report["kept_text"] == "dropped" and report["rejected"] == 1
    kept = pl.read_parquet(second.parts()[0])
    rejected = pl.read_parquet(second.rejected_parts()[0])
    assert kept.columns == ["id"] and kept["id"][1] == "doc-2" and kept["id"][0].startswith("<EMAIL:")
    assert rejected.columns == ["id", "reason", "stage", "detail"] and rejected["reason"][0] == "gopher_short_doc"
    for part in [*second.parts(), *second.rejected_parts()]:
        assert not any(p in string_values(part) for p in (*PLANTED, RAW_TEXT))
    assert text_dropped(second) and not text_dropped(first)
    assert retain(second, drop, RejectedSettings(), pii)["kept_text"] == "dropped"  # nothing done twice
    assert pl.read_parquet(second.parts()[0]).equals(kept)

    with pytest.raises(TextDroppedError, match="license dataset was dropped"):
        require_text(first, second)
    retain(first, drop, RejectedSettings(), pii)
    assert sorted(forget_text_dropped(second)) == sorted([first.path, second.path])
    assert not Path(first.path).exists() and not Path(second.path).exists()


def test_rejected_keep_text_false_redacts_text_ids_and_detail_and_keeps_the_rest(tmp_path: Path) -> None:
    pii = resolve_pii(PiiParams(), tmp_path)
    ref = a_dataset(tmp_path, "quality")
    before_kept = pl.read_parquet(ref.parts()[0])
    report = retain(ref, RetentionSettings(), RejectedSettings(keep_text=False), pii)
    assert report["rejected_text"] == "redacted" and not text_dropped(ref)
    assert pl.read_parquet(ref.parts()[0]).equals(before_kept)  # kept documents are the next stage's input
    rejected = pl.read_parquet(ref.rejected_parts()[0])
    assert rejected["text"][0] == "write to <EMAIL>" and rejected["reason"][0] == "gopher_short_doc"
    assert not any(p in string_values(ref.rejected_parts()[0]) for p in PLANTED)
    # keep + keep_text is the default: nothing is touched
    assert retain(ref, RetentionSettings(), RejectedSettings(), pii)["rejected_text"] == "redacted"


def test_redact_rejected_handles_null_text_and_missing_columns(tmp_path: Path) -> None:
    pii = resolve_pii(PiiParams(), tmp_path)
    frame = pl.DataFrame({"id": [MAIL, "b"], "text": [None, f"mail {MAIL}"], "reason": ["ingest_invalid_utf8", "x"]})
    out = redact_rejected(frame, pii)
    assert out["text"].to_list() == [None, "mail <EMAIL>"] and out["id"][0].startswith("<EMAIL:")
    assert redact_rejected(frame.head(0), pii).height == 0
    # identifiers: [] keeps raw ids in the corpus, so rejected ids stay raw too (no key needed)
    raw_ids = resolve_pii(PiiParams(identifiers=[]), tmp_path / "no-key")
    with_detail = frame.with_columns(pl.lit(f"opt-out id:{MAIL}").alias("detail"))
    assert redact_rejected(with_detail, raw_ids)["id"][0] == MAIL


# --- the curate flow under Prefect -------------------------------------------------------


@pytest.fixture()
def planted_source(tmp_path: Path, shared_data: Path) -> Path:
    """Real English pages with PII planted in ids, URLs, a file name and the text; one too short."""
    src = tmp_path / "src" / f"inbox-{MAIL}"
    src.mkdir(parents=True)
    lines = (shared_data / "web" / "c4_en_sample_olmo.jsonl").read_text().splitlines()[:12]
    with open(src / "pages.jsonl", "w") as f:
        for i, line in enumerate(lines):
            text = json.loads(line)["text"]
            doc = {"id": f"page-{i}", "text": text, "url": f"https://news.example.org/story/{i}"}
            if i == 0:
                doc |= {"id": MAIL, "text": f"Jane Roe's letter. Write to {MAIL} or call {PHONE}.\n" + text}
            if i == 1:
                doc["url"] = "https://news.example.org/share?to=jane.roe%40example.com"
            f.write(json.dumps(doc) + "\n")
        f.write(json.dumps({"id": OTHER_MAIL, "text": f"Too short: {OTHER_MAIL}.", "url": None}) + "\n")
    return src.parent


def config_for(workdir: Path, src: Path, *overrides: str) -> CurateConfig:
    return load_config(
        CurateConfig, "tiny", [f"ingest.sources=[{src}]", "ingest.shard_docs=6", *overrides], workdir=str(workdir)
    )


def run(config: CurateConfig):
    state = curate(config, return_state=True)
    return state.result(), task_states(state.state_details.flow_run_id)


def all_strings(root: Path) -> str:
    return "\n".join(string_values(p) for p in sorted(root.rglob("*.parquet")))


@pytest.mark.usefixtures("prefect_harness")
def test_curate_with_retention_drop_leaves_no_raw_pii_and_reruns_from_cache(tmp_path: Path, planted_source: Path) -> None:
    workdir = tmp_path / "work"
    config = config_for(workdir, planted_source, "retention.intermediate_text=drop")
    first, states = run(config)
    assert set(states.values()) == {"Completed"}, states
    assert "retention" in by_stage(states)

    corpus = first.corpus.read()
    assert corpus.height >= 10 and corpus["id"].str.starts_with("<EMAIL:").sum() == 1
    assert (first.corpus.dir / "clusters.parquet").is_file()
    # no planted PII in any Parquet file left under the workdir: corpus, clusters, signatures, every stage
    everything = all_strings(workdir)
    assert not [p for p in PLANTED if p in everything]
    assert RAW_TEXT in all_strings(first.corpus.dir)
    for stage in ("ingest", "license", "normalize", "langid", "quality"):
        ref = first.stages[stage]
        assert text_dropped(ref) and all(pl.read_parquet_schema(p).keys() == {"id"} for p in ref.parts())
        assert RAW_TEXT not in all_strings(ref.dir)
        assert ref.manifest()["rows"] == sum(pl.read_parquet(p).height for p in ref.parts())
    rejected = [p for s in ("ingest", "license", "normalize", "langid", "quality") for p in first.stages[s].dir.glob("rejected/*.parquet")]
    assert rejected and all("text" not in pl.read_parquet_schema(p) for p in rejected)
    assert "retention.intermediate_text: drop" in Path(first.card).read_text()

    # an unchanged rerun: every task a cache hit, the corpus the same
    again, states = run(config)
    assert set(states.values()) == {"Cached"}, states
    assert again.corpus == first.corpus

    # a changed threshold after a dropped stage: the dropped datasets are rebuilt from the sources
    changed, states = run(config_for(workdir, planted_source, "retention.intermediate_text=drop", "pii.drop_above=100"))
    assert by_stage(states)["pii"] == {"Completed"} and changed.corpus != first.corpus
    assert changed.corpus.read().height == corpus.height
    assert not [p for p in PLANTED if p in all_strings(workdir)]


@pytest.mark.usefixtures("prefect_harness")
def test_curate_rejected_keep_text_false_redacts_rejected_and_says_so(tmp_path: Path, planted_source: Path) -> None:
    workdir = tmp_path / "work"
    first, _ = run(config_for(workdir, planted_source, "rejected.keep_text=false"))
    rejected = [p for s in ("ingest", "license", "normalize", "langid", "quality") for p in first.stages[s].dir.glob("rejected/*.parquet")]
    texts = pl.concat([pl.read_parquet(p, columns=["id", "text"]) for p in rejected])
    assert texts.height >= 1 and any("<EMAIL>" in t for t in texts["text"].to_list())
    assert not [p for p in PLANTED if p in "\n".join(string_values(p) for p in rejected)]
    assert not [p for p in PLANTED if p in all_strings(first.corpus.dir)]
    card = Path(first.card).read_text()
    assert "## Retention" in card and "rejected.keep_text: false" in card
