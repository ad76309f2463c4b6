"""The dataset-on-disk contract shared by every stage.

A stage writes ``<workdir>/datasets/<stage>/<fingerprint>/``::

    part-*.parquet            kept documents (zstd)
    rejected/part-*.parquet   dropped documents with ``reason`` and ``stage``
    stats/part-*.json         per-shard counts; each is written last for its shard
    stats.json                counts in/kept/rejected by reason, bytes, seconds
    manifest.json             written LAST and atomically; without it the
                              directory is garbage from a crash and never read
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl
from pydantic import BaseModel

from lmwright.tasks.core.energy import merge_energy
from lmwright.tasks.core.ref import Ref
from lmwright.tasks.core.files import atomic_write_parquet, atomic_write_text, write_json  # noqa: F401 - part of the dataset API

MANIFEST = "manifest.json"
STATS = "stats.json"
COMPRESSION = "zstd"

# Columns every text stage reads and writes; stages add columns, never drop these.
DOC_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "text": pl.String(),
    "source": pl.String(),
    "uri": pl.String(),
    "license": pl.String(),
    "url": pl.String(),  # the page a crawled document came from, when known
}
REJECT_COLUMNS = ("reason", "stage", "detail")


class IncompleteDatasetError(RuntimeError):
    """A dataset directory without a manifest: a crash left it half-written."""


class DatasetRef(Ref):
    """A finished dataset of documents: its shards, rejected shards, stats and manifest."""

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.dir)

    def parts(self) -> list[Path]:
        """The kept shards, in manifest order (never a directory listing)."""
        return [self.dir / s["path"] for s in self.manifest()["shards"]]

    def rejected_parts(self) -> list[Path]:
        return [self.dir / p for p in self.manifest()["rejected_shards"]]

    def stats(self) -> dict[str, Any]:
        return json.loads((self.dir / STATS).read_text())

    def scan(self) -> pl.LazyFrame:
        parts = self.parts()
        if not parts:
            return pl.LazyFrame(schema=_schema_from_manifest(self.manifest()))
        return pl.scan_parquet([str(p) for p in parts])

    def read(self) -> pl.DataFrame:
        """The whole kept dataset in memory: for tests and small corpora only."""
        return self.scan().collect()


def _schema_from_manifest(manifest: Mapping[str, Any]) -> dict[str, pl.DataType]:
    return {name: _dtype(t) for name, t in manifest["schema"].items()}


def _dtype(name: str) -> pl.DataType:
    return getattr(pl, name)() if hasattr(pl, name) else pl.String()


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, pydantic models dumped, paths as strings."""

    def default(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if isinstance(obj, (Path, os.PathLike)):
            return os.fspath(obj)
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        if isinstance(obj, Ref):
            return obj.fingerprint
        raise TypeError(f"cannot fingerprint {type(obj).__name__}")

    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


def fingerprint(stage: str, version: str, params: Any, inputs: Sequence[str] = ()) -> str:
    """hash(input fingerprints, stage name, canonical params, stage code version)."""
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": list(inputs)})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise IncompleteDatasetError(
            f"{path} has no {MANIFEST}: it was left half-written (a crash or a kill) and is not read; "
            "rerun the flow to rebuild it"
        ) from None


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Write a shard atomically (tmp + rename), so a killed writer leaves no half shard."""
    atomic_write_parquet(path, df, compression=COMPRESSION, statistics=False)






@dataclass
class ShardStats:
    """Counts for one shard of one stage; the shared machinery fills them, filters never do."""

    shard: str
    docs_in: int = 0
    kept: int = 0
    rejected: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    energy: dict[str, Any] | None = None  # duration, kWh, CO2 of this shard's work (tasks/core/energy.py)
    counts: dict[str, int] = field(default_factory=dict)  # what a stage changed in kept text (ShardStage.count)

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "in": self.docs_in,
            "kept": self.kept,
            "rejected": self.rejected,
            "bytes_in": self.bytes_in,
            "bytes_kept": self.bytes_kept,
            "seconds": round(self.seconds, 4),
            "reasons": dict(sorted(self.reasons.items())),
            "skipped_files": self.skipped_files,
            "energy": self.energy,
            "counts": dict(sorted(self.counts.items())),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShardStats":
        return cls(
            shard=d["shard"],
            docs_in=d["in"],
            kept=d["kept"],
            rejected=d["rejected"],
            bytes_in=d["bytes_in"],
            bytes_kept=d["bytes_kept"],
            seconds=d["seconds"],
            reasons=dict(d["reasons"]),
            skipped_files=list(d.get("skipped_files", [])),
            energy=d.get("energy"),
            counts=dict(d.get("counts", {})),
        )


def text_bytes(df: pl.DataFrame) -> int:
    if df.height == 0:
        return 0
    return int(df["text"].str.len_bytes().sum() or 0)


def split_decisions(docs: pl.DataFrame, stage: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a stage's output on its ``reason`` column: null keeps, a string rejects."""
    if "reason" not in docs.columns:
        raise ValueError(f"stage {stage!r} returned no 'reason' column")
    if "detail" not in docs.columns:
        docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias("detail"))
    kept = docs.filter(pl.col("reason").is_null()).drop("reason", "detail")
    rejected = docs.filter(pl.col("reason").is_not_null()).with_columns(pl.lit(stage).alias("stage"))
    return kept, rejected


