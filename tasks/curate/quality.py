"""Stage 4, quality: the Gopher repetition, Gopher quality, C4 and FineWeb heuristics.

The rules, thresholds, defaults and drop reasons follow datatrove's filters
(huggingface/datatrove, Apache-2.0: ``pipeline/filters/gopher_repetition_filter.py``,
``gopher_quality_filter.py``, ``c4_filters.py`` (``C4QualityFilter``) and
``fineweb_quality_filter.py``), run in that order, as datatrove's pipelines do:

    Gopher repetition -> Gopher quality -> C4 -> FineWeb

The first failing rule names the reason (``gopher_short_doc``, ``c4_lorem_ipsum``,
``fineweb_list_ratio``...). Every signal a rule reads is kept as a column
(``gopher_*``, ``c4_*``, ``fineweb_*``, all numeric and >= 0), so a threshold can be
judged, or changed, from the data alone.

Signals are computed column-wise with polars over the whole shard; the only
per-document Python is the duplicated n-gram walk of Gopher repetition, and it
visits only the positions whose n-gram occurs more than once in its document.

Deviations from datatrove, all for speed and all measured by
``benchmarks/quality_vs_datatrove.py``:

- Words: datatrove tokenizes English with spaCy (``spacy.blank("en")``); here one
  regex approximates spaCy's rules (punctuation split off words, ``n't``/``'s``
  contractions split, hyphens between words as tokens, numbers, URLs, e-mails and
  common abbreviations kept whole). polars extracts with a small pattern and falls back to
  the full one only for the whitespace-separated pieces where the two disagree.
- Sentences (C4's ``min_num_sentences``): datatrove runs spaCy's sentencizer on every
  kept line; here a sentence ends at ``.``/``!``/``?`` standing as a token before the
  next word, which is what the sentencizer does on spaCy's tokens.
- Duplicated n-grams are compared by a 64-bit hash of their words, not by the joined
  string (datatrove's ``"".join`` also equates ``["ab", "c"]`` with ``["a", "bc"]``).
- C4 rewrites ``text`` to its kept lines in datatrove; here ``text`` is left as it came
  unless ``c4.rewrite_text`` is set. FineWeb reads the text as C4 leaves it either way
  (as in datatrove's sequence) when C4 is enabled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.stage import ShardStage

QUALITY_VERSION = "1"

# --- character classes copied from datatrove/utils/text.py -------------------------------

# datatrove's PUNCTUATION (ASCII/CJK punctuation and control characters).
_PUNCTUATION = (
    "!/\u2014\u201d:\uff05\uff11\u3008&(\u3001\u2501\\\u3010#%\u300c\u300d\uff0c\u3011\uff1b+^]~\u201c\u300a\u201e';"
    "\u2019{|\u2236\xb4[=-`*\uff0e\uff08\u2013\uff1f\uff01\uff1a$\uff5e\xab\u3009,><\u300b)?\uff09\u3002\u2026@_.\"}"
    "\u25ba\xbb" + "".join(map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))))
)
# datatrove's TERMINAL_PUNCTUATION (sentence-ending marks of many scripts).
TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a\u104b"
    "\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa"
    "\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c"
    "\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f"
    "\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57"
    "\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0"
    "\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239"
    "\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc"
    "\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7"
    "\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c"
    "\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38"
    "\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
PUNCTUATION_SET = frozenset(_PUNCTUATION) | frozenset(TERMINAL_PUNCTUATION)


def _char_class(chars: str | frozenset[str], negate: bool = False) -> str:
    """A regex character class (Rust syntax) matching exactly ``chars``."""
    body = "".join(f"\\x{{{ord(c):x}}}" for c in sorted(set(chars)))
    return f"[{'^' if negate else ''}{body}]"


_NON_PUNCT = _char_class(PUNCTUATION_SET, negate=True)
_ENDS_TERMINAL = _char_class(TERMINAL_PUNCTUATION) + r"\z"

# --- an approximation of spaCy's English word tokenizer ------------------------------------

# spaCy splits "don't" -> "do n't" and "John's" -> "John 's"; a space is inserted first so
# the token regex below (which has no look-around) can do the same.
_SPLIT_NT = (r"(?i)(n['\u2019]t)([^\w]|$)", " ${1}${2}")
# "'s" becomes " \x02s": the apostrophe is swapped for a marker that the token regex keeps
# with the clitic (a quote before a word, as in "'start", stays a token of its own).
_SPLIT_CLITIC = (r"(?i)['\u2019]((?:s|m|d|re|ve|ll)(?:[^\w]|$))", " \x02${1}")
# Tokenizer exceptions that keep their period.
_ABBREVIATIONS = (
    "Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|etc|Inc|Ltd|Co|Corp|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
    "|Mt|Gen|Gov|Sen|Rep|Rev|Fig|No|Ave|Ph\\.D"
)
# "Mr." becomes "Mr\x03": a marker the word pattern keeps (one token, as spaCy's exception).
_MARK_ABBREVIATION = (rf"(^|[^\w])({_ABBREVIATIONS})\.", "${1}${2}\x03")
TOKEN_PATTERN = "|".join(
    [
        r"(?:https?://|www\.)\S*[^\s.,;:!?)\]\"'\u201d\u2019>]",  # URL (trailing punctuation split off)
        r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+",  # e-mail
        r"@\w+",  # handle
        r"\.{2,}",  # ellipsis
        r"-{2,}",  # -- and ---
        r"(?:\p{L}\.){2,}",  # U.S.  e.g.  a.m.
        r"\p{Lu}\.",  # initials: "J. Smith"
        r"\p{N}+(?:[.,:/]\p{N}+)+\w*",  # 3.5  1,000  10:30  6.10am
        r"\x02\w+",  # clitics split off above ("'s" marked as "\x02s")
        r"\w+(?:['\u2019]\w+|\.[\p{Ll}\p{N}]\w*)*\x03?",  # words; n't; O'Neil; example.com; Mr. (marked)
        r"\S",  # any other character is a token of its own (punctuation, symbols)
    ]
)

# C4 sentence count: spaCy's sentencizer starts a sentence at the first non-punctuation
# token after a "." / "!" / "?" token. A period is its own token after a lowercase
# letter, a digit, a closing bracket or quote, or two capitals ("USA."), and inside
# "lower.Upper"; abbreviations ("Mr.", "e.g.") keep theirs and are removed first.
_SENTENCE_ABBREV = (rf"(^|[^\w])({_ABBREVIATIONS}|e\.g|i\.e|a\.m|p\.m)\.", "${1}${2}")
SENTENCE_BREAK = (
    r"(?:(?:[\p{Ll}\p{N}%)\]\"'\u201d\u2019]|\p{Lu}\p{Lu})\.|[!?])"
    r"[\"'\u201d\u2019)\]]*\s+[\"'\u201c\u2018(\[]*[^\s\p{P}]"
    r"|\p{Ll}\.\p{Lu}"
)

# C4 (datatrove c4_filters.py)
CITATION_PATTERN = r"\[\d*]|\[edit]|\[citation needed]"
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

# Python's str.splitlines() boundaries, folded into "\n".
_LINE_BREAKS = r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


# --- parameters ------------------------------------------------------------------------------


class _Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run this filter at all.")


class GopherRepetition(_Filter):
    """Gopher repetition (Rae et al. 2021, table A1). A rule whose threshold is None is off."""

    dup_para_frac: float | None = Field(0.3, description="Max fraction of paragraphs that repeat an earlier one.")
    dup_para_char_frac: float | None = Field(0.2, description="Max fraction of characters in repeated paragraphs.")
    dup_line_frac: float | None = Field(0.3, description="Max fraction of lines that repeat an earlier one.")
    dup_line_char_frac: float | None = Field(0.2, description="Max fraction of characters in repeated lines.")
    top_2_gram_frac: float | None = Field(0.2, description="Max character fraction of the most frequent word 2-gram.")
    top_3_gram_frac: float | None = Field(0.18, description="Max character fraction of the most frequent word 3-gram.")
    top_4_gram_frac: float | None = Field(0.16, description="Max character fraction of the most frequent word 4-gram.")
    dup_5_gram_frac: float | None = Field(0.15, description="Max character fraction in duplicated word 5-grams.")
    dup_6_gram_frac: float | None = Field(0.14, description="Max character fraction in duplicated word 6-grams.")
    dup_7_gram_frac: float | None = Field(0.13, description="Max character fraction in duplicated word 7-grams.")
    dup_8_gram_frac: float | None = Field(0.12, description="Max character fraction in duplicated word 8-grams.")
    dup_9_gram_frac: float | None = Field(0.11, description="Max character fraction in duplicated word 9-grams.")
    dup_10_gram_frac: float | None = Field(0.10, description="Max character fraction in duplicated word 10-grams.")


class GopherQuality(_Filter):
    """Gopher quality rules (Rae et al. 2021). A rule whose threshold is None is off."""

    min_doc_words: int | None = Field(50, description="Min words (tokens with a non-punctuation character).")
    max_doc_words: int | None = Field(100_000, description="Max words (tokens with a non-punctuation character).")
    min_avg_word_length: float | None = Field(3, description="Min mean word length in characters.")
    max_avg_word_length: float | None = Field(10, description="Max mean word length in characters.")
    max_symbol_word_ratio: float | None = Field(0.1, description="Max count of '#', and of '...'/'…', per token.")
    max_bullet_lines_ratio: float | None = Field(0.9, description="Max fraction of lines starting with '•' or '-'.")
    max_ellipsis_lines_ratio: float | None = Field(0.3, description="Max fraction of lines ending with '...' or '…'.")
    max_non_alpha_words_ratio: float | None = Field(
        0.8, description="Min fraction of tokens with an alphabetic character (datatrove's name for it)."
    )
    min_stop_words: int | None = Field(2, description="Min number of distinct stop words present.")
    stop_words: list[str] = Field(list(STOP_WORDS), description="The stop words (matched case-sensitively).")


class C4(_Filter):
    """C4 rules (Raffel et al. 2020) as datatrove's C4QualityFilter: line-level rules, then page-level ones."""

    remove_citations: bool = Field(True, description="Strip Wikipedia citations ([1], [edit]) from lines.")
    filter_no_terminal_punct: bool = Field(True, description="Drop lines not ending in . ? ! \" ' (or ending in ...).")
    min_num_sentences: int | None = Field(5, description="Drop pages with fewer sentences in their kept lines.")
    min_words_per_line: int | None = Field(3, description="Drop lines with fewer whitespace-separated words.")
    max_word_length: int | None = Field(1000, description="Drop lines with a word longer than this many characters.")
    filter_lorem_ipsum: bool = Field(True, description="Drop pages with 'lorem ipsum' in a kept line.")
    filter_javascript: bool = Field(True, description="Drop lines mentioning 'javascript'.")
    filter_curly_bracket: bool = Field(True, description="Drop pages with '{' in a kept line.")
    filter_policy: bool = Field(True, description="Drop lines mentioning terms of use / privacy / cookie policies.")
    rewrite_text: bool = Field(
        False, description="Store only C4's kept lines as the text of kept documents (datatrove does)."
    )


