"""card: the data card of a curated corpus, from the stages' own records.

Written as card.md + card.json beside the corpus (in the final dataset's directory,
after its manifest) and published as a Prefect markdown artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact

from pydantic import BaseModel, Field
from prefect import get_run_logger

from lmwright.data_quality import DataQualityError, ValidationSettings
from lmwright.tasks.curate.bias.audit import BiasAuditParams, audit_to_json, bias_audit, fairness_violations, render_bias_markdown
from lmwright.tasks.curate.bias.filter import BiasParams
from lmwright.tasks.core.dataset import DatasetRef, atomic_write_text, fingerprint
from lmwright.tasks.core.energy import energy_markdown, energy_table
from lmwright.tasks.core.errors import UserError
from lmwright.tasks.curate.license.policy import LicenseParams, policy_summary, render_policy_markdown
from lmwright.tasks.curate.mixture import diversity, render_diversity_markdown
from lmwright.tasks.curate.quality.report import language_report, render_language_markdown
from lmwright.tasks.curate.retention import RejectedSettings, RetentionSettings, render_retention_markdown
from lmwright.tasks.core.stage import StageWork, read_marker, stage_step, stage_task
from lmwright.tasks.curate.card_plots import card_figures, length_histogram
from lmwright.tasks.core.plots import publish_png

VERSION = "2"  # 2: Hub header, thresholds, rejected examples, lengths, figures
CARD_ARTIFACT_KEY = "data-card"


class CardWork(StageWork):
    """The card lives in the corpus directory; card.json is its completion marker."""

    @property
    def marker(self) -> Path:  # type: ignore[override]
        return Path(self.out_dir) / "card.json"


class CardInputs(BaseModel):
    """What the card reports on besides the datasets: policies and the bias audit's settings."""

    license: LicenseParams
    bias: BiasParams
    bias_audit: BiasAuditParams
    validation: ValidationSettings
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    rejected: RejectedSettings = Field(default_factory=RejectedSettings)


def card_work(corpus: DatasetRef, inputs: CardInputs) -> CardWork:
    settings = fingerprint("card", VERSION, inputs.model_dump(exclude={"validation"}), [corpus.fingerprint])
    return CardWork(stage="card", fingerprint=settings, out_dir=corpus.path, unit="card")


def funnel(stages: list[DatasetRef]) -> list[dict[str, Any]]:
    rows = []
    for ref in stages:
        s = ref.stats()
        rows.append(
            {
                "stage": ref.stage,
                "in": s["in"],
                "kept": s["kept"],
                "rejected": s["rejected"],
                "rejected_by_reason": s["rejected_by_reason"],
                "counts": s.get("counts", {}),
                "mb_in": round(s["bytes_in"] / 1e6, 3),
                "energy": s.get("energy"),
            }
        )
    return rows


def skipped_files_summary(stages: list[DatasetRef]) -> dict[str, Any]:
    """Files of the sources that yielded no records (unsupported, unreadable, broken links), from ingest's stats."""
    ingest = next((s.stats() for s in stages if s.stage == "ingest"), {})
    skipped = ingest.get("skipped_files", [])
    by_reason: dict[str, int] = {}
    for entry in skipped:
        by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
    return {"files_read": ingest.get("files", 0), "skipped": len(skipped), "by_reason": by_reason, "examples": skipped[:10]}


class EmptyCorpusError(UserError):
    """A curate whose sources gave no documents, or whose stages dropped every one."""


def require_documents(dataset: DatasetRef, stages: list[DatasetRef]) -> None:
    """Stop at an empty dataset with one line saying why, instead of reporting (and training) on nothing."""
    if dataset.manifest()["rows"] == 0:
        raise EmptyCorpusError(empty_corpus_message(stages))


