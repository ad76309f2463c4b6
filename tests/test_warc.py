"""WARC/WET ingest: real crawl files and small generated ones (pages, charsets, damage, accounting)."""

from __future__ import annotations

import gzip
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmwright.tasks.curate.sources import (
    HtmlExtraction,
    MissingExtra,
    Record,
    Rejected,
    SourceSpec,
    list_source_files,
    read_records,
)

ARTICLE = [
    "The river town of Ellery sits where two valleys meet, and its bridges are older than its church.",
    "Every spring the water rises over the lower fields, and the farmers move their sheep to the hills above the mill.",
    "Historians argue about who built the first bridge, but the records of the abbey name a mason from the coast.",
]


def page(body: str, head: str = "") -> str:
    """A page with the boilerplate a crawl is full of around an article."""
    paragraphs = "".join(f"<p>{p}</p>" for p in ARTICLE)
    return (
        f"<!DOCTYPE html><html><head><title>Ellery</title>{head}<style>body {{ color: red }}</style>"
        "<script>var tracker = 'SCRIPT_TEXT';</script></head><body>"
        "<nav><ul><li><a href='/'>Home</a></li><li><a href='/news'>NAV_NEWS</a></li></ul></nav>"
        "<div id='cookie-banner' class='cookie-consent'>COOKIE_TEXT We use cookies. <button>Accept</button></div>"
        f"<main><article><h1>Ellery and its bridges</h1>{body or paragraphs}</article></main>"
        "<aside class='sidebar'><h3>Popular</h3><ul><li>SIDEBAR_TEXT</li></ul></aside>"
        "<footer>FOOTER_TEXT Copyright 2024 Ellery Town Council. All rights reserved.</footer>"
        "</body></html>"
    )


