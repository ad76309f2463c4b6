"""Stage 6, bias: who the corpus talks about, how, and whether the filters treat them alike.

Three parts, all driven by lexicon files in ``configs/lexicons/`` that users extend:

1. **The stage** (``BIAS_STAGE``, after pii). Per document it counts mentions of
   demographic groups along six axes (gender, religion, nationality/ethnicity, age,
   disability, sexual orientation) into ``bias_<axis>_<group>`` columns, and scores
   toxicity from a term list. Policy:

   - ``toxicity_threshold``: drop (reason ``bias_toxic``) a document whose toxicity
     (toxic-term matches per 100 words; words are runs of word characters) exceeds the
     threshold *and* has at least ``min_toxic_matches`` matches.
   - ``max_group_share`` (off by default): within each axis, a document is *about* the
     group with strictly the most mentions of that axis (ties: about none). When one
     group's share of the shard's documents about some group of the axis exceeds the cap,
     its documents are downsampled deterministically: a document is kept when
     ``blake2b(axis, id)`` maps below ``p``, with ``p`` chosen so the expected kept share
     equals the cap (water-filling, so several groups can be capped at once). Dropped
     documents carry reason ``bias_group_cap``. The cap holds per shard (the stage
     contract is shard-wise); shards that are slices of one source may differ from the
     corpus as a whole.

2. **The audit** for the data card, pure functions over polars frames or datasets:
   ``representation`` (share of documents mentioning each group and an association score
   with negative terms), ``filter_fairness`` (removal rate among documents mentioning a
   group versus overall, for any filtering stage), ``bias_audit`` (both, before and after
   curation, for a list of stage datasets), ``render_bias_markdown``, ``audit_to_json``
   and ``fairness_violations`` (the messages a GX expectation or gate fails with).

3. **Probes** for evaluation: ``probe_bias`` scores the same continuations after
   counterfactual templates that differ only in the group term (``probes.yaml``).

Matching: a term matches whole words, case-insensitively; a space inside a term matches
any run of spaces or hyphens, so multiword terms work across line breaks. Word boundaries
are ASCII (``(?-u:\\b)``): twenty times faster than Unicode boundaries in Rust's regex on
non-ASCII text, and identical for the ASCII terms shipped here. A lexicon measures words,
not meaning: "gay" in Gutenberg is often "merry", "he" is counted wherever it appears.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from lmwright.tasks.core.shipped import ROOT
from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.core.stage import ShardStage

VERSION = "1"
AXES = ("gender", "religion", "nationality_ethnicity", "age", "disability", "sexual_orientation")
LEXICON_DIR = "configs/lexicons"
TOXICITY_FILE = "toxicity.txt"
NEGATIVE_FILE = "negative.txt"
PROBES_FILE = "probes.yaml"
TOXICITY_COLUMN = "bias_toxicity"
TOXIC_COUNT_COLUMN = "bias_toxic_terms"
_WORD = r"\w+"
_B = r"(?-u:\b)"  # ASCII word boundary: see the module docstring


# --------------------------------------------------------------------------- lexicons


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


# --------------------------------------------------------------------------- the stage


class BiasParams(BaseModel):
    """Parameters of the bias stage: which lexicons, and the filtering policy."""

    model_config = ConfigDict(extra="forbid")

    lexicon_dir: str = Field(
        LEXICON_DIR,
        description="Folder with one <axis>.yaml (group -> list of terms) per axis, toxicity.txt and negative.txt; "
        "a relative path resolves against the working directory, then the lmwright checkout.",
    )
    axes: list[str] = Field(
        default_factory=lambda: list(AXES),
        description="Axes to measure, each read from <lexicon_dir>/<axis>.yaml.",
    )
    extra_groups: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict,
        description="axis -> group -> terms added to the lexicon files (a new group or axis is created).",
    )
    toxicity_terms_path: str | None = Field(
        None,
        description="A term list (.txt one per line, or .yaml list) that REPLACES the shipped toxicity.txt; null: the shipped list.",
    )
    extra_toxicity_terms: list[str] = Field(
        default_factory=list, description="Terms added to the toxicity list (after any replacement)."
    )
    negative_terms_path: str | None = Field(
        None,
        description="A term list that replaces the shipped negative.txt (association audit only; never drops anything).",
    )
    toxicity_threshold: float | None = Field(
        1.0,
        ge=0,
        description="Drop a document (reason bias_toxic) whose toxicity, toxic-term matches per 100 words, exceeds this; "
        "null never drops.",
    )
    min_toxic_matches: int = Field(
        2, ge=1, description="A document is dropped for toxicity only with at least this many toxic-term matches."
    )
    max_group_share: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Cap on one group's share of a shard's documents about a group of the same axis (a document is about "
        "the group it mentions most); documents above it are downsampled by id hash (reason bias_group_cap). Null: no cap.",
    )
    group_cap_min_docs: int = Field(
        50, ge=1, description="The cap applies to an axis of a shard only when at least this many documents there are about one of its groups."
    )
    lexicon_digest: str = Field(
        "",
        description="Hash of the loaded lexicon contents; computed on validation (a given value is replaced), so editing a "
        "lexicon file changes the stage fingerprint.",
    )

    _lexicons: Lexicons | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self) -> "BiasParams":
        unknown = [a for a in self.axes if not resolve_path(Path(self.lexicon_dir) / f"{a}.yaml").is_file()]
        if unknown:
            raise ValueError(f"no lexicon file for axes {unknown} in {resolve_path(self.lexicon_dir)}")
        self._lexicons = load_lexicons(self)
        self.lexicon_digest = self._lexicons.digest
        return self

    def lexicons(self) -> Lexicons:
        """The loaded lexicons (read once at validation and carried with the params, also to remote workers)."""
        if self._lexicons is None:
            self._lexicons = load_lexicons(self)
        return self._lexicons


def load_lexicons(params: BiasParams | Mapping[str, Any] | None = None) -> Lexicons:
    """Read the lexicon files named by ``params`` (the shipped defaults without it)."""
    if params is None:
        params = BiasParams()
    if isinstance(params, Mapping):
        params = BiasParams.model_validate(params)
    base = Path(params.lexicon_dir)
    groups: dict[str, dict[str, tuple[str, ...]]] = {}
    for axis in params.axes:
        groups[axis] = {g: tuple(t) for g, t in read_axis(base / f"{axis}.yaml").items()}
    for axis, extra in params.extra_groups.items():
        axis_groups = groups.setdefault(axis, {})
        for group, terms in extra.items():
            axis_groups[group] = tuple(axis_groups.get(group, ())) + tuple(terms)
    toxic = read_terms(params.toxicity_terms_path or base / TOXICITY_FILE) + list(params.extra_toxicity_terms)
    negative_path = params.negative_terms_path or base / NEGATIVE_FILE
    negative = read_terms(negative_path) if resolve_path(negative_path).is_file() else []
    return Lexicons(groups=groups, toxicity=tuple(toxic), negative=tuple(negative))


def as_lexicons(lexicons: Lexicons | BiasParams | Mapping[str, Any] | None) -> Lexicons:
    if isinstance(lexicons, Lexicons):
        return lexicons
    if isinstance(lexicons, BiasParams):
        return lexicons.lexicons()
    return load_lexicons(lexicons)


def _count(text: pl.Expr, pattern: str | None) -> pl.Expr:
    if pattern is None:
        return pl.lit(0, dtype=pl.Int64)
    return text.str.count_matches(pattern).cast(pl.Int64)


def mention_exprs(lex: Lexicons, text: pl.Expr | None = None) -> list[pl.Expr]:
    """One ``bias_<axis>_<group>`` mention count per group (Int64)."""
    text = pl.col("text").fill_null("") if text is None else text
    return [_count(text, p).alias(c) for c, p in lex.group_patterns().items()]


def bias_signals(docs: pl.DataFrame, lex: Lexicons) -> pl.DataFrame:
    """The signal columns, one row per document: group mentions, toxic-term count and toxicity."""
    text = pl.col("text").fill_null("")
    words = text.str.count_matches(_WORD).cast(pl.Int64)
    toxic = _count(text, lex.toxicity_pattern)
    return docs.select(
        *mention_exprs(lex, text),
        toxic.alias(TOXIC_COUNT_COLUMN),
        (100.0 * toxic / pl.max_horizontal(words, pl.lit(1))).cast(pl.Float64).alias(TOXICITY_COLUMN),
    )


def unit_hash(salt: str, doc_id: str) -> float:
    """A uniform number in [0, 1) from a doc id, stable across processes and machines."""
    h = hashlib.blake2b(f"{salt}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def cap_keep_probabilities(counts: Mapping[str, int], cap: float) -> dict[str, float]:
    """Keep probability per group so no group's expected share of the documents exceeds ``cap``.

    Water-filling: capped groups end at exactly ``cap`` of the remaining total; groups under
    it keep everything. When the cap cannot be met (every present group would be capped),
    nothing is capped.
    """
    present = {g: n for g, n in counts.items() if n > 0}
    capped: set[str] = set()
    target = 0.0
    while True:
        if len(capped) * cap >= 1:
            return {}
        free = sum(n for g, n in present.items() if g not in capped)
        target = cap * free / (1 - len(capped) * cap)
        new = {g for g, n in present.items() if g not in capped and n > target + 1e-9}
        if not new:
            break
        if capped | new == set(present):
            return {}
        capped |= new
    return {g: target / present[g] for g in capped}


def _group_cap(docs: pl.DataFrame, lex: Lexicons, params: BiasParams) -> pl.DataFrame:
    """Mark documents dropped by the group-share cap (reason ``bias_group_cap``), axis by axis."""
    cap = params.max_group_share
    for axis in lex.groups:
        cols = lex.axis_columns(axis)
        if not cols:
            continue
        top = pl.max_horizontal(cols)
        n_top = pl.sum_horizontal([(pl.col(c) == top).cast(pl.Int32) for c in cols])
        about = pl.when((top > 0) & (n_top == 1)).then(
            pl.coalesce([pl.when(pl.col(c) == top).then(pl.lit(c)) for c in cols])
        )
        framed = docs.with_columns(_about=about)
        live = framed.filter(pl.col("reason").is_null() & pl.col("_about").is_not_null())
        if live.height < params.group_cap_min_docs:
            continue
        counts = dict(live.group_by("_about").len().iter_rows())
        keep = cap_keep_probabilities(counts, cap)  # type: ignore[arg-type]
        if not keep:
            continue
        salt = f"bias_group_cap:{axis}"
        total = live.height
        drop_ids, detail = [], []
        for col, p in keep.items():
            ids = live.filter(pl.col("_about") == col)["id"].to_list()
            share = counts[col] / total
            for i in ids:
                if unit_hash(salt, i) >= p:
                    drop_ids.append(i)
                    detail.append(f"{axis}/{lex.columns[col][1]} share {share:.3f} > {cap}; kept with p={p:.3f}")
        if drop_ids:
            hit = pl.DataFrame({"id": drop_ids, "_cap_detail": detail})
            docs = (
                docs.join(hit, on="id", how="left", maintain_order="left")
                .with_columns(
                    reason=pl.when(pl.col("_cap_detail").is_not_null()).then(pl.lit("bias_group_cap")).otherwise(pl.col("reason")),
                    detail=pl.when(pl.col("_cap_detail").is_not_null()).then(pl.col("_cap_detail")).otherwise(pl.col("detail")),
                )
                .drop("_cap_detail")
            )
    return docs


def apply_bias(docs: pl.DataFrame, params: BiasParams | Mapping[str, Any]) -> pl.DataFrame:
    """Add bias signals and a ``reason`` (null keeps) to every document; rows and columns are kept."""
    params = params if isinstance(params, BiasParams) else BiasParams.model_validate(params)
    lex = params.lexicons()
    sig = bias_signals(docs, lex)
    out = pl.concat([docs.drop([c for c in sig.columns if c in docs.columns]), sig], how="horizontal")
    reason = pl.lit(None, dtype=pl.String)
    detail = pl.lit(None, dtype=pl.String)
    if params.toxicity_threshold is not None:
        toxic = (pl.col(TOXICITY_COLUMN) > params.toxicity_threshold) & (pl.col(TOXIC_COUNT_COLUMN) >= params.min_toxic_matches)
        reason = pl.when(toxic).then(pl.lit("bias_toxic")).otherwise(reason)
        detail = pl.when(toxic).then(
            pl.format(
                f"{TOXICITY_COLUMN}={{}} > {params.toxicity_threshold} ({{}} toxic terms)",
                pl.col(TOXICITY_COLUMN).round(3),
                pl.col(TOXIC_COUNT_COLUMN),
            )
        ).otherwise(detail)
    out = out.with_columns(reason=reason, detail=detail)
    if params.max_group_share is not None and params.max_group_share < 1 and out.height:
        out = _group_cap(out, lex, params)
    return out


BIAS_STAGE = ShardStage(name="bias", version=VERSION, apply=apply_bias)


# --------------------------------------------------------------------------- audit


class BiasAuditParams(BaseModel):
    """How the data card's bias audit judges representation and filters."""

    model_config = ConfigDict(extra="forbid")

    fairness_bound: float = Field(
        1.5,
        gt=1,
        description="Flag a filtering stage when its removal rate among documents mentioning a group exceeds this "
        "multiple of its overall removal rate.",
    )
    min_group_docs: int = Field(
        20, ge=1, description="Judge a group only when at least this many of the stage's input documents mention it."
    )
    min_z: float = Field(
        2.0,
        ge=0,
        description="...and only when the excess removals are this many binomial standard deviations above the overall "
        "rate (0: the ratio alone decides); keeps a handful of documents from raising a flag.",
    )
    ignore_reasons: list[str] = Field(
        default_factory=lambda: ["bias_group_cap"],
        description="Rejection reasons left out of filter fairness (those documents count neither as input nor as "
        "removed): the group cap removes a group's documents on purpose.",
    )
    prior_terms: float = Field(
        5.0,
        gt=0,
        description="Smoothing of the association score: each group starts from the corpus rate with this many "
        "negative terms of pseudo-evidence (over the words that would hold them at that rate).",
    )


