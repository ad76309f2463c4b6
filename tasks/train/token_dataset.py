"""A token dataset on disk: the contract between tokenize and training.

``<workdir>/datasets/tokenize/<fingerprint>/`` (and the refresh's replay mix, the same format)::

    tokenizer.json     the tokenizer (load with ``models.tokenizer.load_tokenizer``)
    train.bin          flat little-endian uint16 (vocab <= 65535) or uint32 token ids;
    val.bin            each document is its tokens followed by <|endoftext|>
    docs.parquet       one row per document: id, split, offset (into its split's .bin: the
                       first copy; null for a train document the mixture left out), tokens
                       (incl. end-of-text), bytes (UTF-8 bytes of its text), source, lang,
                       repeats (copies in the .bin: 1 unless the mixture weights it)
    meta.json          dtype, vocab size, special token ids, and per split: tokens, docs,
                       bytes, bytes_per_token (for bits-per-byte), all as packed (tokens and
                       bytes count every copy; docs counts distinct documents); "mixture":
                       tokens and documents per source/language before and after the mix
    stats.json         counts and timings (tokenizer sample, per shard encode)
    stats/tokenizer.json  the tokenizer step's completion marker
    manifest.json      written LAST, atomically: the dataset exists from then on

Per-shard arrays (``shards/<shard>.{train,val}.bin`` and ``.docs.parquet``, ``shard_paths``) are
intermediates of tokenize, deleted once the manifest is written.

A document's split is a hash of its id (``assign_split``): it lands in the same split on every
run. ``TokenDatasetRef`` is what tasks pass and cache; ``token_summary`` is what the tokenize
suite (data_quality/tokens.py) checks, and with the mix's own columns what the refresh_mix suite checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
from tokenizers import Tokenizer

from lmwright.models.tokenizer import load_tokenizer, vocab_size_of
from lmwright.tasks.core.dataset import read_manifest
from lmwright.tasks.core.hashing import unit_hash
from lmwright.tasks.core.ref import Ref

# A side with fewer tokens than this many of the model's contexts cannot train or validate it:
# then the split moves inside documents (TokenDatasetRef.heldout_tail).
MIN_HELDOUT_CONTEXTS = 4
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
DOCS_FILE = "docs.parquet"
SPLITS = ("train", "val")
DOC_INDEX_SCHEMA = {  # a shard's document index, as encode writes it
    "id": pl.String(), "split": pl.String(), "tokens": pl.Int64(), "bytes": pl.Int64(),
    "source": pl.String(), "lang": pl.String(),
}
DOCS_COLUMNS = ("id", "split", "offset", "tokens", "bytes", "source", "lang", "repeats")


def assign_split(doc_ids: Sequence[str], val_fraction: float, seed: int) -> list[str]:
    """'val' or 'train' per id, by hash: a document lands in the same split on every run."""
    salt = f"split:{seed}"
    return ["val" if unit_hash(salt, i) < val_fraction else "train" for i in doc_ids]


def shard_paths(out_dir: Path, shard: str) -> dict[str, Path]:
    d = out_dir / "shards"
    return {"train": d / f"{shard}.train.bin", "val": d / f"{shard}.val.bin", "docs": d / f"{shard}.docs.parquet"}


class TokenDatasetRef(Ref):
    """A finished token dataset: train.bin/val.bin, the document index, meta.json and the tokenizer."""

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.dir)  # raises IncompleteDatasetError on a half-written directory

    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / META_FILE).read_text())

    def tokens(self, split: str) -> np.ndarray:
        """A read-only memory map of one split (an empty array when the split has no tokens)."""
        self.manifest()
        meta = self.meta()
        path = self.dir / meta["files"][split]
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        if path.stat().st_size == 0:
            return np.empty(0, dtype=dtype)  # numpy cannot map an empty file
        return np.memmap(path, dtype=dtype, mode="r")

    def heldout_tail(self, block_size: int) -> tuple[str, int]:
        """(split, tokens): the tail of one split that validates when the corpus has too few documents.

        The split holds out whole documents; a corpus of one or a few documents (a single
        notes file) can leave a side with less than ``MIN_HELDOUT_CONTEXTS`` contexts of the
        model. Then the last ``val_fraction`` (at least that much, at most half) of the larger
        side validates and the rest trains: a split inside documents, whose loss reads
        optimistic, which the training plan says. ("train", 0): the document split stands.
        """
        meta = self.meta()
        need = MIN_HELDOUT_CONTEXTS * (block_size + 1)
        train, val = meta["tokens"]["train"], meta["tokens"]["val"]
        if val >= need and train >= need:
            return "train", 0
        pool, n = ("train", train) if train >= val else ("val", val)
        return pool, min(n // 2, max(int(meta["split"]["val_fraction"] * n), need))

    def train_tokens(self) -> np.ndarray:
        return self.tokens("train")

    def val_tokens(self) -> np.ndarray:
        return self.tokens("val")

    def heldout_split(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) tokens as training and evaluation of a model with this context use them."""
        pool, tail = self.heldout_tail(block_size)
        if not tail:
            return self.train_tokens(), self.val_tokens()
        tokens = self.tokens(pool)
        return tokens[: len(tokens) - tail], tokens[len(tokens) - tail :]

    def training_data(self, block_size: int) -> dict[str, Any]:
        """Where training reads its examples (files, so torchrun ranks map them themselves)."""
        pool, tail = self.heldout_tail(block_size)
        return {"kind": "tokens", "train": str(self.dir / "train.bin"), "val": str(self.dir / "val.bin"),
                "dtype": self.meta()["dtype"], "heldout_tail": tail, "heldout_from": pool}

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.dir / TOKENIZER_FILE)

    def docs(self) -> pl.DataFrame:
        """One row per document: id, split, offset (first copy), tokens (incl. end-of-text), bytes,
        source, lang, repeats (copies in the split's .bin)."""
        return pl.read_parquet(self.dir / DOCS_FILE)


