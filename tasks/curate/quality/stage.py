"""The quality stage: each document judged by its language's settings; the first failing rule names its reason."""

from __future__ import annotations

from typing import Any

import polars as pl

from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.curate.quality.params import QualityParams, QualitySettings, resolve_quality, settings_for
from lmwright.tasks.curate.quality.rules import Rule, rules
from lmwright.tasks.curate.quality.signals import quality_signals

# 2: settings per language (the language table), character words for scripts without spaces.
QUALITY_VERSION = "2"


def apply_quality(docs: pl.DataFrame, params: QualityParams | dict[str, Any]) -> pl.DataFrame:
    """Add quality signals and a ``reason`` (null keeps) to every document; rows and columns are kept.

    Each document is judged by its ``lang``'s settings (no ``lang`` column: the blocks'). The
    signals are computed once per group of languages that read text alike (segmentation,
    C4's and FineWeb's line settings: a handful of groups, not one per language); stop words
    and thresholds are each language's own.
    """
    params = resolve_quality(params if isinstance(params, QualityParams) else QualityParams.model_validate(params))
    langs = docs["lang"].cast(pl.String) if "lang" in docs.columns else pl.Series([None] * docs.height, dtype=pl.String)
    settings = {lang: settings_for(params, lang) for lang in langs.unique(maintain_order=True).to_list()}
    settings = settings or {None: settings_for(params, None)}  # an empty shard still gets every column
    groups: dict[str, list[str | None]] = {}
    for lang, s in settings.items():
        groups.setdefault(_reads_alike(s), []).append(lang)
    if len(groups) == 1:
        return judge(docs, langs, settings)
    rows = docs.with_row_index("_row")
    parts = [
        judge(part, part_langs, {lang: settings[lang] for lang in members})
        for members in groups.values()
        for part, part_langs in [_select(rows, langs, members)]
    ]
    return pl.concat(parts, how="vertical_relaxed").sort("_row").drop("_row")


def first_failing(checks: list[Rule]) -> dict[str, pl.Expr]:
    """``reason`` and ``detail`` of the first rule that fails, in order; null when none does."""
    none = pl.lit(None, dtype=pl.String)
    if not checks:
        return {"reason": none, "detail": none}
    fails = [rule.fails.fill_null(False) for rule in checks]
    return {
        "reason": pl.coalesce([pl.when(f).then(pl.lit(rule.reason)) for f, rule in zip(fails, checks)]),
        "detail": pl.coalesce([pl.when(f).then(rule.detail) for f, rule in zip(fails, checks)]),
    }


def _reads_alike(s: QualitySettings) -> str:
    """What the signals depend on besides stop words: languages equal here share one signal pass."""
    return f"{s.segmentation}|{s.c4.model_dump_json()}|{s.fineweb.short_line_length}"


def _select(rows: pl.DataFrame, langs: pl.Series, members: list[str | None]) -> tuple[pl.DataFrame, pl.Series]:
    mask = langs.is_in([m for m in members if m is not None]).fill_null(False)
    if None in members:
        mask = mask | langs.is_null()
    return rows.filter(mask), langs.filter(mask)


def judge(docs: pl.DataFrame, langs: pl.Series, settings: dict[str | None, QualitySettings]) -> pl.DataFrame:
    """Signals and the first failing rule's reason for documents whose languages read text alike."""
    first = next(iter(settings.values()))
    per_doc = [settings[lang].gopher_quality for lang in langs.to_list()]
    sig = quality_signals(docs, first, per_doc).with_columns(_lang=langs, _i=pl.int_range(pl.len()))
    decided = []
    for lang, s in settings.items():
        mine = sig.filter(pl.col("_lang").is_null() if lang is None else pl.col("_lang") == lang)
        decided.append(mine.with_columns(**first_failing(rules(s))))
    sig = pl.concat(decided, how="vertical_relaxed").sort("_i") if len(decided) > 1 else decided[0]
    out = pl.concat([docs.drop([c for c in sig.columns if c in docs.columns]), sig], how="horizontal")
    if first.c4.enabled and first.c4.rewrite_text:
        out = out.with_columns(text=pl.when(pl.col("reason").is_null()).then(pl.col("c4_text")).otherwise(pl.col("text")))
    return out.drop([c for c in out.columns if c.startswith("_") and c != "_row"] + ["c4_text"])


QUALITY_STAGE = ShardStage(name="quality", version=QUALITY_VERSION, apply=apply_quality)
