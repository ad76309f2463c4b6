"""ingest readers on every kind of bad input: nothing crashes, nothing disappears."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from tasks.sources import Record, Rejected, SourceSpec, list_source_files, read_records

MAX = 1 << 20


def read(path: Path, split: str = "file", **spec) -> list[Record | Rejected]:
    files, skipped = list_source_files(SourceSpec(path=str(path), **spec))
    assert not skipped
    return [r for f in files for r in read_records(f, MAX, split)]  # type: ignore[arg-type]


def reasons(records) -> list[str]:
    return [r.reason for r in records if isinstance(r, Rejected)]


def test_text_file_one_document_and_paragraphs(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("First paragraph\nline two\n\n\nSecond one\n")
    whole = read(p)
    assert [r.text for r in whole] == ["First paragraph\nline two\n\n\nSecond one\n"]
    paras = read(p, "paragraph")
    assert [(r.text, r.position) for r in paras] == [("First paragraph\nline two", "L1"), ("Second one", "L5")]


def test_empty_binary_and_invalid_utf8_files_are_rejected_with_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    got = {Path(f.path).name: reasons(read_records(f, MAX, "file")) for f in list_source_files(SourceSpec(path=str(tmp_path)))[0]}
    assert got == {"bad.txt": ["ingest_invalid_utf8"], "bin.txt": ["ingest_binary_file"], "empty.txt": ["ingest_empty_file"]}
    bad = next(r for f in list_source_files(SourceSpec(path=str(tmp_path / "bad.txt")))[0] for r in read_records(f, MAX, "file"))
    assert "byte 3" in bad.detail and "caf" in bad.text  # the text is kept (with a replacement char)


def test_jsonl_bad_lines_become_rejections_with_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"id": "x1", "text": "good one"}),
        "{not json",
        json.dumps(["a list"]),
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        "",
        json.dumps({"text": "line\u2028separator stays inside"}, ensure_ascii=False),
    ]
    p.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    records = read(p)
    assert [(r.reason, r.position) for r in records if isinstance(r, Rejected)] == [
        ("ingest_malformed_json", "L2"),
        ("ingest_not_an_object", "L3"),
        ("ingest_missing_field", "L4"),
        ("ingest_wrong_type", "L5"),
        ("ingest_invalid_utf8", "L8"),
    ]
    kept = [r for r in records if isinstance(r, Record)]
    assert [(r.own_id, r.position) for r in kept] == [("x1", "L1"), (None, "L7")]
    assert "\u2028" in kept[1].text


def test_truncated_gzip_keeps_what_was_read_and_says_where_it_stopped(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    p = tmp_path / "t.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    records = read(p)
    kept = [r for r in records if isinstance(r, Record)]
    assert 0 < len(kept) < 200
    last = records[-1]
    assert isinstance(last, Rejected) and last.reason == "ingest_truncated"
    assert f"after line {len(kept)}" in last.detail


def test_zstd_jsonl(tmp_path: Path) -> None:
    import zstandard

    p = tmp_path / "z.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "hello zstd"}\n'))
    assert [r.text for r in read(p)] == ["hello zstd"]


def test_huge_document_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"text": "' + b"a" * (5 * MAX) + b'"}\n')
        f.write(b'{"text": "small"}\n')
    records = read(p)
    assert reasons(records) == ["ingest_doc_too_large"]
    assert [r.text for r in records if isinstance(r, Record)] == ["small"]
    t = tmp_path / "huge.txt"
    t.write_bytes(b"word " * MAX)
    assert reasons(read(t)) == ["ingest_doc_too_large"]


def test_parquet_and_csv(tmp_path: Path) -> None:
    pl.DataFrame({"id": [1, 2], "content": ["alpha text", None]}).write_parquet(tmp_path / "p.parquet")
    got = read(tmp_path / "p.parquet", text_field="content")
    assert [r.own_id for r in got if isinstance(r, Record)] == ["1"]
    assert [(r.reason, r.position) for r in got if isinstance(r, Rejected)] == [("ingest_missing_field", "row=2")]
    (tmp_path / "c.csv").write_text('text,id\n"quoted, with comma",a\nplain,b\n')
    assert [(r.text, r.own_id) for r in read(tmp_path / "c.csv")] == [("quoted, with comma", "a"), ("plain", "b")]
    missing = read(tmp_path / "p.parquet", text_field="nope")
    assert reasons(missing) == ["ingest_missing_field"]


def test_unsupported_files_are_reported_as_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    files, skipped = list_source_files(SourceSpec(path=str(tmp_path)))
    assert [Path(f.path).name for f in files] == ["a.txt"]
    assert skipped[0]["reason"] == "ingest_unsupported_format" and skipped[0]["file"].endswith("image.png")


def test_fsspec_memory_url() -> None:
    import fsspec

    with fsspec.open("memory://bucket/docs.jsonl", "wb") as f:
        f.write(b'{"text": "remote doc"}\n')
    files, _ = list_source_files(SourceSpec(path="memory://bucket/docs.jsonl"))
    assert [r.text for f in files for r in read_records(f, MAX, "file")] == ["remote doc"]


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        list_source_files(SourceSpec(path=str(tmp_path / "nope")))


def test_real_web_jsonl_keeps_u2028_documents_whole() -> None:
    web = Path(__file__).resolve().parents[2] / "shared" / "data" / "web" / "cc_warc_2019_07_cclicensed_pages.jsonl"
    if not web.exists():
        pytest.skip("../shared/data not present")
    records = read(web)
    assert len(records) == 697 and not reasons(records)
