"""pii: redact e-mails, phone numbers, IP addresses, payment cards and IBANs.

Each type becomes a typed placeholder (``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<CARD>``,
``<IBAN>``). Regexes run vectorised in polars (Rust regex: no look-arounds, so boundaries
are matched as capture groups and put back, and a second pass catches a match whose
boundary character the previous match consumed). Card numbers and IBANs need a checksum,
so only documents with a candidate go through Python, where each candidate is checked
(Luhn / ISO 7064 mod 97) before it is replaced.

Phone numbers without an area code (``contact 555-0199``, ``call 0171 234567``) cannot be
told from other numbers by their digits, so they are redacted only after a word that says
phone (call, tel., phone, contact, fax; Telefon, téléphone, teléfono, ...), and only when
the number is not a date or a range of years (``local_phone_ok``).

Counts per type are taken as (placeholders after) - (placeholders before), so text that
already contained a placeholder is not counted twice.

Ordinary numbers are left alone by construction: dates (2019-07-17, 17/07/2019), times,
versions (3.11.7; ``v1.2.3.4`` is glued to a letter, so it is not an address), prices,
years, ISBNs (they start with 9 or 0-and-dashes, never a card prefix or phone layout) and
plain numbers. A bare four-part dotted number such as ``2.7.18.1`` *is* redacted as an IP:
it cannot be told from one, and the pii suite (data_quality/patterns.py) requires it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.core.files import temp_path_for

TYPES = ("email", "phone", "ip", "credit_card", "iban")
COUNT_COLUMNS = {t: f"pii_{'card' if t == 'credit_card' else t}" for t in TYPES}

# --------------------------------------------------------------------------- patterns
# A superset of data_quality.patterns.EMAIL (same local part, same domain shape).
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# IPv4 with the suite's boundaries: not glued to a word character or to ".digit".
IPV4 = rf"(^|[^\w.]|\.[^\d])((?:{_OCTET}\.){{3}}{_OCTET})($|[^\w.]|\.[^\d]|\.$)"
_H = r"[0-9A-Fa-f]{1,4}"
# IPv6: full 8 groups, or compressed with "::" and at least two groups; optional IPv4 tail.
_IPV6_BODY = (
    rf"(?:(?:{_H}:){{7}}{_H}"
    rf"|(?:{_H}:){{1,6}}:(?:{_H}:){{0,5}}{_H}"
    rf"|(?:{_H}:){{1,7}}:"
    rf"|::(?:ffff:)?{_OCTET}(?:\.{_OCTET}){{3}}"
    rf"|(?:{_H}:){{6}}{_OCTET}(?:\.{_OCTET}){{3}})"
)
IPV6 = rf"(^|[^\w:.])({_IPV6_BODY})($|[^\w:.]|\.[^\w]|\.$)"

# International (E.164-like): the suite's PHONE pattern, boundary kept as group 1.
PHONE_INTL = r"(^|[^\w+])(\+[0-9][0-9\s().-]{7,}[0-9])"
# National layouts. North America: (555) 123-4567, 555-123-4567, 555.123.4567.
_NANP = r"(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[-.])[0-9]{3}[-.][0-9]{4}"
# UK: 11 digits starting with 0, as 07700 900123, 020 7946 0958, 0121 496 0000,
# 0808 145 4742, 0800 1956669 or 08000930705 (spaces optional, never dashes: ISBN-10s
# like 0-306-40615-2 use dashes).
_UK = (
    r"(?:0[0-9]{10}|0[0-9]{4} [0-9]{6}|0[0-9]{3} [0-9]{3} ?[0-9]{4}|0[0-9]{3} [0-9]{7}"
    r"|0[0-9]{2} [0-9]{4} ?[0-9]{4}|0[0-9]{4} [0-9]{3} [0-9]{3})"
)
PHONE_NATIONAL = rf"(^|[^\w.,+-]|[A-Za-z])((?:{_NANP}|{_UK}))($|[^\d-]|[.,][^\d])"

# Local numbers (no area code, or national formats without a fixed layout: 555-0199,
# 0171 234567, 030/1234567, 01 23 45 67 89) only where the words before them say phone:
# group 1 is the context word plus what may stand between it and the number ("call us on",
# "Tel.:", "Fax-Nr."), kept; group 2 the number, checked in Python (local_phone_ok) so that
# dates, times, versions and years after "contact" or "call" stay; group 3 the boundary.
# No \b: a Unicode word boundary makes polars' regex leave its DFA (3x slower stage); the
# character before the word is matched instead, and the gap admits no letters after it.
_PHONE_WORDS = (
    r"call(?:s|ed|ing)?|phone(?:s|d)?|telephone|tel|ph|mobile|mob|cell|contact(?:ed|ing)?|fax|hotline"
    r"|telefon(?:nummer)?|rufnummer|handy|mobil(?:nummer)?|kontakt"
    r"|t[ée]l[ée]phone|t[ée]l|appel(?:ez|er)?|portable|contactez"
    r"|tel[ée]fono|llam(?:e|ar|ad)|m[óo]vil|contacto"
)
_PHONE_GAP = (
    r"(?:[ \t]*(?:[:#.-]|n[°º]|(?:me|us|him|her|them|on|at|under|unter|au|al|no|nr|number|nummer"
    r"|num[ée]ro|n[úu]mero|privat|private|priv|home|office|work|direct|direkt|durchwahl|b[üu]ro"
    r"|gesch[äa]ftlich|dienstlich|fixe|fijo)\.?))*[ \t]*"
)
PHONE_LOCAL = (
    rf"(?i)((?:^|[^\w])(?:{_PHONE_WORDS})\.?{_PHONE_GAP})"
    r"((?:\([0-9]{2,5}\) ?)?[0-9]{2,8}(?:[ ./-][0-9]{2,8}){0,4})"
    r"($|[^\w.,/-]|[.,/](?:$|[^\d]))"
)

# Cards: 13-19 digits in groups separated by single spaces or dashes, first digit 2-6
# (Mastercard 2/5, Amex/Diners/JCB 3, Visa 4, Discover/Maestro/UnionPay 6): ISBN-13s
# (978/979...) and timestamps (1...) never qualify. Luhn is checked in Python.
CARD = r"(^|[^\w.,-])([2-6][0-9]{3}(?:[ -]?[0-9]){9,15})($|[^\w-]|[.,][^\d])"
# IBAN: country, 2 check digits, 11-30 alphanumerics, optionally in groups of four.
IBAN = r"(^|[^\w])([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)($|[^\w])"

_CARD_RE = re.compile(CARD)
_IBAN_RE = re.compile(IBAN)
_PHONE_LOCAL_RE = re.compile(PHONE_LOCAL)

# Lengths of IBANs by country (ISO 13616 registry); unknown countries need 15-34.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30,
    "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


class PiiParams(BaseModel):
    """Parameters of the pii stage."""

    model_config = ConfigDict(extra="forbid")

    email: bool = Field(default=True, description="Redact e-mail addresses.")
    phone: bool = Field(default=True, description="Redact phone numbers (international +CC, North American, UK; local numbers after a phone word such as call, tel., Telefon).")
    ip: bool = Field(default=True, description="Redact IPv4 and IPv6 addresses.")
    credit_card: bool = Field(default=True, description="Redact payment card numbers (13-19 digits, Luhn-valid).")
    iban: bool = Field(default=True, description="Redact IBANs (mod-97 checksum and country length verified).")
    drop_above: int | None = Field(
        default=None,
        ge=0,
        description="Drop a document with more than this many matches in total (reason pii_too_many); null never drops.",
    )
    identifiers: list[str] = Field(
        default_factory=lambda: ["id", "url", "uri", "parent_id"],
        description="Identifier columns whose PII (an e-mail as an id, in a URL or a file name) becomes "
        "<TYPE:keyed hash>: unique and stable within a workdir, unreadable without its key; [] keeps them.",
    )
    identifier_key_sha256: str | None = Field(
        None, description="Set by resolve_pii: the SHA-256 of the workdir's identifier key (a new key reruns the stage)."
    )
    identifier_key_file: str | None = Field(
        None, exclude=True, description="Set by resolve_pii: the key file (never fingerprinted, never the key itself)."
    )
    placeholders: dict[str, str] = Field(
        default_factory=lambda: {
            "email": "<EMAIL>",
            "phone": "<PHONE>",
            "ip": "<IP>",
            "credit_card": "<CARD>",
            "iban": "<IBAN>",
        },
        description="Replacement text per type (keys: email, phone, ip, credit_card, iban); missing keys use the defaults.",
    )

    def placeholder(self, kind: str) -> str:
        default = PiiParams.model_fields["placeholders"].default_factory()  # type: ignore[misc]
        return self.placeholders.get(kind, default[kind])


# --------------------------------------------------------------------------- checksums


def luhn_ok(number: str) -> bool:
    """Luhn checksum of the digits in ``number``."""
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_ok(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def iban_ok(candidate: str) -> bool:
    """ISO 13616: country length (when known) and mod 97 == 1 of the rearranged number."""
    s = candidate.replace(" ", "")
    expected = _IBAN_LENGTHS.get(s[:2])
    if (expected is not None and len(s) != expected) or not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_DATE_SHAPES = (
    re.compile(r"(?:19|20)[0-9]{2}[./-](?:0?[1-9]|1[0-2])[./-](?:0?[1-9]|[12][0-9]|3[01])"),  # 2024-05-01
    re.compile(r"(?:0?[1-9]|[12][0-9]|3[01])[./-](?:0?[1-9]|1[0-2])[./-](?:19|20)?[0-9]{2}"),  # 17.07.2019
    re.compile(r"(?:0?[1-9]|1[0-2])[./-](?:0?[1-9]|[12][0-9]|3[01])[./-](?:19|20)?[0-9]{2}"),  # 07/17/2019
    re.compile(r"(?:19|20)[0-9]{2}[ /-](?:19|20)[0-9]{2}"),  # a range of years: 1999-2005
)


def local_phone_ok(candidate: str) -> bool:
    """A local number after a phone word: 6-15 digits, not a date, a range of years or a dotted version."""
    digits = sum(c.isdigit() for c in candidate)
    if not 6 <= digits <= 15:  # shorter: a count, a year, a version; longer: not a phone
        return False
    if candidate.count(".") == 2:  # 18.26.17 is a version (or a date); dotted phones have 1 or 4+ dots
        return False
    return not any(shape.fullmatch(candidate) for shape in _DATE_SHAPES)


def _sub_checked(pattern: re.Pattern[str], check, placeholder: str, text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        return m.group(1) + (placeholder if check(m.group(2)) else m.group(2)) + m.group(3)

    # Two passes: a match's trailing boundary may be the next candidate's leading one.
    return pattern.sub(repl, pattern.sub(repl, text))


# --------------------------------------------------------------------------- text


def _replace_bounded(col: pl.Expr, pattern: str, placeholder: str, groups: int = 3) -> pl.Expr:
    repl = "${1}" + placeholder.replace("$", "$$") + ("${3}" if groups == 3 else "")
    for _ in range(2):  # the second pass catches matches whose boundary the first consumed
        col = col.str.replace_all(pattern, repl)
    return col


# Types whose candidates a regex finds and Python confirms: (pattern, compiled, check).
_CHECKED = {
    "credit_card": (CARD, _CARD_RE, card_ok),
    "iban": (IBAN, _IBAN_RE, iban_ok),
    "phone_local": (PHONE_LOCAL, _PHONE_LOCAL_RE, local_phone_ok),
}


def redact_text(docs: pl.DataFrame, p: PiiParams) -> tuple[pl.Series, dict[str, pl.Series]]:
    """Redacted text and per-type counts (placeholders added) for every document."""
    text = docs.get_column("text").fill_null("")
    counts: dict[str, pl.Series] = {}

    def count(s: pl.Series, kind: str) -> pl.Series:
        return s.str.count_matches(p.placeholder(kind), literal=True).cast(pl.Int64)

    frame = pl.DataFrame({"t": text})
    col = pl.col("t")
    steps: list[tuple[str, Any]] = []
    # Order matters: e-mails first (their digits must not become phones), cards and IBANs
    # before phones (a spaced card number would otherwise look like a phone number).
    if p.email:
        steps.append(("email", lambda c: c.str.replace_all(EMAIL, p.placeholder("email").replace("$", "$$"))))
    if p.credit_card:
        steps.append(("credit_card", None))
    if p.iban:
        steps.append(("iban", None))
    if p.ip:
        steps.append(("ip", lambda c: _replace_bounded(_replace_bounded(c, IPV6, p.placeholder("ip")), IPV4, p.placeholder("ip"))))
    if p.phone:
        steps.append(
            ("phone", lambda c: _replace_bounded(_replace_bounded(c, PHONE_INTL, p.placeholder("phone"), groups=2), PHONE_NATIONAL, p.placeholder("phone")))
        )
        steps.append(("phone_local", None))
    current = frame.get_column("t")
    for kind, fn in steps:
        counted = "phone" if kind == "phone_local" else kind
        before = count(current, counted)
        if fn is not None:
            current = pl.DataFrame({"t": current}).select(fn(col)).get_column("t")
        else:
            pattern, compiled, check = _CHECKED[kind]
            placeholder = p.placeholder("phone" if kind == "phone_local" else kind)
            has = current.str.contains(pattern)
            if has.any():
                values = current.to_list()
                for i in has.arg_true().to_list():
                    values[i] = _sub_checked(compiled, check, placeholder, values[i])
                current = pl.Series("t", values, dtype=pl.String)
        added = (count(current, counted) - before).clip(lower_bound=0)
        counts[counted] = counts[counted] + added if counted in counts else added
    for kind in TYPES:
        counts.setdefault(kind, pl.Series([0] * docs.height, dtype=pl.Int64))
    return current, counts


# --------------------------------------------------------------------------- identifiers
# Ids, URLs and file names are joined on (dedup, the cross-version index, opt-outs), so their
# PII cannot become a bare placeholder: two ids would collide. Each match becomes its type and
# an HMAC of it under a per-workdir key: the same value gives the same id in every run and
# corpus version of the workdir, and nobody without the key can test a guessed address.
IDENTIFIER_KEY_FILE = Path("secrets") / "pii_identifiers.key"
_TAGS = {"email": "EMAIL", "phone": "PHONE", "ip": "IP", "credit_card": "CARD", "iban": "IBAN"}
# A URL carries an e-mail percent-encoded as often as not.
EMAIL_URLENCODED = r"[A-Za-z0-9._%+-]+%40[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"


def _always(_: str) -> bool:
    return True


# (type, pattern, check) in redaction order; a pattern with groups has the PII in group 2.
_IDENTIFIER_PATTERNS: list[tuple[str, str, Any]] = [
    ("email", EMAIL, _always),
    ("email", EMAIL_URLENCODED, _always),
    ("credit_card", CARD, card_ok),
    ("iban", IBAN, iban_ok),
    ("ip", IPV6, _always),
    ("ip", IPV4, _always),
    ("phone", PHONE_INTL, _always),
    ("phone", PHONE_NATIONAL, _always),
    ("phone", PHONE_LOCAL, local_phone_ok),
]
_IDENTIFIER_COMPILED = [(kind, re.compile(pattern), check) for kind, pattern, check in _IDENTIFIER_PATTERNS]


def identifier_key(workdir: str | Path) -> bytes:
    """The workdir's identifier key, created once (random, owner-only); concurrent first runs agree on one."""
    path = Path(workdir) / IDENTIFIER_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)  # linked, not renamed, into place below: the first run's key wins
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # fails if another run created it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return _read_key(str(path))


