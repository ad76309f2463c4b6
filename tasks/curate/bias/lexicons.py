"""The bias lexicons: term lists per axis and group, toxicity and negative terms, and how they match.

Matching: a term matches whole words, case-insensitively; a space inside a term matches
any run of spaces or hyphens, so multiword terms work across line breaks. Word boundaries
are ASCII (``(?-u:\\b)``): twenty times faster than Unicode boundaries in Rust's regex on
non-ASCII text, and identical for the ASCII terms shipped here. A lexicon measures words,
not meaning: "gay" in Gutenberg is often "merry", "he" is counted wherever it appears.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import polars as pl
import yaml

from lmwright.tasks.core.shipped import ROOT

AXES = ("gender", "religion", "nationality_ethnicity", "age", "disability", "sexual_orientation")
LEXICON_DIR = "configs/lexicons"
TOXICITY_FILE = "toxicity.txt"
NEGATIVE_FILE = "negative.txt"
WORD_PATTERN = r"\w+"  # a word, for per-word rates
_B = r"(?-u:\b)"  # ASCII word boundary: see the module docstring


def resolve_path(path: str | Path) -> Path:
    """An absolute path as is; a relative one against the working directory, then the checkout."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return ROOT / p


def read_terms(path: str | Path) -> list[str]:
    """Terms from a ``.txt`` (one per line, ``#`` comments) or ``.yaml`` (a list, or ``{terms: [...]}``) file."""
    p = resolve_path(path)
    if p.suffix in (".yaml", ".yml"):
        data = yaml.safe_load(p.read_text()) or []
        if isinstance(data, Mapping):
            data = data.get("terms", [])
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a list of terms")
        return [str(t).strip() for t in data if str(t).strip()]
    lines = (line.split("#", 1)[0].strip() for line in p.read_text().splitlines())
    return [line for line in lines if line]


def read_axis(path: str | Path) -> dict[str, list[str]]:
    """group -> terms from an axis file."""
    p = resolve_path(path)
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, Mapping) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{p}: expected a mapping of group -> list of terms")
    return {str(g): [str(t).strip() for t in terms if str(t).strip()] for g, terms in data.items()}


def slug(name: str) -> str:
    """A column-safe name: lowercase, runs of other characters as one underscore."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "_"


def term_pattern(term: str) -> str:
    """Regex for one term: whole words at word-character ends, spaces as any run of spaces/hyphens."""
    words = term.split()
    body = r"[\s\-]+".join(re.escape(w) for w in words)
    left = _B if re.match(r"\w", words[0][0], re.ASCII) else ""
    right = _B if re.match(r"\w", words[-1][-1], re.ASCII) else ""
    return f"{left}{body}{right}"


def terms_pattern(terms: Iterable[str]) -> str | None:
    """One case-insensitive alternation for a list of terms (longest first); None for no terms."""
    uniq = sorted({t.lower() for t in terms if t.strip()}, key=lambda t: (-len(t), t))
    if not uniq:
        return None
    return "(?i)(?:" + "|".join(term_pattern(t) for t in uniq) + ")"


@dataclass(frozen=True)
class Lexicons:
    """The loaded term lists: axis -> group -> terms, the toxicity terms and the negative terms."""

    groups: dict[str, dict[str, tuple[str, ...]]]
    toxicity: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    @cached_property
    def digest(self) -> str:
        payload = yaml.safe_dump(
            {
                "groups": {a: {g: sorted(t) for g, t in gs.items()} for a, gs in self.groups.items()},
                "toxicity": sorted(self.toxicity),
                "negative": sorted(self.negative),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @cached_property
    def columns(self) -> dict[str, tuple[str, str]]:
        """``bias_<axis>_<group>`` -> (axis, group), in lexicon order."""
        out: dict[str, tuple[str, str]] = {}
        for axis, groups in self.groups.items():
            for group in groups:
                col = f"bias_{slug(axis)}_{slug(group)}"
                if col in out:
                    raise ValueError(f"two groups map to the column {col}: {out[col]} and {(axis, group)}")
                out[col] = (axis, group)
        return out

    def axis_columns(self, axis: str) -> list[str]:
        return [c for c, (a, _) in self.columns.items() if a == axis]

    def group_patterns(self) -> dict[str, str | None]:
        return {c: terms_pattern(self.groups[a][g]) for c, (a, g) in self.columns.items()}

    @property
    def toxicity_pattern(self) -> str | None:
        return terms_pattern(self.toxicity)

    @property
    def negative_pattern(self) -> str | None:
        """Toxic and negative terms together: what the association audit counts."""
        return terms_pattern(self.toxicity + self.negative)

    @classmethod
    def from_dict(cls, groups: Mapping[str, Mapping[str, Sequence[str]]], toxicity: Sequence[str] = (), negative: Sequence[str] = ()) -> "Lexicons":
        return cls(
            groups={a: {g: tuple(t) for g, t in gs.items()} for a, gs in groups.items()},
            toxicity=tuple(toxicity),
            negative=tuple(negative),
        )


def count_terms(text: pl.Expr, pattern: str | None) -> pl.Expr:
    """Matches of a ``terms_pattern`` in ``text`` (Int64; 0 for no terms)."""
    if pattern is None:
        return pl.lit(0, dtype=pl.Int64)
    return text.str.count_matches(pattern).cast(pl.Int64)


def mention_exprs(lex: Lexicons, text: pl.Expr | None = None) -> list[pl.Expr]:
    """One ``bias_<axis>_<group>`` mention count per group (Int64)."""
    text = pl.col("text").fill_null("") if text is None else text
    return [count_terms(text, p).alias(c) for c, p in lex.group_patterns().items()]
