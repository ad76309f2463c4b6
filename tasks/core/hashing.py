"""The document unit hash: a number from (salt, document id) that every machine and version agrees on.

Every deterministic per-document choice goes through it: the train/val split (tokenize),
which documents a mixture repeats, which documents the bias group cap keeps, which old
documents the refresh replays. A salt names the choice (``split:<seed>``, ``mix:<seed>``, ...)
so the choices are independent of each other. Changing this function changes existing
splits and fingerprints' outputs: tests/test_hashing.py pins its values on fixed ids.
"""

from __future__ import annotations

import hashlib


def doc_hash(salt: str, doc_id: str) -> int:
    """A 64-bit number from a doc id: blake2b (8 bytes, little-endian) of ``salt NUL id``."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x00{doc_id}".encode(), digest_size=8).digest(), "little")


def unit_hash(salt: str, doc_id: str) -> float:
    """A uniform number in [0, 1) from a doc id: ``doc_hash / 2**64``."""
    return doc_hash(salt, doc_id) / 2**64
