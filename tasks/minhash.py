"""Batched MinHash signatures, bit-identical to ``datasketch.MinHash``.

datasketch hashes every shingle in Python and applies the permutations one document
at a time. Here a whole batch of documents is tokenized with numpy on one UTF-8
buffer, every shingle is hashed with the same function datasketch uses by default
(SHA-1, first 4 or 8 bytes little-endian), the permutations are applied to all
shingles at once and each document's minimum is taken with ``np.minimum.reduceat``.
The permutation parameters come from datasketch itself, so a signature equals
``MinHash(num_perm, seed=seed, scheme=scheme)`` after ``update_batch(shingles(text))``.

Shingles (the documented rule):
- text is normalized first (``normalize_expr``: lowercase, runs of whitespace -> one
  space, stripped); words are what lies between single spaces;
- a document with ``>= ngram`` words has the word n-grams ``words[i:i+ngram]`` joined by
  one space, as UTF-8 bytes;
- a document with ``1 .. ngram-1`` words has one shingle: all its words;
- an empty document has no shingles; its signature is datasketch's empty signature
  (every value the scheme's maximum) and ``n_shingles == 0`` marks it, so the
  near-duplicate step leaves it out (empty documents are exact duplicates anyway).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import polars as pl
from datasketch import MinHash

Scheme = Literal["affine32", "affine64", "legacy"]

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_FMIX = {
    32: (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16)),
    64: (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)),
}
_SPACE = 32


def normalize_expr(col: str = "text") -> pl.Expr:
    """Lowercase, collapse every run of Unicode whitespace to one space, strip the ends."""
    return pl.col(col).fill_null("").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars(" ")


def shingles(normalized: str, ngram: int = 5) -> list[bytes]:
    """The shingles of one normalized text, one at a time: the reference the batch path must match."""
    words = normalized.split(" ") if normalized else []
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)]


def signature_dtype(scheme: Scheme) -> type[np.unsignedinteger]:
    """How signature values are stored: legacy values fit 32 bits, so only affine64 needs 64."""
    return np.uint64 if scheme == "affine64" else np.uint32


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own permutation parameters (a, b), each shaped (num_perm,)."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
    a, b = np.asarray(a), np.asarray(b)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def empty_value(scheme: Scheme) -> int:
    return (1 << 64) - 1 if scheme == "affine64" else (1 << 32) - 1


def _fmix(hv: np.ndarray, width: int) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX[width]
    hv = hv ^ (hv >> s1)
    hv = hv * m1  # wraps mod 2^width, as in datasketch
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


def hash_shingles(buf: bytes, starts: np.ndarray, ends: np.ndarray, scheme: Scheme) -> np.ndarray:
    """SHA-1 of each ``buf[s:e]``, first 4 (or 8 for affine64) bytes read little-endian.

    Equal to datasketch's ``sha1_hash32`` / ``sha1_hash64``. Whole 20-byte digests are
    joined and read with a stride, which is cheaper than slicing each digest in Python.
    """
    sha1 = hashlib.sha1
    digests = b"".join([sha1(buf[s:e]).digest() for s, e in zip(starts.tolist(), ends.tolist())])
    if scheme == "affine64":
        # 20 bytes per digest is not a multiple of 8: read bytes 0..7 of each as one uint64.
        raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :8]
        return np.ascontiguousarray(raw).view("<u8").ravel().astype(np.uint64)
    return np.frombuffer(digests, dtype="<u4")[::5].astype(np.uint64 if scheme == "legacy" else np.uint32)


def _permute_min(hv: np.ndarray, seg_starts: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Per-segment minimum of every permuted hash: (segments, num_perm), datasketch's arithmetic.

    Laid out (num_perm, shingles) so each segment-min runs over contiguous memory:
    ``reduceat`` along the last axis is ~30x faster than along the first.
    """
    a, b = a[:, None], b[:, None]
    if scheme == "legacy":
        phv = (a * hv[None, :] + b) % _MERSENNE  # uint64 products wrap, exactly as in datasketch
        phv &= _MAX32
    else:
        width = 64 if scheme == "affine64" else 32
        phv = a * _fmix(hv, width)[None, :] + b  # wraps mod 2^width
    return np.minimum.reduceat(phv, seg_starts, axis=1).T


