"""license: consent and copyright, as a shard stage.

Three parts:

* **Detection.** ``license_from_record`` reads a record's own license field (``license`` /
  ``licence``, also inside ``metadata`` / ``meta``) or, failing that, dolma's Creative Commons
  markers (``attributes`` keys ``cc_re__...cc_by_sa_3_0...``, see shared/data/SOURCES.md 3a).
  ``normalize_license`` maps what it can to SPDX ids ("MIT License" -> "MIT", "Apache 2.0" ->
  "Apache-2.0", "CC BY-SA 3.0" -> "CC-BY-SA-3.0"). Unknown stays ``None``; a declared string
  we cannot map is kept as written (cleaned), never guessed into an id.
* **Policy.** ``LicenseParams`` lists the licenses allowed per use (pretraining, finetuning) as
  ordered glob patterns, last match wins, ``!`` negates: ``["CC-BY*", "!CC-BY-NC*"]`` allows
  BY and BY-SA and rejects every NonCommercial variant. An SPDX expression is allowed when
  its ``AND`` terms all are (for ``OR``: any alternative).
* **Opt-outs.** A registry of domains, URL prefixes, document ids and content hashes whose
  owners withdrew consent (text files in the workdir and/or one fsspec URL). ``resolve_optouts``
  reads it once per run into a content-addressed snapshot and puts its hash into the params,
  so a new opt-out changes this stage's fingerprint and reruns it and everything after it.

Reasons (namespaced, fixed set, so the funnel stays readable; the detail names the license
or the registry entry):

* ``consent_withdrawn``      an opt-out entry matched (checked first; detail: entry + file:line)
* ``license_not_allowed``    a recognized SPDX license/expression outside the policy for this use
* ``license_unrecognized``   a declared license string that is no SPDX id and no pattern allows
* ``license_unknown``        no license at all and ``allow_unknown`` is off
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmwright.tasks.core.dataset import atomic_write_text
from lmwright.tasks.curate.dedup.minhash import normalize_expr
from lmwright.tasks.curate.pii import with_scrubbed_identifiers
from lmwright.tasks.core.stage import ShardStage

VERSION = "1"
REASON_WITHDRAWN = "consent_withdrawn"
Use = Literal["pretraining", "finetuning"]

# --- SPDX normalization --------------------------------------------------------------------

# Ids we recognize as they are (matched case-insensitively, returned in SPDX spelling).
KNOWN_IDS = (
    "0BSD", "AFL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.1", "Apache-2.0", "Artistic-2.0",
    "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "BSD-4-Clause", "BSL-1.0", "CC-PDDC", "CC-PDM-1.0",
    "CC0-1.0", "CDLA-Permissive-2.0", "CDLA-Sharing-1.0", "CNRI-Python", "EPL-1.0", "EPL-2.0",
    "GFDL-1.3-only", "GFDL-1.3-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only",
    "GPL-3.0-or-later", "HPND", "ISC", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
    "LGPL-3.0-or-later", "MIT", "MIT-0", "MIT-CMU", "MPL-1.1", "MPL-2.0", "NCSA", "ODbL-1.0",
    "ODC-By-1.0", "OFL-1.1", "OpenSSL", "PDDL-1.0", "PSF-2.0", "Python-2.0", "Unicode-3.0",
    "Unicode-DFS-2016", "Unlicense", "UPL-1.0", "WTFPL", "X11", "Zlib", "ZPL-2.1",
    # deprecated SPDX ids that still name one license exactly
    "GPL-2.0", "GPL-3.0", "LGPL-2.1", "LGPL-3.0", "AGPL-3.0",
)
_KNOWN = {i.upper(): i for i in KNOWN_IDS}
PUBLIC_DOMAIN = "LicenseRef-public-domain"  # SPDX has no id for plain "public domain"

# Free-text spellings -> SPDX id. Keys are compared after lowercasing and collapsing
# whitespace, '_' and ',' (so "Apache License, Version 2.0" == "apache license version 2.0").
_ALIASES = {
    "mit license": "MIT", "the mit license": "MIT", "mit licence": "MIT", "expat": "MIT",
    "apache 2": "Apache-2.0", "apache 2.0": "Apache-2.0", "apache-2": "Apache-2.0", "apache2": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0", "apache license 2.0": "Apache-2.0", "apache license v2": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0", "apache software license 2.0": "Apache-2.0",
    "apache license v2.0": "Apache-2.0", "asl 2.0": "Apache-2.0",
    "bsd 3-clause": "BSD-3-Clause", "bsd-3": "BSD-3-Clause", "bsd 3 clause": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause", "new bsd license": "BSD-3-Clause", "modified bsd license": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause", "bsd 2-clause": "BSD-2-Clause", "bsd-2": "BSD-2-Clause",
    "simplified bsd": "BSD-2-Clause", "simplified bsd license": "BSD-2-Clause", "2-clause bsd license": "BSD-2-Clause",
    "isc license": "ISC", "isc license (iscl)": "ISC",
    "psf": "PSF-2.0", "psfl": "PSF-2.0", "psf license": "PSF-2.0", "psf-2": "PSF-2.0",
    "python software foundation license": "PSF-2.0", "python software foundation license version 2": "PSF-2.0",
    "mozilla public license 2.0": "MPL-2.0", "mpl 2.0": "MPL-2.0", "mpl2": "MPL-2.0",
    "gplv2": "GPL-2.0", "gpl v2": "GPL-2.0", "gplv3": "GPL-3.0", "gpl v3": "GPL-3.0",
    "lgplv2.1": "LGPL-2.1", "lgplv3": "LGPL-3.0", "agplv3": "AGPL-3.0",
    "the unlicense": "Unlicense", "unlicense": "Unlicense", "zlib license": "Zlib",
    "boost software license 1.0": "BSL-1.0", "cc0": "CC0-1.0", "cc0 1.0": "CC0-1.0", "cc-0": "CC0-1.0",
    "cc0 1.0 universal": "CC0-1.0", "odc-by": "ODC-By-1.0", "odc-by 1.0": "ODC-By-1.0", "odc by": "ODC-By-1.0",
    "odbl": "ODbL-1.0", "pddl": "PDDL-1.0", "public domain": PUBLIC_DOMAIN, "public-domain": PUBLIC_DOMAIN,
    "public domain (us)": PUBLIC_DOMAIN,
}
# Values that say "no license information": unknown, never a license.
_NO_INFO = {"", "unknown", "none", "null", "n/a", "na", "other", "noassertion", "unlicensed?", "-", "?"}

_CC_URL = re.compile(
    r"creativecommons\.org/(?:licenses/(?P<type>by(?:-nc)?(?:-nd)?(?:-sa)?)|publicdomain/(?P<pd>zero|mark|certification))"
    r"(?:/(?P<ver>\d+\.\d+))?",
    re.I,
)
_CC_SHORT = re.compile(
    r"^(?:cc|creative[ -]commons)[ -]?(?P<type>by(?:[ -]?(?:nc|nd|sa))*)(?:[ -]?(?:v(?:ersion)?)?[ -]?(?P<ver>\d(?:\.\d)?))?"
    r"(?:[ -](?:international|unported|generic|license|licence|deed)\b.*)?$",
    re.I,
)
_CC_LONG_ELEMENTS = (
    ("NC", re.compile(r"non-?commercial", re.I)),
    ("ND", re.compile(r"no-?deriv", re.I)),
    ("SA", re.compile(r"share-?alike", re.I)),
)
_CC_ID = re.compile(r"^CC-BY(-NC)?(-ND)?(-SA)?(-\d\.\d)?$")
# dolma's cc_re attribute keys: ...cc_re__cc_<type>[_<major>_<minor>][_<xx>]; <xx> is a
# jurisdiction port *or* a deed language or a fragment of "legalcode"/"deed" (dolma's regex
# cannot tell them apart), so it is recorded in nothing but the raw key.
_DOLMA_CC_KEY = re.compile(
    r"(?:^|__)cc_(?P<type>by(?:_nc)?(?:_nd)?(?:_sa)?|publicdomain_(?:zero|mark|certification))"
    r"(?:_(?P<major>\d+)_(?P<minor>\d+))?(?:_(?P<lang>[a-z]{2}))?$"
)
_PD_IDS = {"zero": "CC0-1.0", "mark": "CC-PDM-1.0", "certification": "CC-PDDC"}


def _cc_id(elements: str, version: str | None) -> str:
    """'by-nc-sa', '4.0' -> 'CC-BY-NC-SA-4.0'; without a version the id says so by its absence."""
    parts = re.split(r"[-_ ]+", elements.strip().upper())
    present = {p for p in parts if p}
    tail = [e for e in ("NC", "ND", "SA") if e in present]
    base = "-".join(["CC", "BY", *tail])
    if version and "." not in version:
        version = f"{version}.0"
    return f"{base}-{version}" if version else base


def _normalize_term(term: str) -> str | None:
    raw = " ".join(term.split())
    key = re.sub(r"[\s_,]+", " ", raw.lower()).strip(" .")
    if key in _NO_INFO:
        return None
    if raw.upper() in _KNOWN:
        return _KNOWN[raw.upper()]
    if raw.upper().startswith("LICENSEREF-"):
        return raw
    if m := _CC_URL.search(raw):
        if m["pd"]:
            return _PD_IDS[m["pd"].lower()]
        return _cc_id(m["type"], m["ver"])
    if _CC_ID.match(raw.upper()):
        return raw.upper()
    if m := _CC_SHORT.match(key):
        return _cc_id(m["type"], m["ver"])
    if key in _ALIASES:
        return _ALIASES[key]
    if "creative commons" in key or key.startswith("cc "):
        if "zero" in key or "cc0" in key:
            return "CC0-1.0"
        if "attribution" in key:
            version = re.search(r"\b(\d\.\d)\b", key)
            elements = "by" + "".join(f"-{e}" for e, rx in _CC_LONG_ELEMENTS if rx.search(key))
            return _cc_id(elements, version[1] if version else None)
    return raw  # declared but not recognized: kept as written, never guessed into an id


def _tokens(expr: str) -> list[str]:
    op = r"(?:AND|OR|WITH)(?![^\s()])"
    return re.findall(rf"\(|\)|(?<![^\s(]){op}|[^\s()]+(?:\s+(?!{op})[^\s()]+)*", expr)


def _split_expression(value: str) -> list[str] | None:
    """Tokens of an SPDX expression, or None when ``value`` is a single term."""
    if not re.search(r"\s(AND|OR|WITH)\s|[()]", value):
        return None
    return _tokens(value)


def normalize_license(value: Any) -> str | None:
    """An SPDX id or expression for a license string; None for no information.

    "MIT License" -> "MIT", "Apache 2.0" -> "Apache-2.0", "CC BY-SA 3.0" -> "CC-BY-SA-3.0",
    "https://creativecommons.org/licenses/by-nc/4.0/" -> "CC-BY-NC-4.0", "Public Domain" ->
    "LicenseRef-public-domain", "MIT OR Apache-2.0" stays an expression. A string we cannot
    map ("BSD", "Dual License") is returned cleaned but otherwise as written.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):  # several licenses declared: all of them apply
        terms = sorted({t for t in (normalize_license(v) for v in value) if t})
        return " AND ".join(f"({t})" if " OR " in t else t for t in terms) or None
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    tokens = _split_expression(value)
    if tokens is None:
        return _normalize_term(value)
    out: list[str] = []
    for tok in tokens:
        if tok in ("(", ")", "AND", "OR", "WITH"):
            out.append(tok)
        else:
            out.append(_normalize_term(tok) or "NOASSERTION")
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def cc_markers(obj: Mapping[str, Any]) -> list[str]:
    """The dolma ``cc_re`` attribute keys of a record that carry at least one span."""
    attrs = obj.get("attributes")
    if not isinstance(attrs, Mapping):
        return []
    return sorted(k for k, v in attrs.items() if "cc_re" in k and v and _DOLMA_CC_KEY.search(k))