Docs = pl.LazyFrame | pl.DataFrame | DatasetRef | str | Path | Sequence[str | Path]


def as_lazy(docs: Docs) -> pl.LazyFrame:
    """A LazyFrame over documents given as a frame, a DatasetRef (its kept shards) or Parquet path(s)."""
    if isinstance(docs, pl.LazyFrame):
        return docs
    if isinstance(docs, pl.DataFrame):
        return docs.lazy()
    if isinstance(docs, DatasetRef):
        return docs.scan()
    if isinstance(docs, (str, Path)):
        return pl.scan_parquet(str(docs))
    paths = [str(p) for p in docs]
    if not paths:
        return pl.LazyFrame(schema={"id": pl.String(), "text": pl.String()})
    return pl.scan_parquet(paths)


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def representation(docs: Docs, lexicons: Lexicons | BiasParams | None = None, prior_terms: float = 5.0) -> dict[str, Any]:
    """Per axis, the share of documents mentioning each group, and each group's association with negative terms.

    ``association`` = ln(smoothed negative-term rate in documents mentioning the group / the
    corpus rate), where negative terms are the toxicity and negative lists and the group's
    rate is ``(neg_g + prior_terms) / (words_g + prior_terms / rate)``: ``prior_terms``
    pseudo-counts at the corpus rate. 0 means the same rate as the corpus, +0.69 twice the
    rate, -0.69 half; a group needs several negative terms of evidence to move far from 0.
    Co-occurrence is counted per document (not per sentence). One streaming pass.
    """
    lex = as_lexicons(lexicons)
    text = pl.col("text").fill_null("")
    cols = list(lex.columns)
    framed = as_lazy(docs).select(
        *mention_exprs(lex, text),
        text.str.count_matches(_WORD).cast(pl.Int64).alias("_words"),
        _count(text, lex.negative_pattern).alias("_neg"),
    )
    aggs: list[pl.Expr] = [pl.len().alias("_docs"), pl.col("_words").sum().alias("_W"), pl.col("_neg").sum().alias("_N")]
    for c in cols:
        m = pl.col(c) > 0
        aggs += [
            m.sum().alias(f"{c}:docs"),
            pl.when(m).then(pl.col("_words")).otherwise(0).sum().alias(f"{c}:words"),
            pl.when(m).then(pl.col("_neg")).otherwise(0).sum().alias(f"{c}:neg"),
            pl.col(c).sum().alias(f"{c}:mentions"),
        ]
    for axis in lex.groups:
        acols = lex.axis_columns(axis)
        any_m = pl.any_horizontal([pl.col(c) > 0 for c in acols]) if acols else pl.lit(False)
        aggs.append(any_m.sum().alias(f"axis:{axis}"))
    row = _collect(framed.select(aggs)).row(0, named=True)
    n_docs, n_words, n_neg = int(row["_docs"]), int(row["_W"] or 0), int(row["_N"] or 0)
    rate = n_neg / n_words if n_words else 0.0
    axes: dict[str, Any] = {}
    for axis, groups in lex.groups.items():
        n_axis = int(row[f"axis:{axis}"] or 0)
        gout = {}
        for c in lex.axis_columns(axis):
            group = lex.columns[c][1]
            d, w, ng = int(row[f"{c}:docs"] or 0), int(row[f"{c}:words"] or 0), int(row[f"{c}:neg"] or 0)
            smoothed = (ng + prior_terms) / (w + prior_terms / rate) if rate > 0 else 0.0
            gout[group] = {
                "docs": d,
                "mentions": int(row[f"{c}:mentions"] or 0),
                "share": d / n_docs if n_docs else 0.0,
                "share_of_axis": d / n_axis if n_axis else 0.0,
                "negative_per_1k_words": 1000 * ng / w if w else 0.0,
                "association": math.log(smoothed / rate) if rate > 0 else 0.0,
            }
        axes[axis] = {"docs_mentioning": n_axis, "groups": gout}
    return {
        "documents": n_docs,
        "words": n_words,
        "negative_terms": n_neg,
        "negative_per_1k_words": 1000 * rate,
        "axes": axes,
    }


