"""tokenize: a curated corpus -> a byte-level BPE tokenizer + flat token arrays for training.

Three cached stage tasks (tasks.core.stage contract: keyed on the output fingerprint, marker last):

1. ``train_tokenizer`` trains a byte-level BPE (Hugging Face ``tokenizers``) on a bounded,
   deterministic sample of the corpus, or copies a given ``tokenizer.json``.
2. ``encode_shard`` (mapped over the corpus shards) encodes every document, appends
   end-of-text and assigns it to train or val by a hash of its id.
3. ``pack_tokens`` packs the shard arrays (tasks/train/pack.py: in manifest order, or epoch by
   epoch under mixture weights), validates (the tokenize suite, data_quality/tokens.py), and
   writes ``stats.json`` and ``manifest.json`` (last).

What it writes is a token dataset (tasks/train/token_dataset.py describes the files).
Per-shard arrays (``shards/<shard>.{train,val}.bin``) are intermediates: they are deleted
once the manifest is written, otherwise every token would be stored twice. Each shard's
marker is deleted before its arrays, so a crash never leaves a marker pointing at nothing;
if the packed output is later removed, the shards are simply encoded again.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl
from prefect import get_run_logger, unmapped
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from lmwright.data_quality import ValidationSettings, validate_summary
from lmwright.data_quality.tokens import tokenize_suite
from lmwright.models.tokenizer import (
    SpecialTokens,
    load_tokenizer,
    special_token_ids,
    token_dtype,
    train_bpe,
    vocab_size_of,
)
from lmwright.tasks.core.dataset import DatasetRef, file_sha256, shard_name, write_parquet
from lmwright.tasks.core.energy import EnergyRecord, EnergySettings, merge_energy
from lmwright.tasks.core.files import atomic_path, write_json
from lmwright.tasks.core.hashing import unit_hash
from lmwright.tasks.core.stage import Made, StageWork, latest_as_stage, plan_stage, stage_step, stage_task
from lmwright.tasks.curate.mixture import MixtureParams
from lmwright.tasks.train.pack import pack_shards, token_manifest
from lmwright.tasks.train.token_dataset import (
    DOC_INDEX_SCHEMA,
    SPLITS,
    TOKENIZER_FILE,
    TokenDatasetRef,
    assign_split,
    shard_paths,
    token_summary,
)

VERSION = "1"
STAGE = "tokenize"
ENCODE_BATCH_DOCS = 1024  # documents per encode_batch call: parallel inside tokenizers, bounded memory


class TokenizeParams(BaseModel):
    """How the corpus becomes token arrays: the tokenizer, the split and the sample it trains on."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(
        4096,
        ge=300,
        le=2**32 - 1,
        description="BPE vocabulary size including the 256 byte tokens and the special tokens. "
        "<= 65535 stores token ids as uint16, larger as uint32. A small corpus may yield fewer tokens.",
    )
    min_frequency: int = Field(2, ge=1, description="A pair must occur at least this often in the sample to be merged.")
    special_tokens: SpecialTokens = Field(
        default_factory=SpecialTokens, description="End-of-text, padding and chat-marker tokens."
    )
    val_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Share of documents held out for validation, chosen by a hash of the id."
    )
    split_seed: int = Field(0, description="Salt of the train/val hash: another seed gives another (still disjoint) split.")
    train_sample_bytes: int = Field(
        64 << 20,
        gt=0,
        description="The tokenizer trains on at most this many bytes of text: a deterministic, id-hashed sample "
        "spread over the whole corpus.",
    )
    tokenizer_path: str | None = Field(
        None,
        description="Reuse this tokenizer.json instead of training one (missing special tokens are added). "
        "Its content is part of the fingerprint.",
    )
    max_docs: int | None = Field(
        None, ge=1, description="Tokenize only the first N documents in manifest order (None: all)."
    )
    roundtrip_sample_docs: int = Field(
        256, ge=0, description="Validation decodes this many hash-chosen documents from the packed arrays and "
        "compares them with the corpus text byte for byte.",
    )
    mixture: MixtureParams = Field(
        default_factory=MixtureParams,
        description="Sampling weights per source and language for train.bin (upsampling repeats documents as "
        "extra epochs, downsampling keeps a deterministic subset); val.bin stays unweighted. The default "
        "(no weights) packs every document once, exactly as without a mixture.",
    )

    def dtype(self, vocab_size: int | None = None) -> np.dtype:
        return token_dtype(self.vocab_size if vocab_size is None else vocab_size)


# -- the corpus sample the tokenizer trains on ----------------------------------------------


