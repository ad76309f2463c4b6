"""langid: langdetect's algorithm with a fixed seed on a bounded prefix.

``lang`` / ``lang_prob`` are exactly what ``langdetect.detect_langs(text[:prefix_chars])``
returns with ``DetectorFactory.seed = seed`` (the top language and its probability), but
computed by a re-implementation that is ~4x faster per core on web documents
(benchmarks/langid_bench.py):

* the profiles are langdetect's own (loaded once per process through its factory, so the
  probabilities are the same floats), held as one ``(ngrams, languages)`` float64 matrix
  with the n-grams packed into sorted uint64 keys;
* n-gram extraction (langdetect's ``NGram`` state machine: character normalisation, the
  leading space of each word, the ALL-CAPS-word skip) is done on a numpy codepoint array;
* the seven random trials replay the *same* Mersenne Twister stream langdetect uses
  (precomputed once per seed: every document re-seeds, so all read the same words),
  documents of a batch advance in lockstep, and each block of five updates is applied
  with numpy in langdetect's order (sequential products and sum), so every float
  operation is the one langdetect does: results are bit-identical, not just close
  (tests/test_langid.py checks it; 2,197 web docs + sentences agreed exactly).

langdetect is pure Python, so documents are spread over a process pool shared by every
shard task in this Python process (``forkserver`` context: forking a process that runs
Prefect's threads is unsafe).
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Any, Sequence

import multiprocessing as mp
import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.stage import ShardStage

# langdetect's constants (langdetect.detector.Detector).
N_TRIAL = 7
ALPHA_DEFAULT = 0.5
ALPHA_WIDTH = 0.05
ITERATION_LIMIT = 1000
PROB_THRESHOLD = 0.1
CONV_THRESHOLD = 0.99999
BASE_FREQ = 10000
MAX_TEXT_LENGTH = 10000
_SHIFT = np.uint64(21)  # bits per codepoint in a packed n-gram key

# Documents per worker task: the lockstep trials share numpy's per-call overhead across a
# batch, so bigger is faster per document (~600 docs/s/core at 128, ~1,500 at 700).
_MIN_CHUNK = 64
_MAX_CHUNK = 1024


class LangidParams(BaseModel):
    """Parameters of the langid stage."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str] | None = Field(
        default_factory=lambda: ["en"],
        description="ISO 639-1 codes to keep (e.g. ['en', 'fr']); null keeps every language. "
        "langdetect's zh-cn/zh-tw are reported as 'zh'.",
    )
    min_prob: float = Field(
        default=0.65,
        ge=0.0,
        le=1.0,
        description="Minimum probability of the detected language; below it the document is "
        "dropped as langid_low_confidence. langdetect averages 7 random trials, so 0.65 means "
        "roughly 5 of 7 trials agree.",
    )
    prefix_chars: int = Field(
        default=1000,
        gt=0,
        le=MAX_TEXT_LENGTH,
        description="Classify only this many leading characters of each document (bounded cost per document).",
    )
    seed: int = Field(default=0, description="Seed of langdetect's random trials; fixed, so results are reproducible.")
    processes: int = Field(
        default=0,
        ge=0,
        description="Worker processes for detection; 0 = os.cpu_count(), 1 = in this process (no pool).",
    )


# --------------------------------------------------------------------------- profiles


class _Model:
    """langdetect's profiles as arrays: sorted packed n-gram keys and a probability matrix."""

    def __init__(self) -> None:
        from langdetect.detector import Detector
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
        from langdetect.utils.ngram import NGram

        factory = DetectorFactory()
        factory.load_profile(PROFILES_DIRECTORY)
        self.langlist: list[str] = list(factory.langlist)
        words = [w for w in factory.word_lang_prob_map if 1 <= len(w) <= 3]
        keys = np.array([_pack(w) for w in words], dtype=np.uint64)
        order = np.argsort(keys)
        self.keys = keys[order]
        self.prob = np.array([factory.word_lang_prob_map[words[i]] for i in order], dtype=np.float64)
        # Per-codepoint normalisation (NGram.normalize) and isupper of the result, for the BMP.
        cps = range(0x10000)
        norm = [ord(NGram.normalize(chr(c))) if not 0xD800 <= c <= 0xDFFF else c for c in cps]
        self.norm = np.array(norm, dtype=np.uint32)
        self.upper = np.array([chr(c).isupper() for c in norm], dtype=bool)
        self.url_re = Detector.URL_RE
        self.mail_re = Detector.MAIL_RE
        self.normalize_vi = NGram.normalize_vi
        self.n_lang = len(self.langlist)


def _pack(word: str) -> int:
    key = 0
    for ch in word:
        key = (key << 21) | ord(ch)
    return key


