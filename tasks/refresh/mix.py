"""The replay mix: the tokens continued pretraining trains on.

A refresh's new tokens plus a replay sample of earlier versions' tokens (against forgetting):
whole documents chosen by a hash of their id, in the same split they had, so no document is in
both. Stage ``refresh_mix`` writes a token dataset like tokenize's (train.bin, val.bin,
docs.parquet, meta.json with a ``mix`` section, manifest last) through the same writers
(tasks/train/pack.py's ``write_ranges`` and ``token_manifest``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import get_run_logger
from pydantic import BaseModel

from lmwright.data_quality import ValidationSettings, validate_summary
from lmwright.data_quality.tokens import mix_suite
from lmwright.tasks.core.dataset import write_parquet
from lmwright.tasks.core.files import atomic_copy, write_json
from lmwright.tasks.core.hashing import unit_hash
from lmwright.tasks.core.stage import StageWork, plan_stage, stage_step, stage_task
from lmwright.tasks.refresh.settings import RefreshSettings
from lmwright.tasks.train.pack import token_manifest, write_ranges
from lmwright.tasks.train.token_dataset import DOCS_FILE, META_FILE, TOKENIZER_FILE, TokenDatasetRef, token_summary

VERSION = "1"
MIX_STAGE = "refresh_mix"


class MixParams(BaseModel):
    """How new token arrays and a replay sample of old ones become one training set."""

    replay_fraction: float
    seed: int
    min_val_tokens: int


def replay_budget(new_tokens: int, fraction: float) -> int:
    return int(round(new_tokens * fraction / (1.0 - fraction))) if fraction > 0 else 0


def _sample(pool: pl.DataFrame, budget: int, salt: str) -> pl.DataFrame:
    """Whole documents chosen by id hash until ``budget`` tokens (deterministic)."""
    if budget <= 0 or not pool.height:
        return pool.head(0)
    ranked = pool.with_columns(
        pl.Series("_h", [unit_hash(salt, i) for i in pool["id"].to_list()], dtype=pl.Float64)
    ).sort("_h")
    before = ranked["tokens"].cum_sum() - ranked["tokens"]
    return ranked.filter(before < budget).drop("_h")


def mixed_tokens(work: StageWork) -> TokenDatasetRef:
    return TokenDatasetRef.at(work.out_dir)


@stage_task(task_run_name="refresh-mix")
@stage_step(read=mixed_tokens, metered=False)
def mix_tokens(
    work: StageWork,
    new: TokenDatasetRef,
    old: list[TokenDatasetRef],
    params: MixParams,
    min_val: int,
    validation: ValidationSettings,
) -> dict[str, Any]:
    """train.bin/val.bin = new tokens + a replay sample of old ones (whole documents, same split); the manifest is the marker."""
    out = Path(work.out_dir)
    start = time.perf_counter()
    meta = new.meta()
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    for r in old:
        if r.meta()["dtype"] != meta["dtype"] or r.meta()["vocab_size"] != meta["vocab_size"]:
            raise ValueError(f"replay tokens {r.path} do not match the new tokens' vocabulary")
    # Replay candidates: old documents present in their .bin (a mixture may have left some out), one copy each.
    pools = [packed_docs(r).with_columns(pl.lit(k + 1).alias("origin")) for k, r in enumerate(old)]
    pool = pl.concat(pools, how="diagonal_relaxed") if pools else None
    salt = f"replay:{params.seed}:{new.fingerprint}"
    new_val = meta["tokens"]["val"]
    budgets = {
        "train": replay_budget(meta["tokens"]["train"], params.replay_fraction),
        "val": max(replay_budget(new_val, params.replay_fraction), max(params.min_val_tokens, min_val) - new_val),
    }
    new_docs = new.docs().with_columns(pl.lit(0).alias("origin"))
    index: list[pl.DataFrame] = []
    replayed: dict[str, pl.DataFrame] = {}
    for split in ("train", "val"):
        chosen = pool.filter(pl.col("split") == split) if pool is not None else None
        replay = _sample(chosen, budgets[split], f"{salt}:{split}") if chosen is not None else None
        replay = replay.sort("origin", "offset") if replay is not None else None
        # the new split exactly as tokenize packed it (mixture repeats included), then the replay documents
        base = int(meta["tokens"][split])
        write_ranges(out / f"{split}.bin", _split_ranges(base, replay), _split_arrays(new, old, split), dtype)
        if replay is not None and replay.height:
            replay = replay.with_columns(
                (base + pl.col("tokens").cum_sum() - pl.col("tokens")).alias("offset"), pl.lit(1).alias("repeats")
            )
            replayed[split] = replay
        mine = new_docs.filter(pl.col("split") == split)
        index += [mine] + ([replayed[split]] if split in replayed else [])
    docs = pl.concat(index, how="diagonal_relaxed")
    write_parquet(docs, out / DOCS_FILE)
    atomic_copy(new.dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    mixed_meta = json.loads(json.dumps(meta))
    replay_tokens = {s: int(replayed[s]["tokens"].sum()) if s in replayed else 0 for s in ("train", "val")}
    for split in ("train", "val"):
        extra = replayed.get(split)
        mixed_meta["tokens"][split] = int(meta["tokens"][split]) + replay_tokens[split]
        mixed_meta["docs"][split] = int(meta["docs"][split]) + (extra.height if extra is not None else 0)
        mixed_meta["bytes"][split] = int(meta["bytes"][split]) + (int(extra["bytes"].sum()) if extra is not None else 0)
        t = mixed_meta["tokens"][split]
        mixed_meta["bytes_per_token"][split] = round(mixed_meta["bytes"][split] / t, 6) if t else None
    mix_info = {
        "new": new.path,
        "replay_from": [r.path for r in old],
        "replay_fraction": params.replay_fraction,
        "replay_tokens": replay_tokens,
        "new_tokens": {s: int(meta["tokens"][s]) for s in ("train", "val")},
    }
    mixed_meta["mix"] = mix_info
    write_json(out / META_FILE, mixed_meta)
    validate_mix(out, validation)
    write_json(out / "stats.json", {"stage": MIX_STAGE, "fingerprint": work.fingerprint, **mix_info,
                                    "seconds": round(time.perf_counter() - start, 4)})
    get_run_logger().info(
        "mix: %d new + %d replay train tokens, %d new + %d replay val tokens",
        mix_info["new_tokens"]["train"], mix_info["replay_tokens"]["train"],
        mix_info["new_tokens"]["val"], mix_info["replay_tokens"]["val"],
    )
    inputs = [{"path": r.path, "fingerprint": r.fingerprint} for r in [new, *old]]
    return token_manifest(out, MIX_STAGE, work.fingerprint, VERSION, params, inputs, mixed_meta)


def packed_docs(ref: TokenDatasetRef) -> pl.DataFrame:
    """The documents whose tokens are in the .bin files (a mixture may have left some out), one row each."""
    docs = ref.docs()
    if "repeats" in docs.columns:
        docs = docs.filter(pl.col("repeats") > 0)
    return docs.filter(pl.col("offset").is_not_null())


def _split_arrays(new: TokenDatasetRef, old: list[TokenDatasetRef], split: str) -> list[Path]:
    """One split's arrays by origin: 0 the new tokens, k the k-th replay source."""
    return [r.dir / r.meta()["files"][split] for r in (new, *old)]


