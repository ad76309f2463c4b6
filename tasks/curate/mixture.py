"""The data mix: diversity figures for the card, and sampling weights for the token data.

* ``diversity(lf)`` describes a corpus: documents and characters per source, language and
  license, a document-length histogram, and the *effective number* of each (exp of the
  Shannon entropy of the shares: 1 when everything is one value, k for k equal values).
* ``mixture_plan(docs, params)`` decides how many times each document goes into the token
  data. A document's weight is ``source weight x language weight``. Within each
  (source, language) group, the integer part of the weight repeats every document, and the
  fractional part picks a deterministic subset: documents in order of a salted BLAKE2b hash
  of their id, taken while their token midpoint stays within ``fraction x group tokens``.
  So each group's tokens come out at ``weight x tokens`` to within half a document, the
  same config and corpus always give the same plan, and a grown corpus keeps (almost) the
  same subset (the hash order does not change).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmwright.tasks.core.hashing import doc_hash

# --- diversity ---------------------------------------------------------------------------

LENGTH_BUCKETS = (0, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)  # characters, lower bounds
UNKNOWN = "unknown"


def effective_number(counts: Mapping[str, float] | list[float]) -> float:
    """exp(Shannon entropy) of the shares; 0.0 for nothing."""
    values = [float(v) for v in (counts.values() if isinstance(counts, Mapping) else counts) if v > 0]
    total = sum(values)
    if total <= 0:
        return 0.0
    h = -sum(v / total * math.log(v / total) for v in values)
    return round(math.exp(h), 4)


def _distribution(lf: pl.LazyFrame, col: str) -> dict[str, Any]:
    df = (
        lf.group_by(pl.col(col).cast(pl.String).fill_null(UNKNOWN).alias("value"))
        .agg(pl.len().alias("documents"), pl.col("_chars").sum().alias("chars"))
        .sort(["documents", "value"], descending=[True, False])
        .collect()
    )
    docs = {str(v): int(n) for v, n in zip(df["value"], df["documents"])}
    chars = {str(v): int(n) for v, n in zip(df["value"], df["chars"])}
    total = sum(docs.values()) or 1
    return {
        "documents": docs,
        "chars": chars,
        "share": {k: round(v / total, 6) for k, v in docs.items()},
        "effective": effective_number(docs),
        "effective_by_chars": effective_number(chars),
    }


def _bucket_label(lo: int, hi: int | None) -> str:
    fmt = lambda n: f"{n // 1000}k" if n >= 1000 else str(n)  # noqa: E731
    return f"{fmt(lo)}+" if hi is None else f"{fmt(lo)}-{fmt(hi)}"


def diversity(corpus: pl.LazyFrame | pl.DataFrame) -> dict[str, Any]:
    """Distributions and effective numbers of sources, languages and licenses, plus document lengths.

    Needs ``text`` and ``source``; uses ``lang`` and ``license`` when present (null -> "unknown").
    """
    lf = corpus.lazy()
    cols = lf.collect_schema().names()
    lf = lf.with_columns(pl.col("text").fill_null("").str.len_chars().alias("_chars"))
    out: dict[str, Any] = {}
    totals = lf.select(pl.len().alias("n"), pl.col("_chars").sum().alias("c")).collect()
    out["documents"] = int(totals["n"][0])
    out["chars"] = int(totals["c"][0] or 0)
    for key, col in (("sources", "source"), ("languages", "lang"), ("licenses", "license")):
        if col in cols:
            out[key] = _distribution(lf, col)
    edges = list(LENGTH_BUCKETS)
    bucket = pl.lit(0, dtype=pl.Int32)
    for i, lo in enumerate(edges[1:], start=1):
        bucket = pl.when(pl.col("_chars") >= lo).then(pl.lit(i, dtype=pl.Int32)).otherwise(bucket)
    hist = lf.group_by(bucket.alias("b")).agg(pl.len().alias("n"), pl.col("_chars").sum().alias("c")).collect()
    found = {int(b): (int(n), int(c)) for b, n, c in zip(hist["b"], hist["n"], hist["c"])}
    out["length_histogram"] = [
        {
            "bucket": _bucket_label(lo, edges[i + 1] if i + 1 < len(edges) else None),
            "min_chars": lo,
            "max_chars": edges[i + 1] - 1 if i + 1 < len(edges) else None,
            "documents": found.get(i, (0, 0))[0],
            "chars": found.get(i, (0, 0))[1],
        }
        for i, lo in enumerate(edges)
    ]
    q = lf.select(
        *[pl.col("_chars").quantile(p, interpolation="nearest").alias(k) for k, p in
          (("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99))],
        pl.col("_chars").max().alias("max"),
    ).collect()
    out["length_quantiles"] = {k: int(q[k][0]) if q[k][0] is not None else 0 for k in q.columns}
    return out


def render_diversity_markdown(div: Mapping[str, Any], top: int = 15) -> str:
    """The card's "Diversity" section."""
    lines = ["## Diversity", ""]
    eff = []
    for key, title in (("sources", "sources"), ("languages", "languages"), ("licenses", "licenses")):
        if key in div:
            d = div[key]
            eff.append(f"{title} **{d['effective']:.2f}** of {len(d['documents'])} "
                       f"(by characters {d['effective_by_chars']:.2f})")
    if eff:
        lines += ["Effective number (exp of the Shannon entropy of document shares): " + "; ".join(eff) + ".", ""]
    for key, title in (("sources", "Sources"), ("languages", "Languages"), ("licenses", "Licenses")):
        if key not in div:
            continue
        d = div[key]
        lines += [f"### {title}", "", "| value | documents | share | characters |", "|---|---:|---:|---:|"]
        items = list(d["documents"].items())
        for k, v in items[:top]:
            lines.append(f"| {k} | {v:,} | {d['share'][k]:.1%} | {d['chars'][k]:,} |")
        if len(items) > top:
            rest = items[top:]
            lines.append(f"| ({len(rest)} more) | {sum(v for _, v in rest):,} | "
                         f"{sum(d['share'][k] for k, _ in rest):.1%} | {sum(d['chars'][k] for k, _ in rest):,} |")
        lines.append("")
    lines += ["### Document length (characters)", "", "| bucket | documents | characters |", "|---|---:|---:|"]
    lines += [f"| {b['bucket']} | {b['documents']:,} | {b['chars']:,} |" for b in div["length_histogram"]]
    q = div.get("length_quantiles") or {}
    if q:
        lines += ["", "p10 {p10:,}, median {p50:,}, p90 {p90:,}, p99 {p99:,}, max {max:,} characters.".format(**q)]
    return "\n".join(lines) + "\n"


