"""Data-quality suites: clean shards pass, planted violations fail with a readable message."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from lmwright.data_quality import DataQualityError, ValidationSettings, validate_shard, validate_stage
from lmwright.data_quality import patterns
from lmwright.tasks.core.dataset import ShardStats, write_parquet

LANGID = SimpleNamespace(languages=["en", "de"], min_prob=0.8)
NO_REJECTS = pl.DataFrame(schema={"id": pl.String, "reason": pl.String, "stage": pl.String})


def docs(n: int = 3, **columns) -> pl.DataFrame:
    """A clean shard with every column any stage adds."""
    base = {
        "id": [f"d{i}" for i in range(n)],
        "text": [f"Document {i}: plain prose, version 3.11.2, on 2024-05-01 for $1,299.99." for i in range(n)],
        "source": ["test"] * n,
        "uri": [f"test.jsonl:{i}" for i in range(n)],
        "license": [None] * n,
        "lang": ["en"] * n,
        "lang_prob": [0.99] * n,
        "gopher_word_count": [10.0] * n,
        "c4_lines": [1] * n,
        "pii_count": [0] * n,
        "dup_cluster": [f"d{i}" for i in range(n)],
        "url": [None] * n,
        "warc_date": [None] * n,
        "content_type": [None] * n,
        "warc_record_id": [None] * n,
        "optout": [None] * n,
        "bias_toxicity": [0.0] * n,
        "bias_toxic_terms": [0] * n,
    }
    base.update(columns)
    nullable = ("license", "url", "warc_date", "content_type", "warc_record_id", "optout")
    return pl.DataFrame(base, schema_overrides={c: pl.String for c in nullable})


def fail(stage: str, kept: pl.DataFrame, rejected: pl.DataFrame = NO_REJECTS, params=LANGID, **settings) -> str:
    with pytest.raises(DataQualityError) as exc:
        validate_shard(stage, kept, rejected, params, ValidationSettings(**settings), shard="part-00007")
    return str(exc.value)


@pytest.mark.parametrize("stage", ["ingest", "license", "normalize", "langid", "quality", "pii", "bias", "dedup", "unknown"])
def test_clean_shard_passes_every_stage(stage):
    rejected = pl.DataFrame({"id": ["r0"], "text": ["x"], "reason": ["too_short"], "stage": [stage]})
    validate_shard(stage, docs(), rejected, LANGID, ValidationSettings(), shard="part-00000")


def test_empty_shard_passes():
    validate_shard("pii", docs().head(0), NO_REJECTS, LANGID, ValidationSettings(), shard="part-00000")


def test_pii_email_left_fails_naming_expectation_column_and_match():
    kept = docs(text=["write to bob.smith@example.com today", "redacted <EMAIL> and <PHONE> and <IP>", "ok"])
    msg = fail("pii", kept)
    assert "stage 'pii'" in msg and "shard 'part-00007'" in msg
    assert "expect_column_values_to_not_contain_email_address (column 'text')" in msg
    assert "bob.smith@example.com" not in msg and "write to" not in msg and "e.g. id 'd0'" in msg
    assert "1 of 3 rows" in msg
    assert "phone" not in msg and "ipv4" not in msg  # placeholders are not flagged


@pytest.mark.parametrize(
    ("text", "expectation"),
    [
        ("call +44 20 7946 0958 now", "expect_column_values_to_not_contain_phone_number"),
        ("server at 192.168.10.1.", "expect_column_values_to_not_contain_ipv4_address"),
    ],
)
def test_pii_phone_and_ip_left_fail(text, expectation):
    assert f"{expectation} (column 'text')" in fail("pii", docs(text=[text, "a", "b"]))


def test_pii_count_negative_fails():
    assert "expect_column_values_to_be_between (column 'pii_count'" in fail("pii", docs(pii_count=[0, -1, 2]))


def test_duplicate_id_within_shard_fails():
    msg = fail("ingest", docs(id=["a", "b", "a"]))
    assert "expect_column_values_to_be_unique (column 'id')" in msg and "'a'" in msg


def test_null_and_missing_columns_fail():
    msg = fail("ingest", docs(uri=["u", None, "w"]).drop("license"))
    assert "expect_column_values_to_not_be_null (column 'uri')" in msg
    assert "expect_column_to_exist (column 'license'): column is missing" in msg


def test_lang_not_allowed_and_low_prob_fail():
    msg = fail("langid", docs(lang=["en", "fr", "de"], lang_prob=[0.99, 0.95, 0.5]))
    assert "expect_column_values_to_be_in_set (column 'lang', value_set=['de', 'en'])" in msg and "'fr'" in msg
    assert "expect_column_values_to_be_between (column 'lang_prob', min_value=0.8, max_value=1.0)" in msg


def test_langid_any_language_allowed_when_languages_none():
    params = SimpleNamespace(languages=None, min_prob=0.5)
    validate_shard("langid", docs(lang=["en", "fr", "zh"]), NO_REJECTS, params, ValidationSettings(), shard="p")
    assert "column 'lang'" in fail("langid", docs().drop("lang"), params=params)


@pytest.mark.parametrize("bad", ["line one\r\nline two", "nul\x00byte", "c1 \x85 control"])
def test_control_character_after_normalize_fails(bad):
    msg = fail("normalize", docs(text=["fine\n\ttabs and newlines", bad, "ok"]))
    assert "expect_column_values_to_not_contain_control_characters (column 'text')" in msg
    assert "e.g. id 'd1'" in msg and "line two" not in msg


def test_control_characters_are_only_checked_after_normalize():
    validate_shard("ingest", docs(text=["a\r\nb", "c", "d"]), NO_REJECTS, None, ValidationSettings(), shard="p")


def test_negative_quality_signal_fails_and_other_numbers_are_ignored():
    validate_shard("quality", docs(unrelated=[-5, -5, -5]), NO_REJECTS, None, ValidationSettings(), shard="p")
    msg = fail("quality", docs(fineweb_line_punct_ratio=[0.5, -0.1, 0.2]))
    assert "expect_column_values_to_be_between (column 'fineweb_line_punct_ratio', min_value=0.0)" in msg


def test_dedup_null_cluster_fails():
    assert "expect_column_values_to_not_be_null (column 'dup_cluster')" in fail("dedup", docs(dup_cluster=["a", None, "c"]))


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def warned(stage: str, kept: pl.DataFrame, params) -> str:
    """The warning a failing suite logs under severity warn (and nothing raised).

    Read by a handler on the logger itself: once Prefect is imported its logging setup may stop
    the record from reaching pytest's root-level capture.
    """
    logger, collect = logging.getLogger("lmwright.data_quality"), Collect()
    logger.addHandler(collect)
    try:
        validate_shard(stage, kept, NO_REJECTS, params, ValidationSettings(stage_severity={stage: "warn"}), shard="p")
    finally:
        logger.removeHandler(collect)
    return "\n".join(collect.messages)


INGEST = SimpleNamespace(sources=[SimpleNamespace(label="test"), SimpleNamespace(label="web")])


def test_ingest_source_outside_the_configured_sources_fails_and_warns():
    validate_shard("ingest", docs(source=["test", "web", "web"]), NO_REJECTS, INGEST, ValidationSettings(), shard="p")
    kept = docs(source=["test", "stray", "web"])
    msg = fail("ingest", kept, params=INGEST)
    assert "expect_column_values_to_be_in_set (column 'source'" in msg and "'stray'" in msg
    assert "expect_column_values_to_be_in_set (column 'source'" in warned("ingest", kept, INGEST)


def test_ingest_empty_uri_and_missing_provenance_fail():
    assert "expect_column_value_lengths_to_be_between (column 'uri'" in fail("ingest", docs(uri=["a", "", "c"]), params=INGEST)
    assert "expect_column_to_exist (column 'warc_record_id'" in fail("ingest", docs().drop("warc_record_id"), params=INGEST)


def test_license_outside_the_policy_or_withdrawn_fails_and_warns():
    from lmwright.tasks.curate.license.policy import LicenseParams

    policy = LicenseParams(allow_unknown=False)
    validate_shard("license", docs(license=["CC-BY-4.0", "MIT", "MIT"]), NO_REJECTS, policy, ValidationSettings(), shard="p")
    kept = docs(license=["CC-BY-4.0", "CC-BY-NC-4.0", "MIT"])  # NonCommercial: the stage must have rejected it
    msg = fail("license", kept, params=policy)
    assert "expect_column_values_to_be_in_set (column 'license'" in msg and "CC-BY-NC-4.0" in msg
    assert "expect_column_values_to_be_in_set (column 'license'" in warned("license", kept, policy)
    unknown = fail("license", docs(license=["MIT", None, "MIT"]), params=policy)
    assert "expect_column_values_to_not_be_null (column 'license'" in unknown
    withdrawn = fail("license", docs(license=["MIT"] * 3, optout=[None, "domain:example.com", None]), params=policy)
    assert "expect_column_values_to_be_null (column 'optout'" in withdrawn


def test_bias_toxic_document_kept_above_the_threshold_fails_and_warns():
    params = SimpleNamespace(toxicity_threshold=2.0, min_toxic_matches=2)
    # above the threshold with one toxic term only: the stage keeps it
    validate_shard("bias", docs(bias_toxicity=[5.0, 0.0, 1.0], bias_toxic_terms=[1, 0, 1]), NO_REJECTS, params,
                   ValidationSettings(), shard="p")
    kept = docs(bias_toxicity=[5.0, 0.0, 1.0], bias_toxic_terms=[3, 0, 1])
    msg = fail("bias", kept, params=params)
    assert "expect_column_values_to_be_between (column 'bias_toxicity', max_value=2.0)" in msg
    assert "column 'bias_toxicity', max_value=2.0" in warned("bias", kept, params)
    assert "column 'bias_toxic_terms', min_value=0" in fail("bias", docs(bias_toxic_terms=[0, -1, 0]), params=params)


def test_rejected_rows_need_reason_and_stage():
    rejected = pl.DataFrame({"id": ["r0", "r1"], "reason": ["too_short", None], "stage": ["quality", "quality"]})
    msg = fail("quality", docs(), rejected)
    assert "rejected documents" in msg and "expect_column_values_to_not_be_null (column 'reason')" in msg


def test_warn_severity_logs_instead_of_raising(caplog):
    kept = docs(id=["a", "a", "b"])
    with caplog.at_level(logging.WARNING, logger="lmwright.data_quality"):
        validate_shard("ingest", kept, NO_REJECTS, None, ValidationSettings(severity="warn"), shard="p")
        validate_shard(
            "ingest", kept, NO_REJECTS, None, ValidationSettings(stage_severity={"ingest": "warn"}), shard="p"
        )
    assert sum("expect_column_values_to_be_unique" in r.getMessage() for r in caplog.records) == 2
    # and a per-stage override can also make one stage stricter than the default
    with pytest.raises(DataQualityError):
        validate_shard(
            "ingest", kept, NO_REJECTS, None, ValidationSettings(severity="warn", stage_severity={"ingest": "fail"}), shard="p"
        )


def test_disabled_validation_checks_nothing():
    validate_shard("ingest", docs(id=["a", "a", "a"]), NO_REJECTS, None, ValidationSettings(enabled=False), shard="p")


def test_failure_writes_data_docs_and_links_index(tmp_path):
    msg = fail("ingest", docs(id=["a", "a", "b"]), docs_dir=str(tmp_path / "data_docs"))
    index = tmp_path / "data_docs" / "index.html"
    assert f"Data Docs: {index}" in msg and index.is_file()
    pages = list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1 and "ingest-part-00007" in str(pages[0])
    fail("langid", docs(lang=["xx", "en", "en"]), docs_dir=str(tmp_path / "data_docs"))
    assert len(list((tmp_path / "data_docs" / "validations").rglob("*.html"))) == 2  # earlier pages are kept


SECRET = "Dear Carol, my diagnosis is confidential; write to carol.jones@example.net"


def test_no_document_text_in_failure_message_or_data_docs(tmp_path):
    """Text of failing documents stays out of the message (it reaches the Prefect database) and the HTML."""
    docs_dir = tmp_path / "data_docs"
    kept = docs(
        id=["carol.jones@example.net", "carol.jones@example.net", "d2"],
        text=[SECRET, SECRET + " \r", None],
        uri=["mail/carol.jones@example.net/1.txt", None, "u"],
    )
    msgs = [
        fail("pii", kept, docs_dir=str(docs_dir)),
        fail("normalize", kept, docs_dir=str(docs_dir)),
        fail("quality", docs(text=[SECRET, "x", "y"], gopher_word_count=[-1.0, 1.0, 1.0]), docs_dir=str(docs_dir)),
    ]
    assert "expect_column_values_to_not_contain_email_address (column 'text')" in msgs[0]
    assert "expect_column_values_to_not_contain_control_characters (column 'text')" in msgs[1]
    assert "expect_column_values_to_be_unique (column 'id')" in msgs[0] and "'<EMAIL>'" in msgs[0]
    pages = [p.read_text() for p in docs_dir.rglob("*.html")]
    assert len(pages) >= 4  # the index and a page per failed run
    for shown in msgs + pages:
        for planted in ("Dear Carol", "diagnosis", "carol.jones", "example.net"):
            assert planted not in shown


def test_sample_rows_validates_a_fixed_sample():
    kept = docs(200, uri=[None] * 200)
    assert "200 of 200 rows unexpected" in fail("ingest", kept)
    msg = fail("ingest", kept, sample_rows=10)
    assert "a sample of 10 of 200 rows" in msg and "10 of 10 rows unexpected" in msg


def test_concurrent_shards_do_not_see_each_others_frames():
    def job(i: int) -> tuple[bool, str]:
        bad = i % 3 == 0
        kept = docs(50, id=[f"s{i}-{j}" for j in range(50)])
        if bad:
            kept = kept.with_columns(pl.when(pl.col("id") == f"s{i}-7").then(pl.lit(f"mail u{i}@example.org")).otherwise(pl.col("text")).alias("text"))
        try:
            validate_shard("pii", kept, NO_REJECTS, None, ValidationSettings(), shard=f"part-{i}")
        except DataQualityError as e:
            return bad, str(e) if f"id 's{i}-7'" in str(e) and f"'part-{i}'" in str(e) else "wrong message"
        return bad, ""

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(job, range(18)))
    for bad, msg in results:
        assert bool(msg) == bad and msg != "wrong message"


# --- whole-stage checks ------------------------------------------------------------------


def write_shards(out: Path, frames: dict[str, pl.DataFrame]) -> list[ShardStats]:
    stats = []
    for name, frame in frames.items():
        write_parquet(frame, out / f"{name}.parquet")
        stats.append(ShardStats(name, docs_in=frame.height + 1, kept=frame.height, rejected=1, reasons={"too_short": 1}))
    return stats


def test_validate_stage_clean_passes(tmp_path):
    shards = write_shards(tmp_path, {"part-00000": docs(), "part-00001": docs(id=["x", "y", "z"], text=["p", "q", "r"])})
    validate_stage("dedup", tmp_path, shards, None, ValidationSettings())
    validate_stage("empty", tmp_path, [], None, ValidationSettings())


def test_validate_stage_accounting_mismatch_fails(tmp_path):
    shards = write_shards(tmp_path, {"part-00000": docs(), "part-00001": docs(id=["x", "y", "z"])})
    shards[1].docs_in = 7  # 7 in != 3 kept + 1 rejected
    shards[0].reasons = {"too_short": 1, "gopher_short_doc": 1}  # 2 by reason != 1 rejected
    with pytest.raises(DataQualityError) as exc:
        validate_stage("quality", tmp_path, shards, None, ValidationSettings())
    msg = str(exc.value)
    assert "expect_first_column_to_equal_sum_of_others (columns ['in', 'kept', 'rejected'])" in msg
    assert "shard 'part-00001'" in msg and "'in': 7" in msg
    assert "expect_first_column_to_equal_sum_of_others (columns ['rejected', 'rejected_by_reason'])" in msg


def test_validate_stage_kept_count_must_match_the_file(tmp_path):
    shards = write_shards(tmp_path, {"part-00000": docs()})
    shards[0].kept, shards[0].docs_in = 4, 5
    with pytest.raises(DataQualityError, match=r"expect_column_pair_values_to_be_equal \(columns \['kept', 'kept_on_disk'\]"):
        validate_stage("quality", tmp_path, shards, None, ValidationSettings())


def test_validate_stage_duplicate_ids_across_shards_fail(tmp_path):
    shards = write_shards(tmp_path, {"part-00000": docs(), "part-00001": docs(id=["x", "d1", "z"])})
    with pytest.raises(DataQualityError) as exc:
        validate_stage("langid", tmp_path, shards, None, ValidationSettings())
    msg = str(exc.value)
    assert "expect_column_values_to_be_unique (column 'id_hash')" in msg
    assert "'d1' in part-00000, part-00001" in msg


def test_dedup_duplicate_text_across_shards_fails_only_after_dedup(tmp_path):
    same = "exactly the same document text"
    shards = write_shards(
        tmp_path, {"part-00000": docs(text=[same, "b", "c"]), "part-00001": docs(id=["x", "y", "z"], text=["q", same, "r"])}
    )
    validate_stage("quality", tmp_path, shards, None, ValidationSettings())  # duplicates are fine before dedup
    with pytest.raises(DataQualityError) as exc:
        validate_stage("dedup", tmp_path, shards, None, ValidationSettings())
    msg = str(exc.value)
    assert "expect_column_values_to_be_unique (column 'text_hash')" in msg
    assert "ids 'd0', 'y'" in msg and "part-00000, part-00001" in msg and same not in msg


def test_validate_stage_warn_does_not_raise(tmp_path, caplog):
    shards = write_shards(tmp_path, {"part-00000": docs()})
    shards[0].docs_in = 99
    with caplog.at_level(logging.WARNING, logger="lmwright.data_quality"):
        validate_stage("quality", tmp_path, shards, None, ValidationSettings(stage_severity={"quality": "warn"}))
    assert any("accounting" in r.getMessage() for r in caplog.records)


# --- patterns (no GX) ----------------------------------------------------------------------

ORDINARY = [
    "Released 2024-05-01, version 3.11.2 (see section 1.2.3.4.5), costs $1,299.99 or +12 points.",
    "C++1234567890 and 1+2345678901 are code, not phones; user@localhost and @decorator.attr too.",
    "Placeholders: <EMAIL> <PHONE> <IP> <IPV6> <CARD> <IBAN>.",
    "Ratios 0.25, 999.1.1.1 is no address, tabs\tand\nnewlines are fine.",
]


@pytest.mark.parametrize(
    ("name", "positives"),
    [
        ("EMAIL", ["mail bob.smith+tag@mail.example.co.uk now", "x@y.org"]),
        ("IPV4", ["host 192.168.0.1.", "10.0.0.255", "(8.8.8.8)", "ip=1.1.1.1,"]),
        ("PHONE", ["+1 (555) 123-4567", "call +44 20 7946 0958 now", "+33.1.23.45.67.89", "tel:+4930123456"]),
        ("CONTROL", ["a\rb", "a\x00", "x\x85y", "\x7f"]),
    ],
)
def test_patterns_match_the_real_thing_and_not_ordinary_text(name, positives):
    pattern = getattr(patterns, name)
    for text in positives:
        assert re.search(pattern, text), (name, text)
        assert pl.Series([text]).str.contains(pattern).item(), (name, text)
    for text in ORDINARY:
        assert not re.search(pattern, text), (name, text)
        assert not pl.Series([text]).str.contains(pattern).item(), (name, text)


def test_importing_data_quality_does_not_import_great_expectations():
    code = "import sys, data_quality; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