def filter_fairness(
    stage_input_docs: Docs,
    stage_rejected_docs: Docs,
    lexicons: Lexicons | BiasParams | None = None,
    bound: float = 1.5,
    min_group_docs: int = 20,
    min_z: float = 2.0,
    stage: str | None = None,
    ignore_reasons: Sequence[str] = ("bias_group_cap",),
) -> dict[str, Any]:
    """For one filtering stage: removal rate among documents mentioning each group vs the overall rate.

    Mentions are counted on the stage's *input* text; a document is removed when its id is
    among the rejected documents. ``ratio = rate_group / rate_overall``; a group is flagged
    when ``ratio > bound``, at least ``min_group_docs`` input documents mention it, and the
    excess is at least ``min_z`` binomial standard deviations (``(removed_g - n_g p) /
    sqrt(n_g p (1 - p))``). The known failure this catches: C4's word blocklist removed
    documents about minority groups far more often than the rest. Rejected documents whose
    ``reason`` is in ``ignore_reasons`` are left out of the input and of the removals.
    """
    lex = as_lexicons(lexicons)
    rejected = as_lazy(stage_rejected_docs)
    ignored = pl.Series("id", [], dtype=pl.String)
    if ignore_reasons and "reason" in rejected.collect_schema().names():
        skip = pl.col("reason").is_in(list(ignore_reasons))
        ignored = _collect(rejected.filter(skip).select(pl.col("id").cast(pl.String)))["id"]
        rejected = rejected.filter(~skip.fill_null(False))
    rejected_ids = _collect(rejected.select(pl.col("id").cast(pl.String)).unique())["id"]
    cols = list(lex.columns)
    inputs = as_lazy(stage_input_docs)
    if ignored.len():
        inputs = inputs.filter(~pl.col("id").cast(pl.String).is_in(ignored.implode()))
    framed = inputs.select(
        *mention_exprs(lex),
        pl.col("id").cast(pl.String).is_in(rejected_ids.implode()).alias("_removed"),
    )
    aggs = [pl.len().alias("_docs"), pl.col("_removed").sum().alias("_removed")]
    for c in cols:
        m = pl.col(c) > 0
        aggs += [m.sum().alias(f"{c}:in"), (m & pl.col("_removed")).sum().alias(f"{c}:removed")]
    row = _collect(framed.select(aggs)).row(0, named=True)
    n_in, n_removed = int(row["_docs"]), int(row["_removed"] or 0)
    p = n_removed / n_in if n_in else 0.0
    groups, flagged = [], []
    for c in cols:
        axis, group = lex.columns[c]
        n_g, r_g = int(row[f"{c}:in"] or 0), int(row[f"{c}:removed"] or 0)
        rate = r_g / n_g if n_g else None
        ratio = rate / p if (rate is not None and p > 0) else None
        sd = math.sqrt(n_g * p * (1 - p)) if n_g else 0.0
        z = (r_g - n_g * p) / sd if sd > 0 else (math.inf if r_g > n_g * p else 0.0)
        flag = bool(ratio is not None and ratio > bound and n_g >= min_group_docs and z >= min_z)
        entry = {
            "axis": axis,
            "group": group,
            "docs_in": n_g,
            "removed": r_g,
            "removal_rate": rate,
            "ratio": ratio,
            "z": z if math.isfinite(z) else None,
            "flagged": flag,
        }
        groups.append(entry)
        if flag:
            flagged.append(entry)
    return {
        "stage": stage,
        "docs_in": n_in,
        "removed": n_removed,
        "rejected_not_in_input": int(len(rejected_ids) - n_removed),
        "ignored": int(ignored.len()),
        "removal_rate": p,
        "bound": bound,
        "min_group_docs": min_group_docs,
        "min_z": min_z,
        "groups": groups,
        "flagged": flagged,
    }


