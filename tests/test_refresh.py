"""The nightly refresh: ledger, cross-version dedup, immutable corpus versions, continued training, crash safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import lmwright.tasks.refresh.versions as versions
from lmwright.data_quality import ValidationSettings
from lmwright.flows.config import PipelineConfig, load_config
from lmwright.flows.refresh import RefreshResult, refresh
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.dedup.params import DedupParams
from lmwright.tasks.refresh.ledger import ledger_path
from lmwright.tasks.refresh.mix import replay_budget, run_mix
from lmwright.tasks.refresh.previous_dedup import (
    EXACT_BAND,
    REASON_ID,
    REASON_PREVIOUS,
    PreviousDedupParams,
    apply_previous_dedup,
    index_rows,
)
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.refresh.versions import read_latest, version_parts
from lmwright.tasks.train.token_dataset import TokenDatasetRef

pytestmark = pytest.mark.usefixtures("prefect_harness")


class SimulatedKill(RuntimeError):
    """Stands in for kill -9: the flow stops where it is (no commit step after it runs)."""

SETTINGS = RefreshSettings(max_steps=20, min_val_tokens=600, carbon_window=None)


def paragraphs(path: Path, skip: int = 40) -> list[str]:
    """Real paragraphs of a Gutenberg book (past its front matter), 30+ words each."""
    paras = [p.strip() for p in path.read_text().split("\n\n")]
    return [p for p in paras[skip:] if len(p.split()) >= 30]


def write_paragraphs(path: Path, paras: list[str]) -> None:
    path.write_text("\n\n".join(paras) + "\n")


def refresh_config(workdir: Path, src: Path, *extra: str) -> PipelineConfig:
    return load_config(
        PipelineConfig,
        "tiny",
        [
            f"ingest.sources=[{src}]",
            "ingest.text_split=paragraph",
            "quality.gopher_quality.min_doc_words=20",
            "quality.c4.min_num_sentences=1",
            "tokenize.vocab_size=512",
            "pretrain.model.overrides={n_layer: 2, n_embd: 64, n_head: 2, block_size: 64}",
            "pretrain.max_steps=20",
            "pretrain.eval_interval=10",
            "pretrain.batch_size=8",
            "finetune.enabled=false",
            "evaluate.max_tokens=3000",
            "evaluate.gate.min_gain_over_unigram=null",
            "evaluate.gate.max_val_bpb=100",
            *extra,
        ],
        workdir=str(workdir),
    )


@pytest.fixture()
def books(shared_data: Path) -> dict[str, list[str]]:
    return {
        "pride": paragraphs(shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt"),
        "moby": paragraphs(shared_data / "gutenberg" / "pg2701_moby_dick.txt", skip=200),
    }


def corpus_ids(manifest: dict) -> list[str]:
    return pl.concat([pl.read_parquet(p, columns=["id"]) for p in version_parts(manifest)])["id"].to_list()


def assert_consistent(workdir: Path) -> dict:
    """The invariants a refresh must leave, however it got there."""
    latest = read_latest(workdir)
    assert latest is not None
    ids = corpus_ids(latest)
    assert len(ids) == len(set(ids)) == latest["rows"]
    index_files = sorted((workdir / "refresh" / "index").glob("*.parquet"))
    assert [f.stem for f in index_files] == [f"v{n:04d}" for n in range(1, latest["number"] + 1)]
    index = pl.concat([pl.read_parquet(f) for f in index_files])
    assert index.select("band", "key", "id").is_duplicated().sum() == 0
    exact = index.filter(pl.col("band") == EXACT_BAND)["id"].to_list()
    assert sorted(exact) == sorted(ids)  # every kept document indexed exactly once
    ledger = json.loads((workdir / "refresh" / "ledger.json").read_text())
    assert ledger["version"] == latest["version"]
    assert ledger == json.loads(Path(latest["ledger"]).read_text())
    assert not (workdir / "refresh" / "pending.json").exists()
    return latest


def test_refresh_first_nothing_new_then_only_new_files(tmp_path: Path, books: dict[str, list[str]], shared_data: Path) -> None:
    src, work = tmp_path / "src", tmp_path / "w"
    src.mkdir()
    write_paragraphs(src / "pride-1.txt", books["pride"][:220])
    write_paragraphs(src / "pride-2.txt", books["pride"][220:380])
    config = refresh_config(work, src)

    # (1) the first refresh builds v0001 from everything and trains a model from scratch
    first = refresh(config, SETTINGS)
    assert isinstance(first, RefreshResult)
    assert first.version == "v0001" and first.new_files == 2 and first.init_from is None
    v1 = assert_consistent(work)
    assert v1["rows"] == first.new_docs_kept == first.corpus_docs > 100
    assert first.promoted, first.reasons
    promoted = json.loads((work / "promoted.json").read_text())
    assert promoted["model"] == first.model

    # (2) nothing new: no curate, no version (how fast that is belongs to benchmarks)
    again = refresh(config, SETTINGS)
    assert again.message.startswith("nothing new"), again.message
    assert again.version == "v0001" and again.new_files == 0
    assert not (work / "corpus" / "v0002").exists()
    assert len(list((work / "datasets" / "ingest").iterdir())) == 1

    # (3) new files: new documents, an exact and a near duplicate of old documents
    old = pl.concat([pl.read_parquet(p) for p in version_parts(v1)])
    long_docs = old.filter(pl.col("text").str.split(" ").list.len() >= 120).sort("id")
    exact_src, near_src = long_docs.row(0, named=True), long_docs.row(1, named=True)
    words = near_src["text"].split(" ")
    words[len(words) // 2] = "zebra"
    write_paragraphs(src / "pride-dups.txt", [exact_src["text"], " ".join(words)])
    write_paragraphs(src / "moby.txt", books["moby"][:120])
    c4 = [json.loads(line) for line in (shared_data / "web" / "c4_en_sample_olmo.jsonl").read_text().splitlines()]
    (src / "web.jsonl").write_text("".join(json.dumps({"id": f"c4-{i}", "text": d["text"]}) + "\n" for i, d in enumerate(c4)))
    (src / "pride-1.txt").touch()  # a new mtime, the same content: not new

    third = refresh(config, SETTINGS)
    assert third.version == "v0002" and third.new_files == 3, third.message
    v2 = assert_consistent(work)
    ingest = DatasetRef("ingest", "", v2["refresh"]["stages"]["ingest"])
    assert ingest.stats()["files"] == 3  # only the new files were read
    assert {Path(u.split("#")[0]).name for u in ingest.read()["uri"].to_list()} == {"pride-dups.txt", "moby.txt", "web.jsonl"}
    assert v2["rows"] == v1["rows"] + third.new_docs_kept and third.new_docs_kept > 50
    assert third.rejected_previous_version == 2
    new_ds = DatasetRef("dedup_previous", "", v2["datasets"][-1]["path"])
    rejected = pl.concat([pl.read_parquet(p) for p in new_ds.rejected_parts()])
    dups = rejected.filter(pl.col("reason") == REASON_PREVIOUS).sort("uri")
    assert sorted(dups["dup_of"].to_list()) == sorted([exact_src["id"], near_src["id"]])
    assert all("pride-dups.txt" in u for u in dups["uri"].to_list())
    assert not set(corpus_ids(v2)) & set(dups["id"].to_list())
    # old datasets are shared, not copied: v0002 = v0001's parts + the new ones
    assert v2["datasets"][: len(v1["datasets"])] == v1["datasets"]

    # continued pretraining from the promoted model, on new tokens plus replay
    assert third.init_from == str(Path(first.model) / "checkpoints" / "best")
    result = json.loads((Path(third.model) / "result.json").read_text())
    assert result["init_from"] == third.init_from
    mix = json.loads((Path(v2["refresh"]["tokens"]) / "meta.json").read_text())["mix"]
    assert mix["replay_tokens"]["train"] > 0 and mix["new_tokens"]["train"] > 0
    # the promotion decision moved the pointer, or kept it and said why: checked either way
    pointer = json.loads((work / "promoted.json").read_text())
    if third.promoted:
        assert pointer["model"] == third.model and not third.reasons
    else:
        assert pointer["model"] == first.model and third.reasons and "not promoted" in third.message


def test_refresh_killed_before_commit_then_rerun(
    tmp_path: Path, books: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, work = tmp_path / "src", tmp_path / "w"
    src.mkdir()
    write_paragraphs(src / "pride.txt", books["pride"][:300])
    config = refresh_config(work, src)

    # (4) a kill after curate, training and the index file, before the version manifest
    real_write_json = versions.write_json

    def dying(path: Path, value: object) -> None:
        if path.name == "manifest.json" and path.parent.parent.name == "corpus":
            raise SimulatedKill("simulated kill -9 during the commit")
        real_write_json(path, value)

    monkeypatch.setattr(versions, "write_json", dying)
    with pytest.raises(SimulatedKill):
        refresh(config, SETTINGS)
    monkeypatch.setattr(versions, "write_json", real_write_json)
    assert (work / "refresh" / "index" / "v0001.parquet").is_file()  # written, but not committed
    assert not (work / "corpus" / "latest.json").exists() and not (work / "refresh" / "ledger.json").exists()
    assert (work / "refresh" / "pending.json").is_file()
    models_before = sorted((work / "models" / "pretrain").iterdir())

    rerun = refresh(config, SETTINGS)
    assert rerun.version == "v0001", rerun.message
    latest = assert_consistent(work)
    assert sorted((work / "models" / "pretrain").iterdir()) == models_before  # training was a cache hit
    assert len(list((work / "datasets" / "ingest").iterdir())) == 1
    assert latest["rows"] == rerun.new_docs_kept

    # a kill between moving latest.json and rewriting ledger.json: the ledger is repaired, nothing redone
    write_paragraphs(src / "moby.txt", books["moby"][:80])
    real_write_ledger = versions.write_ledger

    def dying_ledger(path: Path, ledger: object) -> None:
        if path == ledger_path(work.resolve()):
            raise SimulatedKill("simulated kill after the commit")
        real_write_ledger(path, ledger)

    monkeypatch.setattr(versions, "write_ledger", dying_ledger)
    with pytest.raises(SimulatedKill):
        refresh(config, SETTINGS)
    monkeypatch.setattr(versions, "write_ledger", real_write_ledger)
    after = refresh(config, SETTINGS)
    assert after.message.startswith("nothing new") and after.version == "v0002", after.message
    v2 = read_latest(work)
    assert_consistent(work)
    assert v2["rows"] > latest["rows"]


# -- logic without the engine --------------------------------------------------------------------


def _docs(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": [r[0] for r in rows], "text": [r[1] for r in rows], "source": "s", "uri": "u", "license": None},
        schema_overrides={"license": pl.String},
    )


def test_apply_previous_dedup_exact_near_and_id(tmp_path: Path, books: dict[str, list[str]]) -> None:
    old = [p for p in books["pride"] if len(p.split()) >= 120][:3]
    params = DedupParams()
    index = tmp_path / "v0001.parquet"
    index_rows(_docs([(f"old-{i}", t) for i, t in enumerate(old)]), params).write_parquet(index)
    words = old[1].split(" ")
    words[len(words) // 2] = "zebra"
    new = _docs([
        ("n-exact", old[0].upper()),  # same normalized text
        ("n-near", " ".join(words)),
        ("old-2", books["moby"][5]),  # a changed document under an old id
        ("n-fresh", books["moby"][6]),
    ])
    out = apply_previous_dedup(new, PreviousDedupParams(**params.model_dump(), index=[str(index)]))
    got = {r["id"]: (r["reason"], r["dup_of"]) for r in out.iter_rows(named=True)}
    assert got == {
        "n-exact": (REASON_PREVIOUS, "old-0"),
        "n-near": (REASON_PREVIOUS, "old-1"),
        "old-2": (REASON_ID, "old-2"),
        "n-fresh": (None, None),
    }
    # without an index nothing is rejected
    none = apply_previous_dedup(new, PreviousDedupParams(**params.model_dump()))
    assert none["reason"].null_count() == new.height

    # old-0 and old-1 withdrawn: their text is free again, their ids stay taken (never reused)
    record = tmp_path / "withdrawn.parquet"
    pl.DataFrame({"id": ["old-0", "old-1"]}).write_parquet(record)
    again = _docs([("n-exact", old[0].upper()), ("n-near", " ".join(words)), ("old-0", books["moby"][7])])
    out = apply_previous_dedup(again, PreviousDedupParams(**params.model_dump(), index=[str(index)], withdrawn=str(record)))
    got = {r["id"]: (r["reason"], r["dup_of"]) for r in out.iter_rows(named=True)}
    assert got == {"n-exact": (None, None), "n-near": (None, None), "old-0": (REASON_ID, "old-0")}


def test_settings_and_replay_budget() -> None:
    s = RefreshSettings()
    assert (s.cron, s.timezone, s.replay_fraction) == ("0 2 * * *", "UTC", 0.5)
    assert s.schedule().cron == "0 2 * * *"
    with pytest.raises(ValueError, match="timezone"):
        RefreshSettings(timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="cron"):
        RefreshSettings(cron="every night")
    assert replay_budget(1000, 0.5) == 1000 and replay_budget(900, 0.25) == 300 and replay_budget(10, 0.0) == 0


def hand_tokens(path: Path, splits: dict[str, list[list[int]]], prefix: str) -> tuple[TokenDatasetRef, dict[str, list[int]]]:
    """A token dataset written by hand: each split's documents back to back, indexed in docs.parquet."""
    path.mkdir(parents=True)
    rows, by_id = [], {}
    for split, documents in splits.items():
        flat = [t for d in documents for t in d]
        (path / f"{split}.bin").write_bytes(np.asarray(flat, dtype="<u2").tobytes())
        offset = 0
        for i, d in enumerate(documents):
            doc_id = f"{prefix}-{split}-{i}"
            rows.append({"id": doc_id, "split": split, "offset": offset, "tokens": len(d), "bytes": 4 * len(d),
                         "source": "s", "lang": "en", "repeats": 1})
            by_id[doc_id] = d
            offset += len(d)
    pl.DataFrame(rows).write_parquet(path / "docs.parquet")
    (path / "tokenizer.json").write_text("{}")
    count = {s: sum(map(len, ds)) for s, ds in splits.items()}
    meta = {"format": "lmwright-tokens-1", "dtype": "uint16", "vocab_size": 100,
            "files": {"train": "train.bin", "val": "val.bin", "tokenizer": "tokenizer.json", "docs": "docs.parquet"},
            "tokens": count, "docs": {s: len(ds) for s, ds in splits.items()},
            "bytes": {s: 4 * n for s, n in count.items()}, "bytes_per_token": {s: 4.0 for s in splits}}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "manifest.json").write_text("{}")
    return TokenDatasetRef.at(path), by_id


