"""urlfilter: drop pages whose URL is on a block list (adult, spam) before any text is processed.

As C4, RefinedWeb and FineWeb do, a page is judged by where it comes from before what it says:
a list of domains (a listed domain blocks its subdomains too) and URL patterns (regular
expressions searched in the lowercased URL, e.g. banned words between separators). The lists
ship in ``configs/urlfilter/`` (see its README.md), one file per category; a user adds their own
files in the same format. A document matching a list is rejected as ``url_blocked_<list>`` with
the entry and its file:line as detail. Documents without a URL (plain files, JSONL without a
url field) pass: there is nothing to judge.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Mapping

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.errors import UserError
from lmwright.tasks.core.files import atomic_write_text
from lmwright.tasks.core.shipped import CONFIG_DIR
from lmwright.tasks.core.stage import ShardStage

VERSION = "1"
BLOCKLIST_DIR = CONFIG_DIR / "urlfilter"
ENTRY_SCHEMA = {"list": pl.String, "kind": pl.String, "value": pl.String, "where": pl.String}
_DOMAIN = re.compile(r"^(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?\.)+[a-z0-9-]{2,}$")
_LIST_NAME = re.compile(r"^[a-z0-9_]+$")


class BlockListError(UserError, ValueError):
    """A block list that cannot be used; the message names the file and line."""


class UrlFilterParams(BaseModel):
    """Which URL block lists reject pages, before any text processing."""

    model_config = ConfigDict(extra="forbid")

    block_lists: list[str] = Field(
        default_factory=lambda: ["adult", "spam"],
        description="Shipped lists by name (configs/urlfilter/<name>.txt: adult, spam) or paths to your own files "
        "(relative to the working directory). A line is a domain (blocks it and its subdomains) or `re:` and a "
        "regular expression searched in the lowercased URL; `#` starts a comment line. A match is rejected as "
        "url_blocked_<file name>. An empty list turns the filter off.",
    )
    lists_sha256: str | None = Field(
        None,
        description="Set by resolve_block_lists: hash of every entry, part of the stage fingerprint (an edited list "
        "reruns this stage and what follows). Leave unset in configs.",
    )
    snapshot: str | None = Field(None, exclude=True, description="Set by resolve_block_lists: the entries the stage reads.")

    @property
    def patterns(self) -> list[str]:
        """Every `re:` entry (the stage's Great Expectations suite checks no kept URL matches one)."""
        entries = entries_of(self)
        return entries.filter(pl.col("kind") == "pattern")["value"].to_list()


def list_path(name_or_path: str) -> Path:
    """A shipped list by name (``adult``), else a file path."""
    if _LIST_NAME.match(name_or_path):
        shipped = BLOCKLIST_DIR / f"{name_or_path}.txt"
        if not shipped.is_file():
            known = ", ".join(sorted(p.stem for p in BLOCKLIST_DIR.glob("*.txt")))
            raise BlockListError(f"urlfilter: no shipped block list {name_or_path!r} (shipped: {known}); a file needs a path")
        return shipped
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise BlockListError(f"urlfilter: block list {name_or_path} does not exist")
    return path


def read_block_list(path: Path) -> list[dict[str, str]]:
    """The entries of one list file; a line that is neither a domain nor a valid pattern is an error naming it."""
    name = path.stem.lower().replace("-", "_")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BlockListError(f"urlfilter: block list {path} cannot be read: {e}") from None
    entries = []
    for no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{no}"
        if line.startswith("re:"):
            pattern = line[3:].strip()
            try:
                pl.select(pl.lit("").str.contains(pattern))  # polars' (Rust) regex syntax is what the stage runs
            except pl.exceptions.ComputeError as e:
                raise BlockListError(f"urlfilter: {path}:{no}: not a valid regular expression: {str(e).splitlines()[0]}") from None
            entries.append({"list": name, "kind": "pattern", "value": pattern, "where": where})
        else:
            domain = line.lower().rstrip(".")
            if not _DOMAIN.match(domain):
                raise BlockListError(f"urlfilter: {path}:{no}: {line!r} is not a domain (write `re:` before a pattern)")
            entries.append({"list": name, "kind": "domain", "value": domain.removeprefix("www."), "where": where})
    return entries


def resolve_block_lists(params: UrlFilterParams, workdir: str | Path) -> UrlFilterParams:
    """Read the lists now, snapshot them under ``<workdir>/urlfilter_snapshots/`` and return params carrying
    their hash (fingerprinted) and the snapshot path. The flow calls this before planning the stage."""
    entries = [e for name in params.block_lists for e in read_block_list(list_path(name))]
    canonical = json.dumps(entries, sort_keys=True)
    sha = hashlib.sha256(canonical.encode()).hexdigest()
    snap = Path(workdir) / "urlfilter_snapshots" / f"{sha[:20]}.json"
    if not snap.is_file():  # named by its content: an existing snapshot is this one
        atomic_write_text(snap, canonical)
    return params.model_copy(update={"lists_sha256": sha, "snapshot": str(snap)})


@functools.lru_cache(maxsize=8)
def _load_snapshot(path: str) -> pl.DataFrame:
    return pl.DataFrame(json.loads(Path(path).read_text()), schema=ENTRY_SCHEMA)


def entries_of(params: UrlFilterParams) -> pl.DataFrame:
    if params.snapshot is None:
        if params.block_lists:
            raise ValueError("UrlFilterParams were not resolved: call resolve_block_lists(params, workdir) first")
        return pl.DataFrame(schema=ENTRY_SCHEMA)
    return _load_snapshot(params.snapshot)


def _host_expr(url: pl.Expr) -> pl.Expr:
    """'https://user@WWW.Example.com.:8080/a' -> 'www.example.com': scheme, user, port and trailing dot dropped."""
    rest = url.str.strip_chars().str.replace(r"^[A-Za-z][A-Za-z0-9+.-]*://", "")
    host = rest.str.extract(r"^([^/?#]*)", 1).str.replace(r"^[^@]*@", "").str.replace(r":\d*$", "")
    return host.str.to_lowercase().str.strip_chars_end(".")


def blocked_by(docs: pl.DataFrame, entries: pl.DataFrame) -> pl.DataFrame:
    """Per document, ``list`` and ``entry`` ('domain example.com @ adult.txt:3') of its first match, or nulls.

    Domains by joining every dot-suffix of the host (so a listed domain blocks its subdomains),
    then patterns in list order.
    """
    rows = docs.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), pl.col("url").cast(pl.String).alias("_url"))
    rows = rows.with_columns(_host_expr(pl.col("_url")).alias("_host"), pl.col("_url").str.to_lowercase().alias("_lower"))
    hits = []
    domains = entries.filter(pl.col("kind") == "domain")
    if domains.height:
        parts = rows.filter(pl.col("_host").is_not_null() & (pl.col("_host") != "")).select(
            "_row", pl.col("_host").str.split(".").alias("_parts")
        )
        suffixes = parts.with_columns(pl.int_ranges(0, pl.col("_parts").list.len()).alias("_k")).explode("_k")
        suffixes = suffixes.select("_row", pl.col("_parts").list.slice(pl.col("_k")).list.join(".").alias("value"))
        found = suffixes.join(domains, on="value").sort("_row", "where").unique("_row", keep="first")
        hits.append(found.select("_row", "list", ("domain " + pl.col("value") + " @ " + pl.col("where")).alias("entry")))
    patterns = entries.filter(pl.col("kind") == "pattern")
    if patterns.height:
        first: pl.Expr = pl.lit(None, dtype=pl.Int32)
        for i, pattern in reversed(list(enumerate(patterns["value"]))):
            first = pl.when(pl.col("_lower").str.contains(pattern)).then(pl.lit(i, dtype=pl.Int32)).otherwise(first)
        matched = rows.select("_row", first.alias("_i")).filter(pl.col("_i").is_not_null())
        labelled = patterns.with_row_index("_i").with_columns(pl.col("_i").cast(pl.Int32))
        found = matched.join(labelled, on="_i")
        hits.append(found.select("_row", "list", ("re:" + pl.col("value") + " @ " + pl.col("where")).alias("entry")))
    out = rows.select("_row")
    if not hits:
        return out.with_columns(pl.lit(None, dtype=pl.String).alias("list"), pl.lit(None, dtype=pl.String).alias("entry"))
    first_hit = pl.concat(hits).unique("_row", keep="first", maintain_order=True)  # domains before patterns
    return out.join(first_hit, on="_row", how="left").sort("_row")


def apply_urlfilter(docs: pl.DataFrame, params: UrlFilterParams | Mapping) -> pl.DataFrame:
    """Add ``reason`` (``url_blocked_<list>``) and ``detail`` (the entry and where it is listed)."""
    if isinstance(params, Mapping):
        params = UrlFilterParams.model_validate(params)
    entries = entries_of(params)
    if "url" not in docs.columns or entries.height == 0 or docs.height == 0:
        none = pl.lit(None, dtype=pl.String)
        return docs.with_columns(none.alias("reason"), none.alias("detail"))
    hit = blocked_by(docs, entries).select(
        (pl.lit("url_blocked_") + pl.col("list")).alias("reason"), pl.col("entry").alias("detail")
    )
    return docs.hstack(hit)


URLFILTER_STAGE = ShardStage(name="urlfilter", version=VERSION, apply=apply_urlfilter)
