"""Batched MinHash signatures, bit-identical to ``datasketch.MinHash``.

datasketch hashes every shingle in Python and applies the permutations one document
at a time. Here a whole batch of documents is tokenized at once, every shingle gets a
32-bit (or 64-bit) hash, the permutations are applied to all shingles of a chunk at once
and each document's minimum is taken with ``np.minimum.reduceat``. The permutation
parameters come from datasketch itself, so a signature equals
``MinHash(num_perm, seed=seed, scheme=scheme, hashfunc=datasketch_hashfunc(hash, scheme))``
after ``update_batch(shingles(text))``.

Shingles (the documented rule):
- text is normalized first (``normalize_expr``: lowercase, runs of whitespace -> one
  space, stripped); words are what lies between single spaces;
- a document with ``>= ngram`` words has the word n-grams ``words[i:i+ngram]`` joined by
  one space, as UTF-8 bytes;
- a document with ``1 .. ngram-1`` words has one shingle: all its words;
- an empty document has no shingles; its signature is datasketch's empty signature
  (every value the scheme's maximum) and ``n_shingles == 0`` marks it, so the
  near-duplicate step leaves it out (empty documents are exact duplicates anyway).

Shingle hashes (``hash``):
- ``"word_mix"`` (default, :func:`word_mix_hash32`): each word ``w`` of the shingle gets
  ``sha1_hash32(w)`` (datasketch's: SHA-1, first 4 bytes little-endian); the shingle's hash
  is MurmurHash3_x86_32 (seed 0) of those word hashes written as consecutive little-endian
  uint32, i.e. ``mmh3.hash(b"".join(sha1_hash32(w).to_bytes(4, "little") for w in
  shingle.split(b" ")), 0, signed=False)``. SHA-1 runs once per *distinct* word of a batch
  (far fewer than shingles); the murmur rounds run vectorized in numpy. 32-bit for every
  scheme (with ``affine64`` the 64-bit permutations see 32-bit shingle hashes).
- ``"sha1"``: datasketch's default hash of the shingle bytes (``sha1_hash32``, or
  ``sha1_hash64`` for ``affine64``), one SHA-1 call per shingle: ~4x slower.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Callable, Literal, Sequence

import numpy as np
import polars as pl

Scheme = Literal["affine32", "affine64", "legacy"]
ShingleHash = Literal["word_mix", "sha1"]

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_FMIX = {
    32: (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16)),
    64: (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33)),
}
_SPACE = 32
# MurmurHash3_x86_32 constants
_C1, _C2, _N = 0xCC9E2D51, 0x1B873593, 0xE6546B64
_M32 = 0xFFFFFFFF


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


# --- the word_mix shingle hash: Python reference ------------------------------------------


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _fmix32(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3_x86_32 (Austin Appleby's reference; equal to ``mmh3.hash(data, seed, signed=False)``)."""
    h = seed & _M32
    n = len(data) & ~3
    for i in range(0, n, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _C1) & _M32
        k = (_rotl32(k, 15) * _C2) & _M32
        h = (_rotl32(h ^ k, 13) * 5 + _N) & _M32
    if len(data) > n:
        k = (int.from_bytes(data[n:], "little") * _C1) & _M32
        h ^= (_rotl32(k, 15) * _C2) & _M32
    return _fmix32(h ^ len(data))


def word_mix_hash32(shingle: bytes) -> int:
    """The ``word_mix`` hash of one shingle, as a datasketch ``hashfunc``.

    ``murmur3_32`` (seed 0) of the little-endian uint32 ``sha1_hash32`` of each word
    (words: ``shingle.split(b" ")``). ``MinHash(..., hashfunc=word_mix_hash32)`` reproduces
    the batched signatures bit for bit.
    """
    from datasketch.hashfunc import sha1_hash32  # datasketch imports scipy: only where it is used

    return murmur3_32(b"".join(sha1_hash32(w).to_bytes(4, "little") for w in shingle.split(b" ")))


def datasketch_hashfunc(hash: ShingleHash, scheme: Scheme) -> Callable[[bytes], int]:
    """The ``hashfunc`` to give ``datasketch.MinHash`` so it reproduces our signatures."""
    if hash == "word_mix":
        return word_mix_hash32
    from datasketch.hashfunc import sha1_hash32, sha1_hash64

    return sha1_hash64 if scheme == "affine64" else sha1_hash32