def _license_field(obj: Mapping[str, Any]) -> Any:
    for key in ("license", "licence", "license_spdx", "spdx_license"):
        value = obj.get(key)
        if isinstance(value, Mapping):
            value = value.get("spdx_id") or value.get("id") or value.get("name")
        if value:
            return value
    return None


def license_from_record(obj: Mapping[str, Any]) -> str | None:
    """The license a record declares about itself, as SPDX; None when it says nothing.

    Order: the record's own ``license``/``licence`` field; the same inside ``metadata`` or
    ``meta``; dolma's ``attributes`` CC markers. Several CC markers on one page become an
    ``AND`` expression (every license linked from the page must be acceptable), after
    folding jurisdiction/deed-language suffixes into the base license (``cc_by_sa_3_0_it``
    -> CC-BY-SA-3.0: the license elements and version are exact, the suffix is ambiguous).
    """
    if (value := _license_field(obj)) is not None:
        return normalize_license(value)
    for meta_key in ("metadata", "meta"):
        meta = obj.get(meta_key)
        if isinstance(meta, Mapping) and (value := _license_field(meta)) is not None:
            return normalize_license(value)
    ids = set()
    for key in cc_markers(obj):
        m = _DOLMA_CC_KEY.search(key)
        assert m is not None
        kind = m["type"]
        if kind.startswith("publicdomain_"):
            ids.add(_PD_IDS[kind.removeprefix("publicdomain_")])
        else:
            ids.add(_cc_id(kind, f"{m['major']}.{m['minor']}" if m["major"] else None))
    return " AND ".join(sorted(ids)) or None


