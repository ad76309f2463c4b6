from __future__ import annotations

from pathlib import Path

import polars as pl

from lmwright.tasks.curate.normalize import NormalizeParams, apply_normalize


def norm(texts: list[str], **params) -> list[tuple[str, str | None]]:
    docs = pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts})
    out = apply_normalize(docs, NormalizeParams(**params))
    return list(zip(out["text"], out["reason"]))


def test_nfc_control_chars_whitespace_and_line_endings() -> None:
    decomposed = "cafe\u0301"
    assert norm([decomposed]) == [("caf\u00e9", None)]
    assert norm(["a\r\nb\rc"]) == [("a\nb\nc", None)]
    assert norm(["bell\x07 and\x00 nul\x9f"]) == [("bell and nul", None)]
    assert norm(["x\u00a0\u00a0y  z\t\tw   \n\n\n\nend"]) == [("x y z w\n\nend", None)]


def test_indentation_is_kept() -> None:
    assert norm(["def f():\n    return 1"]) == [("def f():\n    return 1", None)]


def test_documents_left_empty_are_dropped_with_reason() -> None:
    assert norm(["\x00\x01 \n\t", "ok"]) == [("", "normalize_empty"), ("ok", None)]


def test_switches_off() -> None:
    raw = "a\r\n\x07"
    assert norm([raw], unicode_form=None, strip_control_chars=False, normalize_whitespace=False) == [(raw, None)]


def test_gutenberg_header_and_footer_are_cut(shared_data: Path) -> None:
    raw = (shared_data / "gutenberg" / "pg2701_moby_dick.txt").read_bytes().decode("utf-8")
    [(text, reason)] = norm([raw], chunk={"max_chars": None})  # one document: the book whole, not its chunks
    assert reason is None
    assert "START OF THIS PROJECT GUTENBERG" not in text and "END OF THIS PROJECT GUTENBERG" not in text
    assert "Call me Ishmael" in text and "\r" not in text and "\ufeff" not in text
    [(kept, _)] = norm([raw], strip_gutenberg=False, chunk={"max_chars": None})
    assert "START OF THIS PROJECT GUTENBERG" in kept


def test_zero_width_and_bidi_controls_are_stripped_and_counted() -> None:
    from lmwright.tasks.curate.normalize import count_normalize

    texts = ["pay\u200bpal lo\u200cg\u200din", "admin\u202e\u2066 // check later \u2069\u202c ok", "plain"]
    assert norm(texts) == [("paypal login", None), ("admin // check later ok", None), ("plain", None)]
    docs = pl.DataFrame({"id": ["0", "1", "2"], "text": texts})
    assert count_normalize(docs, NormalizeParams()) == {"invisible_chars_stripped": 7}
    # Switched off, they stay and are still counted as kept.
    assert norm(texts[:1], strip_invisible=False) == [("pay\u200bpal lo\u200cg\u200din", None)]
    assert count_normalize(docs, NormalizeParams(strip_invisible=False)) == {"invisible_chars_kept": 7}