class FineWeb(_Filter):
    """FineWeb's own rules (Penedo et al. 2024). A rule whose threshold is None is off."""

    line_punct_thr: float | None = Field(0.12, description="Min fraction of lines ending in terminal punctuation.")
    line_punct_exclude_zero: bool = Field(False, description="Keep documents where no line ends in punctuation.")
    short_line_thr: float | None = Field(0.67, description="Max fraction of lines of at most short_line_length chars.")
    short_line_length: int = Field(30, description="A line this long or shorter is short.")
    char_duplicates_ratio: float | None = Field(0.01, description="Max fraction of characters in repeated lines.")
    new_line_ratio: float | None = Field(0.3, description="Max newlines per word.")


class QualityParams(BaseModel):
    """The quality stage's settings: one block per filter, datatrove's defaults throughout."""

    model_config = ConfigDict(extra="forbid")

    gopher_repetition: GopherRepetition = Field(default_factory=GopherRepetition)
    gopher_quality: GopherQuality = Field(default_factory=GopherQuality)
    c4: C4 = Field(default_factory=C4)
    fineweb: FineWeb = Field(default_factory=FineWeb)


# --- signals -----------------------------------------------------------------------------

TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)


@dataclass(frozen=True)
class Rule:
    reason: str
    fails: pl.Expr
    detail: pl.Expr