def url_from_record(obj: Mapping[str, Any]) -> str | None:
    """The page URL of a crawled record (top-level ``url`` or dolma's ``metadata.warc_url``/``url``)."""
    candidates = [obj.get("url")]
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        candidates = [meta.get("warc_url"), obj.get("url"), meta.get("url")]
    for c in candidates:
        if isinstance(c, str) and c.strip():
            return c.strip()
    return None


# --- policy ----------------------------------------------------------------------------------

OPEN_LICENSES = [
    # permissive software licenses (docstrings, READMEs, code comments)
    "MIT", "MIT-0", "MIT-CMU", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "ISC", "Apache-2.0",
    "PSF-2.0", "Python-2.0", "CNRI-Python", "Zlib", "Unlicense", "BSL-1.0", "MPL-2.0", "X11", "NCSA", "HPND",
    "Unicode-3.0", "Unicode-DFS-2016", "UPL-1.0",
    # open text and data
    "CC0-1.0", "CC-PDDC", "CC-PDM-1.0", PUBLIC_DOMAIN, "PDDL-1.0", "ODC-By-1.0", "CDLA-Permissive-2.0",
    # Creative Commons BY and BY-SA of every version; NonCommercial and NoDerivatives are not open
    "CC-BY*", "!CC-BY-NC*", "!CC-BY-ND*",
]
DEFAULT_OPTOUT_DIR = "optout"
_HEX64 = re.compile(r"^[0-9a-f]{64}$", re.I)
_DOMAIN = re.compile(r"^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z][a-z0-9-]*\.?$", re.I)
_SCHEME = r"^[A-Za-z][A-Za-z0-9+.\-]*://"
OptoutKind = Literal["id", "sha256", "url", "domain"]
OPTOUT_KINDS: tuple[str, ...] = ("id", "sha256", "url", "domain")  # match priority, most specific first