@functools.lru_cache(maxsize=8)
def _read_key(path: str) -> bytes:
    key = Path(path).read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: the identifier key is empty or truncated; restore it (or delete it to start a new one)")
    return key.encode()


def resolve_pii(params: PiiParams, workdir: str | Path) -> PiiParams:
    """Params carrying the workdir's identifier key (its file and hash): call in the flow before the stage."""
    if not params.identifiers:
        return params
    key = identifier_key(workdir)
    return params.model_copy(
        update={
            "identifier_key_sha256": hashlib.sha256(key).hexdigest(),
            "identifier_key_file": str(Path(workdir).resolve() / IDENTIFIER_KEY_FILE),
        }
    )


def scrub_identifier(value: str, key: bytes) -> str:
    """``value`` with every PII match replaced by ``<TYPE:hmac>`` (16 hex digits of HMAC-SHA256)."""

    def tag(kind: str, found: str) -> str:
        if kind == "email":  # one address, one tag: as an id, in a path or percent-encoded in a URL
            found = found.replace("%40", "@").lower()
        digest = hmac.new(key, f"{kind}:{found}".encode(), hashlib.sha256).hexdigest()[:16]
        return f"<{_TAGS[kind]}:{digest}>"

    for kind, pattern, check in _IDENTIFIER_COMPILED:
        if not pattern.groups:
            value = pattern.sub(lambda m: tag(kind, m.group(0)), value)
            continue

        def repl(m: re.Match[str]) -> str:
            found = m.group(2)
            tail = m.group(3) if pattern.groups >= 3 else ""
            return m.group(1) + (tag(kind, found) if check(found) else found) + tail

        value = pattern.sub(repl, pattern.sub(repl, value))  # twice: shared boundaries, as in the text
    return value