_ID_HASH_SEED = 0x746F6B


def token_summary(
    out_dir: Path, expected_docs: int, corpus_parts: Sequence[Path], roundtrip_docs: int
) -> tuple[pl.DataFrame, list[str]]:
    """One row per split with what the tokenize suite checks, plus readable details of any problem.

    ``expected_docs``: how many documents should have been tokenized; ``corpus_parts``: the corpus
    shards their text is read back from, for the round trip of ``roundtrip_docs`` hash-chosen documents.
    """
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / META_FILE).read_text())
    # the tokenizer is the vocabulary's authority; without a round trip to decode, meta.json says it
    tok = load_tokenizer(out_dir / TOKENIZER_FILE) if roundtrip_docs > 0 else None
    vocab = vocab_size_of(tok) if tok is not None else int(meta["vocab_size"])
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    docs = pl.read_parquet(out_dir / DOCS_FILE)
    if "repeats" not in docs.columns:  # written before mixtures: every document once
        docs = docs.with_columns(pl.lit(1, dtype=pl.Int64).alias("repeats"))
    # a replay mix of such a dataset with newer ones: null where the column was missing, still once
    docs = docs.with_columns(pl.col("repeats").fill_null(1))
    notes: list[str] = []

    # Every tokenized document in exactly one split; nothing missing (by the id's 64-bit hash).
    hashed = docs.select(pl.col("id").hash(seed=_ID_HASH_SEED).alias("h"), "split")
    per_id = hashed.group_by("h").agg(pl.col("split").n_unique().alias("splits"), pl.len().alias("n"))
    in_both = int(per_id.filter(pl.col("splits") > 1).height)
    duplicated = int(per_id.filter(pl.col("n") > 1).height) - in_both
    if in_both or duplicated:
        bad = docs.filter(pl.col("id").is_duplicated())["id"].unique().head(3).to_list()
        notes.append(f"{in_both} document id(s) in both splits, {duplicated} repeated within a split, e.g. {bad}")
    missing = expected_docs - hashed.height
    if missing:
        notes.append(f"{expected_docs} documents should be tokenized but docs.parquet has {hashed.height}")

    # Round trip on a hash-chosen sample, decoded from the packed arrays themselves (at each
    # document's first copy; documents the mixture left out have no copy to decode).
    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        p = out_dir / meta["files"][s]
        arrays[s] = np.memmap(p, dtype=dtype, mode="r") if p.stat().st_size else np.empty(0, dtype)
    packed = docs.filter(pl.col("repeats") > 0)
    k = min(roundtrip_docs, packed.height)
    sample = packed.with_columns(
        pl.col("id").map_elements(lambda i: unit_hash("roundtrip", i), return_dtype=pl.Float64).alias("_h")
    ).sort("_h").head(k)
    texts = (
        pl.scan_parquet([str(p) for p in corpus_parts])
        .select("id", "text")
        .filter(pl.col("id").is_in(sample["id"].implode()))
        .collect()
    ) if k else pl.DataFrame(schema={"id": pl.String, "text": pl.String})  # no round trip: no corpus to read
    text_of = dict(zip(texts["id"].to_list(), texts["text"].to_list()))
    mismatches = {s: 0 for s in SPLITS}
    eot_missing = {s: 0 for s in SPLITS}
    examples: list[str] = []
    for doc_id, split, offset, n in sample.select("id", "split", "offset", "tokens").iter_rows():
        ids = arrays[split][offset : offset + n]
        if n == 0 or int(ids[-1]) != meta["eot_id"]:
            eot_missing[split] += 1
            examples.append(f"{doc_id!r} ({split}) does not end with end-of-text")
            continue
        got = tok.decode(ids[:-1].tolist(), skip_special_tokens=False)
        want = text_of.get(doc_id) or ""
        if got != want:
            mismatches[split] += 1
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            examples.append(f"{doc_id!r} ({split}) differs at char {at}: {got[at:at + 30]!r} != {want[at:at + 30]!r}")
    if examples:
        notes.append("round trip decode(encode(text)) != text: " + "; ".join(examples[:3]))

    rows = []
    for s in SPLITS:
        arr = arrays[s]
        max_id = int(np.max(arr)) if arr.size else -1  # a sequential read of the memory map
        mine = docs.filter(pl.col("split") == s)
        bpt = meta.get("bytes_per_token", {}).get(s)
        rows.append(
            {
                "split": s,
                "vocab_size": vocab,
                "max_id": max_id,
                "tokens_on_disk": int(arr.size),
                "tokens_meta": int(meta["tokens"][s]),
                "tokens_docs": int(mine.select((pl.col("tokens") * pl.col("repeats").cast(pl.Int64)).sum()).item() or 0),
                "docs_meta": int(meta["docs"][s]),
                "docs_index": mine.height,
                # null for an empty split (nothing to measure); 0 when a non-empty split lacks it
                "bytes_per_token": (float(bpt) if bpt is not None else 0.0) if arr.size else None,
                "roundtrip_checked": int(sample.filter(pl.col("split") == s).height),
                "roundtrip_mismatches": mismatches[s],
                "eot_missing": eot_missing[s],
                "ids_in_both_splits": in_both + duplicated,
                "docs_missing": missing,
            }
        )
        if max_id >= vocab:
            notes.append(f"{s}.bin has token id {max_id} >= vocab size {vocab}")
        if not (arr.size == meta["tokens"][s] == rows[-1]["tokens_docs"]):
            notes.append(f"{s}: {arr.size} tokens on disk, {meta['tokens'][s]} in meta.json, "
                         f"{rows[-1]['tokens_docs']} in docs.parquet (tokens x repeats)")
    return pl.DataFrame(rows), notes
