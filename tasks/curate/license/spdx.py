"""SPDX: what license a record declares, spelled as an SPDX id or expression.

``license_from_record`` reads a record's own license field (``license`` / ``licence``, also
inside ``metadata`` / ``meta``) or, failing that, dolma's Creative Commons markers
(``attributes`` keys ``cc_re__...cc_by_sa_3_0...``, see shared/data/SOURCES.md 3a).
``normalize_license`` maps what it can to SPDX ids ("MIT License" -> "MIT", "Apache 2.0" ->
"Apache-2.0", "CC BY-SA 3.0" -> "CC-BY-SA-3.0"). Unknown stays ``None``; a declared string
we cannot map is kept as written (cleaned), never guessed into an id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


def split_expression(value: str) -> list[str] | None:
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
    tokens = split_expression(value)
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



def recognized(license_expr: str) -> bool:
    """True when every term is an SPDX id we know, a CC id, or a LicenseRef."""
    terms = [t for t in (split_expression(license_expr) or [license_expr]) if t not in ("(", ")", "AND", "OR", "WITH")]
    return all(t in _KNOWN.values() or _CC_ID.match(t) or t.startswith("LicenseRef-") or "exception" in t.lower()
               for t in terms)