def stage_fairness(
    stage_input: DatasetRef, stage_output: DatasetRef, lexicons: Lexicons | BiasParams | None = None, audit: BiasAuditParams | None = None
) -> dict[str, Any]:
    """``filter_fairness`` for a finished stage: its input dataset's kept shards vs its rejected/ shards."""
    audit = audit or BiasAuditParams()
    return filter_fairness(
        stage_input,
        [str(p) for p in stage_output.rejected_parts()],
        lexicons,
        bound=audit.fairness_bound,
        min_group_docs=audit.min_group_docs,
        min_z=audit.min_z,
        stage=stage_output.stage,
        ignore_reasons=audit.ignore_reasons,
    )


def bias_audit(
    stages: Sequence[DatasetRef],
    lexicons: Lexicons | BiasParams | None = None,
    audit: BiasAuditParams | None = None,
) -> dict[str, Any]:
    """The data card's bias section: representation before (first dataset) and after (last), and
    filter fairness of every stage after the first (each against the previous stage's output)."""
    audit = audit or BiasAuditParams()
    lex = as_lexicons(lexicons)
    if not stages:
        raise ValueError("bias_audit needs at least one dataset")
    return {
        "lexicon_digest": lex.digest,
        "fairness_bound": audit.fairness_bound,
        "representation": {
            "before": {"stage": stages[0].stage, **representation(stages[0], lex, audit.prior_terms)},
            "after": {"stage": stages[-1].stage, **representation(stages[-1], lex, audit.prior_terms)},
        },
        "filter_fairness": [stage_fairness(a, b, lex, audit) for a, b in zip(stages, stages[1:])],
    }


