"""Words for the quality rules: datatrove's character classes and an approximation of spaCy's tokenizer.

Scripts written without spaces between words (Han, Kana, Thai) have no word boundaries a
regex can find; ``segment_characters`` makes each of their characters a word of its own,
so the word-based Gopher rules read characters there (see configs/quality/languages.yaml).
"""

from __future__ import annotations

import numpy as np
import polars as pl

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


NON_PUNCT = _char_class(PUNCTUATION_SET, negate=True)
ENDS_TERMINAL = _char_class(TERMINAL_PUNCTUATION) + r"\z"

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
SENTENCE_ABBREV = (rf"(^|[^\w])({_ABBREVIATIONS}|e\.g|i\.e|a\.m|p\.m)\.", "${1}${2}")
SENTENCE_BREAK = (
    r"(?:(?:[\p{Ll}\p{N}%)\]\"'\u201d\u2019]|\p{Lu}\p{Lu})\.|[!?])"
    r"[\"'\u201d\u2019)\]]*\s+[\"'\u201c\u2018(\[]*[^\s\p{P}]"
    r"|\p{Ll}\.\p{Lu}"
)

# C4 (datatrove c4_filters.py)
CITATION_PATTERN = r"\[\d*]|\[edit]|\[citation needed]"
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

# Python's str.splitlines() boundaries, folded into "\n".
LINE_BREAKS = r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"

def explode(lists: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """Flatten a List[String] series: (each element's row, the elements)."""
    n = lists.list.len().fill_null(0).to_numpy()
    return np.repeat(np.arange(len(lists)), n), lists.explode(empty_as_null=False, keep_nulls=False)


# Scripts written without spaces between words. Under segmentation "characters" each of their
# characters is a word: a space goes on both sides of it before the tokenizer runs. A character
# keeps its combining marks (Thai vowel and tone marks), so a word is a letter and its marks.
UNSEGMENTED_CHAR = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}&&[^\p{M}]]\p{M}*)"


def segment(text: pl.Series, segmentation: str = "spaces") -> pl.Series:
    """The text as the tokenizer should see it: unchanged, or unsegmented-script characters spaced apart."""
    if segmentation == "characters":
        return text.str.replace_all(UNSEGMENTED_CHAR, " ${1} ")
    return text


def tokenize(text: pl.Series) -> pl.Series:
    """Words as datatrove's English tokenizer (spaCy) would give them, approximately: List[String]."""
    return _prep(text).str.extract_all(TOKEN_PATTERN)


# Every TOKEN_PATTERN token is a run of consecutive SIMPLE_TOKEN tokens, so where both
# patterns count the same tokens in a piece they tokenize it the same way.
SIMPLE_TOKEN = r"\w+|\S"


def flat_tokens(text: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """tokenize(text), flattened: (each word's row, the words).

    polars' extract_all is slow with the full pattern (counting with it is fast), so the
    text is cut at whitespace (tokens never span it), pure-word pieces are tokens as
    they are, and the full pattern extracts only from pieces that the simple one would
    split differently.
    """
    pieces = _prep(text).str.replace_all(r"\s+", " ").str.split(" ")
    p_doc, flat = explode(pieces)
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