def signature_dtype(scheme: Scheme) -> type[np.unsignedinteger]:
    """How signature values are stored: legacy values fit 32 bits, so only affine64 needs 64."""
    return np.uint64 if scheme == "affine64" else np.uint32


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own permutation parameters (a, b), each shaped (num_perm,)."""
    from datasketch import MinHash  # imports scipy (seconds): not on a cached run

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


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


# --- shingle hashes, batched --------------------------------------------------------------


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


def _shingle_layout(n_words: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per shingle: index of its first word and its word count; per document: shingle count."""
    n_docs = n_words.size
    first_word = np.zeros(n_docs, dtype=np.int64)
    if n_docs > 1:
        first_word[1:] = np.cumsum(n_words[:-1])
    counts = np.where(n_words >= ngram, n_words - ngram + 1, np.minimum(n_words, 1))
    total = int(counts.sum())
    sh_off = np.zeros(n_docs, dtype=np.int64)
    if n_docs > 1:
        sh_off[1:] = np.cumsum(counts[:-1])
    k = np.repeat(first_word - sh_off, counts) + np.arange(total, dtype=np.int64)
    length = np.repeat(np.minimum(n_words, ngram), counts)
    return k, length, counts


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
    k, length, counts = _shingle_layout(n_words, ngram)
    return buf, w_start[k], w_end[k + length - 1], counts