def empty_corpus_message(stages: list[DatasetRef]) -> str:
    """One line: files read and skipped (with reasons and examples), then what each stage dropped."""
    files = skipped_files_summary(stages)
    line = f"no documents: {files['files_read']:,} files read, {files['skipped']:,} skipped"
    if files["skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(files["by_reason"].items(), key=lambda kv: -kv[1]))
        examples = ", ".join(Path(e["file"]).name for e in files["examples"][:3])
        line += f" (reasons: {reasons}; e.g. {examples})"
    for ref in stages:
        stats = ref.stats()
        if stats["rejected"]:
            top = sorted(stats["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:3]
            line += f"; {ref.stage} dropped {stats['rejected']:,} of {stats['in']:,} ({', '.join(f'{k} {v}' for k, v in top)})"
    return line + ". Check the sources (supported: .txt .md .jsonl[.gz|.zst] .parquet .csv) and the filters' settings."


def render_skipped_markdown(summary: dict[str, Any]) -> list[str]:
    lines = ["", "## Files", "", f"{summary['files_read']:,} files read, {summary['skipped']:,} skipped."]
    if summary["skipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_reason"].items(), key=lambda kv: -kv[1]))
        lines += [f"Skipped by reason: {reasons}.", "", "| skipped file | reason | detail |", "|---|---|---|"]
        lines += [f"| `{e['file']}` | {e['reason']} | {e['detail']} |" for e in summary["examples"]]
    return lines


def render_counts_markdown(funnel_rows: list[dict[str, Any]]) -> list[str]:
    """What stages changed in the documents they kept (e.g. invisible characters stripped)."""
    rows = [(r["stage"], k, v) for r in funnel_rows for k, v in (r.get("counts") or {}).items()]
    if not rows:
        return []
    lines = ["", "## Changed in place", "", "| stage | what | count |", "|---|---|---:|"]
    return lines + [f"| {stage} | {what} | {n:,} |" for stage, what, n in rows]


def corpus_profile(corpus: DatasetRef) -> dict[str, Any]:
    lf = corpus.scan()
    cols = lf.collect_schema().names()
    lengths = lf.select(pl.col("text").str.len_chars().alias("chars")).collect()["chars"]
    profile: dict[str, Any] = {
        "documents": corpus.manifest()["rows"],
        "chars": int(lengths.sum() or 0),
        "doc_chars": {q: int(lengths.quantile(p) or 0) for q, p in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))}
        if lengths.len()
        else {},
        "sources": _counts(lf, "source"),
        "licenses": _counts(lf.with_columns(pl.col("license").fill_null("unknown")), "license"),
    }
    if "lang" in cols:
        profile["languages"] = _counts(lf, "lang")
    return profile


def _counts(lf: pl.LazyFrame, col: str) -> dict[str, int]:
    df = lf.group_by(col).len().sort(["len", col], descending=[True, False]).collect()
    return {str(k): int(v) for k, v in zip(df[col], df["len"])}


def duplicate_summary(dedup: DatasetRef) -> dict[str, Any]:
    rejected = dedup.rejected_parts()
    if not rejected:
        return {"duplicates_removed": 0, "by_reason": {}, "largest_clusters": []}
    rej = pl.scan_parquet([str(p) for p in rejected])
    by = rej.group_by("dup_of").len().sort(["len", "dup_of"], descending=[True, False]).limit(10).collect()
    reasons = rej.group_by("reason").len().sort("reason").collect()
    return {
        "duplicates_removed": int(rej.select(pl.len()).collect().item()),
        "by_reason": {str(k): int(v) for k, v in zip(reasons["reason"], reasons["len"])},
        "largest_clusters": [{"kept_id": k, "duplicates": int(n)} for k, n in zip(by["dup_of"], by["len"])],
    }


FILTER_STAGES = ("langid", "quality", "pii", "bias", "dedup", "decontaminate")
EXAMPLES_PER_REASON = 2
EXAMPLE_CHARS = 240


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list) or len(value) <= 8:  # long lists (stop words, lexicons) stay in manifest.json
            out[f"{prefix}{key}"] = value
    return out


def thresholds_used(stages: list[DatasetRef]) -> dict[str, dict[str, Any]]:
    """Each filtering stage's settings as its manifest recorded them (what ran, not what a preset meant)."""
    # quality's per-language settings have their own section (Quality by language), not one row per key here.
    return {
        ref.stage: _flatten({k: v for k, v in ref.manifest().get("params", {}).items() if k != "languages"})
        for ref in stages
        if ref.stage in FILTER_STAGES
    }


def quality_defaults() -> dict[str, Any]:
    """The published defaults of the quality rules, to show which thresholds a run relaxed or tightened."""
    from lmwright.tasks.curate.quality import QualityParams

    return _flatten(QualityParams().model_dump(mode="json"))