def _capped_parts(corpus: DatasetRef, max_docs: int | None) -> list[tuple[Path, int | None]]:
    """(shard, rows to read) in manifest order; ``max_docs`` counts from the first shard."""
    out: list[tuple[Path, int | None]] = []
    remaining = max_docs
    for entry in corpus.manifest()["shards"]:
        take = None if remaining is None else min(entry["rows"], remaining)
        out.append((corpus.dir / entry["path"], take))
        if remaining is not None:
            remaining -= take or 0
    return out


def _read_docs(part: Path, limit: int | None, extra: Sequence[str] = ()) -> pl.DataFrame:
    """id, text (null -> "") and the ``extra`` string columns (null where the corpus lacks one)."""
    have = set(pl.scan_parquet(part).collect_schema().names())
    docs = pl.read_parquet(part, columns=["id", "text", *[c for c in extra if c in have]], n_rows=limit)
    return docs.with_columns(
        pl.col("text").fill_null(""),
        *[(pl.col(c).cast(pl.String) if c in have else pl.lit(None, dtype=pl.String)).alias(c) for c in extra],
    )


def sample_texts(corpus: DatasetRef, budget_bytes: int, seed: int, max_docs: int | None = None) -> Iterator[str]:
    """At most ``budget_bytes`` of text, chosen by id hash across all shards (deterministic).

    Each document is taken with probability budget / corpus bytes, so the sample spreads over
    the whole corpus instead of being its first shard; the byte budget is then a hard cap.
    """
    parts = _capped_parts(corpus, max_docs)
    total = 0
    for part, limit in parts:
        total += int(_read_docs(part, limit)["text"].str.len_bytes().sum() or 0)
    rate = min(1.0, budget_bytes / max(total, 1))
    salt = f"sample:{seed}"
    left = budget_bytes
    for part, limit in parts:
        docs = _read_docs(part, limit)
        for doc_id, text in zip(docs["id"].to_list(), docs["text"].to_list()):
            if rate < 1.0 and unit_hash(salt, doc_id) >= rate:
                continue
            data = text.encode()
            if len(data) > left:
                text = data[:left].decode(errors="ignore")
                data = text.encode()
            left -= len(data)
            yield text
            if left <= 0:
                return


# -- the stage tasks ----------------------------------------------------------------------


def _tokenizer_input(params: TokenizeParams) -> list[str]:
    """A reused tokenizer's content is an input of the stage: a changed file is a new dataset."""
    if params.tokenizer_path is None:
        return []
    return [f"tokenizer-sha256:{file_sha256(Path(params.tokenizer_path))}"]


@stage_task(task_run_name="tokenize-train-tokenizer")
@stage_step()
def train_tokenizer(
    work: StageWork, corpus: DatasetRef, params: TokenizeParams, energy: EnergySettings | None = None
) -> dict[str, Any]:
    """Train a byte-level BPE on a deterministic corpus sample (or copy a given one) -> tokenizer.json."""
    info = _make_tokenizer(Path(work.out_dir), corpus, params)
    how = f"trained on {info['sample_bytes']:,} bytes" if "sample_bytes" in info else f"reused from {params.tokenizer_path}"
    get_run_logger().info("tokenizer %s: vocab %d", how, info["vocab_size"])
    return info


def _make_tokenizer(out: Path, corpus: DatasetRef, params: TokenizeParams) -> dict[str, Any]:
    start = time.perf_counter()
    special = params.special_tokens
    if params.tokenizer_path is not None:
        tok = Tokenizer.from_file(params.tokenizer_path)
        missing = [t for t in special.as_list() if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)
        info: dict[str, Any] = {"source": "reused", "from": params.tokenizer_path, "added_special_tokens": missing}
    else:
        sampled = {"docs": 0, "bytes": 0}

        def counted() -> Iterator[str]:
            for text in sample_texts(corpus, params.train_sample_bytes, params.split_seed, params.max_docs):
                sampled["docs"] += 1
                sampled["bytes"] += len(text.encode())
                yield text

        tok = train_bpe(counted(), params.vocab_size, params.min_frequency, special)
        info = {"source": "trained", "sample_docs": sampled["docs"], "sample_bytes": sampled["bytes"]}
    with atomic_path(out / TOKENIZER_FILE) as tmp:
        tok.save(str(tmp))
    info.update(
        path=str(out / TOKENIZER_FILE),
        vocab_size=vocab_size_of(tok),
        special_token_ids=special_token_ids(tok, special),
        seconds=round(time.perf_counter() - start, 4),
    )
    return info


