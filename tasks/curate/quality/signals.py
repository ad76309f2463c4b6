"""The signal columns of the quality rules, computed column-wise over a shard with polars and numpy."""

from __future__ import annotations

import numpy as np
import polars as pl

from lmwright.tasks.curate.quality.params import C4, FineWeb, GopherQuality, QualitySettings
from lmwright.tasks.curate.quality.words import (
    CITATION_PATTERN,
    ENDS_TERMINAL,
    LINE_BREAKS,
    NON_PUNCT,
    POLICY_SUBSTRINGS,
    SENTENCE_ABBREV,
    SENTENCE_BREAK,
    count_tokens,
    explode,
    flat_tokens,
    segment,
)

TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)


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


def _repetition_signals(text: pl.Series, n_chars: np.ndarray) -> dict[str, np.ndarray]:
    """Paragraph and line duplicates (Gopher repetition)."""
    n_docs = len(text)
    # re.split(r"\n{2,}", text.strip()); a stripped text has no empty paragraph unless it is "".
    paras = text.str.replace_all("\x00", "\x01", literal=True).str.strip_chars()
    paras = paras.str.replace_all(r"\n{2,}", "\x00").str.split("\x00")
    p_doc, p_items = explode(paras)
    p_dup, p_chars = _dup_counts(p_doc, p_items, n_docs)
    n_paras = np.maximum(paras.list.len().to_numpy(), 1)
    # re.split("\n+", text): runs of non-newlines, plus "" before a leading and after a trailing newline.
    l_doc, l_items = explode(text.str.split("\n"))
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


def _word_signals(doc: np.ndarray, words: pl.Series, n_docs: int) -> dict[str, np.ndarray]:
    """Per-document word counts for Gopher quality, from the flat words and their documents."""
    n_tok = np.bincount(doc, minlength=n_docs)
    non_symbol = words.str.contains(NON_PUNCT).to_numpy()
    alpha = words.str.contains(r"\p{L}").to_numpy()
    lens = words.str.len_chars().to_numpy()
    n_non_symbol = np.bincount(doc, weights=non_symbol, minlength=n_docs)
    len_non_symbol = np.bincount(doc, weights=lens * non_symbol, minlength=n_docs)
    n_alpha = np.bincount(doc, weights=alpha, minlength=n_docs)
    sig = {
        "n_words": n_tok.astype(np.float64),
        "n_non_symbol": n_non_symbol,
        "avg_len": np.divide(len_non_symbol, n_non_symbol, out=np.zeros(n_docs), where=n_non_symbol > 0),
        "alpha_ratio": np.divide(n_alpha, n_tok, out=np.zeros(n_docs), where=n_tok > 0),
    }
    return sig


def _stop_word_counts(
    doc: np.ndarray, words: pl.Series, text: pl.Series, stop_words: list[GopherQuality]
) -> np.ndarray:
    """Distinct stop words present per document (``stop_words[i]``: document i's list): as words, or in the text."""
    n_docs = len(text)
    counts = np.zeros(n_docs)
    lists = {id(p): p for p in stop_words}  # documents of one language share one GopherQuality
    which = np.array([id(p) for p in stop_words], dtype=np.int64)
    by_word = [(k, sw) for k, p in lists.items() if p.stop_words_in == "words" for sw in set(p.stop_words)]
    if by_word and len(words):
        pairs = pl.DataFrame({"list": [k for k, _ in by_word], "word": [sw for _, sw in by_word]}, schema={"list": pl.Int64, "word": pl.String})
        found = (
            pl.DataFrame({"doc": doc, "list": which[doc], "word": words})
            .join(pairs, on=["list", "word"])
            .unique(["doc", "word"])
            .group_by("doc")
            .len()
        )
        counts[found["doc"].to_numpy()] = found["len"].to_numpy()
    for k, p in lists.items():
        if p.stop_words_in == "text":
            rows = np.flatnonzero(which == k)
            mine = text.gather(rows)
            counts[rows] = sum(mine.str.contains(sw, literal=True).to_numpy() for sw in sorted(set(p.stop_words)))
    return counts


def _c4_lines(text: pl.Series, p: C4) -> pl.DataFrame:
    """C4's line rules: per document, the first page-level drop (1 lorem, 2 curly), sentences and kept text."""
    norm = text.str.replace_all(LINE_BREAKS, "\n")
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
    sentences = 1 + clean.str.replace_all(*SENTENCE_ABBREV).str.count_matches(SENTENCE_BREAK)
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


def _fineweb_signals(text: pl.Series, p: FineWeb, segmentation: str) -> dict[str, np.ndarray]:
    n_docs = len(text)
    l_doc, lines = explode(text.str.split("\n"))
    nonblank = (lines.str.strip_chars() != "").to_numpy()
    l_doc, lines = l_doc[nonblank], lines.filter(pl.Series(nonblank))
    n = np.bincount(l_doc, minlength=n_docs)
    punct = np.bincount(l_doc, weights=lines.str.contains(ENDS_TERMINAL).to_numpy(), minlength=n_docs)
    short = np.bincount(
        l_doc, weights=(lines.str.len_chars() <= p.short_line_length).to_numpy(), minlength=n_docs
    )
    _, dup_chars = _dup_counts(l_doc, lines, n_docs)
    n_newlines = text.str.count_matches("\n", literal=True).to_numpy()
    n_words = count_tokens(segment(text, segmentation))
    n1 = np.maximum(n, 1)
    return {
        "fineweb_lines": n,
        "fineweb_line_punct_ratio": punct / n1,
        "fineweb_short_line_ratio": short / n1,
        "fineweb_char_dup_ratio": dup_chars / np.maximum(text.str.len_chars().to_numpy() - n_newlines, 1),
        "fineweb_list_ratio": n_newlines / np.maximum(n_words, 1),
    }


def quality_signals(
    docs: pl.DataFrame, params: QualitySettings, stop_words: list[GopherQuality] | None = None
) -> pl.DataFrame:
    """The signal columns (one row per document, in order), plus private ``_*`` helper columns.

    Every document of ``docs`` is read with the same ``params`` (words, C4's lines, FineWeb's
    short lines); ``stop_words`` gives each document its own language's stop words (default:
    ``params.gopher_quality``'s for all).
    """
    n_docs = docs.height
    text = docs["text"].fill_null("").cast(pl.String)
    n_chars = text.str.len_chars().cast(pl.Int64)
    norm = text.str.replace_all(LINE_BREAKS, "\n")  # for str.splitlines() semantics
    doc, flat = flat_tokens(segment(text, params.segmentation))
    words = _word_signals(doc, flat, n_docs)
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
            "gopher_stop_words": pl.Series(
                _stop_word_counts(doc, flat, text, stop_words or [params.gopher_quality] * n_docs)
            ).cast(pl.Int64),
            "c4_num_sentences": c4["c4_num_sentences"],
            "c4_kept_lines": c4["c4_kept_lines"],
            **{k: pl.Series(v).cast(pl.Int64) if k == "fineweb_lines" else v for k, v in _fineweb_signals(fw_text, params.fineweb, params.segmentation).items()},
            "c4_text": c4["c4_text"],
            "_c4_page_drop": c4["page_drop"],
            "_n_chars": n_chars,
        }
    )