# --- mixture -------------------------------------------------------------------------------


class MixtureParams(BaseModel):
    """Sampling weights applied when the token data is built (train split)."""

    model_config = ConfigDict(extra="forbid")

    source_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight per `source` value: 2.0 = every document twice (two epochs of that source), "
        "1.5 = once plus a deterministic half by token count, 0.25 = a deterministic quarter, 0 = none.",
    )
    language_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight per `lang` value, multiplied with the source weight (unknown language: key 'unknown').",
    )
    default_weight: float = Field(1.0, ge=0.0, le=1000.0, description="Weight of sources/languages not listed.")
    seed: int = Field(0, description="Salt of the document hash that picks fractional subsets: another seed, another subset.")

    @field_validator("source_weights", "language_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: w for k, w in v.items() if not (math.isfinite(w) and 0.0 <= w <= 1000.0)}
        if bad:
            raise ValueError(f"weights must be finite and within [0, 1000]: {bad}")
        return v

    def is_identity(self) -> bool:
        """True when every document goes in exactly once (no weights that differ from 1)."""
        return self.default_weight == 1.0 and all(
            w == 1.0 for w in (*self.source_weights.values(), *self.language_weights.values())
        )


def _weight_expr(col: str, weights: Mapping[str, float], default: float) -> pl.Expr:
    key = pl.col(col).cast(pl.String).fill_null(UNKNOWN)
    if not weights:
        return pl.lit(default, dtype=pl.Float64)
    return key.replace_strict(dict(weights), default=default, return_dtype=pl.Float64)


def mixture_plan(docs: pl.DataFrame, params: MixtureParams) -> pl.DataFrame:
    """``id, repeats`` for every document of ``docs`` (columns id, source, lang, n_tokens).

    ``lang`` may be missing (every document counts as language "unknown"). Ids must be
    unique. Rows come back in the input order; ``repeats`` is 0 for a document left out.
    """
    if "lang" not in docs.columns:
        docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias("lang"))
    salt = f"mix:{params.seed}"
    d = docs.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        pl.col("id").cast(pl.String),
        pl.col("source").cast(pl.String).fill_null(UNKNOWN).alias("_src"),
        pl.col("lang").cast(pl.String).fill_null(UNKNOWN).alias("_lang"),
        pl.col("n_tokens").cast(pl.Int64).fill_null(0).alias("_n"),
        (_weight_expr("source", params.source_weights, params.default_weight)
         * _weight_expr("lang", params.language_weights, params.default_weight)).alias("_w"),
    )
    d = d.with_columns(
        pl.Series("_h", [doc_hash(salt, i) for i in d["id"].to_list()], dtype=pl.UInt64),
        pl.col("_w").floor().cast(pl.Int64).alias("_base"),
    ).with_columns((pl.col("_w") - pl.col("_base")).alias("_frac"))
    # Within a (source, lang) group, in hash order: take a document while its token midpoint
    # is within frac x group tokens, so the group's extra tokens hit the target within half a doc.
    d = d.sort("_src", "_lang", "_h", "id")
    grp = ["_src", "_lang"]
    d = d.with_columns(
        (pl.col("_n").cum_sum().over(grp) - pl.col("_n") / 2).alias("_mid"),
        (pl.col("_frac") * pl.col("_n").sum().over(grp)).alias("_target"),
    )
    extra = ((pl.col("_frac") > 0) & (pl.col("_mid") <= pl.col("_target"))).cast(pl.Int64)
    d = d.with_columns((pl.col("_base") + extra).cast(pl.UInt32).alias("repeats"))
    return d.sort("_row").select("id", "repeats")