def _ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, 0 where den is 0 (datatrove would divide by zero there; an earlier rule fires first)."""
    return pl.when(den > 0).then(num / den).otherwise(0.0)


def _explode(lists: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Flatten a List[String] series: (each element's row, the elements)."""
    n = lists.list.len().fill_null(0).to_numpy()
    return np.repeat(np.arange(len(lists)), n), lists.explode(empty_as_null=False, keep_nulls=False)


_DOC_MIX = np.uint64(0x9E3779B97F4A7C15)


def _keys(doc: np.ndarray, h: np.ndarray) -> pl.Series:
    """Hash keys that differ between documents: equal keys mean equal items in one document."""
    return pl.Series(h + doc.astype(np.uint64) * _DOC_MIX)  # wraps modulo 2**64


def _dup_counts(doc: np.ndarray, items: pl.Series, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """datatrove's find_duplicates per document: (items equal to an earlier one, their characters)."""
    if len(items) == 0:
        return np.zeros(n_docs), np.zeros(n_docs)
    later = (~_keys(doc, items.hash(seed=0).to_numpy()).is_first_distinct()).to_numpy()
    chars = items.str.len_chars().to_numpy()
    return (
        np.bincount(doc, weights=later, minlength=n_docs),
        np.bincount(doc, weights=chars * later, minlength=n_docs),
    )


def tokenize(text: pl.Series) -> pl.Series:
    """Words as datatrove's English tokenizer (spaCy) would give them, approximately: List[String]."""
    return _prep(text).str.extract_all(TOKEN_PATTERN)


# Every TOKEN_PATTERN token is a run of consecutive SIMPLE_TOKEN tokens, so where both
# patterns count the same tokens in a piece they tokenize it the same way.
SIMPLE_TOKEN = r"\w+|\S"


def _flat_tokens(text: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """tokenize(text), flattened: (each word's row, the words).

    polars' extract_all is slow with the full pattern (counting with it is fast), so the
    text is cut at whitespace (tokens never span it), pure-word pieces are tokens as
    they are, and the full pattern extracts only from pieces that the simple one would
    split differently.
    """
    pieces = _prep(text).str.replace_all(r"\s+", " ").str.split(" ")
    p_doc, flat = _explode(pieces)
    plain = flat.str.contains(r"^\w+\z").to_numpy()
    other = np.flatnonzero(~plain)
    sub = flat.gather(other)
    hard = (sub.str.count_matches(TOKEN_PATTERN) != sub.str.count_matches(SIMPLE_TOKEN)).to_numpy()
    easy_idx, hard_idx = other[~hard], other[hard]
    easy = sub.filter(pl.Series(~hard)).str.extract_all(SIMPLE_TOKEN)
    full = sub.filter(pl.Series(hard)).str.extract_all(TOKEN_PATTERN)
    plain_idx = np.flatnonzero(plain)
    key = np.concatenate(
        [plain_idx, np.repeat(easy_idx, easy.list.len().to_numpy()), np.repeat(hard_idx, full.list.len().to_numpy())]
    )
    words = pl.concat(
        [
            flat.gather(plain_idx),
            easy.explode(empty_as_null=False, keep_nulls=False),
            full.explode(empty_as_null=False, keep_nulls=False),
        ]
    )
    order = np.argsort(key, kind="stable")  # back to text order
    return p_doc[key[order]], words.gather(order)


def count_tokens(text: pl.Series) -> np.ndarray:
    """len(tokenize(text)) per row, without materializing the words (much faster)."""
    return _prep(text).str.count_matches(TOKEN_PATTERN).fill_null(0).to_numpy()


def _prep(text: pl.Series) -> pl.Series:
    """Mark what the token regex cannot see without look-around (it is faster kept small)."""
    return (
        text.str.replace_all("\x02", "\x01", literal=True)
        .str.replace_all("\x03", "\x01", literal=True)
        .str.replace_all(*_SPLIT_NT)
        .str.replace_all(*_SPLIT_CLITIC)
        .str.replace_all(*_MARK_ABBREVIATION)
    )


def _repetition_signals(text: pl.Series, n_chars: np.ndarray) -> dict[str, np.ndarray]:
    """Paragraph and line duplicates (Gopher repetition)."""
    n_docs = len(text)
    # re.split(r"\n{2,}", text.strip()); a stripped text has no empty paragraph unless it is "".
    paras = text.str.replace_all("\x00", "\x01", literal=True).str.strip_chars()
    paras = paras.str.replace_all(r"\n{2,}", "\x00").str.split("\x00")
    p_doc, p_items = _explode(paras)
    p_dup, p_chars = _dup_counts(p_doc, p_items, n_docs)
    n_paras = np.maximum(paras.list.len().to_numpy(), 1)
    # re.split("\n+", text): runs of non-newlines, plus "" before a leading and after a trailing newline.
    l_doc, l_items = _explode(text.str.split("\n"))
    nonempty = (l_items != "").to_numpy()
    l_dup, l_chars = _dup_counts(l_doc[nonempty], l_items.filter(pl.Series(nonempty)), n_docs)
    lead = text.str.starts_with("\n").to_numpy().astype(np.int64)
    trail = text.str.ends_with("\n").to_numpy().astype(np.int64)
    n_lines = np.bincount(l_doc[nonempty], minlength=n_docs) + lead + trail
    denom = np.maximum(n_chars, 1)
    return {
        "gopher_dup_para_frac": p_dup / n_paras,
        "gopher_dup_para_char_frac": p_chars / denom,
        "gopher_dup_line_frac": (l_dup + lead * trail) / np.maximum(n_lines, 1),
        "gopher_dup_line_char_frac": l_chars / denom,
    }


def _ngram_signals(doc: np.ndarray, words: pl.Series, n_docs: int, n_chars: np.ndarray) -> dict[str, np.ndarray]:
    """Top and duplicated word n-gram character fractions (Gopher repetition).

    ``doc`` gives each word's document; words of a document are contiguous and in order.
    Only n-grams occurring twice or more in their document are looked at closely.
    """
    out: dict[str, np.ndarray] = {}
    n_words = len(words)
    pos = np.arange(n_words, dtype=np.int64)
    counts = np.bincount(doc, minlength=n_docs)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    doc_end = (starts + counts)[doc]  # exclusive end of each word's document
    h = words.hash(seed=0).to_numpy().astype(np.uint64)
    lens = words.str.len_chars().to_numpy().astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(lens)])
    denom = np.maximum(n_chars, 1).astype(np.float64)

    # An n-gram can only repeat where its (n-1)-gram prefix repeats, so each n looks only
    # at the positions that repeated for n-1: after n=2 that is a small fraction of the words.
    cand = pos  # positions still able to start a repeated n-gram
    gram = h.copy()  # hash of the n words starting at each candidate, built up n by n
    prime = np.uint64(0x100000001B3)
    for n in range(2, max(DUP_NGRAMS) + 1):
        ok = cand + n <= doc_end[cand]
        cand, gram = cand[ok], gram[ok]
        gram = gram * prime + h[cand + n - 1]  # wraps modulo 2**64, as intended
        d = doc[cand]
        repeated = _keys(d, gram).is_duplicated().to_numpy() if len(cand) else np.zeros(0, dtype=bool)
        cand, gram, d = cand[repeated], gram[repeated], d[repeated]
        chars = csum[cand + n] - csum[cand]  # len("".join(words[i:i+n]))
        g = pl.DataFrame({"doc": d, "gram": gram, "pos": cand, "chars": chars})
        if n in TOP_NGRAMS:
            # Counter.most_common(1): the most frequent n-gram, the earliest one on ties;
            # its len(" ".join(ngram)) * count. Where no n-gram repeats, that is the first one.
            val = np.zeros(n_docs)
            has = counts >= n
            val[has] = csum[starts[has] + n] - csum[starts[has]] + (n - 1)
            if g.height:
                top = (
                    g.group_by("doc", "gram")
                    .agg(cnt=pl.len(), first=pl.col("pos").min(), chars=pl.col("chars").first())
                    .sort(["doc", "cnt", "first"], descending=[False, True, False])
                    .group_by("doc", maintain_order=True)
                    .first()
                )
                val[top["doc"].to_numpy()] = ((top["chars"] + (n - 1)) * top["cnt"]).to_numpy()
            out[f"{n}"] = val / denom
        if n in DUP_NGRAMS:
            out[f"{n}"] = _dup_ngram_chars(g, n, n_docs) / denom
    return out


