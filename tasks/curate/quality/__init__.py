"""quality: the Gopher repetition, Gopher quality, C4 and FineWeb heuristics.

The rules, thresholds, defaults and drop reasons follow datatrove's filters
(huggingface/datatrove, Apache-2.0: ``pipeline/filters/gopher_repetition_filter.py``,
``gopher_quality_filter.py``, ``c4_filters.py`` (``C4QualityFilter``) and
``fineweb_quality_filter.py``), run in that order, as datatrove's pipelines do:

    Gopher repetition -> Gopher quality -> C4 -> FineWeb

The first failing rule names the reason (``gopher_short_doc``, ``c4_lorem_ipsum``,
``fineweb_list_ratio``...). Every signal a rule reads is kept as a column
(``gopher_*``, ``c4_*``, ``fineweb_*``, all numeric and >= 0), so a threshold can be
judged, or changed, from the data alone.

Each document is judged by its language's settings (its ``lang`` column): the blocks'
English defaults with the language table's entry laid over them (FineWeb-2's stop words and
thresholds per language, ``configs/quality/fineweb2.yaml``; see ``params.py``). Scripts
written without spaces (zh, ja, th) count each character as a word (``words.segment``).

The package: ``params`` (settings, the language table), ``words`` (character classes and
the tokenizer), ``signals`` (the signal columns), ``rules`` (reasons and thresholds),
``stage`` (per-language judging and the ShardStage), ``report`` (the data card's "Quality by
language": counts and the thresholds each language was judged by).

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
- Other languages: FineWeb-2 measured its per-language thresholds on words from a word
  tokenizer chosen per language family; here the same regex reads every space-separated
  language, and Han, Kana and Thai text is read a character at a word.
- C4 rewrites ``text`` to its kept lines in datatrove; here ``text`` is left as it came
  unless ``c4.rewrite_text`` is set. FineWeb reads the text as C4 leaves it either way
  (as in datatrove's sequence) when C4 is enabled.
"""

from lmwright.tasks.curate.quality.params import (
    C4,
    FineWeb,
    GopherQuality,
    GopherRepetition,
    LanguageQuality,
    LanguageTableError,
    QualityParams,
    QualitySettings,
    load_table,
    resolve_quality,
    settings_for,
)
from lmwright.tasks.curate.quality.signals import quality_signals
from lmwright.tasks.curate.quality.stage import QUALITY_STAGE, QUALITY_VERSION, apply_quality
from lmwright.tasks.curate.quality.words import tokenize

__all__ = [
    "QUALITY_STAGE",
    "QUALITY_VERSION",
    "QualityParams",
    "QualitySettings",
    "LanguageQuality",
    "LanguageTableError",
    "GopherRepetition",
    "GopherQuality",
    "C4",
    "FineWeb",
    "apply_quality",
    "load_table",
    "quality_signals",
    "resolve_quality",
    "settings_for",
    "tokenize",
]