def word_mix_shingles(normalized: Sequence[str] | pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """``word_mix`` hashes of every shingle of a batch: ``(hashes uint32, counts per document)``.

    polars splits the texts into words and groups equal words; SHA-1 runs once per distinct
    word; the MurmurHash3 rounds over each shingle's word hashes run vectorized.
    """
    texts = normalized if isinstance(normalized, pl.Series) else pl.Series("t", normalized, dtype=pl.String)
    lists = texts.rename("w").str.split(" ")
    n_all = lists.list.len().to_numpy()
    words = lists.explode().cast(pl.Binary)
    nonempty = (words.bin.size() > 0).to_numpy()  # empty documents (or stray double spaces)
    if nonempty.all():
        n_words = n_all.astype(np.int64)
    else:
        doc = np.repeat(np.arange(n_all.size), n_all)
        n_words = np.bincount(doc[nonempty], minlength=n_all.size).astype(np.int64)
        words = words.filter(pl.Series(nonempty))
    groups = words.to_frame().with_row_index("i").group_by("w").agg("i")
    sha1 = hashlib.sha1
    digests = b"".join([sha1(w).digest() for w in groups["w"].to_list()])
    k = np.frombuffer(digests, dtype="<u4")[::5].copy()
    # the per-block part of murmur3 depends on the word alone: do it once per distinct word
    k *= np.uint32(_C1)
    k = _rotl(k, 15)
    k *= np.uint32(_C2)
    members = groups["i"]
    word_k = np.empty(words.len(), dtype=np.uint32)
    word_k[members.explode().to_numpy()] = np.repeat(k, members.list.len().to_numpy())
    first, length, counts = _shingle_layout(n_words, ngram)
    h = np.zeros(first.size, dtype=np.uint32)
    short = np.flatnonzero(length < ngram)  # one shingle per short document: fewer rounds
    five, c5, cn = np.uint32(5), np.uint32(_N), np.uint32(32 - 13)
    for j in range(ngram):
        hj = h ^ word_k[np.minimum(first + j, word_k.size - 1)]
        hj = (hj << np.uint32(13)) | (hj >> cn)
        hj *= five
        hj += c5
        if short.size:  # shingles with <= j words take no block j
            done = short[length[short] <= j]
            hj[done] = h[done]
        h = hj
    h ^= (length * 4).astype(np.uint32)
    return _fmix(h, 32), counts


# --- permutations and minima --------------------------------------------------------------


def _permute_min(hv: np.ndarray, seg_starts: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: Scheme) -> np.ndarray:
    """Per-segment minimum of every permuted hash: (segments, num_perm), datasketch's arithmetic.

    Laid out (num_perm, shingles) so each segment-min runs over contiguous memory:
    ``reduceat`` along the last axis is ~30x faster than along the first.
    """
    a, b = a[:, None], b[:, None]
    if scheme == "legacy":
        phv = a * hv[None, :] + b  # uint64 products wrap, exactly as in datasketch
        phv %= _MERSENNE
        phv &= _MAX32
    else:
        width = 64 if scheme == "affine64" else 32
        phv = a * _fmix(hv, width)[None, :]  # wraps mod 2^width
        phv += b
    return np.minimum.reduceat(phv, seg_starts, axis=1).T


def _min_into(out: np.ndarray, docs: np.ndarray, hv: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray,
              scheme: Scheme, chunk: int) -> None:
    """``out[docs[d]] = min over document d's shingles`` in chunks of ``chunk`` shingles.

    Chunks cut anywhere (a long document spans several); a chunk's (num_perm x chunk)
    intermediate stays in cache, which is what makes the permutations cheap.
    """
    nz = counts > 0
    docs, counts = docs[nz], counts[nz]
    if not docs.size:
        return
    hv = hv.astype(np.uint64 if scheme == "legacy" else out.dtype, copy=False)
    ends = np.cumsum(counts)
    starts = ends - counts
    lo = 0
    while lo < hv.size:
        hi = min(lo + chunk, hv.size)
        d0 = int(np.searchsorted(ends, lo, side="right"))
        d1 = int(np.searchsorted(ends, hi - 1, side="right")) + 1
        seg = np.maximum(starts[d0:d1], lo) - lo
        res = _permute_min(hv[lo:hi], seg, a, b, scheme).astype(out.dtype, copy=False)
        rows = docs[d0:d1]
        out[rows] = np.minimum(out[rows], res)
        lo = hi


def minhash_signatures(
    normalized: Sequence[str],
    num_perm: int = 112,
    seed: int = 1,
    ngram: int = 5,
    scheme: Scheme = "affine32",
    batch_shingles: int | None = None,
    hash: ShingleHash = "word_mix",
    return_hashes: bool = False,
    chunk: int = 1 << 13,
):
    """MinHash signatures of normalized texts: ``(signatures (n_docs, num_perm), n_shingles (n_docs,))``.

    With ``return_hashes`` also every shingle's 32-bit hash (low 32 bits of the ``sha1``
    hash for ``affine64``), documents in order: what exact-Jaccard verification uses.
    Documents are hashed in batches of about ``batch_shingles`` shingles (default 2^20 for
    ``word_mix``, 2^16 for ``sha1``) and permuted in chunks of ``chunk`` shingles, so memory
    stays bounded (2^13 x 112 x 4 B = 3.7 MB per chunk).
    """
    if hash not in ("word_mix", "sha1"):
        raise ValueError(f"unknown shingle hash {hash!r}")
    n_docs = len(normalized)
    batch_shingles = batch_shingles or (1 << 20 if hash == "word_mix" else 1 << 16)
    a, b = permutations(num_perm, seed, scheme)
    out = np.full((n_docs, num_perm), empty_value(scheme), dtype=signature_dtype(scheme))
    n_shingles = np.zeros(n_docs, dtype=np.int64)
    kept: list[np.ndarray] = []
    # Cheap size estimate (characters ~ words * 6) to cut batches without tokenizing twice.
    approx = np.cumsum(np.fromiter((len(t) for t in normalized), dtype=np.int64, count=n_docs) // 6 + 1)
    series = pl.Series("t", normalized, dtype=pl.String) if hash == "word_mix" else None
    lo = 0
    while lo < n_docs:
        hi = int(np.searchsorted(approx, (approx[lo - 1] if lo else 0) + batch_shingles, side="right"))
        hi = min(max(hi, lo + 1), n_docs)
        if series is not None:
            hv, counts = word_mix_shingles(series.slice(lo, hi - lo), ngram)
        else:
            buf, starts, ends, counts = tokenize(normalized[lo:hi], ngram)
            hv = hash_shingles(buf, starts, ends, scheme)
        n_shingles[lo:hi] = counts
        _min_into(out, np.arange(lo, hi), hv, counts, a, b, scheme, chunk)
        if return_hashes:
            kept.append((hv & _MAX32 if hv.dtype == np.uint64 else hv).astype(np.uint32))
        lo = hi
    if return_hashes:
        return out, n_shingles, (np.concatenate(kept) if kept else np.zeros(0, dtype=np.uint32))
    return out, n_shingles


def shingle_sets(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's sorted distinct shingle hashes: ``(values uint32, offsets (n_docs + 1,))``."""
    doc = np.repeat(np.arange(counts.size, dtype=np.uint64), counts)
    key = np.unique((doc << np.uint64(32)) | hashes.astype(np.uint64))
    values = (key & _MAX32).astype(np.uint32)
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=counts.size))
    return values, offsets


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per LSH band: (n_docs, bands) uint64.

    Equal bands give equal keys; unequal bands collide with probability ~2^-64, and
    every candidate pair is verified afterwards anyway.
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(-1, bands, rows)
    h = np.full(sig.shape[:2], np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
    for r in range(rows):
        h = _fmix((h ^ sig[:, :, r]) * np.uint64(0x100000001B3), 64)
    return h