def _dup_ngram_chars(g: pl.DataFrame, n: int, n_docs: int) -> np.ndarray:
    """datatrove's find_all_duplicate: walk the words, skipping n after each repeated n-gram.

    ``g`` holds only the positions whose n-gram occurs at least twice in their document:
    a unique n-gram is added to the seen set and never met again, so it cannot change the walk.
    """
    out = np.zeros(n_docs)
    if g.height == 0:
        return out
    docs = g["doc"].to_numpy()
    pos = g["pos"].to_numpy()
    grams = g["gram"].to_numpy()
    chars = g["chars"].to_numpy()
    bounds = np.flatnonzero(np.diff(docs)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(docs)]):
        seen: set[int] = set()
        total, idx = 0, -1
        for p, gm, c in zip(pos[lo:hi].tolist(), grams[lo:hi].tolist(), chars[lo:hi].tolist()):
            if p < idx:
                continue
            if gm in seen:
                total += c
                idx = p + n
            else:
                seen.add(gm)
                idx = p + 1
        out[docs[lo]] = total
    return out


def _word_signals(doc: np.ndarray, words: pl.Series, n_docs: int, stop_words: list[str]) -> dict[str, np.ndarray]:
    """Per-document word counts for Gopher quality, from the flat words and their documents."""
    n_tok = np.bincount(doc, minlength=n_docs)
    non_symbol = words.str.contains(_NON_PUNCT).to_numpy()
    alpha = words.str.contains(r"\p{L}").to_numpy()
    lens = words.str.len_chars().to_numpy()
    n_non_symbol = np.bincount(doc, weights=non_symbol, minlength=n_docs)
    len_non_symbol = np.bincount(doc, weights=lens * non_symbol, minlength=n_docs)
    n_alpha = np.bincount(doc, weights=alpha, minlength=n_docs)
    n_stop = np.zeros(n_docs)
    for sw in set(stop_words):
        n_stop += np.bincount(doc, weights=(words == sw).to_numpy(), minlength=n_docs) > 0
    sig = {
        "n_words": n_tok.astype(np.float64),
        "n_non_symbol": n_non_symbol,
        "avg_len": np.divide(len_non_symbol, n_non_symbol, out=np.zeros(n_docs), where=n_non_symbol > 0),
        "alpha_ratio": np.divide(n_alpha, n_tok, out=np.zeros(n_docs), where=n_tok > 0),
        "stop_words": n_stop,
    }
    return sig