class LicenseParams(BaseModel):
    """Which licenses a curate run accepts, for which use, and whose consent was withdrawn."""

    model_config = ConfigDict(extra="forbid")

    use: Use = Field("pretraining", description="What this corpus is for; picks the allowed list below.")
    pretraining: list[str] = Field(
        default_factory=lambda: list(OPEN_LICENSES),
        description="Licenses allowed for pretraining: SPDX ids or glob patterns (case-insensitive), in order; "
        "the last pattern that matches decides, a leading '!' rejects (['CC-BY*', '!CC-BY-NC*']).",
    )
    finetuning: list[str] = Field(
        default_factory=lambda: list(OPEN_LICENSES),
        description="Licenses allowed for fine-tuning, same syntax as `pretraining`.",
    )
    allow_unknown: bool = Field(
        True,
        description="Keep documents without any license information (the card says how many). "
        "False rejects them with `license_unknown`.",
    )
    optout_paths: list[str] = Field(
        default_factory=lambda: [DEFAULT_OPTOUT_DIR],
        description="Opt-out registry files or directories, relative to the workdir (or absolute). One entry per "
        "line: `domain:`, `url:`, `id:` or `sha256:` prefix, or bare (64 hex = sha256, scheme or '/' = URL prefix, "
        "host name = domain, else id); '#' starts a comment. A missing path is an error, except the default `optout`.",
    )
    optout_url: str | None = Field(None, description="One more registry file at an fsspec URL (https://, s3://...).")
    optout_sha256: str | None = Field(
        None,
        description="Set by resolve_optouts: hash of the registry entries. It is part of the stage fingerprint, so "
        "a new opt-out reruns this stage and everything after it. Leave unset in configs.",
    )
    optout_snapshot: str | None = Field(
        None, exclude=True, description="Set by resolve_optouts: the registry snapshot file the stage reads."
    )

    @field_validator("pretraining", "finetuning")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not isinstance(p, str) or not p.strip("! ")]
        if bad:
            raise ValueError(f"empty license pattern(s): {bad}")
        return [p.strip() for p in v]

    def allowed_patterns(self) -> list[str]:
        return self.pretraining if self.use == "pretraining" else self.finetuning

    def allows(self, license_value: str | None) -> bool:
        """Whether the policy keeps a document with this license value (what the license suite asks)."""
        return license_decision(license_value, self)[0] is None

    def resolved(self) -> bool:
        return self.optout_sha256 is not None


