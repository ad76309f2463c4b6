"""Regexes the suites use to find what a stage should have removed.

They are deliberately conservative: each must match only what is almost surely the
thing it names, so ordinary prose, code, dates, versions and prices never fail a suite.
The PII stage (tasks/curate/pii.py) redacts into typed placeholders such as ``<EMAIL>``,
``<PHONE>`` and ``<IP>``; no placeholder matches any regex here. The contract for the
PII stage is: *after redaction none of these patterns may match the text*. Its own
detectors may be broader (they may redact more), never narrower; importing these
constants is the simplest way to guarantee that.

All patterns are RE2-compatible (no look-arounds, no back-references): pandas 3 runs
``str.contains`` on Arrow-backed strings through RE2, and GX's regex expectations call
``str.contains``. The same strings compile with Python's ``re`` and polars and mean the
same there, because they spell character classes in ASCII (``[0-9A-Za-z_]``, not
``\\w``; ``[ \\t\\n\\r\\f\\v]``, not ``\\s``). That is also 10-20x faster in RE2:
a ``\\s`` or ``[^\\w+]`` class made the phone check alone cost 0.7 s per 10k documents.

``EMAIL``
    ``local@domain.tld``: a local part of ``[A-Za-z0-9._%+-]``, an ``@``, a dotted domain
    and a 2+ letter TLD. ``<EMAIL>``, ``user@localhost``, ``a @ b`` and ``@decorator``
    do not match; ``bob.smith+tag@mail.example.co.uk`` does.

``IPV4``
    Four dot-separated octets 0-255 without leading zeros, not glued to a further
    ``.digit`` or word character on either side: ``192.168.0.1`` and ``10.0.0.255``
    match; ``1.2.3`` (a version), ``1.2.3.4.5`` (a longer version or section number),
    ``999.1.1.1`` and ``<IP>`` do not. A four-part dotted version like ``2.7.18.1`` is
    indistinguishable from an address and does match, so the PII stage must redact it
    (or the suite flags it).

``PHONE``
    An E.164-like international number: ``+`` then a digit, then at least 7 of
    digits, spaces, ``( ) . -``, ending in a digit, and the ``+`` not glued to a word
    character or another ``+`` (so ``C++`` code or ``1+2345678`` arithmetic do not
    match). ``+1 (555) 123-4567`` and ``+44 20 7946 0958`` match; ``<PHONE>``, a US
    number without ``+`` and ``+12`` do not.

``CONTROL``
    C0/C1 control characters other than ``\\n`` and ``\\t`` (this includes ``\\r``, DEL and
    U+0080-U+009F): what normalize must have removed.
"""

from __future__ import annotations

import re

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
IPV4 = rf"(?:^|[^0-9A-Za-z_.]|\.[^0-9])(?:{_OCTET}\.){{3}}{_OCTET}(?:$|[^0-9A-Za-z_.]|\.[^0-9]|\.$)"
PHONE = r"(?:^|[^0-9A-Za-z_+])\+[0-9][0-9 \t\n\r\f\v().-]{7,}[0-9]"
CONTROL = "[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f]"



def mask_identifier(value: object) -> object:
    """An identifier as a message or Data Docs may show it: e-mails, phones and IPv4 addresses as <TYPE>."""
    if not isinstance(value, str):
        return value
    for name, pattern in (("EMAIL", EMAIL), ("PHONE", PHONE), ("IP", IPV4)):
        value = re.sub(pattern, f"<{name}>", value)
    return value


__all__ = ["EMAIL", "IPV4", "PHONE", "CONTROL", "mask_identifier"]