def fairness_violations(audit: Mapping[str, Any]) -> list[str]:
    """Every flagged (stage, group) in words; empty when no filter is unfair by the bound.

    Takes a ``bias_audit`` result or a single ``filter_fairness`` result.
    """
    results = audit["filter_fairness"] if "filter_fairness" in audit else [audit]
    out = []
    for res in results:
        for g in res["flagged"]:
            out.append(
                f"{res.get('stage') or 'filter'} removed {g['removal_rate']:.1%} of the {g['docs_in']} documents mentioning "
                f"{g['axis']}/{g['group']} vs {res['removal_rate']:.1%} overall (ratio {g['ratio']:.2f} > bound {res['bound']})"
            )
    return out


def _json_safe(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item(), digits)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, digits) for v in value]
    return value


def audit_to_json(audit: Mapping[str, Any]) -> dict[str, Any]:
    """The audit as plain JSON values (floats rounded, non-finite as null): for card.json."""
    return _json_safe(audit)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def render_bias_markdown(audit: Mapping[str, Any], max_groups_per_stage: int = 5) -> str:
    """The bias section of the data card (markdown)."""
    rep = audit["representation"]
    before, after = rep["before"], rep["after"]
    lines = [
        "## Bias",
        "",
        f"Lexicons `{audit['lexicon_digest']}`. Share = documents mentioning the group; association = ln(negative-term "
        "rate in those documents / corpus rate), smoothed (0: as the corpus, +0.69: twice).",
        "",
        f"Negative terms per 1k words: {before['negative_per_1k_words']:.2f} before ({before['stage']}, "
        f"{before['documents']:,} documents), {after['negative_per_1k_words']:.2f} after ({after['stage']}, "
        f"{after['documents']:,} documents).",
        "",
        "### Representation",
        "",
        "| axis | group | documents before → after | share before | share after | association before | association after |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    absent = []
    for axis, a in after["axes"].items():
        b = before["axes"].get(axis, {"groups": {}})
        for group, ga in a["groups"].items():
            gb = b["groups"].get(group) or {"docs": 0, "share": 0.0, "association": 0.0}
            if gb["docs"] == 0 and ga["docs"] == 0:
                absent.append(f"{axis}/{group}")
                continue
            lines.append(
                f"| {axis} | {group} | {gb['docs']:,} → {ga['docs']:,} | {_pct(gb['share'])} | {_pct(ga['share'])} | "
                f"{gb['association']:+.2f} | {ga['association']:+.2f} |"
            )
    if absent:
        lines += ["", "Never mentioned: " + ", ".join(absent) + "."]
    lines += ["", "### Filter fairness", "", f"Bound: a group's removal rate above {audit['fairness_bound']}× the stage's is flagged.", ""]
    lines += ["| stage | removed overall | group | docs in | removed | ratio | flagged |", "|---|---:|---|---:|---:|---:|---|"]
    for res in audit["filter_fairness"]:
        judged = [g for g in res["groups"] if g["ratio"] is not None and g["docs_in"] >= res["min_group_docs"]]
        judged.sort(key=lambda g: (-g["flagged"], -(g["ratio"] or 0)))
        if not judged:
            lines.append(f"| {res['stage']} | {_pct(res['removal_rate'])} | – | | | | |")
        for g in judged[:max_groups_per_stage]:
            lines.append(
                f"| {res['stage']} | {_pct(res['removal_rate'])} | {g['axis']}/{g['group']} | {g['docs_in']:,} | "
                f"{_pct(g['removal_rate'])} | {g['ratio']:.2f} | {'**yes**' if g['flagged'] else 'no'} |"
            )
    violations = fairness_violations(audit)
    lines += ["", "**Flags:** " + ("; ".join(violations) if violations else "none.")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- probes


class ProbeAxis(BaseModel):
    """Templates of one axis (each with a ``{group}`` slot) and the group terms that fill them."""

    model_config = ConfigDict(extra="forbid")

    templates: list[str] = Field(description="Sentence starts with a {group} slot; continuations follow directly.")
    groups: dict[str, list[str]] = Field(description="group -> terms put into the slot (results average over them).")

    @model_validator(mode="after")
    def _check(self) -> "ProbeAxis":
        bad = [t for t in self.templates if "{group}" not in t]
        if bad or not self.templates:
            raise ValueError(f"every template needs a {{group}} slot: {bad or 'no templates'}")
        if len(self.groups) < 2 or not all(self.groups.values()):
            raise ValueError("an axis needs at least two groups, each with a term")
        return self


class ProbeSet(BaseModel):
    """Counterfactual probes: the same labelled continuations after every axis's templates."""

    model_config = ConfigDict(extra="forbid")

    continuations: dict[str, list[str]] = Field(
        description="label -> continuations (labels 'negative' and 'positive' give the valence gap)."
    )
    axes: dict[str, ProbeAxis] = Field(description="axis -> templates and groups.")


def load_probes(path: str | Path | None = None) -> ProbeSet:
    """The probe set from YAML (the shipped configs/lexicons/probes.yaml without a path)."""
    p = resolve_path(path or Path(LEXICON_DIR) / PROBES_FILE)
    return ProbeSet.model_validate(yaml.safe_load(p.read_text()))


@dataclass
class _Seq:
    axis: str
    group: str
    label: str
    ids: list[int]
    n_prefix: int


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    except TypeError:  # a tokenizer without add_special_tokens
        return list(tokenizer.encode(text).ids)


@dataclass
class _Acc:
    total: float = 0.0
    n: int = 0
    by_label: dict[str, list[float]] = field(default_factory=dict)


def probe_bias(
    model: Any,
    tokenizer: Any,
    probes: ProbeSet | str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    bos_token: str | None = "<|endoftext|>",
) -> dict[str, Any]:
    """Per-group mean log-likelihood of the same continuations after counterfactual templates.

    Each (template, term, continuation) is scored as the mean per-token log-likelihood
    (nats) of the continuation's tokens given ``bos + template(term)``; the prefix and the
    continuation are tokenized separately so every group scores identical continuation
    tokens. Per axis:

    - ``gap`` = max - min over groups of the mean over all continuations;
    - ``gap_by_label[label]`` = the same over one label's continuations;
    - ``valence_gap`` = max - min over groups of (mean negative - mean positive): how much
      more readily the model continues negatively after one group than after another.

    ``bias_gap_max`` / ``valence_gap_max`` are the largest over axes (gate material).
    """
    import torch

    probes = probes if isinstance(probes, ProbeSet) else load_probes(probes)
    bos = tokenizer.token_to_id(bos_token) if bos_token and hasattr(tokenizer, "token_to_id") else None
    head = [bos] if bos is not None else []
    conts = {label: [(c, _encode(tokenizer, c)) for c in cs] for label, cs in probes.continuations.items()}
    seqs: list[_Seq] = []
    for axis, ax in probes.axes.items():
        for group, terms in ax.groups.items():
            for template in ax.templates:
                for term in terms:
                    prefix = head + _encode(tokenizer, template.replace("{group}", term))
                    for label, cs in conts.items():
                        for _, cids in cs:
                            if cids:
                                seqs.append(_Seq(axis, group, label, prefix + cids, len(prefix)))
    block = model.config.block_size
    too_long = [s for s in seqs if len(s.ids) > block]
    if too_long:
        raise ValueError(f"{len(too_long)} probe sequences exceed block_size {block}")

    was_training = model.training
    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            T = max(len(s.ids) for s in chunk)
            # right padding: a causal model never looks ahead, so pads change no scored position
            x = torch.zeros((len(chunk), T), dtype=torch.long)
            mask = torch.zeros((len(chunk), T - 1))
            for i, s in enumerate(chunk):
                x[i, : len(s.ids)] = torch.tensor(s.ids)
                mask[i, s.n_prefix - 1 : len(s.ids) - 1] = 1.0  # positions predicting continuation tokens
            x = x.to(device)
            logits, _ = model(x[:, :-1])  # (B, T-1, vocab)
            logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).cpu()
            per_seq = (logp * mask).sum(1) / mask.sum(1)  # (B,) mean nats per continuation token
            scores += per_seq.tolist()
    if was_training:
        model.train()

    acc: dict[tuple[str, str], _Acc] = {}
    for s, v in zip(seqs, scores):
        a = acc.setdefault((s.axis, s.group), _Acc())
        a.total += v
        a.n += 1
        a.by_label.setdefault(s.label, []).append(v)
    axes: dict[str, Any] = {}
    for axis, ax in probes.axes.items():
        groups = {}
        for group in ax.groups:
            a = acc[(axis, group)]
            by_label = {k: float(np.mean(v)) for k, v in a.by_label.items()}
            valence = by_label["negative"] - by_label["positive"] if {"negative", "positive"} <= set(by_label) else None
            groups[group] = {"mean_ll": a.total / a.n, "by_label": by_label, "valence": valence}
        means = [g["mean_ll"] for g in groups.values()]
        labels = sorted({k for g in groups.values() for k in g["by_label"]})
        valences = [g["valence"] for g in groups.values() if g["valence"] is not None]
        axes[axis] = {
            "groups": groups,
            "gap": max(means) - min(means),
            "gap_by_label": {
                k: max(g["by_label"][k] for g in groups.values()) - min(g["by_label"][k] for g in groups.values()) for k in labels
            },
            "valence_gap": (max(valences) - min(valences)) if valences else None,
            "highest": max(groups, key=lambda g: groups[g]["mean_ll"]),
            "lowest": min(groups, key=lambda g: groups[g]["mean_ll"]),
        }
    vgaps = [a["valence_gap"] for a in axes.values() if a["valence_gap"] is not None]
    return {
        "axes": axes,
        "bias_gap_max": max(a["gap"] for a in axes.values()) if axes else 0.0,
        "valence_gap_max": max(vgaps) if vgaps else None,
        "sequences": len(seqs),
    }


def probe_metrics(result: Mapping[str, Any]) -> dict[str, float | None]:
    """Flat metrics for the metrics table: ``bias_gap_<axis>``, ``bias_valence_gap_<axis>`` and the maxima."""
    out: dict[str, float | None] = {
        "bias_gap_max": round(result["bias_gap_max"], 5),
        "bias_valence_gap_max": None if result["valence_gap_max"] is None else round(result["valence_gap_max"], 5),
    }
    for axis, a in result["axes"].items():
        out[f"bias_gap_{slug(axis)}"] = round(a["gap"], 5)
        if a["valence_gap"] is not None:
            out[f"bias_valence_gap_{slug(axis)}"] = round(a["valence_gap"], 5)
    return out


def probe_gate_failures(result: Mapping[str, Any], max_bias_gap: float | None = None, max_valence_gap: float | None = None) -> list[str]:
    """Every axis whose probe gap passes a gate threshold, in words (empty: the probes pass)."""
    failures = []
    for axis, a in result["axes"].items():
        if max_bias_gap is not None and a["gap"] > max_bias_gap:
            failures.append(
                f"bias gap on {axis} {a['gap']:.4f} > max_bias_gap {max_bias_gap} ({a['highest']} vs {a['lowest']})"
            )
        if max_valence_gap is not None and a["valence_gap"] is not None and a["valence_gap"] > max_valence_gap:
            failures.append(f"valence gap on {axis} {a['valence_gap']:.4f} > max_valence_gap {max_valence_gap}")
    return failures


__all__ = [
    "AXES",
    "BIAS_STAGE",
    "BiasParams",
    "BiasAuditParams",
    "Lexicons",
    "ProbeSet",
    "ProbeAxis",
    "apply_bias",
    "bias_signals",
    "load_lexicons",
    "representation",
    "filter_fairness",
    "stage_fairness",
    "bias_audit",
    "fairness_violations",
    "render_bias_markdown",
    "audit_to_json",
    "load_probes",
    "probe_bias",
    "probe_metrics",
    "probe_gate_failures",
]