def term_allowed(license_id: str, patterns: Iterable[str]) -> bool:
    """Ordered globs, last match wins, '!' negates; no match -> not allowed."""
    verdict = False
    lid = license_id.upper()
    for p in patterns:
        neg = p.startswith("!")
        if fnmatch.fnmatchcase(lid, p.lstrip("!").strip().upper()):
            verdict = not neg
    return verdict


def _eval(tokens: list[str], patterns: list[str]) -> bool:
    """SPDX expression: OR of ANDs, parentheses, 'X WITH exception' judged on X."""
    pos = 0

    def atom() -> bool:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = disj()
            if pos < len(tokens) and tokens[pos] == ")":
                pos += 1
            return v
        v = term_allowed(tok, patterns)
        if pos < len(tokens) and tokens[pos] == "WITH":
            pos += 2
        return v

    def conj() -> bool:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            v = atom() and v
        return v

    def disj() -> bool:
        nonlocal pos
        v = conj()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            v = conj() or v
        return v

    return disj() if tokens else False


def recognized(license_expr: str) -> bool:
    """True when every term is an SPDX id we know, a CC id, or a LicenseRef."""
    terms = [t for t in (_split_expression(license_expr) or [license_expr]) if t not in ("(", ")", "AND", "OR", "WITH")]
    return all(t in _KNOWN.values() or _CC_ID.match(t) or t.startswith("LicenseRef-") or "exception" in t.lower()
               for t in terms)


