"""The opt-out registry: domains, URL prefixes, document ids and content hashes whose owners
withdrew consent (text files in the workdir and/or one fsspec URL).

``resolve_optouts`` reads it once per run into a content-addressed snapshot and puts its hash
into the params, so a new opt-out changes the license stage's fingerprint and reruns it and
everything after it; ``optout_matches`` finds the documents an entry withdraws.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import polars as pl
from lmwright.tasks.core.dataset import atomic_write_text
from lmwright.tasks.curate.dedup.minhash import normalize_expr
from lmwright.tasks.curate.license.policy import DEFAULT_OPTOUT_DIR, LicenseParams
from lmwright.tasks.curate.pii import with_scrubbed_identifiers

REASON_WITHDRAWN = "consent_withdrawn"
_HEX64 = re.compile(r"^[0-9a-f]{64}$", re.I)
_DOMAIN = re.compile(r"^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*\.?$", re.I)
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
OptoutKind = Literal["id", "sha256", "url", "domain"]
OPTOUT_KINDS: tuple[str, ...] = ("id", "sha256", "url", "domain")  # match priority, most specific first


def content_hash(text: str) -> str:
    """sha256 (hex) of the normalized text: lowercase, whitespace runs -> one space, ends stripped.

    The same normalization as dedup's exact key (tasks.curate.dedup.minhash.normalize_expr); give it to
    anyone who wants to withdraw a text without sending it.
    """
    return _sha256_series(pl.Series("text", [text]))[0]


def _sha256_series(text: pl.Series) -> list[str]:
    normalized = pl.DataFrame({"text": text}).select(normalize_expr("text"))["text"].to_list()
    return [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in normalized]


def _url_key_expr(col: pl.Expr) -> pl.Expr:
    """'https://www.Example.com:8080/a?b' -> 'example.com/a?b': scheme, www. and port dropped, host lowercased."""
    rest = col.str.strip_chars().str.replace(_SCHEME, "")
    host = rest.str.extract(r"^([^/?#]*)", 1)
    tail = rest.str.slice(host.str.len_chars())
    host = host.str.replace(r"^[^@]*@", "").str.replace(r":\d*$", "").str.to_lowercase()
    host = host.str.strip_chars_end(".").str.replace(r"^www\.", "")
    return host + tail


def url_key(url: str) -> str:
    return pl.select(_url_key_expr(pl.lit(url, dtype=pl.String))).item()


def parse_optout_line(line: str) -> tuple[str, str] | None:
    """(kind, normalized value) for one registry line, None for blank lines and comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
    kind: str | None = None
    m = re.match(r"^(domain|url|id|sha256)\s*:\s*(.+)$", line, re.I)
    if m and not (m[1].lower() == "url" and m[2].startswith("//")):
        kind, value = m[1].lower(), m[2].strip()
    else:
        value = line
        if _HEX64.match(value):
            kind = "sha256"
        elif re.match(_SCHEME, value) or "/" in value:
            kind = "url"
        elif _DOMAIN.match(value):
            kind = "domain"
        else:
            kind = "id"
    if kind == "sha256":
        value = value.lower()
    elif kind == "domain":
        value = value.lower().removeprefix("*.").rstrip(".").removeprefix("www.")
    elif kind == "url":
        value = url_key(value)
    return kind, value


def _registry_files(params: LicenseParams, workdir: Path) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    for entry in params.optout_paths:
        p = Path(entry)
        p = p if p.is_absolute() else workdir / p
        if not p.exists():
            if entry == DEFAULT_OPTOUT_DIR:
                continue
            raise FileNotFoundError(f"opt-out registry {entry!r} does not exist (looked at {p})")
        found = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
        files += [(str(q.relative_to(workdir)) if q.is_relative_to(workdir) else str(q), q.read_bytes()) for q in found]
    if params.optout_url:
        import fsspec

        with fsspec.open(params.optout_url, "rb") as f:
            files.append((params.optout_url, f.read()))
    return files


def read_registry(params: LicenseParams, workdir: str | Path) -> pl.DataFrame:
    """All registry entries: kind, value, where ('file:line'); the first occurrence of each entry wins."""
    rows: list[dict[str, str]] = []
    for name, data in _registry_files(params, Path(workdir)):
        for n, line in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
            if (parsed := parse_optout_line(line)) is not None:
                rows.append({"kind": parsed[0], "value": parsed[1], "where": f"{name}:{n}"})
    df = pl.DataFrame(rows, schema={"kind": pl.String, "value": pl.String, "where": pl.String})
    return df.unique(["kind", "value"], keep="first", maintain_order=True)