def http_response(body: bytes, status: str = "200 OK", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in (headers or {"Content-Type": "text/html"}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def warc_record(kind: str, block: bytes, uri: str = "https://example.org/", content_type: str | None = None, n: int = 1) -> bytes:
    content_type = content_type or {"response": "application/http; msgtype=response", "request": "application/http; msgtype=request"}.get(kind, "text/plain")
    head = (
        f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{n:012d}>\r\n"
        f"WARC-Date: 2024-04-25T16:24:{n % 60:02d}Z\r\nWARC-Target-URI: {uri}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n"
    )
    return head.encode() + block + b"\r\n\r\n"


def write_warc(path: Path, records: list[bytes]) -> Path:
    """Plain for .warc; one gzip member per record for .gz, as crawlers write them."""
    path.write_bytes(b"".join(gzip.compress(r) for r in records) if path.suffix == ".gz" else b"".join(records))
    return path


def read(path: Path, extractor: str = "resiliparse") -> list[Record | Rejected]:
    files, skipped = list_source_files(SourceSpec(path=str(path)))
    assert not skipped
    return [r for f in files for r in read_records(f, 16 << 20, "file", HtmlExtraction(extractor=extractor))]


def docs(out: list[Record | Rejected]) -> list[Record]:
    return [r for r in out if isinstance(r, Record)]


def reasons(out: list[Record | Rejected]) -> Counter:
    return Counter(r.reason for r in out if isinstance(r, Rejected))


def test_shared_warcs_every_record_is_a_document_or_a_reason(shared_data: Path) -> None:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    folder = shared_data / "web" / "warc"
    records = responses = 0
    for f in sorted(folder.iterdir()):
        for rec in ArchiveIterator(open(f, "rb"), parse_http=False):
            records += 1
            responses += rec.record_type == WarcRecordType.response
    out = read(folder)
    assert len(out) == records  # one outcome per record, nothing lost
    pages = docs(out)
    assert responses == 37 and len(pages) == 37  # every response is an HTML page with main text
    assert reasons(out) == Counter(ingest_warc_request=37, ingest_warc_warcinfo=2, ingest_warc_metadata=2, ingest_not_html=4)
    for p in pages:
        assert p.url.startswith("https://") and p.warc_date.startswith("2024-04-25T")
        assert p.warc_record_id.startswith("urn:uuid:") and p.content_type == "text/html"
        assert p.position.startswith("offset=")
        assert "<script" not in p.text and "<div" not in p.text and "{" not in p.text[:200]
    mission = next(p for p in pages if p.url == "https://creativecommons.org/mission/")
    assert "Creative Commons (CC) is an international nonprofit organization" in mission.text
    assert "\n\nOur mission\n\n" in mission.text  # headings and paragraphs stay blocks


@pytest.mark.parametrize("extractor", ["resiliparse", "trafilatura"])
def test_main_text_only_with_paragraphs(tmp_path: Path, extractor: str) -> None:
    body = page("").encode()
    out = read(write_warc(tmp_path / "a.warc.gz", [warc_record("response", http_response(body))]), extractor)
    (doc,) = docs(out)
    for boilerplate in ("SCRIPT_TEXT", "color: red", "NAV_NEWS", "COOKIE_TEXT", "SIDEBAR_TEXT", "FOOTER_TEXT"):
        assert boilerplate not in doc.text, (extractor, boilerplate)
    assert "\n\n".join(ARTICLE) in doc.text  # paragraphs kept as paragraphs


LATIN1_TEXT = (
    "Le café de la gare était fermé; à côté, la crèmerie vendait des brioches et du pâté. "
    "Où est passé l'été? Les élèves répètent leçon après leçon, même le week-end, près du théâtre."
)


@pytest.mark.parametrize(
    "header, head",
    [
        ("text/html; charset=ISO-8859-1", ""),  # the HTTP header says so
        ("text/html", '<meta charset="iso-8859-1">'),  # only the page's meta tag
        ("text/html", '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'),
        ("text/html", ""),  # nothing declared: detected
    ],
)
def test_latin1_pages_come_out_right(tmp_path: Path, header: str, head: str) -> None:
    body = page(f"<p>{LATIN1_TEXT}</p><p>{LATIN1_TEXT.upper()}</p>", head).encode("latin-1")
    out = read(write_warc(tmp_path / "l.warc", [warc_record("response", http_response(body, headers={"Content-Type": header}))]))
    (doc,) = docs(out)
    assert LATIN1_TEXT in doc.text
    assert "\ufffd" not in doc.text and "Ã" not in doc.text


def test_utf8_page_with_a_wrong_header_charset_label_is_detected(tmp_path: Path) -> None:
    body = page(f"<p>{LATIN1_TEXT}</p>").encode("utf-8")
    out = read(write_warc(tmp_path / "u.warc", [warc_record("response", http_response(body, headers={"Content-Type": "text/html; charset=no-such-charset"}))]))
    assert LATIN1_TEXT in docs(out)[0].text


def test_records_that_are_not_documents_have_reasons(tmp_path: Path) -> None:
    html = page("").encode()
    records = [
        warc_record("warcinfo", b"software: test\r\n", content_type="application/warc-fields", n=1),
        warc_record("request", b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", n=2),
        warc_record("response", http_response(html), uri="https://example.org/ok", n=3),
        warc_record("response", http_response(b"<html>gone</html>", "404 Not Found"), n=4),
        warc_record("response", http_response(b"\x89PNG\r\n\x1a\n", headers={"Content-Type": "image/png"}), n=5),
        warc_record("response", http_response(b"<html><body><nav>x</nav></body></html>"), n=6),
        warc_record("response", http_response(b"", "301 Moved Permanently", {"Location": "/ok"}), n=7),
        warc_record("metadata", b"fetchTimeMs: 12\r\n", content_type="application/warc-fields", n=8),
        warc_record("revisit", http_response(b""), n=9),
    ]
    out = read(write_warc(tmp_path / "mixed.warc.gz", records))
    assert len(out) == len(records)
    assert [d.url for d in docs(out)] == ["https://example.org/ok"]
    assert reasons(out) == Counter(
        ingest_warc_warcinfo=1, ingest_warc_request=1, ingest_http_404=1, ingest_not_html=1, extract_empty=1,
        ingest_http_301=1, ingest_warc_metadata=1, ingest_warc_revisit=1,
    )


def test_content_encoding_and_chunked_bodies_are_decoded(tmp_path: Path) -> None:
    html = page("").encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (html[:100], html[100:])) + b"0\r\n\r\n"
    records = [
        warc_record("response", http_response(gzip.compress(html), headers={"Content-Type": "text/html", "Content-Encoding": "gzip"}), n=1),
        warc_record("response", http_response(chunked, headers={"Content-Type": "text/html", "Transfer-Encoding": "chunked"}), n=2),
    ]
    out = read(write_warc(tmp_path / "enc.warc", records))
    assert len(docs(out)) == 2 and all(ARTICLE[0] in d.text for d in docs(out))


def three_pages() -> list[bytes]:
    return [warc_record("response", http_response(page("").encode()), uri=f"https://example.org/{i}", n=i) for i in range(3)]


def test_truncated_gzip_keeps_what_can_be_read(tmp_path: Path) -> None:
    whole = write_warc(tmp_path / "whole.warc.gz", three_pages()).read_bytes()
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(whole[: len(whole) - 200])  # inside the last record's gzip member
    out = read(cut)
    assert [d.url for d in docs(out)] == ["https://example.org/0", "https://example.org/1"]
    (truncated,) = [r for r in out if isinstance(r, Rejected)]
    assert truncated.reason == "ingest_truncated" and truncated.position == f"offset={len(b''.join(three_pages()[:2]))}"


def four_members() -> list[bytes]:
    pages = three_pages() + [warc_record("response", http_response(page("").encode()), uri="https://example.org/3", n=3)]
    return [gzip.compress(r) for r in pages]


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m[:len(m) // 2],  # a member cut short inside the file (two files concatenated, one cut)
        lambda m: m[:30] + b"\xff" * 40 + m[70:],  # corrupt bytes inside a member
        lambda m: b"\x00garbage!!" * 20,  # garbage where a member should be
    ],
    ids=["cut-member", "corrupt-member", "garbage-member"],
)
def test_a_damaged_gzip_member_inside_the_file_costs_only_its_record(tmp_path: Path, damage) -> None:
    m = four_members()
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(m[0] + damage(m[1]) + m[2] + m[3])
    out = read(path)
    assert [d.url for d in docs(out)] == ["https://example.org/0", "https://example.org/2", "https://example.org/3"]
    (lost,) = [r for r in out if isinstance(r, Rejected)]
    assert lost.reason == "ingest_truncated" and lost.position == f"damaged={len(gzip.decompress(m[0]))}"


def test_a_corrupt_single_gzip_stream_is_a_reason_not_an_empty_file(tmp_path: Path) -> None:
    whole = gzip.compress(b"".join(three_pages()))  # one member for the whole file (allowed, if unusual)
    path = tmp_path / "one.warc.gz"
    path.write_bytes(whole[:100] + b"\xff" * 50 + whole[150:])
    (why,) = read(path)
    assert why.reason == "ingest_truncated" and "corrupt compressed data" in why.detail


def test_truncated_plain_warc_rejects_the_cut_record(tmp_path: Path) -> None:
    whole = b"".join(three_pages())
    cut = tmp_path / "cut.warc"
    cut.write_bytes(whole[: len(whole) - 500])
    out = read(cut)
    assert len(docs(out)) == 2
    assert reasons(out) == Counter(ingest_truncated=1)
    assert [r.position for r in out if isinstance(r, Rejected)] == [f"offset={len(b''.join(three_pages()[:2]))}"]


def test_garbage_header_is_skipped_and_reading_resumes(tmp_path: Path) -> None:
    good = three_pages()
    garbage = b"THIS IS NOT A WARC HEADER\r\nat all\r\n\r\n" + b"\x00\xff" * 50
    out = read(write_warc(tmp_path / "g.warc", [good[0], garbage, good[2]]))
    assert [d.url for d in docs(out)] == ["https://example.org/0", "https://example.org/2"]
    (bad,) = [r for r in out if isinstance(r, Rejected)]
    assert bad.reason == "ingest_warc_malformed" and bad.position == "after=0" and "offset 0" in bad.detail


def test_a_content_length_past_the_end_does_not_hide_the_records_after_it(tmp_path: Path) -> None:
    good = three_pages()
    lying = good[1].replace(b"Content-Length: ", b"Content-Length: 99999", 1)
    out = read(write_warc(tmp_path / "long.warc", [good[0], lying, good[2]]))
    assert [d.url for d in docs(out)] == ["https://example.org/0", "https://example.org/2"]
    assert reasons(out) == Counter(ingest_truncated=1)


def test_bad_chunked_encoding_rejects_one_record(tmp_path: Path) -> None:
    html = page("").encode()
    bad = warc_record("response", http_response(b"zz\r\n" + html + b"\r\n0\r\n\r\n", headers={"Content-Type": "text/html", "Transfer-Encoding": "chunked"}), n=7)
    good = three_pages()
    out = read(write_warc(tmp_path / "chunk.warc.gz", [good[0], bad, good[2]]))
    assert len(docs(out)) == 2
    (rej,) = [r for r in out if isinstance(r, Rejected)]
    assert rej.reason == "ingest_http_body" and "chunk header" in rej.detail


def test_wet_conversion_records_are_documents(tmp_path: Path) -> None:
    text = "\n".join(ARTICLE).encode()
    records = [
        warc_record("warcinfo", b"software: test\r\n", content_type="application/warc-fields", n=1),
        warc_record("conversion", text, uri="https://example.org/wet", content_type="text/plain", n=2),
    ]
    out = read(write_warc(tmp_path / "crawl.warc.wet.gz", records))
    (doc,) = docs(out)
    assert doc.text == "\n".join(ARTICLE) and doc.url == "https://example.org/wet"


def test_a_record_over_max_doc_bytes_is_measured_not_read(tmp_path: Path) -> None:
    big = warc_record("response", http_response(b"<html><body><p>" + b"word " * 400_000 + b"</p></body></html>"), uri="https://example.org/big", n=9)
    good = three_pages()
    path = write_warc(tmp_path / "big.warc.gz", [good[0], big, good[2]])
    files, _ = list_source_files(SourceSpec(path=str(path)))
    out = list(read_records(files[0], 1 << 20, "file"))
    assert [d.url for d in docs(out)] == ["https://example.org/0", "https://example.org/2"]
    assert reasons(out) == Counter(ingest_doc_too_large=1)


def test_a_warc_behind_an_fsspec_url(tmp_path: Path) -> None:
    import fsspec

    data = b"".join(gzip.compress(r) for r in three_pages())
    with fsspec.open("memory://crawl/a.warc.gz", "wb") as f:
        f.write(data)
    files, _ = list_source_files(SourceSpec(path="memory://crawl"))
    out = [r for f in files for r in read_records(f, 16 << 20, "file")]
    assert [d.url for d in docs(out)] == [f"https://example.org/{i}" for i in range(3)]


def test_an_empty_warc_file_is_a_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.warc").write_bytes(b"")
    assert reasons(read(tmp_path / "empty.warc")) == Counter(ingest_empty_file=1)


def test_missing_web_extra_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_warc(tmp_path / "a.warc", three_pages())
    monkeypatch.setitem(sys.modules, "fastwarc.warc", None)  # as if fastwarc were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'lmwright\[web\]'"):
        read(path)
