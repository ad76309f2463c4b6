"""The expectation suites: one per stage, plus the whole-stage suites.

What each stage's kept output must satisfy (every stage also gets ``common``):

- common: columns id, text, source, uri, license exist; id, text, source, uri
  non-null; id unique within the shard; text is a string.
- urlfilter: column url exists; no kept URL matches a block-list pattern (``params.patterns``;
  listed domains are matched by a join the suite does not repeat).
- normalize: no C0/C1 control characters other than \\n and \\t (so no \\r).
- langid: columns lang, lang_prob exist; lang in ``params.languages`` (unless None);
  ``params.min_prob <= lang_prob <= 1``.
- quality: every numeric signal column (``gopher_*``, ``c4_*``, ``fineweb_*``) >= 0.
- pii: no e-mail, IPv4 or international phone number left in text
  (data_quality.patterns); column pii_count exists, >= 0.
- dedup: column dup_cluster exists and is non-null.
- rejected rows (any stage): reason and stage exist and are non-null.
- accounting (per stage, one row per shard): in == kept + rejected,
  rejected == sum of rejected-by-reason, kept == rows in the shard's Parquet file.
- global uniqueness (per stage): id unique across all shards; after dedup also the
  text (compared by 64-bit hash, collisions resolved against the real values).

Suites are pure descriptions: building one imports GX, running one is context.py's job.
A suite's name encodes everything it depends on, so the process builds it once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence

DOC_COLUMNS = ("id", "text", "source", "uri", "license")
NON_NULL = ("id", "text", "source", "uri")
SIGNAL_PREFIXES = ("gopher_", "c4_", "fineweb_")
STAGES = ("ingest", "urlfilter", "normalize", "langid", "quality", "pii", "bias", "dedup")


def _param(params: Any, name: str, default: Any) -> Any:
    if isinstance(params, dict):
        return params.get(name, default)
    return getattr(params, name, default)


def _common() -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    return [
        *(e.ExpectColumnToExist(column=c) for c in DOC_COLUMNS),
        *(e.ExpectColumnValuesToNotBeNull(column=c) for c in NON_NULL),
        e.ExpectColumnValuesToBeUnique(column="id"),
        # Not ...ToBeInTypeList: it always fails on pandas-3 "str" columns (shared/NOTES.md).
        e.ExpectColumnValuesToBeOfType(column="text", type_="str"),
    ]


def _urlfilter(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [e.ExpectColumnToExist(column="url")]
    if patterns := _param(params, "patterns", None):
        # The stage matches the lowercased URL; the expectation sees it as stored, hence (?i).
        out.append(e.ExpectColumnValuesToNotMatchRegexList(column="url", regex_list=[f"(?i){p}" for p in patterns]))
    return out


def _normalize(params: Any, columns: Sequence[str]) -> list[Any]:
    from lmwright.data_quality.expectations import ExpectColumnValuesToNotContainControlCharacters

    return [ExpectColumnValuesToNotContainControlCharacters(column="text")]


def _langid(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [e.ExpectColumnToExist(column="lang"), e.ExpectColumnToExist(column="lang_prob")]
    languages = _param(params, "languages", None)
    if languages is not None:
        out.append(e.ExpectColumnValuesToBeInSet(column="lang", value_set=sorted(languages)))
    min_prob = float(_param(params, "min_prob", 0.0) or 0.0)
    out.append(e.ExpectColumnValuesToBeBetween(column="lang_prob", min_value=min_prob, max_value=1.0))
    return out


def _quality(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    return [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in columns]


def _pii(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    from lmwright.data_quality.expectations import (
        ExpectColumnValuesToNotContainEmailAddress,
        ExpectColumnValuesToNotContainIpv4Address,
        ExpectColumnValuesToNotContainPhoneNumber,
    )

    e = gx.expectations
    return [
        ExpectColumnValuesToNotContainEmailAddress(column="text"),
        ExpectColumnValuesToNotContainIpv4Address(column="text"),
        ExpectColumnValuesToNotContainPhoneNumber(column="text"),
        e.ExpectColumnToExist(column="pii_count"),
        e.ExpectColumnValuesToBeBetween(column="pii_count", min_value=0),
    ]


def _dedup(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    return [e.ExpectColumnToExist(column="dup_cluster"), e.ExpectColumnValuesToNotBeNull(column="dup_cluster")]


_STAGE_SUITES: dict[str, Callable[[Any, Sequence[str]], list[Any]]] = {
    "urlfilter": _urlfilter,
    "normalize": _normalize,
    "langid": _langid,
    "quality": _quality,
    "pii": _pii,
    "dedup": _dedup,
}


def signal_columns(schema: dict[str, Any]) -> list[str]:
    """The numeric quality-signal columns present in a polars schema."""
    return sorted(
        name for name, dtype in schema.items() if name.startswith(SIGNAL_PREFIXES) and dtype.is_numeric()
    )


def shard_suite(stage: str, params: Any, signal_cols: Sequence[str]) -> tuple[str, Callable[[], list[Any]]]:
    """(suite name, expectation builder) for one stage's kept documents."""
    relevant = {
        "languages": sorted(_param(params, "languages", None) or []) if stage == "langid" else None,
        "any_languages": _param(params, "languages", None) is not None if stage == "langid" else None,
        "min_prob": _param(params, "min_prob", 0.0) if stage == "langid" else None,
        "signals": list(signal_cols) if stage == "quality" else None,
        "patterns": _param(params, "lists_sha256", None) if stage == "urlfilter" else None,
    }
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:10]
    extra = _STAGE_SUITES.get(stage)

    def build() -> list[Any]:
        return _common() + (extra(params, signal_cols) if extra else [])

    return f"{stage}-{digest}", build


def rejected_suite() -> tuple[str, Callable[[], list[Any]]]:
    def build() -> list[Any]:
        import great_expectations as gx

        e = gx.expectations
        return [
            e.ExpectColumnToExist(column="reason"),
            e.ExpectColumnToExist(column="stage"),
            e.ExpectColumnValuesToNotBeNull(column="reason"),
            e.ExpectColumnValuesToNotBeNull(column="stage"),
        ]

    return "rejected", build


def accounting_suite() -> tuple[str, Callable[[], list[Any]]]:
    """Over a frame with one row per shard: shard, in, kept, rejected, rejected_by_reason, kept_on_disk."""

    def build() -> list[Any]:
        import great_expectations as gx

        from lmwright.data_quality.expectations import ExpectFirstColumnToEqualSumOfOthers

        return [
            ExpectFirstColumnToEqualSumOfOthers(column_list=["in", "kept", "rejected"]),
            ExpectFirstColumnToEqualSumOfOthers(column_list=["rejected", "rejected_by_reason"]),
            gx.expectations.ExpectColumnPairValuesToBeEqual(
                column_A="kept", column_B="kept_on_disk", ignore_row_if="neither"
            ),
        ]

    return "accounting", build


def unique_suite(columns: Sequence[str]) -> tuple[str, Callable[[], list[Any]]]:
    """Over a frame of 64-bit hashes, one row per kept document of the whole stage."""

    def build() -> list[Any]:
        import great_expectations as gx

        return [gx.expectations.ExpectColumnValuesToBeUnique(column=c) for c in columns]

    return "unique-" + "-".join(columns), build