@stage_task(task_run_name="tokenize-encode-{work.unit}")
@stage_step()
def encode_shard(
    work: StageWork,
    part: str,
    limit: int | None,
    tokenizer_path: str,
    params: TokenizeParams,
    energy: EnergySettings | None = None,
) -> dict[str, Any]:
    """Encode one corpus shard: tokens + end-of-text per document, split by id hash, flat arrays."""
    return _encode(work, part, limit, tokenizer_path, params)


def _encode(work: StageWork, part: str, limit: int | None, tokenizer_path: str, params: TokenizeParams) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(work.out_dir)
    paths = shard_paths(out, work.unit)
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer_path)
    eot = special_token_ids(tok, params.special_tokens)["eot"]
    dtype = token_dtype(vocab_size_of(tok))
    docs = _read_docs(Path(part), limit, extra=("source", "lang", "parent_id"))
    index: list[pl.DataFrame] = []
    with ExitStack() as renames:  # both .bin files are renamed into place once both are written
        tmp = {s: renames.enter_context(atomic_path(paths[s])) for s in SPLITS}
        files = {s: open(tmp[s], "wb") for s in SPLITS}
        try:
            for lo in range(0, docs.height, ENCODE_BATCH_DOCS):
                batch = docs.slice(lo, ENCODE_BATCH_DOCS)
                ids, texts = batch["id"].to_list(), batch["text"].to_list()
                encoded = tok.encode_batch_fast(texts, add_special_tokens=False)
                arrays = [np.array(e.ids + [eot], dtype=dtype) for e in encoded]
                # The chunks of one book share its split (hashed by parent_id), so no book straddles train and val.
                parents = batch["parent_id"].fill_null(batch["id"]).to_list()
                splits = assign_split(parents, params.val_fraction, params.split_seed)
                for s in SPLITS:
                    chosen = [a for a, sp in zip(arrays, splits) if sp == s]
                    if chosen:
                        files[s].write(np.concatenate(chosen).tobytes())
                index.append(
                    pl.DataFrame(
                        {
                            "id": ids,
                            "split": splits,
                            "tokens": [len(a) for a in arrays],
                            "bytes": batch["text"].str.len_bytes().cast(pl.Int64),
                            "source": batch["source"],
                            "lang": batch["lang"],
                        },
                        schema=DOC_INDEX_SCHEMA,
                    )
                )
        finally:  # closed before the renames; atomic_path syncs them to the disk
            for f in files.values():
                f.close()
    doc_index = pl.concat(index) if index else pl.DataFrame(schema=DOC_INDEX_SCHEMA)
    write_parquet(doc_index, paths["docs"])
    stats: dict[str, Any] = {"shard": work.unit, "part": part, "docs": docs.height}
    for s in SPLITS:
        mine = doc_index.filter(pl.col("split") == s)
        stats[s] = {
            "docs": mine.height,
            "tokens": int(mine["tokens"].sum() or 0),
            "bytes": int(mine["bytes"].sum() or 0),
        }
    stats["seconds"] = round(time.perf_counter() - start, 4)
    return stats


def packed_tokens(work: StageWork) -> TokenDatasetRef:
    """The packed dataset, the shard arrays it was packed from dropped: they duplicate train.bin/val.bin
    (each shard's marker before its arrays, see the module doc; nothing is left to drop on a cached run)."""
    out = Path(work.out_dir)
    for docs in sorted((out / "shards").glob("*.docs.parquet")):
        name = docs.name.removesuffix(".docs.parquet")
        (out / "stats" / f"{name}.json").unlink(missing_ok=True)
        for p in shard_paths(out, name).values():
            p.unlink(missing_ok=True)
    shutil.rmtree(out / "shards", ignore_errors=True)
    return TokenDatasetRef.at(out)


