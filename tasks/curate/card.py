"""card: the data card of a curated corpus, from the stages' own records.

Written as card.md + card.json beside the corpus (in the final dataset's directory,
after its manifest) and published as a Prefect markdown artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from prefect.artifacts import create_markdown_artifact

from pydantic import BaseModel, Field
from prefect import get_run_logger

from lmwright.data_quality import DataQualityError, ValidationSettings
from lmwright.tasks.curate.bias import BiasAuditParams, BiasParams, audit_to_json, bias_audit, fairness_violations, render_bias_markdown
from lmwright.tasks.core.dataset import DatasetRef, atomic_write_text, fingerprint, write_json
from lmwright.tasks.core.energy import energy_markdown, energy_table
from lmwright.tasks.core.errors import UserError
from lmwright.tasks.curate.license import LicenseParams, policy_summary, render_policy_markdown
from lmwright.tasks.curate.mixture import diversity, render_diversity_markdown
from lmwright.tasks.curate.retention import RejectedSettings, RetentionSettings, render_retention_markdown
from lmwright.tasks.core.stage import StageWork, stage_task

VERSION = "1"
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
                "seconds": s["seconds"],
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
        return {"duplicates_removed": 0, "largest_clusters": []}
    rej = pl.scan_parquet([str(p) for p in rejected])
    by = rej.group_by("dup_of").len().sort(["len", "dup_of"], descending=[True, False]).limit(10).collect()
    return {
        "duplicates_removed": int(rej.select(pl.len()).collect().item()),
        "largest_clusters": [{"kept_id": k, "duplicates": int(n)} for k, n in zip(by["dup_of"], by["len"])],
    }


def check_fairness(audit: dict[str, Any], validation: ValidationSettings) -> None:
    """A filter that removes one group's documents far more than others fails the run (or warns)."""
    violations = fairness_violations(audit)
    if not violations:
        return
    message = "filter fairness: " + "; ".join(violations)
    if validation.severity_for("bias_audit") == "fail":
        raise DataQualityError(message + " (set validation.stage_severity.bias_audit=warn to only warn)")
    get_run_logger().warning(message)


def render_markdown(card: dict[str, Any]) -> str:
    lines = ["# Data card", "", f"Corpus: `{card['corpus']}`", ""]
    p = card["profile"]
    lines += [f"**{p['documents']:,} documents**, {p['chars']:,} characters.", ""]
    lines += ["## Funnel", "", "| stage | in | kept | rejected | top reasons | s |", "|---|---:|---:|---:|---|---:|"]
    for row in card["funnel"]:
        top = sorted(row["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:4]
        reasons = ", ".join(f"{k} {v}" for k, v in top)
        lines.append(f"| {row['stage']} | {row['in']:,} | {row['kept']:,} | {row['rejected']:,} | {reasons} | {row['seconds']} |")
    lines += render_counts_markdown(card["funnel"])
    if "files" in card:
        lines += render_skipped_markdown(card["files"])
    for title, key in (("Languages", "languages"), ("Sources", "sources"), ("Licenses", "licenses")):
        if p.get(key):
            lines += ["", f"## {title}", "", "| value | documents |", "|---|---:|"]
            lines += [f"| {k} | {v:,} |" for k, v in list(p[key].items())[:20]]
    if p.get("doc_chars"):
        d = p["doc_chars"]
        lines += ["", "## Sizes", "", f"Document length in characters: p10 {d['p10']:,}, median {d['p50']:,}, p90 {d['p90']:,}."]
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


@stage_task(task_run_name="card")
def write_card(work: StageWork, corpus: DatasetRef, stages: list[DatasetRef], inputs: CardInputs) -> str:
    """Assemble the data card from stats and the corpus; write card.md/card.json; publish it."""
    out = Path(corpus.path)
    if work.done():
        card = json.loads((out / "card.json").read_text())
    else:
        license_stage = next((s for s in stages if s.stage == "license"), None)
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
        }
        check_fairness(card["bias"], inputs.validation)
        atomic_write_text(out / "card.md", render_markdown(card))
        write_json(out / "card.json", card)
    create_markdown_artifact(
        markdown=render_markdown(card), key=CARD_ARTIFACT_KEY, description=f"Data card of {corpus.path}"
    )
    return str(out / "card.md")
