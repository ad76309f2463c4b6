"""Packing a tokenize run's shard arrays into train.bin/val.bin, docs.parquet and meta.json.

val.bin, and train.bin under the identity mixture, concatenate the shard arrays in manifest
order. A weighted mixture (``TokenizeParams.mixture``, tasks/curate/mixture.py) plans repeats
per train document and writes train.bin epoch by epoch from the documents' token ranges: a
document with ``repeats`` r appears r times (0: left out); val.bin is never weighted (the
natural distribution, every document once). Memory stays at one copy block however large the
data or the repeats.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import polars as pl

from lmwright.data_quality import DataQualityError
from lmwright.models.tokenizer import token_dtype
from lmwright.tasks.core.dataset import canonical_json, file_sha256, write_parquet
from lmwright.tasks.core.files import atomic_path, write_json
from lmwright.tasks.curate.mixture import epoch_order, mixture_plan, mixture_report
from lmwright.tasks.train.token_dataset import (
    DOC_INDEX_SCHEMA,
    DOCS_COLUMNS,
    DOCS_FILE,
    META_FILE,
    SPLITS,
    TOKENIZER_FILE,
    shard_paths,
)

if TYPE_CHECKING:  # a type only: tokenize imports this module
    from lmwright.tasks.train.tokenize import TokenizeParams

COPY_BLOCK = 16 << 20
TOKEN_FILES = ("train.bin", "val.bin", TOKENIZER_FILE, DOCS_FILE, META_FILE)  # what a token manifest hashes


def concat_files(sources: Sequence[Path], dest: Path) -> None:
    """Streaming concatenation into ``dest`` (tmp + rename): memory is one copy block."""
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, COPY_BLOCK)


def shard_index(out: Path, names: Sequence[str]) -> pl.DataFrame:
    """Every encoded document in pack order (shard by shard), with where its tokens sit in its
    shard's array: ``shard`` (position in ``names``) and ``local`` (offset in that array)."""
    parts = []
    for k, n in enumerate(names):
        d = pl.read_parquet(shard_paths(out, n)["docs"])
        d = d.with_columns(  # shard intermediates written before source/lang were indexed
            *[pl.lit(None, dtype=pl.String).alias(c) for c in ("source", "lang") if c not in d.columns]
        ).select(list(DOC_INDEX_SCHEMA)).cast(DOC_INDEX_SCHEMA)  # type: ignore[arg-type]
        parts.append(d.with_columns(
            pl.lit(k, dtype=pl.UInt32).alias("shard"),
            (pl.col("tokens").cum_sum().over("split") - pl.col("tokens")).alias("local"),
        ))
    if not parts:
        return pl.DataFrame(schema={**DOC_INDEX_SCHEMA, "shard": pl.UInt32(), "local": pl.Int64()})
    return pl.concat(parts)


def mixture_input(train: pl.DataFrame) -> pl.DataFrame:
    """The train documents as tasks.curate.mixture wants them: id, source, lang, n_tokens."""
    return train.select("id", "source", "lang", pl.col("tokens").alias("n_tokens"))