def _c4_lines(text: pl.Series, p: C4) -> pl.DataFrame:
    """C4's line rules: per document, the first page-level drop (1 lorem, 2 curly), sentences and kept text."""
    norm = text.str.replace_all(_LINE_BREAKS, "\n")
    n_docs = len(text)
    # str.splitlines(): no empty last line after a trailing newline, no lines at all in "".
    split = norm.str.strip_suffix("\n").str.split("\n")
    lines = (
        pl.DataFrame({"doc": np.arange(n_docs), "line": split, "empty": norm == ""})
        .filter(~pl.col("empty"))
        .drop("empty")
        .explode("line", empty_as_null=False, keep_nulls=False)
    )
    line = pl.col("line").str.strip_chars()
    lines = lines.with_columns(
        n_words=line.str.count_matches(r"\S+"),
        clean=line.str.replace_all(CITATION_PATTERN, "") if p.remove_citations else line,
    )
    too_long = pl.lit(False)
    if p.max_word_length is not None:
        # Only lines longer than the limit can hold such a word: check those in Python.
        long_lines = lines.with_row_index("i").filter(pl.col("line").str.len_chars() > p.max_word_length)
        bad = [
            i
            for i, s in zip(long_lines["i"].to_list(), long_lines["line"].to_list())
            if any(len(w) > p.max_word_length for w in s.split())
        ]
        too_long = pl.int_range(pl.len()).is_in(pl.Series(bad, dtype=pl.Int64)) if bad else pl.lit(False)
    clean = pl.col("clean")
    low = clean.str.to_lowercase()
    valid = ~too_long
    if p.filter_no_terminal_punct:
        valid = valid & clean.str.contains(r"[.?!\"']\z") & ~clean.str.ends_with("...")
    if p.min_words_per_line is not None:
        valid = valid & (pl.col("n_words") >= p.min_words_per_line)
    lorem = valid & low.str.contains("lorem ipsum", literal=True) if p.filter_lorem_ipsum else pl.lit(False)
    js = low.str.contains("javascript", literal=True) if p.filter_javascript else pl.lit(False)
    curly = valid & ~js & clean.str.contains("{", literal=True) if p.filter_curly_bracket else pl.lit(False)
    policy = low.str.contains("|".join(POLICY_SUBSTRINGS)) if p.filter_policy else pl.lit(False)
    kept = valid & ~lorem & ~js & ~curly & ~policy
    sentences = 1 + clean.str.replace_all(*_SENTENCE_ABBREV).str.count_matches(SENTENCE_BREAK)
    lines = lines.with_columns(
        drop=pl.when(lorem).then(1).when(curly).then(2).otherwise(0),
        kept=kept,
    ).with_columns(sentences=pl.when(pl.col("kept")).then(sentences).otherwise(0))
    per_doc = lines.group_by("doc").agg(
        page_drop=pl.col("drop").filter(pl.col("drop") > 0).first(),
        c4_num_sentences=pl.col("sentences").sum(),
        c4_kept_lines=pl.col("kept").sum(),
        c4_text=pl.col("clean").filter(pl.col("kept")).str.join("\n").str.strip_chars(),
    )
    return (
        pl.DataFrame({"doc": np.arange(n_docs)})
        .join(per_doc, on="doc", how="left")
        .sort("doc")
        .with_columns(
            pl.col("page_drop").fill_null(0),
            pl.col("c4_num_sentences").fill_null(0).cast(pl.Int64),
            pl.col("c4_kept_lines").fill_null(0).cast(pl.Int64),
            pl.col("c4_text").fill_null(""),
        )
    )


