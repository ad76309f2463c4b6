"""decontaminate: training documents that share an n-gram with an evaluation set leave (or are flagged) before tokenizing.

As the GPT-3 and Pile reports did: text is lowercased and split into words (punctuation
dropped), and a training document is contaminated when any of its n-word sequences (n = 13 by
default) also occurs in an evaluation set. The evaluation sets are every one in use: the
held-out split (the documents tokenize will hold out, chosen by the same id hash) and the
documents of each local benchmark task. Held-out documents themselves are never removed;
a contaminated training document is rejected with reason ``decontam_<set>`` (or kept with
a ``contaminated_with`` column when ``action`` is ``flag``), and the report counts both.

The index of evaluation n-grams is small (evaluation sets are) and is written once, as a sorted
array of 64-bit hashes, before the shards are mapped; shards read it by path.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from lmwright.data_quality import ValidationSettings
from lmwright.tasks.core.dataset import DatasetRef, fingerprint
from lmwright.tasks.core.energy import EnergySettings
from lmwright.tasks.core.files import atomic_write_array, write_json
from lmwright.tasks.core.stage import ShardStage, run_shard_stage
from lmwright.tasks.train.params import DecontaminateParams, TaskParams
from lmwright.tasks.train.token_dataset import assign_split

VERSION = "1"
HELDOUT = "heldout"
WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit hashes of every n-word sequence of ``text`` (deterministic across processes, unlike ``hash``)."""
    w = words(text)
    grams = (" ".join(w[i : i + n]) for i in range(len(w) - n + 1))
    return np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams], dtype=np.uint64)


class ShardParams(BaseModel):
    """What each shard needs: the settings, the split it must agree with, and where the index is."""

    model_config = ConfigDict(extra="forbid")

    n: int
    action: str
    val_fraction: float
    split_seed: int
    index: str  # directory with ngrams.npy (sorted hashes) and sets.npy (the set of each hash), sets.json (names)
    index_fingerprint: str  # the index's content: part of the stage's fingerprint


def heldout_documents(corpus: DatasetRef, val_fraction: float, seed: int) -> Iterable[str]:
    """The text of every document tokenize will hold out (hashed by parent_id like it, so chunks of a book go together)."""
    for part in corpus.parts():
        docs = pl.read_parquet(part, columns=None)
        key = docs["parent_id"].fill_null(docs["id"]) if "parent_id" in docs.columns else docs["id"]
        splits = assign_split(key.to_list(), val_fraction, seed)
        for text, split in zip(docs["text"].to_list(), splits):
            if split == "val" and text:
                yield text


def build_index(out: Path, sets: dict[str, Iterable[str]], n: int) -> dict[str, Any]:
    """Write the evaluation n-gram index; return per set its documents, its n-grams, and documents too short to check."""
    hashes, labels, summary = [], [], {}
    for k, (name, docs) in enumerate(sets.items()):
        count = short = 0
        mine = []
        for text in docs:
            count += 1
            h = ngram_hashes(text, n)
            short += h.size == 0
            mine.append(h)
        unique = np.unique(np.concatenate(mine)) if mine else np.zeros(0, np.uint64)
        hashes.append(unique)
        labels.append(np.full(unique.size, k, dtype=np.int32))
        summary[name] = {"documents": count, "ngrams": int(unique.size), "too_short": int(short)}
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    order = np.argsort(all_hashes, kind="stable")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_array(out / "ngrams.npy", all_hashes[order])
    atomic_write_array(out / "sets.npy", (np.concatenate(labels) if labels else np.zeros(0, np.int32))[order])
    write_json(out / "sets.json", {"names": list(sets), "n": n, "summary": summary})
    return summary


