"""The dedup stage's name, code version, drop reasons and parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

STAGE = "dedup"
VERSION = "2"  # 2: word_mix shingle hash by default, exact-Jaccard verification
REASON_EXACT = "dedup_exact"
REASON_NEAR = "dedup_near"
DEDUP_COLUMNS = ("dup_cluster", "dup_of")
PLACEMENT_FIELDS = ("engine", "dask_address")  # where the cluster step runs; same output, same fingerprint


class DedupParams(BaseModel):
    """Exact and near-duplicate removal (MinHash LSH over word n-grams)."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Drop documents whose normalized text (lowercase, whitespace collapsed) equals an earlier document's.")
    near: bool = Field(True, description="Drop near-duplicates found by MinHash LSH and verified against `threshold`.")
    ngram: int = Field(5, ge=1, description="Words per shingle; a document with fewer words is one shingle of all its words.")
    num_perm: int = Field(112, ge=1, description="MinHash permutations (signature length); must be >= bands x rows.")
    bands: int = Field(14, ge=1, description="LSH bands: two documents become a candidate pair when any band matches.")
    rows: int = Field(8, ge=1, description="Signature values per LSH band.")
    seed: int = Field(1, description="Seed of the permutations (datasketch's MinHash `seed`).")
    scheme: Literal["affine32", "affine64", "legacy"] = Field(
        "affine32",
        description="datasketch's permutation scheme (2.x default affine32; `legacy` matches datasketch < 2.0). "
        "Signatures equal datasketch.MinHash(num_perm, seed, scheme=scheme, hashfunc=tasks.curate.dedup.minhash.datasketch_hashfunc(hash, scheme)).",
    )
    hash: Literal["word_mix", "sha1"] = Field(
        "word_mix",
        description="Shingle hash. `word_mix`: MurmurHash3_x86_32 over the words' SHA-1-32 hashes (tasks.curate.dedup.minhash.word_mix_hash32; "
        "SHA-1 once per distinct word, ~3.5x datasketch's speed). `sha1`: datasketch's default hash of the shingle bytes "
        "(one SHA-1 per shingle, signatures equal MinHash(num_perm, seed, scheme=scheme) with no hashfunc).",
    )
    verify: Literal["jaccard", "signature"] = Field(
        "jaccard",
        description="How LSH candidate pairs are verified against `threshold`: `jaccard`, the exact Jaccard of the two documents' "
        "shingle-hash sets (stored in the signature files, read only for candidates); `signature`, the fraction of equal "
        "signature values (the MinHash estimate, noisy at the threshold).",
    )
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="A candidate pair is a near-duplicate when its Jaccard similarity (see `verify`) is at least this."
    )
    max_bucket_pairs: int = Field(
        50,
        ge=2,
        description="Buckets (documents sharing a band key) up to this size are verified pair by pair; "
        "larger ones only against their first member and their neighbour in corpus order.",
    )
    engine: Literal["polars", "dask"] = Field(
        "polars",
        description="Where the global cluster step runs (same clusters either way). `polars`: on this machine, bounded "
        "in memory (~8 B/document + a constant), spilling sorted runs of band keys and pairs to the stage directory. "
        "`dask`: a dask.dataframe shuffle on the Dask cluster (`dask_address`, else the client of the Dask task runner "
        "this runs under, else dask's threaded scheduler here); for corpora whose band keys outgrow one machine's disk.",
    )
    dask_address: str | None = Field(
        None, description="Scheduler address (tcp://host:8786) for `engine: dask`; null: the current Dask client, if any."
    )

    @model_validator(mode="after")
    def _bands_fit(self) -> "DedupParams":
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class DedupApplyParams(DedupParams):
    """What the per-shard ``dedup`` step needs: the stage's params plus where the clusters are."""

    clusters: str = Field(description="Path of clusters.parquet written by find_clusters.")
