"""HTML to main text: the page's charset, then a maintained main-content extractor.

Navigation, sidebars, cookie banners, footers, scripts and styles are left out; paragraphs
stay paragraphs (separated by a blank line, as every other source's text is).
"""

from __future__ import annotations

import codecs
import importlib
import re
from types import ModuleType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.errors import UserError

WEB_EXTRA = "pip install 'lmwright[web]'"
UTF8_BOM = b"\xef\xbb\xbf"


class MissingExtra(UserError, ImportError):
    """An optional dependency a source needs is not installed; the message says how to install it."""


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{why} needs the package {module.split('.')[0]!r}: {WEB_EXTRA}") from None


class HtmlExtraction(BaseModel):
    """How crawled HTML pages become documents."""

    model_config = ConfigDict(extra="forbid")

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        "resiliparse",
        description="Main-text extractor: resiliparse (fast, keeps headings and lists) or trafilatura (slower, "
        "stricter on boilerplate; comments left out).",
    )


def page_charset(body: bytes, header_charset: str | None) -> tuple[str, str]:
    """(encoding, where it came from): a byte-order mark, the HTTP header, the page's meta tag, or detection.

    Encoding names follow WHATWG, as browsers do: a page labelled ISO-8859-1 is decoded as
    windows-1252 (its superset), so curly quotes in "Latin-1" pages come out right.
    """
    encoding = require("resiliparse.parse.encoding", "extracting text from HTML")
    if body.startswith(UTF8_BOM):
        return "utf-8", "bom"
    if header_charset and _known_codec(header_charset):
        return encoding.map_encoding_to_html5(header_charset), "http"
    meta = _meta_charset(body)
    if meta and _known_codec(meta):
        return encoding.map_encoding_to_html5(meta), "meta"
    return encoding.detect_encoding(body), "detected"


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)


def _meta_charset(body: bytes) -> str | None:
    """The charset a page declares in a meta tag within its first 4 KiB (HTML says the first 1024 bytes; pages stray)."""
    found = _META_CHARSET.search(body[:4096])
    return found.group(1).decode("ascii") if found else None


def _known_codec(label: str) -> bool:
    try:
        codecs.lookup(label.strip().strip("\"'"))
        return True
    except LookupError:
        return False


def decode_html(body: bytes, header_charset: str | None) -> str:
    """The page as text in its own charset; undecodable bytes are dropped, never raised."""
    encoding = require("resiliparse.parse.encoding", "extracting text from HTML")
    charset, _ = page_charset(body, header_charset)
    return encoding.bytes_to_str(body, charset, errors="ignore", fallback_encodings=("utf-8", "cp1252"))


def main_text(html: str, settings: HtmlExtraction, url: str | None = None) -> str:
    """The page's main content as paragraphs separated by blank lines; "" when there is none."""
    if settings.extractor == "trafilatura":
        text = _trafilatura(html, url)
    else:
        text = _resiliparse(html)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _resiliparse(html: str) -> str:
    html2text = require("resiliparse.extract.html2text", "extracting text from HTML")
    parse = require("resiliparse.parse.html", "extracting text from HTML")
    tree = parse.HTMLTree.parse(html)
    return html2text.extract_plain_text(
        tree,
        preserve_formatting=True,
        main_content=True,
        list_bullets=True,
        alt_texts=False,  # image descriptions are not prose
        links=False,
        form_fields=False,
        noscript=False,
        comments=False,
    )


def _trafilatura(html: str, url: str | None) -> str:
    trafilatura = require("trafilatura", "extracting text with trafilatura")
    text = trafilatura.extract(html, url=url, include_comments=False, deduplicate=False) or ""
    # trafilatura puts one block per line: a blank line between them makes them paragraphs.
    return text.replace("\n", "\n\n")
