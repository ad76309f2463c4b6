"""Decontamination: training documents sharing a 13-gram with an evaluation set are found, measured on planted overlaps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
from prefect import flow

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, write_manifest, write_shard
from lmwright.tasks.train.decontaminate import ShardParams, build_index, decontaminate, run_decontaminate, words
from lmwright.tasks.train.params import DecontaminateParams, TaskParams
from lmwright.tasks.train.token_dataset import assign_split


def paragraphs(shared_data: Path) -> list[str]:
    """Paragraphs of a real book (Pride and Prejudice, public domain): hundreds of documents of real prose."""
    text = (shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt").read_text()
    novel = text[text.index("It is a truth universally acknowledged"):]  # after the preface, which quotes the novel
    return [" ".join(p.split()) for p in novel.split("\n\n") if len(p.split()) >= 40][:400]


def plant(doc: str, source: str, n: int, rng: random.Random) -> str:
    """``doc`` with ``n`` consecutive words of ``source`` inserted in the middle, re-cased and re-punctuated."""
    w = words(source)  # words as decontamination counts them ("Elizabeth's" is two)
    start = rng.randrange(0, len(w) - n)
    span = " ".join(w[start : start + n]).upper() + "!"  # case and punctuation must not hide an overlap
    mid = doc.index(" ", len(doc) // 2)  # between two words; "zqx" keeps the neighbours from extending the span by chance
    return f"{doc[:mid]} zqx {span} zqx{doc[mid:]}"


def test_planted_overlaps_are_found_and_nothing_else(shared_data: Path, tmp_path: Path) -> None:
    texts = [t for t in paragraphs(shared_data) if len(t.split()) >= 40]
    rng = random.Random(0)
    evaluation, training = texts[:10], texts[10:]
    planted = {i: plant(training[i], evaluation[i % 10], 13, rng) for i in range(0, 10)}  # a 13-word overlap
    near = {i: plant(training[i], evaluation[i % 10], 12, rng) for i in range(10, 20)}  # one word short of n
    docs = [planted.get(i) or near.get(i) or t for i, t in enumerate(training)]
    build_index(tmp_path / "index", {"task": evaluation}, n=13)
    params = ShardParams(n=13, action="drop", val_fraction=0.0, split_seed=0, index=str(tmp_path / "index"), index_fingerprint="x")
    frame = pl.DataFrame({"id": [f"d{i}" for i in range(len(docs))], "text": docs})
    found = decontaminate(frame, params)
    flagged = {int(i[1:]) for i in found.filter(pl.col("reason").is_not_null())["id"]}
    assert flagged == set(planted), f"recall {len(flagged & set(planted))}/{len(planted)}, false positives {sorted(flagged - set(planted))}"
    assert set(found["reason"].drop_nulls()) == {"decontam_task"}
    assert found.filter(pl.col("reason").is_not_null())["detail"][0] == "shares a 13-gram with task"


def test_n_is_configurable(shared_data: Path, tmp_path: Path) -> None:
    texts = [t for t in paragraphs(shared_data) if len(t.split()) >= 40][:12]
    doc = plant(texts[5], texts[0], 8, random.Random(1))
    build_index(tmp_path / "index", {"task": texts[:1]}, n=8)
    params = ShardParams(n=8, action="flag", val_fraction=0.0, split_seed=0, index=str(tmp_path / "index"), index_fingerprint="x")
    found = decontaminate(pl.DataFrame({"id": ["a", "b"], "text": [doc, texts[6]]}), params)
    assert found["contaminated_with"].to_list() == ["task", None] and found["reason"].to_list() == [None, None]  # flag keeps


@pytest.mark.usefixtures("prefect_harness")
def test_the_stage_drops_training_documents_that_quote_the_heldout_split_or_a_task(shared_data: Path, tmp_path: Path) -> None:
    texts = [t for t in paragraphs(shared_data) if len(t.split()) >= 40][:60]
    ids = [f"doc-{i}" for i in range(len(texts))]
    splits = assign_split(ids, 0.2, 0)
    held = [t for t, s in zip(texts, splits) if s == "val"]
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "t.jsonl").write_text(json.dumps({"question": texts[train_idx[0]][:400], "answer": "yes"}) + "\n")
    (task_dir / "t.yaml").write_text("task: planted_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: t.jsonl\n")
    texts[train_idx[1]] = plant(texts[train_idx[1]], held[0], 13, random.Random(2))  # quotes a held-out document
    docs = pl.DataFrame({"id": ids, "text": texts, "source": "book", "uri": ids, "license": None}, schema_overrides={"license": pl.String})
    stats = write_shard(tmp_path / "corpus", "part-00000", "dedup", docs.height, 0, docs, docs.head(0), 0.0)
    write_manifest(tmp_path / "corpus", "dedup", "c0", {}, "1", [], [stats])
    corpus = DatasetRef("dedup", "c0", str(tmp_path / "corpus"))
    tasks = TaskParams(names=["planted_task", "hellaswag"], include_path=str(task_dir))

    @flow
    def decontaminate_flow() -> tuple[DatasetRef, dict]:
        return run_decontaminate(str(tmp_path / "w"), corpus, DecontaminateParams(), 0.2, 0, tasks, ValidationSettings())

    clean, report = decontaminate_flow()
    rejected = pl.read_parquet(clean.rejected_parts()).sort("reason")
    assert rejected["id"].to_list() == [ids[train_idx[1]], ids[train_idx[0]]]
    assert rejected["reason"].to_list() == ["decontam_heldout", "decontam_planted_task"]
    assert report["sets"]["heldout"]["documents"] == len(held) and report["sets"]["heldout"]["contaminated"] == 1
    assert report["sets"]["planted_task"]["contaminated"] == 1 and report["not_checked"] == ["hellaswag"]
    kept = clean.read()["id"].to_list()
    assert all(i in kept for i, s in zip(ids, splits) if s == "val")  # held-out documents are never removed
    assert len(words("Hello, WORLD!")) == 2