def write_shard(
    out_dir: Path,
    shard: str,
    stage: str,
    docs_in: int,
    bytes_in: int,
    kept: pl.DataFrame,
    rejected: pl.DataFrame,
    seconds: float,
    skipped_files: list[dict[str, str]] | None = None,
    energy: dict[str, Any] | None = None,
    counts: dict[str, int] | None = None,
) -> ShardStats:
    """Write one shard's kept and rejected documents; its stats are the caller's to record (a step's marker)."""
    stats = ShardStats(
        shard=shard,
        docs_in=docs_in,
        kept=kept.height,
        rejected=rejected.height,
        bytes_in=bytes_in,
        bytes_kept=text_bytes(kept),
        seconds=seconds,
        reasons=dict(Counter(rejected["reason"].to_list())) if rejected.height else {},
        skipped_files=skipped_files or [],
        energy=energy,
        counts=counts or {},
    )
    if stats.docs_in != stats.kept + stats.rejected:
        raise AssertionError(
            f"{stage} shard {shard}: {stats.docs_in} in != {stats.kept} kept + {stats.rejected} rejected"
        )
    write_parquet(kept, out_dir / f"{shard}.parquet")
    if rejected.height:
        write_parquet(rejected, out_dir / "rejected" / f"{shard}.parquet")
    return stats


def shard_stats_path(out_dir: Path, shard: str) -> Path:
    return out_dir / "stats" / f"{shard}.json"


def shard_name(path: Path | str) -> str:
    name = Path(path).name
    return name.removesuffix(".parquet")