def _has_identifier_pii(column: pl.Series) -> pl.Series:
    found = pl.Series([False] * column.len(), dtype=pl.Boolean)
    for _, pattern, _ in _IDENTIFIER_PATTERNS:
        found = found | column.str.contains(pattern).fill_null(False)
    return found


def scrub_identifiers(docs: pl.DataFrame, p: PiiParams) -> tuple[pl.DataFrame, pl.Series]:
    """``docs`` with PII in its identifier columns hashed; and per document, how many values changed."""
    changed = pl.Series([0] * docs.height, dtype=pl.Int64)
    key: bytes | None = None
    for name in (c for c in p.identifiers if c in docs.columns and docs.schema[c] == pl.String):
        column = docs.get_column(name)
        has = _has_identifier_pii(column)
        if not has.any():
            continue
        if key is None:
            if p.identifier_key_file is None:
                raise ValueError(
                    f"column {name!r} holds personal data but PiiParams has no identifier key: call "
                    "tasks.curate.pii.resolve_pii(params, workdir) before running the stage (or set identifiers: [])"
                )
            key = _read_key(p.identifier_key_file)
        values = column.to_list()
        rows = has.arg_true().to_list()
        for i in rows:
            values[i] = scrub_identifier(values[i], key)
        new = pl.Series(name, values, dtype=pl.String)
        changed = changed + (new != column).fill_null(False).cast(pl.Int64)
        docs = docs.with_columns(new)
    return docs, changed


