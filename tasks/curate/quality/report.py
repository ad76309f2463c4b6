"""What the data card says about quality per language: the counts and the thresholds each language was judged by."""

from __future__ import annotations

from typing import Any

import polars as pl

from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.quality.params import QualityParams, settings_for

NO_LANGUAGE = "(none)"


def language_report(quality: DatasetRef) -> list[dict[str, Any]]:
    """One row per language the quality stage saw: documents in and kept, top reasons, the settings used.

    The settings come from the stage's own manifest (the resolved parameters it ran with), so
    the card shows the thresholds that decided, not the ones a config says today.
    """
    params = QualityParams.model_validate(quality.manifest()["params"])
    kept = _lang_counts(quality.parts(), None)
    rejected = _lang_counts(quality.rejected_parts(), "reason")
    seen = {lang: kept.get(lang, 0) + sum(rejected.get(lang, {}).values()) for lang in set(kept) | set(rejected)}
    rows = []
    for lang in sorted(seen, key=lambda lang: (-seen[lang], lang)):  # most documents first
        reasons = rejected.get(lang, {})
        n_kept = kept.get(lang, 0)
        n_in = n_kept + sum(reasons.values())
        rows.append(
            {
                "lang": lang,
                "in": n_in,
                "kept": n_kept,
                "kept_rate": round(n_kept / n_in, 4) if n_in else 0.0,
                "rejected_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
                "settings": used_settings(params, None if lang == NO_LANGUAGE else lang),
            }
        )
    return rows


def used_settings(params: QualityParams, lang: str | None) -> dict[str, Any]:
    """The thresholds a language's documents were judged by, in the card's words."""
    s = settings_for(params, lang)
    entry = params.languages.get(lang) if lang is not None else None
    q, f = s.gopher_quality, s.fineweb
    return {
        "segmentation": s.segmentation,
        "stop_words": list(q.stop_words),
        "min_stop_words": q.min_stop_words if q.enabled else None,
        "stop_words_in": q.stop_words_in,
        "min_avg_word_length": q.min_avg_word_length if q.enabled else None,
        "max_avg_word_length": q.max_avg_word_length if q.enabled else None,
        "min_alpha_words_ratio": q.max_non_alpha_words_ratio if q.enabled else None,
        "min_doc_words": q.min_doc_words if q.enabled else None,
        "line_punct_thr": f.line_punct_thr if f.enabled else None,
        "dup_5_gram_frac": s.gopher_repetition.dup_5_gram_frac if s.gopher_repetition.enabled else None,
        "c4": s.c4.enabled,
        "source": entry.source if entry and entry.source else "the quality blocks (English defaults)",
        "note": entry.note if entry else None,
    }


def _lang_counts(parts: list, reason: str | None) -> dict:
    if not parts:
        return {}
    lf = pl.scan_parquet([str(p) for p in parts])
    cols = lf.collect_schema().names()
    lang = (pl.col("lang").cast(pl.String) if "lang" in cols else pl.lit(None, dtype=pl.String)).fill_null(NO_LANGUAGE)
    if reason is None:
        df = lf.select(lang.alias("lang")).group_by("lang").len().collect()
        return dict(zip(df["lang"].to_list(), df["len"].to_list()))
    df = lf.select(lang.alias("lang"), pl.col(reason)).group_by("lang", reason).len().collect()
    out: dict[str, dict[str, int]] = {}
    for lng, why, n in zip(df["lang"].to_list(), df[reason].to_list(), df["len"].to_list()):
        out.setdefault(lng, {})[why] = n
    return out


def render_language_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The card's "Quality by language" section: a table of counts and thresholds, then each language's notes."""
    if not rows:
        return []
    lines = [
        "",
        "## Quality by language",
        "",
        "Each language is judged by its own settings (`quality.language_table`, `quality.languages`).",
        "",
        "| lang | in | kept | top reasons | stop words (min) | word length | alpha words >= | line punct >= | C4 | words | settings from |",
        "|---|---:|---:|---|---|---|---:|---:|---|---|---|",
    ]
    for r in rows:
        s = r["settings"]
        top = ", ".join(f"{k} {v}" for k, v in list(r["rejected_by_reason"].items())[:2])
        words = ", ".join(s["stop_words"][:5]) + (f" +{len(s['stop_words']) - 5}" if len(s["stop_words"]) > 5 else "")
        where = " in text" if s["stop_words_in"] == "text" else ""
        stops = f"{words} ({s['min_stop_words']}{where})" if s["min_stop_words"] else "off"
        length = f"{_off(s['min_avg_word_length'])}-{_off(s['max_avg_word_length'])}"
        lines.append(
            f"| {r['lang']} | {r['in']:,} | {r['kept']:,} ({r['kept_rate']:.0%}) | {top} | {stops} | {length} "
            f"| {_off(s['min_alpha_words_ratio'])} | {_off(s['line_punct_thr'])} | {'on' if s['c4'] else 'off'} "
            f"| {s['segmentation']} | {s['source']} |"
        )
    notes = [f"- **{r['lang']}**: {r['settings']['note']}" for r in rows if r["settings"]["note"]]
    return lines + ([""] + notes if notes else [])


def _off(value: float | int | None) -> str:
    return "off" if not value else f"{value:g}"