def _split_ranges(new_tokens: int, replay: pl.DataFrame | None) -> pl.DataFrame:
    """The token ranges of one mixed split, in order (``write_ranges`` rows: shard = origin, local =
    offset, tokens): the new split whole, then each replay document's range."""
    parts = [pl.DataFrame({"shard": [0], "local": [0], "tokens": [new_tokens]})] if new_tokens else []
    if replay is not None and replay.height:
        parts.append(replay.select(pl.col("origin").alias("shard"), pl.col("offset").alias("local"), "tokens"))
    schema = {"shard": pl.Int64, "local": pl.Int64, "tokens": pl.Int64}
    return pl.concat([p.cast(schema) for p in parts]) if parts else pl.DataFrame(schema=schema)


def validate_mix(out: Path, validation: ValidationSettings) -> None:
    """The refresh_mix suite (data_quality/tokens.py), before the manifest: ids < vocab, arrays, meta.json
    and docs.parquet agree, meta's tokens = new + replayed, every document once and in one split.
    Raises DataQualityError, or warns under ``validation.severity`` (or ``stage_severity.refresh_mix``) warn."""
    if not validation.enabled:
        return
    docs = pl.read_parquet(out / DOCS_FILE, columns=["id"])
    summary, notes = token_summary(out, docs.height, [], roundtrip_docs=0)  # no corpus here: no round trip
    mix = json.loads((out / META_FILE).read_text())["mix"]
    summary = summary.with_columns(
        pl.col("split").replace_strict(mix["new_tokens"], return_dtype=pl.Int64).alias("new_tokens"),
        pl.col("split").replace_strict(mix["replay_tokens"], return_dtype=pl.Int64).alias("replay_tokens"),
    )
    validate_summary(MIX_STAGE, mix_suite(), summary, validation, "per-split summary", notes=notes)


def run_mix(
    workdir: str | Path,
    new: TokenDatasetRef,
    old: list[TokenDatasetRef],
    settings: RefreshSettings,
    block_size: int,
    validation: ValidationSettings,
) -> TokenDatasetRef:
    """The flow-side half of the mix: no replay pool (or fraction 0) gives the new tokens unchanged."""
    if not old or settings.replay_fraction == 0:
        return new
    params = MixParams(replay_fraction=settings.replay_fraction, seed=settings.replay_seed,
                       min_val_tokens=settings.min_val_tokens)
    min_val = 2 * (block_size + 1)
    work = plan_stage(workdir, MIX_STAGE, VERSION, {"mix": params, "min_val": min_val},
                      [new.fingerprint, *[r.fingerprint for r in old]])
    return mix_tokens(work, new, old, params, min_val, validation)