def write_ranges(dest: Path, order: pl.DataFrame, arrays: Sequence[Path], dtype: np.dtype) -> None:
    """Write token ranges ``order`` (rows: shard, local, tokens) of the shard ``arrays`` to ``dest``.

    Adjacent ranges of one shard are merged into one read; each shard array is memory-mapped
    while it is read (one at a time) and written in blocks through a buffered file: memory
    stays at one copy block however large the data or the repeats (tmp + rename).
    """
    brk = (pl.col("shard") != pl.col("shard").shift()) | (
        pl.col("local") != (pl.col("local") + pl.col("tokens")).shift()
    )
    runs = (
        order.select("shard", "local", "tokens")
        .with_columns(brk.fill_null(True).cum_sum().alias("_run"))
        .group_by("_run", maintain_order=True)
        .agg(pl.col("shard").first(), pl.col("local").first(), pl.col("tokens").sum())
    )
    step = max(1, COPY_BLOCK // dtype.itemsize)
    current: tuple[int, np.ndarray] | None = None
    with atomic_path(dest) as tmp, open(tmp, "wb", buffering=COPY_BLOCK) as f:
        for shard, lo, n in runs.select("shard", "local", "tokens").iter_rows():
            if current is None or current[0] != shard:
                current = None  # drop the previous map before opening the next
                current = (shard, np.memmap(arrays[shard], dtype=dtype, mode="r"))
            arr = current[1]
            if lo + n > arr.size:
                raise ValueError(f"{arrays[shard]}: tokens {lo}..{lo + n} beyond its {arr.size}")
            for a in range(lo, lo + n, step):
                f.write(arr[a : min(a + step, lo + n)])
        current = None


def build_meta(
    tok_info: Mapping[str, Any],
    params: TokenizeParams,
    shards: Sequence[Mapping[str, Any]],
    docs: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """meta.json. Per-split totals come from ``docs`` (docs.parquet: tokens and bytes count every
    copy, ``docs`` distinct documents) when given, else from the shard stats (unweighted)."""
    vocab = int(tok_info["vocab_size"])
    meta: dict[str, Any] = {
        "format": "lmwright-tokens-1",
        "dtype": token_dtype(vocab).name,
        "byteorder": "little",
        "vocab_size": vocab,
        "eot_id": tok_info["special_token_ids"]["eot"],
        "pad_id": tok_info["special_token_ids"]["pad"],
        "special_tokens": {
            token: tok_info["special_token_ids"][role] for role, token in params.special_tokens.model_dump().items()
        },
        "special_token_roles": params.special_tokens.model_dump(),
        "files": {"train": "train.bin", "val": "val.bin", "tokenizer": TOKENIZER_FILE, "docs": DOCS_FILE},
        "split": {"method": "blake2b('split:<seed>', id) < val_fraction", "val_fraction": params.val_fraction,
                  "seed": params.split_seed},
        "bytes_per_token_definition": "UTF-8 bytes of document text / tokens including one end-of-text per document",
        "tokens": {}, "docs": {}, "bytes": {}, "bytes_per_token": {},
    }
    for s in SPLITS:
        if docs is not None:
            mine = docs.filter(pl.col("split") == s)
            rep = pl.col("repeats").cast(pl.Int64)
            tokens = int(mine.select((pl.col("tokens") * rep).sum()).item() or 0)
            text_bytes = int(mine.select((pl.col("bytes") * rep).sum()).item() or 0)
            meta["docs"][s] = mine.height
        else:
            tokens = sum(sh[s]["tokens"] for sh in shards)
            text_bytes = sum(sh[s]["bytes"] for sh in shards)
            meta["docs"][s] = sum(sh[s]["docs"] for sh in shards)
        meta["tokens"][s] = tokens
        meta["bytes"][s] = text_bytes
        meta["bytes_per_token"][s] = round(text_bytes / tokens, 6) if tokens else None
    return meta


def pack_shards(out: Path, params: TokenizeParams, tok_info: Mapping[str, Any], shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """train.bin, val.bin, the document index and meta.json from the shard intermediates under ``out``; returns meta."""
    names = [sh["shard"] for sh in shards]
    index = shard_index(out, names).with_row_index("_row")
    index = index.with_columns((pl.col("tokens").cum_sum().over("split") - pl.col("tokens")).alias("offset"))
    train = index.filter(pl.col("split") == "train")
    mix = params.mixture
    weighted = not mix.is_identity() and train.height > 0

    concat_files([shard_paths(out, n)["val"] for n in names], out / "val.bin")
    if not weighted:
        concat_files([shard_paths(out, n)["train"] for n in names], out / "train.bin")
        plan = train.select("id", pl.lit(1, dtype=pl.UInt32).alias("repeats"))
        index = index.with_columns(pl.lit(1, dtype=pl.Int64).alias("repeats"))
    else:
        dupes = train.filter(pl.col("id").is_duplicated())["id"].unique().head(3).to_list()
        if dupes:
            raise DataQualityError(f"mixture weights need unique document ids; repeated ids, e.g. {dupes}")
        plan = mixture_plan(mixture_input(train), mix)
        order = epoch_order(train.select("id", "_row", "shard", "local", "tokens"), plan)
        dtype = token_dtype(int(tok_info["vocab_size"]))
        write_ranges(out / "train.bin", order, [shard_paths(out, n)["train"] for n in names], dtype)
        first = (
            order.with_columns((pl.col("tokens").cum_sum() - pl.col("tokens")).alias("_pos"))
            .filter(pl.col("epoch") == 0)
            .select("_row", "_pos")
        )
        repeats = train.select("_row", plan["repeats"].cast(pl.Int64).alias("_rep"))
        index = (
            index.join(first, on="_row", how="left")
            .join(repeats, on="_row", how="left")
            .with_columns(
                pl.when(pl.col("split") == "train").then(pl.col("_pos")).otherwise(pl.col("offset")).alias("offset"),
                pl.col("_rep").fill_null(1).alias("repeats"),
            )
            .sort("_row")
        )
    docs = index.select(list(DOCS_COLUMNS))
    write_parquet(docs, out / DOCS_FILE)

    report = mixture_report(plan, mixture_input(train), mix)
    meta = build_meta(tok_info, params, shards, docs)
    meta["mixture"] = {
        "applies_to": "train",
        "weighted": weighted,
        "params": mix.model_dump(mode="json"),
        "method": "tasks.curate.mixture.mixture_plan: repeats = floor(source weight x language weight), plus one for a "
        "blake2b('mix:<seed>', id)-ordered subset of each (source, lang) group covering the fractional part",
        **report,
    }
    write_json(out / META_FILE, meta)
    return meta


def token_manifest(
    out: Path, stage: str, fingerprint: str, version: str, params: Any, inputs: list[dict[str, Any]], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """manifest.json of a finished token dataset (tokenize's, the refresh mix's): the step's marker, written
    LAST by stage_step, after its arrays, docs.parquet, tokenizer and meta.json, whose sizes and hashes it records."""
    files = {name: {"sha256": file_sha256(out / name), "bytes": (out / name).stat().st_size} for name in TOKEN_FILES}
    manifest = {
        "stage": stage,
        "fingerprint": fingerprint,
        "version": version,
        "params": json.loads(canonical_json(params)),
        "inputs": inputs,
        "dtype": meta["dtype"],
        "vocab_size": meta["vocab_size"],
        "tokens": meta["tokens"],
        "docs": meta["docs"],
        "files": files,
    }
    return manifest
