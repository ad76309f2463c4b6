"""Dedup: signatures bit-identical to datasketch, exact + near duplicates, the kept-document rule, the flow."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from lmwright.tasks.core.dataset import DatasetRef, DOC_SCHEMA, ShardStats, write_manifest, write_shard
from lmwright.tasks.curate.dedup.clusters import cluster_frame, connected_components, jaccard_verified
from lmwright.tasks.curate.dedup.params import REASON_EXACT, REASON_NEAR, DedupApplyParams, DedupParams
from lmwright.tasks.curate.dedup.signatures import signature_frame
from lmwright.tasks.curate.dedup.stage import apply_dedup, run_dedup
from datasketch.hashfunc import sha1_hash32

from lmwright.tasks.curate.dedup.minhash import (
    datasketch_hashfunc,
    minhash_signatures,
    murmur3_32,
    normalize_expr,
    shingles,
    word_mix_hash32,
)

WEB = Path("web") / "cc_warc_2019_07_cclicensed_pages.jsonl"  # under ../shared/data (the shared_data fixture)


@pytest.fixture(scope="module")
def web_texts(shared_data: Path) -> list[str]:
    texts = []
    with open(shared_data / WEB, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    return texts


@pytest.fixture(scope="module")
def distinct(web_texts: list[str]) -> list[str]:
    """Long real pages that are in no duplicate cluster of the corpus (some pages repeat)."""
    long = [t for t in web_texts if len(t.split()) >= 300]
    c = clusters_of(long)
    sizes = c.group_by("dup_cluster").len()
    single = set(sizes.filter(pl.col("len") == 1)["dup_cluster"].to_list())
    return [t for t, i in zip(long, c["id"].to_list()) if i in single]


def normalized(texts: list[str]) -> list[str]:
    return pl.DataFrame({"text": texts}).select(normalize_expr())["text"].to_list()


def edit_words(text: str, n: int, seed: int) -> str:
    """Replace ``n`` words of ``text`` by made-up ones: a planted near-duplicate."""
    rng = random.Random(seed)
    words = text.split()
    for k in rng.sample(range(len(words)), n):
        words[k] = f"zq{rng.randrange(10**6)}"
    return " ".join(words)


def docs_frame(texts: list[str], prefix: str = "d") -> pl.DataFrame:
    n = len(texts)
    given = {"id": [f"{prefix}{i}" for i in range(n)], "text": texts, "source": ["test"] * n, "uri": [f"mem:{i}" for i in range(n)]}
    # every other column of the document schema (license, url, ...) left empty
    return pl.DataFrame({c: given.get(c, [None] * n) for c in DOC_SCHEMA}, schema=DOC_SCHEMA)


def clusters_of(texts: list[str], params: DedupParams | None = None) -> pl.DataFrame:
    params = params or DedupParams()
    sigs = signature_frame(docs_frame(texts), "part-00000", params)
    return cluster_frame(sigs, params)[0]


# --- signatures ---------------------------------------------------------------------------

EDGE_CASES = ["", "   \n\t ", "one", "Two Words", "a b c d", "a b c d e", "  Ünïcödé   TEXT \u00a0 here  ", "ΣΊΣΥΦΟΣ ΚΑΙ ΟΔΥΣΣΕΑΣ 日本語 テキスト 🙂"]


@pytest.mark.parametrize("hash", ["word_mix", "sha1"])
@pytest.mark.parametrize("scheme", ["affine32", "legacy", "affine64"])
def test_signatures_bit_identical_to_datasketch(web_texts: list[str], scheme: str, hash: str) -> None:
    texts = (web_texts[:300] if scheme != "affine32" else web_texts) + EDGE_CASES
    norm = normalized(texts)
    # small batches and chunks so documents straddle several batch and chunk boundaries
    ours, n_shingles, hv = minhash_signatures(
        norm, num_perm=112, seed=1, ngram=5, scheme=scheme, hash=hash, batch_shingles=5000, chunk=3000, return_hashes=True
    )
    hashfunc = datasketch_hashfunc(hash, scheme)
    if hash == "sha1":  # datasketch's default: the peer needs no hashfunc argument
        assert hashfunc is MinHash(num_perm=1, scheme=scheme).hashfunc
    pos = 0
    for k, text in enumerate(norm):
        m = MinHash(num_perm=112, seed=1, scheme=scheme, hashfunc=hashfunc)
        sh = shingles(text, 5)
        m.update_batch(sh)
        assert n_shingles[k] == len(sh)
        assert np.array_equal(ours[k].astype(np.uint64), m.hashvalues.astype(np.uint64)), f"doc {k} differs"
        assert ours[k].dtype.itemsize == m.hashvalues.dtype.itemsize or scheme == "legacy"
        if k % 50 == 0 or k >= len(norm) - len(EDGE_CASES):  # the shingle hashes kept for exact Jaccard
            assert hv[pos : pos + len(sh)].tolist() == [hashfunc(x) & 0xFFFFFFFF for x in sh]
        pos += len(sh)
    assert pos == hv.size


def test_word_mix_hash_is_documented_murmur3() -> None:
    # MurmurHash3_x86_32 reference vectors (SMHasher / mmh3)
    assert murmur3_32(b"") == 0
    assert murmur3_32(b"\0\0\0\0") == 0x2362F9DE
    assert murmur3_32(b"Hello, world!", 0x9747B28C) == 0x24884CBA
    assert murmur3_32(b"abc", 0x9747B28C) == 0xC84A62DD
    words = [b"the", b"quick", b"br\xc3\xb6wn", b"fox", b"jumps"]
    expected = murmur3_32(b"".join(sha1_hash32(w).to_bytes(4, "little") for w in words))
    assert word_mix_hash32(b" ".join(words)) == expected
    assert word_mix_hash32(b"a b c d e") != word_mix_hash32(b"a b c e d")  # order matters


@pytest.mark.parametrize("hash", ["word_mix", "sha1"])
def test_signature_parameters_configurable(web_texts: list[str], hash: str) -> None:
    norm = normalized(web_texts[:40])
    ours, _ = minhash_signatures(norm, num_perm=64, seed=7, ngram=3, hash=hash)
    for k, text in enumerate(norm):
        m = MinHash(num_perm=64, seed=7, hashfunc=datasketch_hashfunc(hash, "affine32"))
        m.update_batch(shingles(text, 3))
        assert np.array_equal(ours[k], m.hashvalues)


def test_shingle_rule_for_short_and_empty_docs() -> None:
    assert shingles("", 5) == []
    assert shingles("a b c", 5) == [b"a b c"]
    assert shingles("a b c d e f", 5) == [b"a b c d e", b"b c d e f"]
    sig, n = minhash_signatures(["", "a b c", "a  b"])  # a stray double space is no word
    assert n.tolist() == [0, 1, 1]
    assert (sig[0] == np.iinfo(np.uint32).max).all()  # datasketch's empty MinHash


# --- clusters -----------------------------------------------------------------------------


def test_exact_duplicates_point_at_first_copy(web_texts: list[str]) -> None:
    a, b = web_texts[0], web_texts[1]
    shouty = "  " + a.upper().replace(" ", "\n  ")  # same text after normalization
    c = clusters_of([a, b, shouty, a])
    assert c["reason"].to_list() == [None, None, REASON_EXACT, REASON_EXACT]
    assert c["dup_of"].to_list() == [None, None, "d0", "d0"]
    assert c["dup_cluster"].to_list() == ["d0", "d1", "d0", "d0"]


def test_planted_near_duplicates_found_distinct_not_merged(distinct: list[str]) -> None:
    originals = distinct[:30]
    variants = [edit_words(t, max(1, len(t.split()) // 200), seed=i) for i, t in enumerate(originals)]
    c = clusters_of(originals + variants)
    n = len(originals)
    # every variant is a near-duplicate of its original (kept, first in corpus order)
    assert c["reason"].to_list()[n:] == [REASON_NEAR] * n
    assert c["dup_of"].to_list()[n:] == [f"d{i}" for i in range(n)]
    # the originals, distinct real pages, stay apart
    assert c["reason"].to_list()[:n] == [None] * n
    assert c["dup_cluster"].to_list()[:n] == [f"d{i}" for i in range(n)]


def test_heavily_edited_document_is_not_a_duplicate(web_texts: list[str]) -> None:
    original = next(t for t in web_texts if len(t.split()) >= 400)
    far = edit_words(original, len(original.split()) // 5, seed=3)  # Jaccard of 5-grams ~0.2
    assert clusters_of([original, far])["reason"].to_list() == [None, None]


def test_switches_and_empty_documents(web_texts: list[str]) -> None:
    a = web_texts[0]
    near = edit_words(a, 2, seed=1)
    texts = [a, a, near, "", " "]
    no_exact = clusters_of(texts, DedupParams(exact=False))
    assert no_exact["reason"].to_list()[:3] == [None, REASON_NEAR, REASON_NEAR]
    assert no_exact["reason"].to_list()[3:] == [None, None]  # empty docs: no near-duplicates
    no_near = clusters_of(texts, DedupParams(near=False))
    assert no_near["reason"].to_list() == [None, REASON_EXACT, None, None, REASON_EXACT]


def test_kept_document_rule_is_deterministic(distinct: list[str]) -> None:
    base = distinct[:5]
    texts = []
    for i, t in enumerate(base):
        texts += [edit_words(t, 2, seed=10 * i + k) for k in range(3)]
    random.Random(0).shuffle(texts)
    first = clusters_of(texts)
    assert first.equals(clusters_of(texts))
    # kept = first in corpus order: the smallest position of each cluster
    pos = {f"d{i}": i for i in range(len(texts))}
    for cluster, members in first.group_by("dup_cluster").agg("id").iter_rows():
        assert pos[cluster] == min(pos[m] for m in members)
    assert first["dup_cluster"].n_unique() == 5


def test_connected_components_take_smallest_index() -> None:
    # chain 5-3-4, pair 1-6, and 0, 2 alone; edges in scrambled order and direction
    src = np.array([4, 6, 3])
    dst = np.array([3, 1, 5])
    assert connected_components(7, src, dst).tolist() == [0, 1, 2, 3, 3, 3, 1]


def test_params_reject_bands_larger_than_signature() -> None:
    with pytest.raises(ValueError, match="exceeds num_perm"):
        DedupParams(num_perm=64, bands=14, rows=8)


def test_apply_joins_clusters(tmp_path: Path, web_texts: list[str]) -> None:
    docs = docs_frame([web_texts[0], web_texts[1], web_texts[0]])
    clusters, _ = cluster_frame(signature_frame(docs, "part-00000", DedupParams()), DedupParams())
    clusters.write_parquet(tmp_path / "clusters.parquet")
    out = apply_dedup(docs.reverse(), DedupApplyParams(clusters=str(tmp_path / "clusters.parquet")))
    assert out["id"].to_list() == ["d2", "d1", "d0"]
    assert out["reason"].to_list() == [REASON_EXACT, None, None]
    assert out["dup_of"].to_list() == ["d0", None, None]
    assert out["dup_cluster"].to_list() == ["d0", "d1", "d0"]


# --- the flow ------------------------------------------------------------------------------


def make_source(workdir: Path, shards: list[list[str]]) -> "DatasetRef":
    out = workdir / "datasets" / "pii" / "fp-test"
    stats: list[ShardStats] = []
    n = 0
    for k, texts in enumerate(shards):
        docs = docs_frame(texts).with_columns(pl.Series("id", [f"d{n + i}" for i in range(len(texts))]))
        n += len(texts)
        name = f"part-{k:05d}"
        stats.append(
            write_shard(out, name, "pii", docs.height, int(docs["text"].str.len_bytes().sum()), docs,
                        docs.clear().with_columns(pl.lit("x").alias("reason"), pl.lit("pii").alias("stage")), 0.0)
        )
    return write_manifest(out, "pii", "fp-test", {}, "0", [], stats)


def test_run_dedup_flow(tmp_path: Path, distinct: list[str], prefect_harness) -> None:
    from prefect import flow

    from lmwright.data_quality import ValidationSettings

    originals = distinct[:12]
    near = edit_words(originals[1], 3, seed=5)
    # shard 0: 6 originals; shard 1: an exact copy of d0 (re-cased), a near copy of d1, 6 more originals
    source = make_source(tmp_path, [originals[:6], [originals[0].upper(), near] + originals[6:]])

    @flow
    def curate_dedup() -> "DatasetRef":
        return run_dedup(tmp_path, source, DedupParams(), ValidationSettings())

    ref = curate_dedup()
    kept = ref.read()
    assert kept.height == 12
    assert kept["dup_cluster"].null_count() == 0
    rejected = pl.concat([pl.read_parquet(p) for p in ref.rejected_parts()]).sort("id")
    assert rejected["id"].to_list() == ["d6", "d7"]
    assert rejected["reason"].to_list() == [REASON_EXACT, REASON_NEAR]
    assert rejected["dup_of"].to_list() == ["d0", "d1"]
    stats = ref.stats()
    assert (stats["in"], stats["kept"], stats["rejected"]) == (14, 12, 2)
    assert stats["dedup"]["exact_duplicates"] == 1 and stats["dedup"]["near_duplicates"] == 1
    assert (ref.dir / "clusters.parquet").is_file() and (ref.dir / "signatures" / "part-00001.parquet").is_file()

    # unchanged rerun: every task is a cache hit, the same dataset comes back
    state = curate_dedup(return_state=True)
    assert state.result() == ref


# --- exact-Jaccard verification ---------------------------------------------------------------


def test_jaccard_verified_matches_python_sets() -> None:
    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 60, size=rng.integers(0, 40))).astype(np.uint32) for _ in range(30)]
    offsets = np.concatenate([[0], np.cumsum([s.size for s in sets])]).astype(np.int64)
    values = np.concatenate(sets)
    i, j = np.triu_indices(len(sets), 1)
    for threshold in (0.3, 0.5, 0.8):
        got = jaccard_verified(values, offsets, i, j, threshold, chunk=64)  # many small chunks
        for k in range(i.size):
            a, b = set(sets[i[k]].tolist()), set(sets[j[k]].tolist())
            exact = len(a & b) / len(a | b) if a | b else 0.0
            assert got[k] == (exact >= threshold), (i[k], j[k], exact)


def test_exact_jaccard_decides_at_the_threshold(distinct: list[str]) -> None:
    """Pairs just above / below Jaccard 0.8 (both LSH candidates) are split exactly by `verify="jaccard"`."""
    original = next(t for t in distinct if len(t.split()) >= 600)
    words = original.split()
    sh = set(shingles(" ".join(words).lower(), 5))

    def with_edits(n: int) -> tuple[str, float]:
        w = list(words)
        for k in range(n):  # edits 11 words apart: each removes 5 shingles, adds 5
            w[5 + 11 * k] = f"zq{k}"
        other = set(shingles(" ".join(w).lower(), 5))
        return " ".join(w), len(sh & other) / len(sh | other)

    n = 1
    while with_edits(n + 1)[1] >= 0.8:
        n += 1
    above, j_above = with_edits(n)
    below, j_below = with_edits(n + 1)
    assert j_above >= 0.8 > j_below
    p = DedupParams(bands=56, rows=2)  # every pair here is a candidate
    assert clusters_of([original, below], p)["reason"].to_list() == [None, None]
    c = clusters_of([original, above], p)
    assert c["reason"].to_list() == [None, REASON_NEAR]
    sigs = signature_frame(docs_frame([original, above]), "part-00000", p)
    assert sigs["shingles"].list.len().to_list() == [len(sh), len(set(shingles(" ".join(above.split()).lower(), 5)))]
    # the same verification with the shingle sets read back from disk, only for candidates
    loaded = []

    def loader(pos: np.ndarray) -> pl.Series:
        loaded.append(pos.tolist())
        return sigs["shingles"].gather(pos)

    c2, _ = cluster_frame(sigs.drop("shingles"), p, loader)
    assert c2.equals(c) and loaded == [[0, 1]]
    with pytest.raises(ValueError, match="needs the signatures"):
        cluster_frame(sigs.drop("shingles"), p)
    # the signature estimate is the fallback; it needs no shingle sets
    assert "shingles" not in signature_frame(docs_frame([original]), "p", DedupParams(verify="signature")).columns
