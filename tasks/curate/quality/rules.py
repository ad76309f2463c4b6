"""The rules: each a drop reason, a failing condition on the signal columns and a readable detail."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from lmwright.tasks.curate.quality.params import QualitySettings
from lmwright.tasks.curate.quality.signals import DUP_NGRAMS, TOP_NGRAMS


@dataclass(frozen=True)
class Rule:
    reason: str
    fails: pl.Expr
    detail: pl.Expr


def _gt(col: str, thr: float | None, name: str) -> Rule | None:
    if not thr:  # datatrove: `if self.threshold and ...` (None or 0 switches a rule off)
        return None
    return Rule(name, pl.col(col) > thr, pl.format(f"{col}={{}} > {thr}", pl.col(col).round(4)))


def _lt(col: str, thr: float | None, name: str) -> Rule | None:
    if not thr:
        return None
    return Rule(name, pl.col(col) < thr, pl.format(f"{col}={{}} < {thr}", pl.col(col).round(4)))


def rules(params: QualitySettings) -> list[Rule]:
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

