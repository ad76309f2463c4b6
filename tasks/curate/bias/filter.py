"""The bias stage: per document, mentions of demographic groups and a toxicity score; drops by policy.

Per document it counts mentions of demographic groups along six axes (gender, religion,
nationality/ethnicity, age, disability, sexual orientation) into ``bias_<axis>_<group>``
columns, and scores toxicity from a term list (tasks/curate/bias/lexicons.py). Policy:

- ``toxicity_threshold``: drop (reason ``bias_toxic``) a document whose toxicity
  (toxic-term matches per 100 words; words are runs of word characters) exceeds the
  threshold *and* has at least ``min_toxic_matches`` matches.
- ``max_group_share`` (off by default): within each axis, a document is *about* the
  group with strictly the most mentions of that axis (ties: about none). When one
  group's share of the shard's documents about some group of the axis exceeds the cap,
  its documents are downsampled deterministically: a document is kept when
  the unit hash of (axis, id) (tasks/core/hashing.py) is below ``p``, with ``p`` chosen so the expected kept share
  equals the cap (water-filling, so several groups can be capped at once). Dropped
  documents carry reason ``bias_group_cap``. The cap holds per shard (the stage
  contract is shard-wise); shards that are slices of one source may differ from the
  corpus as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from lmwright.tasks.core.hashing import unit_hash
from lmwright.tasks.core.stage import ShardStage
from lmwright.tasks.curate.bias.lexicons import (
    AXES,
    LEXICON_DIR,
    NEGATIVE_FILE,
    TOXICITY_FILE,
    WORD_PATTERN,
    Lexicons,
    count_terms,
    mention_exprs,
    read_axis,
    read_terms,
    resolve_path,
)

VERSION = "1"
TOXICITY_COLUMN = "bias_toxicity"
TOXIC_COUNT_COLUMN = "bias_toxic_terms"


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


def bias_signals(docs: pl.DataFrame, lex: Lexicons) -> pl.DataFrame:
    """The signal columns, one row per document: group mentions, toxic-term count and toxicity."""
    text = pl.col("text").fill_null("")
    words = text.str.count_matches(WORD_PATTERN).cast(pl.Int64)
    toxic = count_terms(text, lex.toxicity_pattern)
    return docs.select(
        *mention_exprs(lex, text),
        toxic.alias(TOXIC_COUNT_COLUMN),
        (100.0 * toxic / pl.max_horizontal(words, pl.lit(1))).cast(pl.Float64).alias(TOXICITY_COLUMN),
    )


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