def _fineweb_signals(text: pl.Series, p: FineWeb) -> dict[str, np.ndarray]:
    n_docs = len(text)
    l_doc, lines = _explode(text.str.split("\n"))
    nonblank = (lines.str.strip_chars() != "").to_numpy()
    l_doc, lines = l_doc[nonblank], lines.filter(pl.Series(nonblank))
    n = np.bincount(l_doc, minlength=n_docs)
    punct = np.bincount(l_doc, weights=lines.str.contains(_ENDS_TERMINAL).to_numpy(), minlength=n_docs)
    short = np.bincount(
        l_doc, weights=(lines.str.len_chars() <= p.short_line_length).to_numpy(), minlength=n_docs
    )
    _, dup_chars = _dup_counts(l_doc, lines, n_docs)
    n_newlines = text.str.count_matches("\n", literal=True).to_numpy()
    n_words = count_tokens(text)
    n1 = np.maximum(n, 1)
    return {
        "fineweb_lines": n,
        "fineweb_line_punct_ratio": punct / n1,
        "fineweb_short_line_ratio": short / n1,
        "fineweb_char_dup_ratio": dup_chars / np.maximum(text.str.len_chars().to_numpy() - n_newlines, 1),
        "fineweb_list_ratio": n_newlines / np.maximum(n_words, 1),
    }