def rejected_examples(stages: list[DatasetRef]) -> list[dict[str, Any]]:
    """A few rejected documents per stage and reason, cut short and with personal data replaced by placeholders."""
    from lmwright.tasks.curate.pii import PiiParams, redact_text

    rows: list[dict[str, Any]] = []
    for ref in stages:
        parts = ref.rejected_parts()
        if not parts:
            continue
        rej = pl.scan_parquet([str(p) for p in parts])
        cols = rej.collect_schema().names()
        picked = (
            rej.select("reason", pl.col("detail") if "detail" in cols else pl.lit(None).alias("detail"),
                       pl.col("text").str.slice(0, EXAMPLE_CHARS) if "text" in cols else pl.lit(None, pl.String).alias("text"))
            .group_by("reason", maintain_order=True).head(EXAMPLES_PER_REASON).collect()
        )
        if picked.height == 0:
            continue
        redacted, _ = redact_text(picked.with_columns(pl.col("text").fill_null("")), PiiParams())
        for (reason, detail, raw), text in zip(picked.select("reason", "detail", "text").iter_rows(), redacted):
            rows.append({"stage": ref.stage, "reason": reason, "detail": None if detail is None else str(detail)[:120],
                         "text": text if raw is not None else None})
    return rows


def document_lengths(stages: list[DatasetRef], corpus: DatasetRef) -> dict[str, list[int]]:
    """Length histograms (characters) of the documents read and the documents kept; read is empty if ingest's text was dropped."""

    def lengths(ref: DatasetRef) -> list[int]:
        return [int(n) for n in ref.scan().select(pl.col("text").str.len_chars()).collect().to_series().drop_nulls()]

    ingest = next((s for s in stages if s.stage == "ingest"), None)
    return {"before": length_histogram(lengths(ingest)) if ingest else [], "after": length_histogram(lengths(corpus))}