def license_decision(value: str | None, params: LicenseParams) -> tuple[str | None, str | None]:
    """(reason, detail) for one license value under the policy; (None, None) keeps."""
    patterns = params.allowed_patterns()
    lic = normalize_license(value)
    if lic is None:
        if params.allow_unknown:
            return None, None
        return "license_unknown", f"no license information; allow_unknown is off ({params.use})"
    tokens = _split_expression(lic) or [lic]
    if _eval(tokens, patterns):
        return None, None
    if recognized(lic):
        return "license_not_allowed", f"{lic} is not allowed for {params.use}"
    return "license_unrecognized", f"{lic!r} is no SPDX license we recognize and no {params.use} pattern allows it"


# --- opt-out registry --------------------------------------------------------------------


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
                "tasks.curate.license.resolve_optouts(params, workdir) before running the stage"
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


# --- the stage -------------------------------------------------------------------------------


def apply_license(docs: pl.DataFrame, params: LicenseParams) -> pl.DataFrame:
    """Add ``optout`` (matched registry entry or null), ``reason`` and ``detail``."""
    if isinstance(params, Mapping):
        params = LicenseParams.model_validate(params)
    optout = optout_matches(docs, registry_of(params)) if docs.height else pl.Series("optout", [], pl.String)
    # One policy decision per distinct license value (a handful per shard), joined back.
    values = docs["license"].unique().to_list() if docs.height else []
    decided = [(v, *license_decision(v, params)) for v in values]
    table = pl.DataFrame(decided, schema={"license": pl.String, "_lreason": pl.String, "_ldetail": pl.String},
                         orient="row")
    out = docs.with_columns(optout.alias("optout")).join(table, on="license", how="left", nulls_equal=True,
                                                         maintain_order="left")
    return out.with_columns(
        pl.when(pl.col("optout").is_not_null()).then(pl.lit(REASON_WITHDRAWN)).otherwise(pl.col("_lreason")).alias("reason"),
        pl.when(pl.col("optout").is_not_null())
        .then(pl.lit("opt-out registry entry ") + pl.col("optout"))
        .otherwise(pl.col("_ldetail"))
        .alias("detail"),
    ).drop("_lreason", "_ldetail")


LICENSE_STAGE = ShardStage(name="license", version=VERSION, apply=apply_license)


def policy_summary(params: LicenseParams, license_stats: Mapping[str, Any] | None = None,
                   unknown_kept: int | None = None) -> dict[str, Any]:
    """What the card says about the license policy and the opt-out registry."""
    return {
        "use": params.use,
        "allowed": params.allowed_patterns(),
        "allow_unknown": params.allow_unknown,
        "unknown_kept": unknown_kept,
        "optout_sha256": params.optout_sha256,
        "optout_sources": [*params.optout_paths, *([params.optout_url] if params.optout_url else [])],
        "rejected_by_reason": dict((license_stats or {}).get("rejected_by_reason", {})),
    }


def render_policy_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["## Licenses and consent", ""]
    lines.append(f"Use: **{summary['use']}**. Allowed: `{', '.join(summary['allowed'])}` (last matching pattern wins).")
    if summary["allow_unknown"]:
        n = summary.get("unknown_kept")
        count = f"{n:,} documents" if n is not None else "documents"
        lines.append(f"Unknown licenses are **allowed**: {count} without license information were kept.")
    else:
        lines.append("Unknown licenses are **rejected** (`license_unknown`).")
    sha = summary.get("optout_sha256")
    lines.append(f"Opt-out registry: {', '.join(summary['optout_sources']) or 'none'}"
                 + (f" (entries hash `{sha[:12]}`)." if sha else "."))
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        lines += ["", "| reason | documents |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in sorted(reasons.items())]
    return "\n".join(lines) + "\n"


__all__ = [
    "LICENSE_STAGE",
    "LicenseParams",
    "OPEN_LICENSES",
    "apply_license",
    "cc_markers",
    "content_hash",
    "license_decision",
    "license_from_record",
    "normalize_license",
    "optout_matches",
    "parse_optout_line",
    "policy_summary",
    "read_registry",
    "render_policy_markdown",
    "resolve_optouts",
    "term_allowed",
    "url_from_record",
    "url_key",
]