def mixture_report(plan: pl.DataFrame, docs: pl.DataFrame, params: MixtureParams | None = None) -> dict[str, Any]:
    """Tokens and documents per source (and language) before and after the mix, with shares.

    With ``params`` also the share each source was promised (weight x tokens, normalized).
    """
    if "lang" not in docs.columns:
        docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias("lang"))
    d = docs.select(
        pl.col("id").cast(pl.String),
        pl.col("source").cast(pl.String).fill_null(UNKNOWN),
        pl.col("lang").cast(pl.String).fill_null(UNKNOWN),
        pl.col("n_tokens").cast(pl.Int64).fill_null(0),
    ).join(plan.select("id", pl.col("repeats").cast(pl.Int64)), on="id", how="left").with_columns(
        pl.col("repeats").fill_null(0)
    )
    report: dict[str, Any] = {
        "tokens_before": int(d["n_tokens"].sum() or 0),
        "tokens_after": int((d["n_tokens"] * d["repeats"]).sum() or 0),
        "docs_before": d.height,
        "docs_after": int(d["repeats"].sum() or 0),
        "docs_left_out": int((d["repeats"] == 0).sum()),
    }
    for key, col in (("sources", "source"), ("languages", "lang")):
        g = (
            d.group_by(col)
            .agg(
                pl.col("n_tokens").sum().alias("tokens_before"),
                (pl.col("n_tokens") * pl.col("repeats")).sum().alias("tokens_after"),
                pl.len().alias("docs_before"),
                pl.col("repeats").sum().alias("docs_after"),
            )
            .sort(col)
        )
        tb, ta = max(report["tokens_before"], 1), max(report["tokens_after"], 1)
        rows: dict[str, dict[str, Any]] = {}
        for r in g.iter_rows(named=True):
            rows[r[col]] = {
                "tokens_before": int(r["tokens_before"]),
                "tokens_after": int(r["tokens_after"]),
                "docs_before": int(r["docs_before"]),
                "docs_after": int(r["docs_after"]),
                "share_before": round(r["tokens_before"] / tb, 6),
                "share_after": round(r["tokens_after"] / ta, 6),
            }
        report[key] = rows
    if params is not None:
        promised = expected_tokens(docs, params)
        total = sum(promised.values()) or 1.0
        for s, row in report["sources"].items():
            row["share_promised"] = round(promised.get(s, 0.0) / total, 6)
    return report