def hub_header(card: dict[str, Any]) -> str:
    """The Hub's dataset-card YAML: licences, languages, size, task, name."""
    from huggingface_hub import DatasetCardData

    p = card["profile"]
    n = p["documents"]
    size = next(label for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                                           (1e7, "1M<n<10M"), (float("inf"), "10M<n<100M")) if n < bound)
    licenses = [k.lower() for k in p.get("licenses", {}) if k != "unknown"]
    data = DatasetCardData(
        pretty_name=card_title(card), language=list(p.get("languages", {}))[:20] or None,
        license=licenses if len(licenses) == 1 and licenses[0] in {"mit", "apache-2.0", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0"} else "other",
        size_categories=[size], task_categories=["text-generation"], tags=["lmwright", "curated", "pretraining"],
    )
    return data.to_yaml()


def card_title(card: dict[str, Any]) -> str:
    sources = ", ".join(list(card["profile"].get("sources", {}))[:3]) or "text"
    return f"lmwright corpus: {sources} ({card['fingerprint'][:8]})"


def check_fairness(audit: dict[str, Any], validation: ValidationSettings) -> None:
    """A filter that removes one group's documents far more than others fails the run (or warns)."""
    violations = fairness_violations(audit)
    if not violations:
        return
    message = "filter fairness: " + "; ".join(violations)
    if validation.severity_for("bias_audit") == "fail":
        raise DataQualityError(message + " (set validation.stage_severity.bias_audit=warn to only warn)")
    get_run_logger().warning(message)


def render_thresholds(card: dict[str, Any]) -> list[str]:
    used = card.get("thresholds") or {}
    if not used:
        return []
    defaults = card.get("quality_defaults") or {}
    changed = [(k, v, defaults[k]) for k, v in used.get("quality", {}).items() if k in defaults and defaults[k] != v]
    lines = ["", "## Filters and thresholds", "", "As each stage recorded them in its manifest."]
    if changed:
        lines += ["", f"Quality rules changed from their published defaults ({len(changed)}):", "",
                  "| setting | used | default |", "|---|---:|---:|"]
        lines += [f"| quality.{k} | {v} | {d} |" for k, v, d in changed]
    for stage, settings in used.items():
        lines += ["", f"<details><summary>{stage}: every setting</summary>", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in settings.items()]
        lines += ["", "</details>"]
    return lines


def render_examples(card: dict[str, Any]) -> list[str]:
    examples = card.get("rejected_examples") or []
    if not examples:
        return []
    lines = ["", "## Examples of removed documents", "",
             f"Up to {EXAMPLES_PER_REASON} per reason, the first {EXAMPLE_CHARS} characters, personal data replaced by placeholders.", "",
             "| stage | reason | detail | text |", "|---|---|---|---|"]
    for e in examples:
        text = "(text not kept)" if e["text"] is None else e["text"].replace("|", "\\|").replace("\n", " ⏎ ").replace("`", "'")
        lines.append(f"| {e['stage']} | {e['reason']} | {e['detail'] or ''} | {text} |")
    return lines


def render_figures(card: dict[str, Any]) -> list[str]:
    names = [n for n in card.get("figures", [])]
    return ["", "## Pictures", "", *[f"![{n}](card_{n}.png)" for n in names]] if names else []


def render_markdown(card: dict[str, Any]) -> str:
    lines = ["---", hub_header(card).strip(), "---", "", f"# {card_title(card)}", ""] if "fingerprint" in card else ["# Data card", ""]
    p = card["profile"]
    lines += [f"**{p['documents']:,} documents**, {p['chars']:,} characters, curated by lmwright from "
              f"{', '.join(p.get('sources', {})) or 'its sources'}; corpus fingerprint `{card.get('fingerprint', '')}`.", ""]
    lines += ["## Funnel", "", "| stage | in | kept | rejected | top reasons |", "|---|---:|---:|---:|---|"]
    for row in card["funnel"]:
        top = sorted(row["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:4]
        reasons = ", ".join(f"{k} {v}" for k, v in top)
        lines.append(f"| {row['stage']} | {row['in']:,} | {row['kept']:,} | {row['rejected']:,} | {reasons} |")
    lines += ["", "Time, energy and CO2 of each stage: [Energy](#energy)."]
    lines += render_figures(card)
    lines += render_thresholds(card)
    lines += render_language_markdown(card.get("quality_by_language", []))
    lines += render_examples(card)
    lines += render_counts_markdown(card["funnel"])
    if "files" in card:
        lines += render_skipped_markdown(card["files"])
    lines += ["", render_diversity_markdown(card["diversity"]).strip(), "", render_policy_markdown(card["license_policy"]).strip()]
    lines += ["", render_bias_markdown(card["bias"]).strip()]
    energy = {row["stage"]: row["energy"] for row in card["funnel"] if row.get("energy")}
    if energy:
        modes = {e.get("mode") for e in energy.values()}
        lines += ["", "## Energy", "", energy_markdown(energy_table(energy), "; ".join(sorted(m for m in modes if m)))]
    dup = card["duplicates"]
    lines += ["", "## Duplicates", "", f"{dup['duplicates_removed']:,} duplicate documents removed."]
    if dup["largest_clusters"]:
        lines += ["", "| kept document | duplicates removed |", "|---|---:|"]
        lines += [f"| `{c['kept_id']}` | {c['duplicates']} |" for c in dup["largest_clusters"]]
    if "retention" in card:
        lines += ["", render_retention_markdown(card["retention"]).strip()]
    return "\n".join(lines) + "\n"


def published_card(work: CardWork) -> str:
    """card.md's path; the card shown in the UI with its figures as images (a cached run's too)."""
    out = Path(work.out_dir)
    card = read_marker(work)
    create_markdown_artifact(markdown=render_markdown(card), key=CARD_ARTIFACT_KEY, description=f"Data card of {out}")
    for name in card.get("figures", []):
        publish_png(out / f"card_{name}.png", f"data-card-{name}", f"Data card: {name}")
    return str(out / "card.md")


@stage_task(task_run_name="card")
@stage_step(read=published_card, metered=False)
def write_card(work: StageWork, corpus: DatasetRef, stages: list[DatasetRef], inputs: CardInputs) -> dict[str, Any]:
    """Assemble the data card from stats and the corpus; card.md and its figures beside it, card.json (the marker) last."""
    out = Path(corpus.path)
    license_stage = next((s for s in stages if s.stage == "license"), None)
    quality_stage = next((s for s in stages if s.stage == "quality"), None)
    unknown = int(corpus.scan().select(pl.col("license").is_null().sum()).collect().item())
    card = {
        "corpus": corpus.path,
        "fingerprint": corpus.fingerprint,
        "funnel": funnel(stages),
        "files": skipped_files_summary(stages),
        "profile": corpus_profile(corpus),
        "diversity": diversity(corpus.scan()),
        "license_policy": policy_summary(inputs.license, license_stage.stats() if license_stage else None, unknown),
        "bias": audit_to_json(bias_audit(stages, inputs.bias, inputs.bias_audit)),
        "duplicates": duplicate_summary(corpus),
        "retention": {"intermediate_text": inputs.retention.intermediate_text, "rejected_keep_text": inputs.rejected.keep_text},
        "thresholds": thresholds_used(stages),
        "quality_by_language": language_report(quality_stage) if quality_stage else [],
        "quality_defaults": quality_defaults(),
        "rejected_examples": rejected_examples(stages),
        "lengths": document_lengths(stages, corpus),
    }
    card["figures"] = list(card_figures(card, out))
    check_fairness(card["bias"], inputs.validation)
    atomic_write_text(out / "card.md", render_markdown(card))
    return card
