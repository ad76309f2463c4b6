"""ingest readers on every kind of bad input: nothing crashes, nothing disappears."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from lmwright.tasks.curate.sources import Record, Rejected, SourceSpec, list_source_files, read_records

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


def test_symlink_loop_and_dangling_link_are_skipped_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("kept")
    (tmp_path / "loop1.txt").symlink_to(tmp_path / "loop2.txt")
    (tmp_path / "loop2.txt").symlink_to(tmp_path / "loop1.txt")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up.txt").symlink_to(tmp_path)  # a link to a parent directory
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")  # a good link is followed
    files, skipped = list_source_files(SourceSpec(path=str(tmp_path)))
    assert [f.relpath for f in files] == ["a.txt", "link.txt"]
    assert {Path(s["file"]).name: s["reason"] for s in skipped} == {
        "dangling.jsonl": "ingest_broken_symlink",
        "loop1.txt": "ingest_symlink_loop",
        "loop2.txt": "ingest_symlink_loop",
        "up.txt": "ingest_symlinked_dir",
    }
    assert all(s["detail"] for s in skipped)


LIST_AS_UNPRIVILEGED = """
import json, sys
from lmwright.tasks.curate.sources import SourceSpec, list_source_files
files, skipped = list_source_files(SourceSpec(path=sys.argv[1]))
print(json.dumps({"files": [f.relpath for f in files], "skipped": skipped}))
"""


def test_unreadable_directory_is_a_skipped_entry(tmp_path: Path) -> None:
    """chmod 000 does not stop root: as root, list in a child whose capabilities to bypass
    file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) are dropped by setpriv."""
    import os
    import shutil
    import subprocess
    import sys

    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.txt").write_text("readable")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.txt").write_text("behind a locked door")
    (tmp_path / "locked").chmod(0)
    cmd = [sys.executable, "-c", LIST_AS_UNPRIVILEGED, str(tmp_path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to make a directory unreadable")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    finally:
        (tmp_path / "locked").chmod(0o755)
    got = json.loads(out.stdout)
    assert got["files"] == ["open/a.txt"]
    assert [(Path(s["file"]).name, s["reason"]) for s in got["skipped"]] == [("locked", "ingest_unreadable")]
    assert "Permission denied" in got["skipped"][0]["detail"]


def complete_lines_before_cut(truncated: bytes, decoder) -> int:
    """Ground truth: how many whole lines the cut file still holds (the independent decoder's view)."""
    return decoder.decompress(truncated).count(b"\n")


def jsonl_lines(n: int) -> bytes:
    # Varied text, so compressed blocks end at many points and the cut falls mid-stream.
    return b"".join(json.dumps({"text": f"document {i}: " + " ".join(str(i * j % 997) for j in range(60))}).encode() + b"\n" for i in range(n))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_archive_keeps_every_complete_line_and_says_truncated(tmp_path: Path, suffix: str) -> None:
    import zlib

    import zstandard

    data = jsonl_lines(3000)
    if suffix.endswith(".gz"):
        packed, decoder = gzip.compress(data), zlib.decompressobj(16 + zlib.MAX_WBITS)
    else:
        packed, decoder = zstandard.ZstdCompressor().compress(data), zstandard.ZstdDecompressor().decompressobj()
    cut = packed[: len(packed) * 2 // 3]
    whole = complete_lines_before_cut(cut, decoder)
    assert 0 < whole < 3000
    p = tmp_path / f"t{suffix}"
    p.write_bytes(cut)
    records = read(p)
    kept = [r for r in records if isinstance(r, Record)]
    assert len(kept) == whole
    assert [(r.reason, r.position) for r in records if isinstance(r, Rejected)] == [("ingest_truncated", f"L{whole + 1}")]
    assert f"stopped after line {whole}" in records[-1].detail


def test_zstd_cut_inside_its_first_block_is_truncated_not_empty(tmp_path: Path) -> None:
    import zstandard

    packed = zstandard.ZstdCompressor().compress(b'{"text": "short"}\n' * 100)
    p = tmp_path / "t.jsonl.zst"
    p.write_bytes(packed[: len(packed) // 2])
    assert reasons(read(p)) == ["ingest_truncated"]


def test_concatenated_gzip_members_and_zstd_frames_are_read_whole(tmp_path: Path) -> None:
    import zstandard

    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n') + gzip.compress(b'{"text": "two"}\n'))
    z = zstandard.ZstdCompressor()
    (tmp_path / "m.jsonl.zst").write_bytes(z.compress(b'{"text": "one"}\n') + z.compress(b'{"text": "two"}\n'))
    for name in ("m.jsonl.gz", "m.jsonl.zst"):
        assert [r.text for r in read(tmp_path / name)] == ["one", "two"], name


def test_paragraph_split_streams_a_huge_line_with_bounded_memory(tmp_path: Path) -> None:
    """A 32 MB line is measured and rejected, never held whole: the peak stays near max_doc_bytes."""
    import tracemalloc

    p = tmp_path / "dump.txt"
    with open(p, "wb") as f:
        f.write(b"A first paragraph.\n\n")
        for _ in range(32):
            f.write(b"x" * (1 << 20))  # one 32 MB line, no newline inside
        f.write(b"\n\nThe last paragraph.\n")
    files, _ = list_source_files(SourceSpec(path=str(p)))
    tracemalloc.start()
    try:
        records = list(read_records(files[0], MAX, "paragraph"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(getattr(r, "reason", None), r.position) for r in records] == [
        (None, "L1"),
        ("ingest_doc_too_large", "L3"),
        (None, "L5"),
    ]
    assert [r.text for r in records if isinstance(r, Record)] == ["A first paragraph.", "The last paragraph."]
    assert peak < 6 * MAX, f"peak {peak / 1e6:.1f} MB while reading paragraphs of at most {MAX / 1e6:.1f} MB"


def test_csv_unterminated_quote_rejects_its_line_and_keeps_the_rows_after_it(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('text,id\n"never closed,a\nplain,b\nthird,c\n')
    records = read(p)
    assert [(r.reason, r.position) for r in records if isinstance(r, Rejected)] == [("ingest_malformed_csv", "L2")]
    assert "line 2" in records[0].detail and records[0].text.startswith('"never closed')
    assert [(r.text, r.own_id) for r in records if isinstance(r, Record)] == [("plain", "b"), ("third", "c")]


def test_csv_malformed_rows_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text(
        "text,id\n"
        '"opens here,a\n'  # L2: a quote that a later stray quote seems to close
        "plain,b\n"
        'this "closes",c\n'  # L4: a quote inside an unquoted field is fine
        "one,d,extra\n"  # L5: too many fields
        "lonely\n"  # L6: too few
        '"a quoted\nmulti-line field",e\n'  # L7-8: legitimate
        "last,f\n"
    )
    records = read(p)
    assert [(r.reason, r.position) for r in records if isinstance(r, Rejected)] == [
        ("ingest_malformed_csv", "L2"),
        ("ingest_malformed_csv", "L5"),
        ("ingest_malformed_csv", "L6"),
    ]
    assert [(r.text, r.own_id) for r in records if isinstance(r, Record)] == [
        ("plain", "b"),
        ('this "closes"', "c"),
        ("a quoted\nmulti-line field", "e"),
        ("last", "f"),
    ]


def test_builtin_pydocs_does_not_change_when_a_package_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default corpus is the standard library's docstrings: installing a package changes
    neither its files nor its fingerprint (the cache key). The packages' corpus is opt-in."""
    from lmwright.tasks.curate.ingest import source_fingerprints

    def snapshot(path: str) -> tuple[list[str], list[str]]:
        files, _ = list_source_files(SourceSpec(path=path))
        return [f.path for f in files], source_fingerprints(files)

    stdlib_before, packages_before = snapshot("builtin:pydocs"), snapshot("builtin:pydocs-packages")
    # "pip install" a distribution: importlib.metadata finds it on sys.path.
    dist = tmp_path / "planted_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: planted-pkg\nVersion: 1.0\n\n"
        "A planted package whose long description must not enter the default corpus.\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert snapshot("builtin:pydocs") == stdlib_before
    assert not any(p.startswith("metadata:") for p in stdlib_before[0])
    packages_after = snapshot("builtin:pydocs-packages")
    assert packages_after[1] != packages_before[1]
    metadata_unit = next(f for f in list_source_files(SourceSpec(path="builtin:pydocs-packages"))[0] if f.path == "metadata:0")
    assert any("planted package" in r.text for r in read_records(metadata_unit, MAX, "file"))


def test_truncated_csv_archive_keeps_every_complete_row_and_says_truncated_once(tmp_path: Path) -> None:
    """A cut .csv.gz reads like a cut .jsonl.gz: every whole row kept, one ingest_truncated where the cut fell."""
    import zlib

    rows = b"text,id\n" + b"".join(f"row {i} {' '.join(str(i * j % 997) for j in range(60))},{i}\n".encode() for i in range(3000))
    packed = gzip.compress(rows)
    cut = packed[: len(packed) * 2 // 3]
    whole = complete_lines_before_cut(cut, zlib.decompressobj(16 + zlib.MAX_WBITS))
    p = tmp_path / "t.csv.gz"
    p.write_bytes(cut)
    records = read(p)
    assert len([r for r in records if isinstance(r, Record)]) == whole - 1  # the header is no document
    assert [(r.reason, r.position) for r in records if isinstance(r, Rejected)] == [("ingest_truncated", f"L{whole + 1}")]


def test_csv_cut_before_its_first_line_is_truncated_not_empty(tmp_path: Path) -> None:
    p = tmp_path / "t.csv.gz"
    p.write_bytes(gzip.compress(b"text,id\n" + b"short,1\n" * 100)[:12])  # the gzip header and no data
    assert reasons(read(p)) == ["ingest_truncated"]