def finalize_dataset(
    out_dir: Path,
    stage: str,
    fp: str,
    shards: Sequence[ShardStats],
    extra_stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate shard stats into stats.json; returns it. The manifest is written separately, last."""
    reasons: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for s in shards:
        reasons.update(s.reasons)
        counts.update(s.counts)
    stats = {
        "stage": stage,
        "fingerprint": fp,
        "in": sum(s.docs_in for s in shards),
        "kept": sum(s.kept for s in shards),
        "rejected": sum(s.rejected for s in shards),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "counts": dict(sorted(counts.items())),
        "bytes_in": sum(s.bytes_in for s in shards),
        "bytes_kept": sum(s.bytes_kept for s in shards),
        "seconds": round(sum(s.seconds for s in shards), 4),
        "shards": len(shards),
        "skipped_files": [f for s in shards for f in s.skipped_files],
        "energy": merge_energy([s.energy for s in shards if s.energy]) if any(s.energy for s in shards) else None,
        **(extra_stats or {}),
    }
    write_json(out_dir / STATS, stats)
    return stats


def manifest_of(
    out_dir: Path,
    stage: str,
    fp: str,
    params: Any,
    version: str,
    inputs: Sequence[DatasetRef],
    shards: Sequence[ShardStats],
) -> dict[str, Any]:
    """What manifest.json says of a dataset: shards with row counts and hashes, schema, params, inputs."""
    shard_entries = []
    schema: dict[str, str] = {}
    for s in sorted(shards, key=lambda s: s.shard):
        path = out_dir / f"{s.shard}.parquet"
        if not schema:
            schema = {k: type(v).__name__ for k, v in pl.read_parquet_schema(path).items()}
        shard_entries.append({"path": path.name, "rows": s.kept, "sha256": file_sha256(path)})
    rejected = sorted(p.name for p in (out_dir / "rejected").glob("*.parquet")) if (out_dir / "rejected").is_dir() else []
    manifest = {
        "stage": stage,
        "fingerprint": fp,
        "version": version,
        "params": json.loads(canonical_json(params)),
        "inputs": [{"stage": r.stage, "fingerprint": r.fingerprint, "path": r.path} for r in inputs],
        "schema": schema,
        "rows": sum(s.kept for s in shards),
        "shards": shard_entries,
        "rejected_shards": [f"rejected/{n}" for n in rejected],
    }
    return manifest


def write_manifest(
    out_dir: Path,
    stage: str,
    fp: str,
    params: Any,
    version: str,
    inputs: Sequence[DatasetRef],
    shards: Sequence[ShardStats],
) -> DatasetRef:
    """Write manifest.json last and atomically: from now on the dataset exists (a stage's
    ``finalize_stage`` does it through ``stage_step``; this is for datasets made outside a flow)."""
    write_json(out_dir / MANIFEST, manifest_of(out_dir, stage, fp, params, version, inputs, shards))
    return DatasetRef(stage=stage, fingerprint=fp, path=str(out_dir))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- text dropped by retention (lmwright.tasks.curate.retention writes the marker) ---

RETENTION_MARKER = "retention.json"


class TextDroppedError(RuntimeError):
    """A run needs the text of a dataset whose text retention dropped."""

    def __init__(self, dataset: DatasetRef) -> None:
        super().__init__(
            f"{dataset.path}: the text of this {dataset.stage} dataset was dropped "
            "(retention.intermediate_text: drop); it has to be rebuilt from the sources"
        )
        self.dataset = dataset


def retention_of(dataset: DatasetRef | str | Path) -> dict[str, Any]:
    """What retention did to a dataset: {} when nothing (its text is all there)."""
    path = Path(dataset.path if isinstance(dataset, DatasetRef) else dataset) / RETENTION_MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def text_dropped(dataset: DatasetRef | str | Path) -> bool:
    return retention_of(dataset).get("kept_text") == "dropped"


def require_text(*datasets: DatasetRef) -> None:
    """Raise TextDroppedError if a dataset's kept documents lost their text (naming the last such
    one in pipeline order, so forgetting it and what is upstream of it frees them all)."""
    dropped = [d for d in datasets if text_dropped(d)]
    if dropped:
        raise TextDroppedError(dropped[-1])


def forget_text_dropped(dataset: DatasetRef) -> list[str]:
    """Remove ``dataset`` and every dataset upstream of it whose text was dropped (their manifests
    say which); they are rebuilt by the next run of their stages. Returns the removed paths."""
    removed: list[str] = []
    todo = [Path(dataset.path)]
    while todo:
        path = todo.pop()
        if not text_dropped(path):
            continue
        try:
            todo += [Path(i["path"]) for i in json.loads((path / "manifest.json").read_text())["inputs"]]
        except (FileNotFoundError, KeyError):
            pass
        shutil.rmtree(path)
        removed.append(str(path))
    return removed