def _load_index(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    d = Path(path)
    return np.load(d / "ngrams.npy"), np.load(d / "sets.npy"), json.loads((d / "sets.json").read_text())["names"]


def contaminated_with(text: str, n: int, index: np.ndarray, labels: np.ndarray, names: list[str]) -> str | None:
    """The first evaluation set (in index order: held-out, then tasks) sharing an n-gram with ``text``."""
    h = ngram_hashes(text, n)
    if h.size == 0 or index.size == 0:
        return None
    pos = np.searchsorted(index, h)
    pos[pos == index.size] = 0
    hit = index[pos] == h
    return names[int(labels[pos[hit]].min())] if hit.any() else None


def decontaminate(docs: pl.DataFrame, params: ShardParams) -> pl.DataFrame:
    """Keep held-out documents; reject (or flag) training documents that share an n-gram with an evaluation set."""
    index, labels, names = _load_index(params.index)
    key = docs["parent_id"].fill_null(docs["id"]) if "parent_id" in docs.columns else docs["id"]
    splits = assign_split(key.to_list(), params.val_fraction, params.split_seed)
    found = [None if split == "val" else contaminated_with(text or "", params.n, index, labels, names)
             for text, split in zip(docs["text"].to_list(), splits)]
    reasons = [None if f is None or params.action == "flag" else f"decontam_{f}" for f in found]
    return docs.with_columns(
        pl.Series("contaminated_with", found, dtype=pl.String),
        pl.Series("reason", reasons, dtype=pl.String),
        pl.Series("detail", [None if f is None else f"shares a {params.n}-gram with {f}" for f in found], dtype=pl.String),
    )


DECONTAMINATE_STAGE = ShardStage("decontaminate", VERSION, decontaminate)


def evaluation_sets(corpus: DatasetRef, params: DecontaminateParams, val_fraction: float, seed: int,
                    tasks: TaskParams) -> tuple[dict[str, Iterable[str]], list[str]]:
    """name -> documents of every evaluation set in use, and the tasks whose documents are not local (not checked)."""
    from lmwright.tasks.train.harness import task_documents

    sets: dict[str, Iterable[str]] = {}
    if val_fraction > 0:
        sets[HELDOUT] = list(heldout_documents(corpus, val_fraction, seed))
    local = task_documents(tasks.include_path) if tasks.include_path else {}
    for name in tasks.names:
        if name in local:
            sets[name] = local[name]
    return sets, [name for name in tasks.names if name not in local]


def run_decontaminate(
    workdir: str | Path,
    corpus: DatasetRef,
    params: DecontaminateParams,
    val_fraction: float,
    split_seed: int,
    tasks: TaskParams,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> tuple[DatasetRef, dict[str, Any]]:
    """The corpus without contaminated training documents, and the report the cards show."""
    sets, not_local = evaluation_sets(corpus, params, val_fraction, split_seed, tasks)
    sets = {name: list(docs) for name, docs in sets.items()}
    content = fingerprint("decontaminate-index", VERSION, {"n": params.n}, [
        hashlib.sha256("\x00".join(docs).encode()).hexdigest()[:16] + name for name, docs in sets.items()])
    index_dir = Path(workdir) / "datasets" / "decontaminate-index" / content
    if not (index_dir / "sets.json").is_file():
        build_index(index_dir, sets, params.n)
    summary = json.loads((index_dir / "sets.json").read_text())["summary"]
    shard = ShardParams(n=params.n, action=params.action, val_fraction=val_fraction, split_seed=split_seed,
                        index=str(index_dir), index_fingerprint=content)
    clean = run_shard_stage(workdir, DECONTAMINATE_STAGE, corpus, shard, validation, energy)
    rejected = clean.rejected_parts()
    marked = clean.scan() if params.action == "flag" else pl.scan_parquet([str(p) for p in rejected]) if rejected else None
    by_set = _count_sets(marked) if marked is not None else {}
    report = {
        "n": params.n,
        "action": params.action,
        "sets": {name: {**s, "contaminated": by_set.get(name, 0)} for name, s in summary.items()},
        "not_checked": not_local,
        "dataset": clean.path,
    }
    return clean, report


def _count_sets(frame: pl.LazyFrame) -> dict[str, int]:
    got = frame.filter(pl.col("contaminated_with").is_not_null()).group_by("contaminated_with").len().collect()
    return {str(k): int(v) for k, v in zip(got["contaminated_with"], got["len"])}


def render_contamination_markdown(report: dict[str, Any], heading: str = "##") -> str:
    """The contamination section of the data card and the model card."""
    verb = "removed" if report["action"] == "drop" else "flagged (kept, column contaminated_with)"
    lines = [f"{heading} Contamination", "",
             f"Training documents sharing any {report['n']}-word sequence (lowercased, punctuation dropped) with an "
             f"evaluation set were {verb} before tokenization, as the GPT-3 and Pile reports did. Held-out documents stay.", "",
             "| evaluation set | its documents | too short to check | training documents overlapping |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {s['documents']:,} | {s['too_short']:,} | {s['contaminated']:,} |" for name, s in report["sets"].items()]
    if report.get("not_checked"):
        lines += ["", f"Not checked (documents not local): {', '.join(report['not_checked'])}."]
    return "\n".join(lines) + "\n"