@lru_cache(maxsize=1)
def _model() -> _Model:
    return _Model()


_MULTI_SPACE = re.compile(" {2,}")


def _ngram_rows(text: str, m: _Model) -> np.ndarray:
    """Row indices into ``m.prob`` of the n-grams langdetect extracts, in its order."""
    # Detector.append: drop URLs and e-mails, Vietnamese normalisation, cap, collapse spaces.
    text = m.url_re.sub(" ", text)
    text = m.mail_re.sub(" ", text)
    text = m.normalize_vi(text)[:MAX_TEXT_LENGTH]
    text = _MULTI_SPACE.sub(" ", text)
    if not text:
        return np.empty(0, dtype=np.intp)
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    # Detector.cleaning_text: mostly non-Latin text loses its Latin letters.
    latin = (cp >= 0x41) & (cp <= 0x7A)
    non_latin = ~latin & (cp >= 0x300) & ~((cp >= 0x1E00) & (cp <= 0x1EFF))
    if int(latin.sum()) * 2 < int(non_latin.sum()):
        cp = cp[~latin]
        if cp.size == 0:
            return np.empty(0, dtype=np.intp)
    # NGram.normalize per character (outside the BMP it is the identity).
    bmp = cp < 0x10000
    if bmp.all():
        ch = m.norm[cp]
        up = m.upper[ch]
    else:
        ch = np.where(bmp, m.norm[np.where(bmp, cp, 0)], cp)
        up = np.array([chr(c).isupper() for c in ch.tolist()], dtype=bool)
    # NGram state machine: s = ' ' + text; the grams buffer never holds an inner space.
    ch = ch.astype(np.uint64)
    space = np.uint64(32)
    prev = np.concatenate(([space], ch[:-1]))
    prev2 = np.concatenate(([space, space], ch[:-2]))[: ch.size]
    up_prev = np.concatenate(([False], up[:-1]))
    ok = ~(up & up_prev)  # capitalword: two upper-case letters in a row skip the position
    v1 = ok & (ch != space)
    v2 = ok & ~((ch == space) & (prev == space))
    v3 = ok & (prev != space)
    v3[0] = False
    k1 = ch
    k2 = (prev << _SHIFT) | ch
    k3 = (prev2 << (_SHIFT + _SHIFT)) | k2
    keys = np.stack((k1, k2, k3), axis=1)[np.stack((v1, v2, v3), axis=1)]  # (position, n) order
    order = np.argsort(keys, kind="stable")  # sorted queries: cache-friendly search
    pos = np.empty_like(order)
    pos[order] = np.searchsorted(m.keys, keys[order])
    pos[pos == m.keys.size] = 0
    return pos[m.keys[pos] == keys]


@lru_cache(maxsize=4)
def _stream(seed: int, words: int) -> np.ndarray:
    """The first ``words`` 32-bit outputs of ``random.Random(seed)``'s Mersenne Twister.

    langdetect re-seeds its generator with the same seed for every document, so every
    document reads this same stream: ``choice(seq)`` takes ``getrandbits(k) = word >> (32 - k)``
    (k = len(seq).bit_length(), redrawn while >= len(seq)) and ``random()`` takes two words.
    """
    rng = random.Random(seed)
    return np.array([rng.getrandbits(32) for _ in range(words)], dtype=np.uint64)


def _gauss(w: np.ndarray, p: int) -> tuple[float, float]:
    """``random.gauss(0, 1)`` from the words at ``p``: (z, the cached second value), as CPython computes them."""
    a, b, c, d = (int(x) for x in w[p : p + 4])
    r1 = ((a >> 5) * 67108864.0 + (b >> 6)) * (1.0 / 9007199254740992.0)
    r2 = ((c >> 5) * 67108864.0 + (d >> 6)) * (1.0 / 9007199254740992.0)
    x2pi = r1 * math.tau
    g2rad = math.sqrt(-2.0 * math.log(1.0 - r2))
    return 0.0 + math.cos(x2pi) * g2rad * 1.0, math.sin(x2pi) * g2rad


def _trials(rows_list: Sequence[np.ndarray], seed: int, m: _Model) -> np.ndarray:
    """langdetect's ``Detector._detect_block`` for many documents at once: ``(docs, languages)`` probabilities.

    The documents advance in lockstep, one block of updates per step (1 update at the
    start of a trial, then 5, with the convergence check after each block), so numpy's
    per-call overhead is shared by all documents still running. Random draws are read
    from the precomputed stream; a document that needs more of it than ``words`` (only
    when trials hit the iteration limit) is redone with a longer stream.
    """
    n_docs = len(rows_list)
    out = np.zeros((n_docs, m.n_lang))
    todo = list(range(n_docs))
    words = 4096
    while todo:
        probs, overflow = _trials_stream([rows_list[i] for i in todo], _stream(seed, words), m)
        out[todo] = probs
        todo = [todo[i] for i in overflow]
        words *= 4
    return out


