"""The bias audit for the data card: pure functions over polars frames or datasets.

``representation`` (share of documents mentioning each group and an association score with
negative terms), ``filter_fairness`` (removal rate among documents mentioning a group versus
overall, for any filtering stage), ``bias_audit`` (both, before and after curation, for a list
of stage datasets), ``render_bias_markdown``, ``audit_to_json`` and ``fairness_violations`` (the
messages a GX expectation or gate fails with).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.dataset import DatasetRef
from lmwright.tasks.curate.bias.filter import BiasParams, as_lexicons
from lmwright.tasks.curate.bias.lexicons import WORD_PATTERN, Lexicons, count_terms, mention_exprs


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
        text.str.count_matches(WORD_PATTERN).cast(pl.Int64).alias("_words"),
        count_terms(text, lex.negative_pattern).alias("_neg"),
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