@stage_task(task_run_name="tokenize-pack")
@stage_step(read=packed_tokens, latest=latest_as_stage)
def pack_tokens(
    work: StageWork,
    corpus: DatasetRef,
    params: TokenizeParams,
    tok_info: dict[str, Any],
    shards: list[dict[str, Any]],
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> Made:
    """Pack the shard arrays into train.bin/val.bin, validate, write meta; the manifest is the marker.

    val.bin, and train.bin under the identity mixture, concatenate the shard arrays in
    manifest order. A weighted mixture plans repeats per train document
    (``tasks.curate.mixture.mixture_plan``) and writes train.bin epoch by epoch from the documents'
    token ranges (``epoch_order``): epoch 0 every document kept, in pack order, epoch 1 those
    with two copies or more, and so on. Same corpus and config, same bytes.
    """
    start = time.perf_counter()
    meta = pack_shards(Path(work.out_dir), params, tok_info, shards)
    stats = _pack_stats(work, corpus, tok_info, shards, meta, time.perf_counter() - start)

    def manifest(used: EnergyRecord) -> dict[str, Any]:
        # energy of the whole stage: tokenizer, every shard's encoding, packing (not the validation after it)
        stats["energy"] = merge_energy([e for e in (tok_info.get("energy"), *(sh.get("energy") for sh in shards), used) if e])
        return _finish_pack(work, corpus, params, validation, stats, meta)

    return manifest


def _pack_stats(
    work: StageWork,
    corpus: DatasetRef,
    tok_info: dict[str, Any],
    shards: list[dict[str, Any]],
    meta: dict[str, Any],
    pack_seconds: float,
) -> dict[str, Any]:
    """stats.json of the stage (its energy is added by the caller)."""
    corpus_docs = corpus.manifest()["rows"]
    tokenized = meta["docs"]["train"] + meta["docs"]["val"]
    return {
        "stage": STAGE,
        "fingerprint": work.fingerprint,
        "corpus_docs": corpus_docs,
        "docs": tokenized,
        "skipped_max_docs": corpus_docs - tokenized,
        "tokenizer": {k: v for k, v in tok_info.items() if k != "path"},
        "shards": shards,
        "mixture": meta["mixture"],
        "encode_seconds": round(sum(sh["seconds"] for sh in shards), 4),
        "pack_seconds": round(pack_seconds, 4),
    }


def _finish_pack(
    work: StageWork,
    corpus: DatasetRef,
    params: TokenizeParams,
    validation: ValidationSettings,
    stats: dict[str, Any],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """stats.json and validation; returns the manifest (written last, by stage_step)."""
    out = Path(work.out_dir)
    write_json(out / "stats.json", stats)
    validate_token_dataset(out, corpus, params, validation)

    inputs = [{"stage": corpus.stage, "fingerprint": corpus.fingerprint, "path": corpus.path}]
    manifest = token_manifest(out, STAGE, work.fingerprint, VERSION, params, inputs, meta)
    get_run_logger().info(
        "tokenize: %d docs -> %d train + %d val tokens (%s), %.2f / %.2f bytes per token",
        stats["docs"], meta["tokens"]["train"], meta["tokens"]["val"], meta["dtype"],
        meta["bytes_per_token"]["train"] or 0, meta["bytes_per_token"]["val"] or 0,
    )
    if meta["mixture"]["weighted"]:
        mixed = meta["mixture"]
        get_run_logger().info(
            "tokenize mixture: %d -> %d train tokens, %d document copies, %d documents left out; per source %s",
            mixed["tokens_before"], mixed["tokens_after"], mixed["docs_after"], mixed["docs_left_out"],
            {k: v["tokens_after"] for k, v in mixed["sources"].items()},
        )
    return manifest


def run_tokenize(
    workdir: str | Path,
    corpus: DatasetRef,
    params: TokenizeParams,
    validation: ValidationSettings,
    energy: EnergySettings | None = None,
) -> TokenDatasetRef:
    """Train or reuse the tokenizer, map encode over the corpus shards, pack: the flow-side half."""
    work = plan_stage(workdir, STAGE, VERSION, params, [corpus.fingerprint, *_tokenizer_input(params)])
    tok_info = train_tokenizer(work.for_unit("tokenizer"), corpus, params, energy)
    if work.done():
        # The shard intermediates were deleted after packing; pack is a cache hit.
        return pack_tokens(work, corpus, params, tok_info, [], validation)
    parts = _capped_parts(corpus, params.max_docs)
    futures = encode_shard.map(
        [work.for_unit(shard_name(p)) for p, _ in parts],
        part=[str(p) for p, _ in parts],
        limit=[n for _, n in parts],
        tokenizer_path=unmapped(tok_info["path"]),
        params=unmapped(params),
        energy=unmapped(energy),
    )
    shards = [f.result() for f in futures]
    return pack_tokens(work, corpus, params, tok_info, shards, validation, energy)


# -- validation ---------------------------------------------------------------------------


def validate_token_dataset(
    out_dir: Path, corpus: DatasetRef, params: TokenizeParams, validation: ValidationSettings
) -> None:
    """The tokenize suite, run before the manifest: ids < vocab, counts agree, round trip exact,
    train/val disjoint and complete, bytes per token > 1. Raises DataQualityError (or warns)."""
    if not validation.enabled:
        return
    expected = sum(n if n is not None else e["rows"] for (_, n), e in
                   zip(_capped_parts(corpus, params.max_docs), corpus.manifest()["shards"]))
    summary, notes = token_summary(Path(out_dir), expected, corpus.parts(), params.roundtrip_sample_docs)
    validate_summary(STAGE, tokenize_suite(), summary, validation, "per-split summary", notes=notes)