def expected_tokens(docs: pl.DataFrame, params: MixtureParams) -> dict[str, float]:
    """Tokens per source the weights promise: sum over documents of weight x tokens."""
    if "lang" not in docs.columns:
        docs = docs.with_columns(pl.lit(None, dtype=pl.String).alias("lang"))
    g = docs.select(
        pl.col("source").cast(pl.String).fill_null(UNKNOWN),
        (pl.col("n_tokens").cast(pl.Float64).fill_null(0)
         * _weight_expr("source", params.source_weights, params.default_weight)
         * _weight_expr("lang", params.language_weights, params.default_weight)).alias("t"),
    ).group_by("source").agg(pl.col("t").sum())
    return {s: float(t) for s, t in zip(g["source"], g["t"])}


def render_mixture_markdown(report: Mapping[str, Any]) -> str:
    """Tokens per source before/after the mix (card / model card section)."""
    lines = ["## Data mix", "",
             f"{report['tokens_before']:,} tokens in {report['docs_before']:,} documents -> "
             f"{report['tokens_after']:,} tokens in {report['docs_after']:,} document copies "
             f"({report['docs_left_out']:,} documents left out).", "",
             "| source | tokens before | share | tokens after | share | promised |", "|---|---:|---:|---:|---:|---:|"]
    for s, r in report["sources"].items():
        promised = f"{r['share_promised']:.1%}" if "share_promised" in r else ""
        lines.append(f"| {s} | {r['tokens_before']:,} | {r['share_before']:.1%} | {r['tokens_after']:,} | "
                     f"{r['share_after']:.1%} | {promised} |")
    return "\n".join(lines) + "\n"


def epoch_order(index: pl.DataFrame, plan: pl.DataFrame) -> pl.DataFrame:
    """The order in which document token ranges are written, epoch by epoch.

    ``index`` has one row per document with ``id`` and whatever locates its tokens (e.g.
    ``shard``, ``offset``, ``tokens``), in the order documents are packed today. Returns
    those rows, each repeated ``repeats`` times: epoch 0 is every document with repeats >= 1
    in index order, epoch 1 every document with repeats >= 2, and so on; an ``epoch``
    column says which copy a row is. Documents absent from the plan count once.
    """
    d = index.with_row_index("_pos").join(plan.select("id", "repeats"), on="id", how="left")
    d = d.with_columns(pl.col("repeats").fill_null(1).cast(pl.Int64))
    d = d.filter(pl.col("repeats") > 0).with_columns(pl.int_ranges(0, pl.col("repeats")).alias("epoch"))
    d = d.explode("epoch").sort("epoch", "_pos")
    return d.drop("_pos", "repeats").with_columns(pl.col("epoch").cast(pl.UInt32))


__all__ = [
    "MixtureParams",
    "diversity",
    "effective_number",
    "epoch_order",
    "expected_tokens",
    "mixture_plan",
    "mixture_report",
    "render_diversity_markdown",
    "render_mixture_markdown",
]