def _trials_stream(rows_list: Sequence[np.ndarray], w: np.ndarray, m: _Model) -> tuple[np.ndarray, list[int]]:
    n_docs, n_lang, n_words = len(rows_list), m.n_lang, w.size
    # Per document: the stream positions of accepted choice() draws and the row each picks.
    acc_pos: list[np.ndarray] = []
    picks: list[np.ndarray] = []
    for rows in rows_list:
        n = rows.size
        r = w >> np.uint64(32 - n.bit_length())
        pos = np.flatnonzero(r < n)
        acc_pos.append(pos)
        picks.append(rows[r[pos].astype(np.intp)])
    lengths = np.array([p.size for p in acc_pos])
    off = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    flat_pick = np.concatenate(picks) if picks else np.empty(0, dtype=np.intp)
    flat_pos = np.concatenate(acc_pos) if acc_pos else np.empty(0, dtype=np.intp)

    langprob = np.zeros((n_docs, n_lang))
    prob = np.full((n_docs, n_lang), 1.0 / n_lang)
    z0, g0 = _gauss(w, 0)  # trial 0 starts at word 0 for every document
    weight = np.full(n_docs, (ALPHA_DEFAULT + z0 * ALPHA_WIDTH) / BASE_FREQ)
    gnext = [g0] * n_docs
    cur = np.array([int(np.searchsorted(p, 4)) for p in acc_pos], dtype=np.intp)
    it = np.zeros(n_docs, dtype=np.int64)
    trial = np.zeros(n_docs, dtype=np.int64)
    starting = np.ones(n_docs, dtype=bool)
    active = np.arange(n_docs)
    overflow: list[int] = []
    ar5 = np.arange(5)
    table = m.prob
    while active.size:
        st = starting[active]
        need = np.where(st, 1, 5)
        short = cur[active] + need > lengths[active]
        if short.any():
            overflow.extend(active[short].tolist())
            active, st, need = active[~short], st[~short], need[~short]
            if not active.size:
                break
        k = off[active] + cur[active] + np.minimum(ar5[:, None], need - 1)  # (5, A)
        buf = np.empty((6, active.size, n_lang))  # block position first: contiguous inner loops
        buf[0] = prob[active]
        buf[1:] = table[flat_pick[k]]
        buf[1:] += weight[active, None]
        buf[2:, st] = 1.0  # a start-of-trial block has one update; x * 1.0 is exact
        for j in range(1, 6):  # sequential products, like langdetect's loop
            np.multiply(buf[j - 1], buf[j], out=buf[j])
        new = buf[5]
        cols = np.ascontiguousarray(new.T)  # (languages, A)
        total = cols[0].copy()
        for j in range(1, n_lang):  # Python's sum(): left to right, same rounding
            total += cols[j]
        new /= total[:, None]
        prob[active] = new
        cur[active] += need
        it[active] = np.where(st, 0, it[active] + 5)
        starting[active] = False
        done = (new.max(axis=1) > CONV_THRESHOLD) | (it[active] >= ITERATION_LIMIT)
        if not done.any():
            continue
        fin = active[done]
        langprob[fin] += prob[fin] / N_TRIAL
        trial[fin] += 1
        starting[fin] = True
        keep = np.ones(active.size, dtype=bool)
        for j, d in zip(np.flatnonzero(done).tolist(), fin.tolist()):
            if trial[d] == N_TRIAL:
                keep[j] = False
                continue
            p = int(flat_pos[off[d] + cur[d] - 1]) + 1  # first word after the last draw
            if trial[d] % 2 == 0:  # gauss() draws a fresh pair on even trials, else uses the cached one
                if p + 4 > n_words:
                    overflow.append(d)
                    keep[j] = False
                    continue
                z, gnext[d] = _gauss(w, p)
                p += 4
            else:
                z = gnext[d]
            weight[d] = (ALPHA_DEFAULT + z * ALPHA_WIDTH) / BASE_FREQ
            prob[d] = 1.0 / n_lang
            c = int(cur[d])
            while c < lengths[d] and flat_pos[off[d] + c] < p:  # skip the words gauss() used
                c += 1
            cur[d] = c
        active = active[keep]
    return langprob, overflow