# --- the stage -----------------------------------------------------------------------------


def _gt(col: str, thr: float | None, name: str) -> Rule | None:
    if not thr:  # datatrove: `if self.threshold and ...` (None or 0 switches a rule off)
        return None
    return Rule(name, pl.col(col) > thr, pl.format(f"{col}={{}} > {thr}", pl.col(col).round(4)))


def _lt(col: str, thr: float | None, name: str) -> Rule | None:
    if not thr:
        return None
    return Rule(name, pl.col(col) < thr, pl.format(f"{col}={{}} < {thr}", pl.col(col).round(4)))


def _rules(params: QualityParams) -> list[Rule]:
    """Every enabled rule, in datatrove's order; the first that fails names the reason."""
    rules: list[Rule | None] = []
    r = params.gopher_repetition
    if r.enabled:
        rules.append(Rule("gopher_empty", pl.col("_n_chars") == 0, pl.lit("empty text")))
        rules += [
            _gt("gopher_dup_para_frac", r.dup_para_frac, "gopher_dup_para_frac"),
            _gt("gopher_dup_para_char_frac", r.dup_para_char_frac, "gopher_dup_para_char_frac"),
            _gt("gopher_dup_line_frac", r.dup_line_frac, "gopher_dup_line_frac"),
            _gt("gopher_dup_line_char_frac", r.dup_line_char_frac, "gopher_dup_line_char_frac"),
        ]
        for n in TOP_NGRAMS:
            rules.append(_gt(f"gopher_top_{n}_gram_frac", getattr(r, f"top_{n}_gram_frac"), f"gopher_top_{n}_gram"))
        for n in DUP_NGRAMS:
            rules.append(
                _gt(f"gopher_dup_{n}_gram_frac", getattr(r, f"dup_{n}_gram_frac"), f"gopher_duplicated_{n}_n_grams")
            )
    q = params.gopher_quality
    if q.enabled:
        rules += [
            _lt("gopher_n_words", q.min_doc_words, "gopher_short_doc"),
            _gt("gopher_n_words", q.max_doc_words, "gopher_long_doc"),
            _lt("gopher_avg_word_length", q.min_avg_word_length, "gopher_below_avg_threshold"),
            _gt("gopher_avg_word_length", q.max_avg_word_length, "gopher_above_avg_threshold"),
            _gt("gopher_hash_ratio", q.max_symbol_word_ratio, "gopher_too_many_hashes"),
            _gt("gopher_ellipsis_ratio", q.max_symbol_word_ratio, "gopher_too_many_ellipsis"),
            _gt("gopher_bullet_lines_ratio", q.max_bullet_lines_ratio, "gopher_too_many_bullets"),
            _gt("gopher_end_ellipsis_lines_ratio", q.max_ellipsis_lines_ratio, "gopher_too_many_end_ellipsis"),
            _lt("gopher_alpha_words_ratio", q.max_non_alpha_words_ratio, "gopher_below_alpha_threshold"),
            _lt("gopher_stop_words", q.min_stop_words, "gopher_enough_stop_words"),
        ]
    c = params.c4
    if c.enabled:
        rules += [
            Rule("c4_lorem_ipsum", pl.col("_c4_page_drop") == 1, pl.lit("'lorem ipsum' in a kept line")),
            Rule("c4_curly_bracket", pl.col("_c4_page_drop") == 2, pl.lit("'{' in a kept line")),
        ]
        if c.min_num_sentences is not None and c.min_num_sentences != -1:
            rules.append(_lt("c4_num_sentences", c.min_num_sentences, "c4_too_few_sentences"))
    f = params.fineweb
    if f.enabled:
        rules.append(Rule("fineweb_empty", pl.col("fineweb_lines") == 0, pl.lit("no non-blank lines")))
        if f.line_punct_thr is not None:
            fails = pl.col("fineweb_line_punct_ratio") < f.line_punct_thr
            if f.line_punct_exclude_zero:
                fails = fails & (pl.col("fineweb_line_punct_ratio") != 0)
            rules.append(
                Rule(
                    "fineweb_line_punct_ratio",
                    fails,
                    pl.format(f"fineweb_line_punct_ratio={{}} < {f.line_punct_thr}", pl.col("fineweb_line_punct_ratio").round(4)),
                )
            )
        rules += [
            _gt("fineweb_short_line_ratio", f.short_line_thr, "fineweb_short_line_ratio"),
            _gt("fineweb_char_dup_ratio", f.char_duplicates_ratio, "fineweb_char_dup_ratio"),
            _gt("fineweb_list_ratio", f.new_line_ratio, "fineweb_list_ratio"),
        ]
    return [r for r in rules if r is not None]


