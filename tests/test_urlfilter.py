"""The URL filter: shipped block lists, the user's own lists, reasons with file:line, its suite."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lmwright.data_quality import DataQualityError, ValidationSettings, validate_shard
from lmwright.tasks.core.dataset import split_decisions
from lmwright.tasks.curate.urlfilter import BlockListError, UrlFilterParams, apply_urlfilter, resolve_block_lists


def decide(urls: list[str | None], params: UrlFilterParams) -> list[str | None]:
    docs = pl.DataFrame({"id": [str(i) for i in range(len(urls))], "url": urls}, schema={"id": pl.String, "url": pl.String})
    return apply_urlfilter(docs, params)["reason"].to_list()


@pytest.fixture()
def shipped(tmp_path: Path) -> UrlFilterParams:
    return resolve_block_lists(UrlFilterParams(), tmp_path)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://www.pornhub.com/view_video.php?v=1", "url_blocked_adult"),  # a listed domain
        ("https://de.xhamster.com/videos", "url_blocked_adult"),  # ... blocks its subdomains
        ("http://anything.xxx/", "url_blocked_adult"),  # an adult top-level domain
        ("https://example.org/free-porn-videos/", "url_blocked_adult"),  # a banned word as a URL token
        ("https://shop.example.com/cheap-viagra-online.html", "url_blocked_spam"),
        ("https://example.net/buy-followers", "url_blocked_spam"),
        ("https://www.essex.ac.uk/departments", None),  # "sex" inside a word is not a token
        ("https://en.wikipedia.org/wiki/Middlesex", None),
        ("https://news.example.com/2024/casino-regulation-debate", None),  # a word alone is judged by the text later
        ("https://notpornhub.com/", None),  # a domain matches whole labels only
        (None, None),  # no URL: nothing to judge
    ],
)
def test_shipped_lists(shipped: UrlFilterParams, url: str | None, reason: str | None) -> None:
    assert decide([url], shipped) == [reason]


def test_users_own_list_extends_the_shipped_ones_with_its_own_reason(tmp_path: Path) -> None:
    mine = tmp_path / "my-gambling.txt"
    mine.write_text("# my list\nbet.example.com\n\nre:/odds/\n")
    params = resolve_block_lists(UrlFilterParams(block_lists=["adult", str(mine)]), tmp_path)
    docs = pl.DataFrame({"id": ["a", "b", "c", "d"], "url": [
        "https://live.bet.example.com/x", "https://example.com/odds/today", "https://pornhub.com/", "https://example.com/"]})
    out = apply_urlfilter(docs, params)
    assert out["reason"].to_list() == ["url_blocked_my_gambling", "url_blocked_my_gambling", "url_blocked_adult", None]
    assert out["detail"].to_list()[:2] == ["domain bet.example.com @ my-gambling.txt:2", "re:/odds/ @ my-gambling.txt:4"]


def test_an_edited_list_changes_the_fingerprint_input(tmp_path: Path) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("a.example.com\n")
    first = resolve_block_lists(UrlFilterParams(block_lists=[str(mine)]), tmp_path)
    mine.write_text("a.example.com\nb.example.com\n")
    second = resolve_block_lists(UrlFilterParams(block_lists=[str(mine)]), tmp_path)
    assert first.lists_sha256 != second.lists_sha256
    assert decide(["https://b.example.com/"], first) == [None]
    assert decide(["https://b.example.com/"], second) == ["url_blocked_mine"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("ok.example.com\nhttps://example.com/path\n", r"mine.txt:2: 'https://example.com/path' is not a domain"),
        ("re:(unclosed\n", r"mine.txt:1: not a valid regular expression"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "mine.txt").write_text(content)
    with pytest.raises(BlockListError, match=message):
        resolve_block_lists(UrlFilterParams(block_lists=[str(tmp_path / "mine.txt")]), tmp_path)


def test_unknown_list_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(BlockListError, match=r"no shipped block list 'gambling' \(shipped: adult, spam\)"):
        resolve_block_lists(UrlFilterParams(block_lists=["gambling"]), tmp_path)


def test_empty_lists_turn_the_filter_off(tmp_path: Path) -> None:
    params = resolve_block_lists(UrlFilterParams(block_lists=[]), tmp_path)
    assert decide(["https://pornhub.com/"], params) == [None]


def test_suite_fails_a_kept_url_that_matches_a_pattern(shipped: UrlFilterParams, tmp_path: Path) -> None:
    docs = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "source": ["s", "s"], "uri": ["u#1", "u#2"],
                         "license": [None, None], "url": ["https://example.org/", "https://example.org/porn-clips"]},
                        schema={"id": pl.String, "text": pl.String, "source": pl.String, "uri": pl.String,
                                "license": pl.String, "url": pl.String})
    kept, rejected = split_decisions(apply_urlfilter(docs, shipped), "urlfilter")
    settings = ValidationSettings(docs_dir=str(tmp_path / "docs"))
    validate_shard("urlfilter", kept, rejected, shipped, settings, shard="s0")  # the stage's own output passes
    with pytest.raises(DataQualityError, match="expect_column_values_to_not_match_regex_list"):
        validate_shard("urlfilter", docs, rejected.clear(), shipped, settings, shard="s1")  # a blocked page kept