def detect_probs(text: str, seed: int = 0) -> dict[str, float] | None:
    """All languages with probability > 0.1, like ``langdetect.detect_langs``; None if no features."""
    m = _model()
    rows = _ngram_rows(text, m)
    if rows.size == 0:
        return None
    p = _trials([rows], seed, m)[0]
    return {m.langlist[j]: float(p[j]) for j in np.argsort(-p, kind="stable") if p[j] > PROB_THRESHOLD}


def _base(code: str) -> str:
    return code.split("-")[0]


def detect_batch(texts: Sequence[str | None], seed: int) -> list[tuple[str | None, float | None]]:
    """(lang, prob) per text: the top language (zh-cn/zh-tw summed as zh), or (None, None) without features."""
    m = _model()
    rows = [_ngram_rows(t, m) if t else np.empty(0, dtype=np.intp) for t in texts]
    has = [i for i, r in enumerate(rows) if r.size]
    probs = _trials([rows[i] for i in has], seed, m) if has else np.zeros((0, m.n_lang))
    out: list[tuple[str | None, float | None]] = [(None, None)] * len(texts)
    for i, p in zip(has, probs):
        by_base: dict[str, float] = {}
        for lang, q in zip(m.langlist, p.tolist()):
            b = _base(lang)
            by_base[b] = by_base.get(b, 0.0) + q
        lang = max(by_base, key=by_base.__getitem__)
        out[i] = (lang, min(by_base[lang], 1.0))
    return out


# --------------------------------------------------------------------------- process pool

_POOL: ProcessPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _warm() -> int:
    _model()
    return os.getpid()


def _pool(processes: int) -> ProcessPoolExecutor:
    """The process pool shared by every langid shard task in this Python process."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != processes:
            if _POOL is not None:
                _POOL.shutdown(wait=False, cancel_futures=False)
            # forkserver: workers are forked from a clean single-threaded server, never from
            # this process (which runs Prefect's threads, so fork() could copy a held lock).
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            _POOL = ProcessPoolExecutor(processes, mp_context=mp.get_context(method), initializer=_model)
            _POOL_SIZE = processes
        return _POOL


def shutdown_pool() -> None:
    """Stop the shared worker processes (tests and benchmarks; they also end with the interpreter)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True)
            _POOL = None


def detect_all(texts: list[str | None], seed: int, processes: int) -> list[tuple[str | None, float | None]]:
    """``detect_batch`` over many texts, on the shared process pool when there is work for it."""
    n = processes or os.cpu_count() or 1
    # A daemonic process (a Dask or Ray worker) may not start children; there the
    # cluster's workers are the parallelism, so detect in this process.
    if n <= 1 or len(texts) <= _MIN_CHUNK or mp.current_process().daemon:
        return detect_batch(texts, seed)
    pool = _pool(n)
    size = min(_MAX_CHUNK, max(_MIN_CHUNK, -(-len(texts) // n)))
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    out: list[tuple[str | None, float | None]] = []
    for part in pool.map(detect_batch, chunks, [seed] * len(chunks)):
        out.extend(part)
    return out


# --------------------------------------------------------------------------- the stage


def apply_langid(docs: pl.DataFrame, params: Any) -> pl.DataFrame:
    """Add ``lang`` and ``lang_prob``; reason ``langid_no_text``, ``langid_not_<xx>`` or ``langid_low_confidence``."""
    p = params if isinstance(params, LangidParams) else LangidParams.model_validate(params or {})
    prefixes = docs.get_column("text").str.slice(0, p.prefix_chars).to_list()
    results = detect_all(prefixes, p.seed, p.processes)
    lang = pl.Series("lang", [r[0] for r in results], dtype=pl.String)
    prob = pl.Series("lang_prob", [r[1] for r in results], dtype=pl.Float64)
    out = docs.with_columns(lang, prob)
    allowed = p.languages
    not_allowed = pl.lit(False) if allowed is None else ~pl.col("lang").is_in(allowed)
    reason = (
        pl.when(pl.col("lang").is_null())
        .then(pl.lit("langid_no_text"))
        .when(not_allowed)
        .then(pl.lit("langid_not_") + pl.col("lang"))
        .when(pl.col("lang_prob") < p.min_prob)
        .then(pl.lit("langid_low_confidence"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    detail = (
        pl.when(pl.col("lang").is_not_null())
        .then(pl.format("{} p={}", pl.col("lang"), pl.col("lang_prob").round(4)))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return out.with_columns(reason.alias("reason"), pl.when(reason.is_not_null()).then(detail).alias("detail"))


LANGID_STAGE = ShardStage(name="langid", version="1", apply=apply_langid)

__all__ = ["LangidParams", "LANGID_STAGE", "apply_langid", "detect_probs", "detect_batch", "shutdown_pool"]