def quality_signals(docs: pl.DataFrame, params: QualityParams) -> pl.DataFrame:
    """The signal columns (one row per document, in order), plus private ``_*`` helper columns."""
    n_docs = docs.height
    text = docs["text"].fill_null("").cast(pl.String)
    n_chars = text.str.len_chars().cast(pl.Int64)
    norm = text.str.replace_all(_LINE_BREAKS, "\n")  # for str.splitlines() semantics
    doc, flat = _flat_tokens(text)
    words = _word_signals(doc, flat, n_docs, params.gopher_quality.stop_words)
    n_tok = np.maximum(words["n_words"], 1)
    line_count = (norm.str.count_matches("\n", literal=True) + 1 - norm.str.ends_with("\n").cast(pl.UInt32)).to_numpy()
    line_count = np.where(n_chars.to_numpy() > 0, line_count, 0)
    lc = np.maximum(line_count, 1)

    ngrams = _ngram_signals(doc, flat, n_docs, n_chars.to_numpy())
    c4 = _c4_lines(text, params.c4)
    fw_text = c4["c4_text"] if params.c4.enabled else text
    return pl.DataFrame(
        {
            **_repetition_signals(text, n_chars.to_numpy()),
            **{f"gopher_top_{n}_gram_frac": ngrams[f"{n}"] for n in TOP_NGRAMS},
            **{f"gopher_dup_{n}_gram_frac": ngrams[f"{n}"] for n in DUP_NGRAMS},
            "gopher_n_words": pl.Series(words["n_non_symbol"]).cast(pl.Int64),
            "gopher_avg_word_length": words["avg_len"],
            "gopher_hash_ratio": text.str.count_matches("#", literal=True).to_numpy() / n_tok,
            "gopher_ellipsis_ratio": (
                text.str.count_matches("...", literal=True) + text.str.count_matches("\u2026", literal=True)
            ).to_numpy()
            / n_tok,
            "gopher_bullet_lines_ratio": norm.str.count_matches(r"(?m)^[^\S\n]*[\u2022\-]").to_numpy() / lc,
            "gopher_end_ellipsis_lines_ratio": norm.str.count_matches(r"(?m)(?:\.\.\.|\u2026)[^\S\n]*$").to_numpy()
            / lc,
            "gopher_alpha_words_ratio": words["alpha_ratio"],
            "gopher_stop_words": pl.Series(words["stop_words"]).cast(pl.Int64),
            "c4_num_sentences": c4["c4_num_sentences"],
            "c4_kept_lines": c4["c4_kept_lines"],
            **{k: pl.Series(v).cast(pl.Int64) if k == "fineweb_lines" else v for k, v in _fineweb_signals(fw_text, params.fineweb).items()},
            "c4_text": c4["c4_text"],
            "_c4_page_drop": c4["page_drop"],
            "_n_chars": n_chars,
        }
    )


def apply_quality(docs: pl.DataFrame, params: QualityParams) -> pl.DataFrame:
    """Add quality signals and a ``reason`` (null keeps) to every document; rows and columns are kept."""
    params = QualityParams.model_validate(params) if not isinstance(params, QualityParams) else params
    sig = quality_signals(docs, params)
    rules = _rules(params)
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    detail: pl.Expr = pl.lit(None, dtype=pl.String)
    for rule in reversed(rules):
        reason = pl.when(rule.fails.fill_null(False)).then(pl.lit(rule.reason)).otherwise(reason)
        detail = pl.when(rule.fails.fill_null(False)).then(rule.detail).otherwise(detail)
    sig = sig.with_columns(reason=reason, detail=detail)
    out = pl.concat([docs.drop([c for c in sig.columns if c in docs.columns]), sig], how="horizontal")
    if params.c4.enabled and params.c4.rewrite_text:
        out = out.with_columns(text=pl.when(pl.col("reason").is_null()).then(pl.col("c4_text")).otherwise(pl.col("text")))
    return out.drop([c for c in out.columns if c.startswith("_")] + ["c4_text"])


QUALITY_STAGE = ShardStage(name="quality", version=QUALITY_VERSION, apply=apply_quality)

__all__ = [
    "QUALITY_STAGE",
    "QualityParams",
    "GopherRepetition",
    "GopherQuality",
    "C4",
    "FineWeb",
    "apply_quality",
    "quality_signals",
    "tokenize",
]