def with_scrubbed_identifiers(registry: pl.DataFrame, workdir: str | Path) -> pl.DataFrame:
    """An opt-out registry plus, for each id or URL entry holding PII, the entry as the pii stage
    writes it (same ``where``): so a consent withdrawn later still finds the document in the corpus."""
    if not registry.height:
        return registry
    values = registry.get_column("value").cast(pl.String)
    wanted = registry.filter(pl.col("kind").is_in(["id", "url"]) & _has_identifier_pii(values))
    if not wanted.height:
        return registry
    key = identifier_key(workdir)
    scrubbed = wanted.with_columns(pl.Series("value", [scrub_identifier(v, key) for v in wanted["value"]], dtype=pl.String))
    return pl.concat([registry, scrubbed.select(registry.columns)])


# --------------------------------------------------------------------------- the stage


def apply_pii(docs: pl.DataFrame, params: Any) -> pl.DataFrame:
    """Redact PII in ``text``, hash it in identifiers; add ``pii_count`` and per-type counts (and
    ``pii_identifiers``, identifier values changed); reason ``pii_too_many`` above drop_above."""
    p = params if isinstance(params, PiiParams) else PiiParams.model_validate(params or {})
    redacted, counts = redact_text(docs, p)
    docs, in_identifiers = scrub_identifiers(docs, p)
    was_null = docs.get_column("text").is_null()
    text = pl.select(pl.when(was_null).then(None).otherwise(redacted).alias("text")).get_column("text")
    total = sum(counts.values(), pl.Series([0] * docs.height, dtype=pl.Int64))
    out = docs.with_columns(
        text.alias("text"),
        in_identifiers.alias("pii_identifiers"),
        total.alias("pii_count").cast(pl.Int64),
        *[counts[k].alias(COUNT_COLUMNS[k]) for k in TYPES],
    )
    if p.drop_above is None:
        reason = pl.lit(None, dtype=pl.String)
    else:
        reason = pl.when(pl.col("pii_count") > p.drop_above).then(pl.lit("pii_too_many")).otherwise(None)
    detail = pl.when(reason.is_not_null()).then(pl.format("{} matches > {}", pl.col("pii_count"), pl.lit(p.drop_above)))
    return out.with_columns(reason.cast(pl.String).alias("reason"), detail.cast(pl.String).alias("detail"))


PII_STAGE = ShardStage(name="pii", version="3", apply=apply_pii)

__all__ = [
    "PiiParams",
    "PII_STAGE",
    "apply_pii",
    "redact_text",
    "resolve_pii",
    "scrub_identifier",
    "scrub_identifiers",
    "with_scrubbed_identifiers",
    "luhn_ok",
    "iban_ok",
]