def resolve_optouts(params: LicenseParams, workdir: str | Path) -> LicenseParams:
    """Read the registry now, snapshot it under ``<workdir>/optout_snapshots/`` and return params
    carrying its hash (fingerprinted) and the snapshot path (not fingerprinted). Call this in
    the flow before planning the stage; every later refresh calls it again."""
    # Ids and URLs with PII are hashed by the pii stage: match those forms too (withdrawal from a corpus).
    registry = with_scrubbed_identifiers(read_registry(params, workdir), workdir)
    canonical = "\n".join(f"{k}\t{v}" for k, v in sorted(zip(registry["kind"], registry["value"])))
    sha = hashlib.sha256(canonical.encode()).hexdigest()
    snap = Path(workdir) / "optout_snapshots" / f"{sha[:20]}.json"
    if not snap.is_file():  # named by its content: an existing snapshot is this one (a read-only workdir stays usable)
        atomic_write_text(snap, json.dumps(registry.to_dicts(), sort_keys=True))
    return params.model_copy(update={"optout_sha256": sha, "optout_snapshot": str(snap)})


@functools.lru_cache(maxsize=8)
def _load_snapshot(path: str) -> pl.DataFrame:
    rows = json.loads(Path(path).read_text())
    return pl.DataFrame(rows, schema={"kind": pl.String, "value": pl.String, "where": pl.String})


def registry_of(params: LicenseParams) -> pl.DataFrame:
    if not params.resolved():
        if params.optout_paths or params.optout_url:
            raise ValueError(
                "LicenseParams has an opt-out registry but was not resolved: call "
                "tasks.curate.license.optout.resolve_optouts(params, workdir) before running the stage"
            )
        return pl.DataFrame(schema={"kind": pl.String, "value": pl.String, "where": pl.String})
    if params.optout_snapshot is None:
        raise ValueError("resolved LicenseParams lost its snapshot path (it is not serialized): resolve again")
    return _load_snapshot(params.optout_snapshot)


def optout_matches(docs: pl.DataFrame, registry: pl.DataFrame) -> pl.Series:
    """Per document, the registry entry it matches ('domain:example.com @ optout/x.txt:3') or null.

    Vectorized: ids and hashes by join, domains by joining every dot-suffix of the host,
    URL prefixes by joining on the host and then ``starts_with``.
    """
    rows = docs.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "id")
    url_col = "url" if "url" in docs.columns else None
    if url_col is not None:
        url = docs.get_column("url").cast(pl.String)
    else:  # uri is provenance; only a web uri says where the page lives
        url = docs.select(pl.when(pl.col("uri").str.contains(r"(?i)^https?://")).then(pl.col("uri")))["uri"]
    rows = rows.with_columns(url.alias("_url")).with_columns(_url_key_expr(pl.col("_url")).alias("_key"))
    rows = rows.with_columns(pl.col("_key").str.extract(r"^([^/?#]*)", 1).alias("_host"))
    hits: list[pl.DataFrame] = []

    def entries(kind: str) -> pl.DataFrame:
        return registry.filter(pl.col("kind") == kind).select("value", "where")

    if (ids := entries("id")).height:
        hits.append(rows.join(ids, left_on="id", right_on="value").select("_row", pl.lit("id").alias("kind"),
                                                                           pl.col("id").alias("value"), "where"))
        if "parent_id" in docs.columns:  # the chunks of a withdrawn book leave with it (tasks/curate/chunk.py)
            parents = rows.select("_row").with_columns(docs.get_column("parent_id").alias("value"))
            hits.append(parents.join(ids, on="value").select("_row", pl.lit("id").alias("kind"), "value", "where"))
    if (hashes := entries("sha256")).height:
        h = rows.select("_row").with_columns(pl.Series("value", _sha256_series(docs["text"].fill_null(""))))
        hits.append(h.join(hashes, on="value").select("_row", pl.lit("sha256").alias("kind"), "value", "where"))
    if (urls := entries("url")).height:
        prefixes = urls.with_columns(pl.col("value").str.extract(r"^([^/?#]*)", 1).alias("_host"))
        cand = rows.filter(pl.col("_key").is_not_null()).join(prefixes, on="_host")
        cand = cand.filter(pl.col("_key").str.starts_with(pl.col("value")))
        hits.append(cand.select("_row", pl.lit("url").alias("kind"), "value", "where"))
    if (domains := entries("domain")).height:
        parts = rows.filter(pl.col("_host").is_not_null() & (pl.col("_host") != "")).select(
            "_row", pl.col("_host").str.split(".").alias("_parts")
        )
        suffixes = parts.with_columns(pl.int_ranges(0, pl.col("_parts").list.len()).alias("_k")).explode("_k")
        suffixes = suffixes.select("_row", pl.col("_parts").list.slice(pl.col("_k")).list.join(".").alias("value"))
        hits.append(suffixes.join(domains, on="value").select("_row", pl.lit("domain").alias("kind"), "value", "where"))
    if not hits:
        return pl.Series("optout", [None] * docs.height, dtype=pl.String)
    order = {k: i for i, k in enumerate(OPTOUT_KINDS)}
    found = (
        pl.concat(hits)
        .with_columns(pl.col("kind").replace_strict(order, return_dtype=pl.Int8).alias("_p"))
        .sort("_row", "_p", "where")
        .unique("_row", keep="first")
        .select("_row", (pl.col("kind") + ":" + pl.col("value") + " @ " + pl.col("where")).alias("optout"))
    )
    return rows.select("_row").join(found, on="_row", how="left").sort("_row")["optout"]