def test_mix_writes_the_new_split_whole_then_each_replayed_document(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    doc = lambda n: rng.integers(0, 100, n).tolist()  # noqa: E731
    new, new_docs = hand_tokens(tmp_path / "new", {"train": [doc(7), doc(5)], "val": []}, "new")
    old, old_docs = hand_tokens(tmp_path / "old", {"train": [doc(n) for n in (3, 9, 4, 6, 8)],
                                                   "val": [doc(n) for n in (5, 6, 7)]}, "old")
    settings = RefreshSettings(replay_fraction=0.5, min_val_tokens=0, carbon_window=None)
    mixed = run_mix(tmp_path / "w", new, [old], settings, 4, ValidationSettings())

    train, val = mixed.tokens("train"), mixed.tokens("val")
    assert train[:12].tolist() == new_docs["new-train-0"] + new_docs["new-train-1"]  # the new split first, whole
    docs = mixed.docs()
    replayed = docs.filter(pl.col("origin") == 1)
    assert replayed.filter(pl.col("split") == "train").height and replayed.filter(pl.col("split") == "val").height
    for r in docs.iter_rows(named=True):  # every document's tokens sit where the index says
        tokens = (train if r["split"] == "train" else val)[r["offset"] : r["offset"] + r["tokens"]].tolist()
        assert tokens == {**new_docs, **old_docs}[r["id"]], r["id"]
    assert len(train) == docs.filter(pl.col("split") == "train")["tokens"].sum() == mixed.meta()["tokens"]["train"]
    assert len(val) == docs.filter(pl.col("split") == "val")["tokens"].sum() >= 2 * (4 + 1)  # topped up to min_val
    manifest = mixed.manifest()
    assert manifest["stage"] == "refresh_mix" and manifest["tokens"] == mixed.meta()["tokens"]
    assert set(manifest["files"]) == {"train.bin", "val.bin", "tokenizer.json", "docs.parquet", "meta.json"}
