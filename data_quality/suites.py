"""The expectation suites: one per stage, plus the whole-stage suites.

What each stage's kept output must satisfy (every stage also gets ``common``):

- common: columns id, text, source, uri, license exist; id, text, source, uri
  non-null; id unique within the shard; text is a string.
- ingest: id and uri non-empty; source is one of the configured sources' labels
  (``params.sources``); the provenance columns of crawled pages (url, warc_date, content_type,
  warc_record_id) exist.
- license: no kept document matched the opt-out registry (column optout exists, all null);
  every kept license value is one the policy allows (``params.allows``, asked once per distinct
  value seen); no document without a license unless ``params.allow_unknown``.
- urlfilter: column url exists; no kept URL matches a block-list pattern (``params.patterns``;
  listed domains are matched by a join the suite does not repeat).
- normalize: no C0/C1 control characters other than \\n and \\t (so no \\r).
- langid: columns lang, lang_prob exist; lang in ``params.languages`` (unless None);
  ``params.min_prob <= lang_prob <= 1``.
- quality: every numeric signal column (``gopher_*``, ``c4_*``, ``fineweb_*``) >= 0.
- pii: no e-mail, IPv4 or international phone number left in text
  (data_quality.patterns); column pii_count exists, >= 0.
- bias: columns bias_toxicity and bias_toxic_terms exist, >= 0; with
  ``params.toxicity_threshold`` set, no kept document has a toxicity above it together with
  at least ``params.min_toxic_matches`` toxic terms (what the stage rejects).
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
PROVENANCE_COLUMNS = ("url", "warc_date", "content_type", "warc_record_id")
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


def _ingest(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [
        e.ExpectColumnValueLengthsToBeBetween(column="id", min_value=1),
        e.ExpectColumnValueLengthsToBeBetween(column="uri", min_value=1),
        *[e.ExpectColumnToExist(column=c) for c in PROVENANCE_COLUMNS],
    ]
    if labels := _source_labels(params):
        out.append(e.ExpectColumnValuesToBeInSet(column="source", value_set=labels))
    return out


def _source_labels(params: Any) -> list[str]:
    """The labels ingest gives its sources' documents; [] when a source does not say (no check then)."""
    labels = [getattr(spec, "label", None) for spec in _param(params, "sources", None) or []]
    return sorted(set(labels)) if labels and all(isinstance(x, str) for x in labels) else []


def _license(params: Any, columns: Sequence[str], licenses: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [e.ExpectColumnToExist(column="optout"), e.ExpectColumnValuesToBeNull(column="optout")]
    if not _param(params, "allow_unknown", True):
        out.append(e.ExpectColumnValuesToNotBeNull(column="license"))
    allows = getattr(params, "allows", None)
    if allows is not None:  # the stage's own policy, asked about every distinct value the shard kept
        out.append(e.ExpectColumnValuesToBeInSet(column="license", value_set=[v for v in licenses if allows(v)]))
    return out


def _bias(params: Any, columns: Sequence[str]) -> list[Any]:
    import great_expectations as gx

    e = gx.expectations
    out = [
        *[e.ExpectColumnToExist(column=c) for c in ("bias_toxicity", "bias_toxic_terms")],
        e.ExpectColumnValuesToBeBetween(column="bias_toxicity", min_value=0),
        e.ExpectColumnValuesToBeBetween(column="bias_toxic_terms", min_value=0),
    ]
    threshold = _param(params, "toxicity_threshold", None)
    if threshold is not None:
        out.append(e.ExpectColumnValuesToBeBetween(
            column="bias_toxicity", max_value=float(threshold), condition_parser="pandas",
            row_condition=f"bias_toxic_terms >= {int(_param(params, 'min_toxic_matches', 1))}",
        ))
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
    "ingest": _ingest,
    "bias": _bias,
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


def shard_suite(
    stage: str, params: Any, signal_cols: Sequence[str], licenses: Sequence[str] = ()
) -> tuple[str, Callable[[], list[Any]]]:
    """(suite name, expectation builder) for one stage's kept documents.

    ``licenses``: the distinct license values of the shard (the license suite checks each against the policy).
    """
    allowed = [v for v in licenses if params.allows(v)] if stage == "license" and hasattr(params, "allows") else None
    relevant = {
        "languages": sorted(_param(params, "languages", None) or []) if stage == "langid" else None,
        "any_languages": _param(params, "languages", None) is not None if stage == "langid" else None,
        "min_prob": _param(params, "min_prob", 0.0) if stage == "langid" else None,
        "signals": list(signal_cols) if stage == "quality" else None,
        "patterns": _param(params, "lists_sha256", None) if stage == "urlfilter" else None,
        "sources": _source_labels(params) if stage == "ingest" else None,
        "toxicity": [_param(params, k, None) for k in ("toxicity_threshold", "min_toxic_matches")] if stage == "bias" else None,
        "licenses": [allowed, _param(params, "allow_unknown", True)] if stage == "license" else None,
    }
    digest = hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:10]
    extra = _STAGE_SUITES.get(stage)

    def build() -> list[Any]:
        if stage == "license":
            return _common() + _license(params, signal_cols, licenses)
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
