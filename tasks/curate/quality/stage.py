"""The quality stage: each document judged by its language's settings; the first failing rule names its reason."""

from __future__ import annotations

from typing import Any

import polars as pl

from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.curate.quality.params import QualityParams, QualitySettings, resolve_quality, settings_for
from lmwright.tasks.curate.quality.rules import rules
from lmwright.tasks.curate.quality.signals import quality_signals

# 2: settings per language (the language table), character words for scripts without spaces.
QUALITY_VERSION = "2"


def apply_quality(docs: pl.DataFrame, params: QualityParams | dict[str, Any]) -> pl.DataFrame:
    """Add quality signals and a ``reason`` (null keeps) to every document; rows and columns are kept.

    Documents are judged in groups of one ``lang`` (no ``lang`` column: one group), each
    by its language's settings; the output keeps the input's row order.
    """
    params = resolve_quality(params if isinstance(params, QualityParams) else QualityParams.model_validate(params))
    if "lang" not in docs.columns:
        return judge(docs, settings_for(params, None))
    langs = docs["lang"].cast(pl.String)
    if langs.n_unique() == 1:
        return judge(docs, settings_for(params, langs[0]))
    rows = docs.with_row_index("_row")
    parts = [
        judge(part, settings_for(params, part["lang"][0]))
        for part in rows.partition_by("lang", maintain_order=True)
    ]
    return pl.concat(parts, how="vertical_relaxed").sort("_row").drop("_row")


def judge(docs: pl.DataFrame, settings: QualitySettings) -> pl.DataFrame:
    """Signals and the first failing rule's reason, for documents that share one language's settings."""
    sig = quality_signals(docs, settings)
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    detail: pl.Expr = pl.lit(None, dtype=pl.String)
    for rule in reversed(rules(settings)):
        reason = pl.when(rule.fails.fill_null(False)).then(pl.lit(rule.reason)).otherwise(reason)
        detail = pl.when(rule.fails.fill_null(False)).then(rule.detail).otherwise(detail)
    sig = sig.with_columns(reason=reason, detail=detail)
    out = pl.concat([docs.drop([c for c in sig.columns if c in docs.columns]), sig], how="horizontal")
    if settings.c4.enabled and settings.c4.rewrite_text:
        out = out.with_columns(text=pl.when(pl.col("reason").is_null()).then(pl.col("c4_text")).otherwise(pl.col("text")))
    return out.drop([c for c in out.columns if c.startswith("_") and c != "_row"] + ["c4_text"])


QUALITY_STAGE = ShardStage(name="quality", version=QUALITY_VERSION, apply=apply_quality)
