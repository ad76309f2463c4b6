"""The quality stage's settings: one block per filter, and per-language overrides of them.

The four blocks (``gopher_repetition``, ``gopher_quality``, ``c4``, ``fineweb``) hold Gopher's,
C4's and FineWeb's published English defaults. A document whose ``lang`` has an entry in the
language table (``configs/quality/languages.yaml``: FineWeb-2's per-language stop words and
thresholds) or in ``languages`` is judged by those blocks with that entry's fields laid over
them, as FineWeb-2 tunes each filter per language. Documents with another language, or none,
use the blocks as they are.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmwright.tasks.core.errors import UserError
from lmwright.tasks.core.shipped import CONFIG_DIR

# Gopher's stop words (Rae et al. 2021): English.
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# The language table shipped with lmwright; `quality.language_table` may name another YAML file.
LANGUAGE_TABLES = CONFIG_DIR / "quality"


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
    stop_words_in: Literal["words", "text"] = Field(
        "words",
        description="Where a stop word counts: as a whole word, or anywhere in the text (for languages whose "
        "function words attach to other words or are not space-separated, e.g. ko, th).",
    )


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


Segmentation = Literal["spaces", "characters"]


class QualitySettings(BaseModel):
    """What one document is judged by: the four filter blocks and how its text splits into words."""

    model_config = ConfigDict(extra="forbid")

    gopher_repetition: GopherRepetition = Field(default_factory=GopherRepetition)
    gopher_quality: GopherQuality = Field(default_factory=GopherQuality)
    c4: C4 = Field(default_factory=C4)
    fineweb: FineWeb = Field(default_factory=FineWeb)
    segmentation: Segmentation = Field(
        "spaces",
        description="Words are what the tokenizer finds between spaces and punctuation ('spaces'), or every "
        "Han, Kana and Thai character is a word of its own ('characters': scripts written without spaces).",
    )


BLOCKS: dict[str, type[_Filter]] = {
    "gopher_repetition": GopherRepetition, "gopher_quality": GopherQuality, "c4": C4, "fineweb": FineWeb,
}


class LanguageQuality(BaseModel):
    """One language's changes to the quality blocks: only the fields named here differ from the blocks."""

    model_config = ConfigDict(extra="forbid")

    gopher_repetition: dict[str, Any] = Field(default_factory=dict, description="Fields of gopher_repetition to change.")
    gopher_quality: dict[str, Any] = Field(default_factory=dict, description="Fields of gopher_quality to change.")
    c4: dict[str, Any] = Field(default_factory=dict, description="Fields of c4 to change.")
    fineweb: dict[str, Any] = Field(default_factory=dict, description="Fields of fineweb to change.")
    segmentation: Segmentation | None = Field(None, description="How words are found; None: the default ('spaces').")
    source: str | None = Field(None, description="Where these values come from (shown in the data card).")
    note: str | None = Field(None, description="Why a rule differs here (shown in the data card).")

    @model_validator(mode="after")
    def _fields_exist(self) -> "LanguageQuality":
        # A typo or a wrong type fails now, naming the block and field, not when a shard runs.
        for name, model in BLOCKS.items():
            changes = getattr(self, name)
            try:
                model.model_validate({**model().model_dump(), **changes})
            except ValidationError as e:
                bad = "; ".join(f"{name}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise ValueError(bad) from None
        return self

    def over(self, other: "LanguageQuality") -> "LanguageQuality":
        """``other`` with this entry's fields laid over it (a user's entry over the table's)."""
        merged = {name: {**getattr(other, name), **getattr(self, name)} for name in BLOCKS}
        rest = {k: getattr(self, k) if getattr(self, k) is not None else getattr(other, k) for k in ("segmentation", "source", "note")}
        return LanguageQuality(**merged, **rest)


class QualityParams(QualitySettings):
    """The quality stage's settings: one block per filter (datatrove's defaults), changed per language."""

    language_table: str | None = Field(
        "fineweb2",
        description="Per-language stop words and thresholds: a table shipped in configs/quality/ (fineweb2: "
        "FineWeb-2's, for every language langid can keep) or a YAML file; null: every language uses the blocks above.",
    )
    languages: dict[str, LanguageQuality] = Field(
        default_factory=dict,
        description="Changes per language code (langid's lang), laid over the language table's entry, "
        "e.g. {de: {gopher_quality: {min_stop_words: 1}}}.",
    )


class LanguageTableError(UserError, ValueError):
    """A language table that cannot be read or does not validate; the message names the file and entry."""


def table_path(name_or_path: str) -> Path:
    """``fineweb2`` -> configs/quality/fineweb2.yaml; anything else is a path to a YAML file."""
    shipped = LANGUAGE_TABLES / f"{name_or_path}.yaml"
    if "/" not in name_or_path and shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in LANGUAGE_TABLES.glob("*.yaml")))
        raise LanguageTableError(f"quality.language_table {name_or_path!r}: no such table (shipped: {known}) or file")
    return path


@lru_cache(maxsize=8)
def _read_table(path: str, mtime_ns: int) -> dict[str, LanguageQuality]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LanguageTableError(f"{path}: cannot be read as YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("languages"), dict):
        raise LanguageTableError(f"{path}: expected a mapping with 'languages' (and optionally 'defaults')")
    try:
        defaults = LanguageQuality.model_validate(data.get("defaults") or {})
    except ValidationError as e:
        raise LanguageTableError(f"{path}: defaults: {e.errors()[0]['msg']}") from None
    table = {}
    for lang, entry in data["languages"].items():
        try:
            table[str(lang)] = LanguageQuality.model_validate(entry or {}).over(defaults)
        except ValidationError as e:
            raise LanguageTableError(f"{path}: languages.{lang}: {e.errors()[0]['msg']}") from None
    return table


def load_table(name_or_path: str) -> dict[str, LanguageQuality]:
    """A language table's entries, each with the table's ``defaults`` under it."""
    path = table_path(name_or_path)
    return _read_table(str(path.resolve()), path.stat().st_mtime_ns)


def resolve_quality(params: QualityParams) -> QualityParams:
    """The table read into ``languages``, the user's entries laid over its entries.

    The flow resolves before planning the stage, so the stage's fingerprint covers the
    table's contents, not only its name: editing the table reruns quality. Resolving again
    changes nothing (the table's fields are already under the user's), so the stage may
    resolve what it is given.
    """
    if params.language_table is None:
        return params
    table = load_table(params.language_table)
    merged = dict(table)
    for lang, mine in params.languages.items():
        merged[lang] = mine.over(table[lang]) if lang in table else mine
    path = table_path(params.language_table)
    name = params.language_table if path.parent == LANGUAGE_TABLES else str(path.resolve())  # a worker elsewhere finds it
    return params.model_copy(update={"language_table": name, "languages": dict(sorted(merged.items()))})


def settings_for(params: QualityParams, lang: str | None) -> QualitySettings:
    """The settings a document of language ``lang`` is judged by (``params`` resolved)."""
    base = QualitySettings.model_validate(params.model_dump(include=set(QualitySettings.model_fields)))
    entry = params.languages.get(lang) if lang is not None else None
    if entry is None:
        return base
    blocks = {name: model.model_validate({**getattr(base, name).model_dump(), **getattr(entry, name)}) for name, model in BLOCKS.items()}
    return QualitySettings(**blocks, segmentation=entry.segmentation or base.segmentation)