def tokenize(normalized: Sequence[str], ngram: int) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """Shingle byte ranges of a batch of normalized texts.

    Returns ``(buf, starts, ends, counts)``: shingle ``k`` is ``buf[starts[k]:ends[k]]`` and
    document ``d`` owns the next ``counts[d]`` shingles, in order.
    """
    n_docs = len(normalized)
    text = " ".join(normalized)
    buf = text.encode("utf-8")
    arr = np.frombuffer(buf, dtype=np.uint8)
    lens = np.fromiter((len(t) for t in normalized), dtype=np.int64, count=n_docs)
    if text.isascii():
        blens = lens
    else:
        blens = np.fromiter((len(t.encode("utf-8")) for t in normalized), dtype=np.int64, count=n_docs)
    doc_start = np.zeros(n_docs, dtype=np.int64)
    if n_docs > 1:
        doc_start[1:] = np.cumsum(blens[:-1] + 1)
    # Words are maximal runs of non-space bytes (UTF-8 continuation bytes are never 0x20).
    word = arr != _SPACE
    edge = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    w_start = np.flatnonzero(edge == 1)
    w_end = np.flatnonzero(edge == -1)
    w_doc = np.searchsorted(doc_start, w_start, side="right") - 1
    n_words = np.bincount(w_doc, minlength=n_docs).astype(np.int64)
    first_word = np.zeros(n_docs, dtype=np.int64)
    first_word[1:] = np.cumsum(n_words[:-1])
    counts = np.where(n_words >= ngram, n_words - ngram + 1, np.minimum(n_words, 1))
    total = int(counts.sum())
    sh_off = np.zeros(n_docs, dtype=np.int64)
    sh_off[1:] = np.cumsum(counts[:-1])
    k = np.repeat(first_word - sh_off, counts) + np.arange(total, dtype=np.int64)  # first word of each shingle
    last = np.repeat(first_word + n_words - 1, counts)
    k_end = np.minimum(k + ngram - 1, last)  # short documents: one shingle of all their words
    return buf, w_start[k], w_end[k_end], counts


def minhash_signatures(
    normalized: Sequence[str],
    num_perm: int = 112,
    seed: int = 1,
    ngram: int = 5,
    scheme: Scheme = "affine32",
    batch_shingles: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of normalized texts: ``(signatures (n_docs, num_perm), n_shingles (n_docs,))``.

    Documents are processed in batches of about ``batch_shingles`` shingles so the
    (shingles x num_perm) intermediate stays bounded (64Ki x 112 x 4 B = 29 MB).
    """
    n_docs = len(normalized)
    a, b = permutations(num_perm, seed, scheme)
    out = np.full((n_docs, num_perm), empty_value(scheme), dtype=signature_dtype(scheme))
    n_shingles = np.zeros(n_docs, dtype=np.int64)
    # Cheap size estimate (characters ~ words * 6) to cut batches without tokenizing twice.
    approx = np.cumsum(np.fromiter((len(t) for t in normalized), dtype=np.int64, count=n_docs) // 6 + 1)
    lo = 0
    while lo < n_docs:
        hi = int(np.searchsorted(approx, (approx[lo - 1] if lo else 0) + batch_shingles, side="right"))
        hi = min(max(hi, lo + 1), n_docs)
        buf, starts, ends, counts = tokenize(normalized[lo:hi], ngram)
        n_shingles[lo:hi] = counts
        nonempty = np.flatnonzero(counts)
        if nonempty.size:
            hv = hash_shingles(buf, starts, ends, scheme)
            seg = np.zeros(nonempty.size, dtype=np.int64)
            seg[1:] = np.cumsum(counts[nonempty][:-1])
            out[lo + nonempty] = _permute_min(hv, seg, a, b, scheme).astype(out.dtype, copy=False)
        lo = hi
    return out, n_shingles


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per LSH band: (n_docs, bands) uint64.

    Equal bands give equal keys; unequal bands collide with probability ~2^-64, and
    every candidate pair is verified against the full signatures afterwards anyway.
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(-1, bands, rows)
    h = np.full(sig.shape[:2], np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
    for r in range(rows):
        h = _fmix((h ^ sig[:, :, r]) * np.uint64(0x100000001B3), 64)
    return h
