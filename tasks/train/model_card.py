"""The model card (README.md of the Hugging Face export), generated from the run's own records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmwright.tasks.core.energy import energy_markdown, energy_table
from lmwright.tasks.curate.mixture import render_mixture_markdown
from lmwright.models.run import ModelRef


def _energy_lines(result: dict[str, Any], blocks: dict[str, Any]) -> list[str]:
    """Energy and CO2 of the run: curation stages, tokenize and training (``flows.train.run_energy``)."""
    if not blocks:
        return []
    eff = result.get("efficiency", {})
    lines = ["", "### Energy and CO2", "", energy_markdown(energy_table(blocks), result.get("energy", {}).get("mode"))]
    if eff.get("tokens_per_joule"):
        lines += ["", f"Training: {eff['tokens_per_joule']:.3g} tokens per joule."]
    return lines


def render_model_card(
    config: Any,
    model: ModelRef,
    metrics: dict[str, Any],
    data_card: str | None,
    tokens_meta: dict[str, Any] | None = None,
    withdrawals_markdown: str = "",
    energy: dict[str, Any] | None = None,
) -> str:
    data = json.loads(Path(data_card).with_suffix(".json").read_text()) if data_card else {}
    result = model.result()
    profile = data.get("profile", {})
    languages = list(profile.get("languages", {}))[:5] or ["en"]
    licenses = profile.get("licenses", {})
    header = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [lmwright, llama]",
        "language: [" + ", ".join(languages) + "]",
        "license: other",
        "---",
        "",
        f"# {Path(model.path).name}",
        "",
        f"A {metrics['params']:,}-parameter Llama-architecture model trained with lmwright "
        f"({model.stage}; {result['steps']} steps, stopped by {result['stopped']}).",
        "",
        "## Data",
        "",
    ]
    if profile:
        header.append(f"{profile.get('documents', 0):,} documents, {profile.get('chars', 0):,} characters after curation.")
        header += ["", "| source | documents |", "|---|---:|"]
        header += [f"| {k} | {v:,} |" for k, v in profile.get("sources", {}).items()]
        header += ["", "| license | documents |", "|---|---:|"]
        header += [f"| {k} | {v:,} |" for k, v in licenses.items()]
        header += ["", "### Filters and what they removed", "", "| stage | in | removed | top reasons |", "|---|---:|---:|---|"]
        for row in data.get("funnel", []):
            top = sorted(row["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:3]
            header.append(f"| {row['stage']} | {row['in']:,} | {row['rejected']:,} | {', '.join(f'{k} {v}' for k, v in top)} |")
    if withdrawals_markdown:  # the refresh layer renders it: the card only places it
        header += ["", withdrawals_markdown.strip()]
    if tokens_meta and tokens_meta.get("mixture"):
        header += ["", "### Training tokens by source", "", render_mixture_markdown(tokens_meta["mixture"]).strip()]
    header += [
        "",
        "## Evaluation (held-out)",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for key in ("val_loss", "val_ppl", "val_bpb", "train_loss", "unigram_loss", "sft_response_loss"):
        if key in metrics:
            header.append(f"| {key} | {metrics[key]} |")
    if metrics.get("bias_probes"):
        header += ["", "### Bias probes", "", "Counterfactual templates that differ only in the group term; "
                   "gap = spread of mean log-likelihood across groups, valence gap = spread of (negative - positive).", "",
                   "| axis | gap | valence gap |", "|---|---:|---:|"]
        for key, value in sorted(metrics.items()):
            if key.startswith("bias_gap_") and key != "bias_gap_max":
                axis = key.removeprefix("bias_gap_")
                header.append(f"| {axis} | {value} | {metrics.get(f'bias_valence_gap_{axis}')} |")
    if data.get("bias"):
        flagged = [f for f in data["bias"].get("filter_fairness", []) if f.get("flagged")]
        header += ["", f"Data audit: {len(flagged)} filtering stage(s) flagged for removing documents about one group "
                   "far more than others (see the data card)."]
    fit = metrics.get("fit", {})
    if fit.get("reasons"):
        header += ["", "Fit diagnosis: " + "; ".join(fit["reasons"])]
    header += [
        "",
        "## Training",
        "",
        f"Tokens seen: {result['tokens_seen']:,}; training FLOPs: {result['flops']:.3g}; "
        f"wall clock: {result['seconds']:.0f} s; {result.get('tokens_per_second', 0):,.0f} tokens/s.",
        *_energy_lines(result, energy or {}),
        "",
        "## Limitations",
        "",
        "A small model trained on a small corpus: it produces fluent-looking but unreliable text. "
        "Do not use it for decisions about people.",
    ]
    return "\n".join(header) + "\n"
