"""The data card's pictures, drawn from card.json alone: the funnel by stage and reason, the language mix,
document lengths before and after curation, and duplicates. Each is a PNG beside card.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmwright.tasks.core.plots import new_figure, save_png

# log-spaced document lengths in characters: 10 ... 1M
LENGTH_EDGES = [10 ** (k / 4) for k in range(4, 25)]


def length_histogram(lengths: list[int]) -> list[int]:
    """Documents per LENGTH_EDGES bin (shorter than the first edge in the first bin, longer than the last in the last)."""
    import numpy as np

    clipped = np.clip(np.asarray(lengths, dtype=np.float64), LENGTH_EDGES[0], LENGTH_EDGES[-1] * 0.999)
    return [int(c) for c in np.histogram(clipped, bins=LENGTH_EDGES)[0]]


def plot_funnel(card: dict[str, Any], path: Path) -> Path:
    """Documents entering each stage; the part each stage removed, split by its top reasons."""
    rows = card["funnel"]
    totals: dict[str, int] = {}
    for row in rows:
        for reason, n in row["rejected_by_reason"].items():
            totals[reason] = totals.get(reason, 0) + n
    shown = [r for r, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:8]]
    fig, ax = new_figure(7, 0.45 * len(rows) + 1.6)
    names = [row["stage"] for row in rows][::-1]
    ax.barh(names, [row["kept"] for row in rows][::-1], color="tab:green", label="kept")
    left = [row["kept"] for row in rows][::-1]
    colors = iter(["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "black"])
    for reason in [*shown, "other"]:
        widths = []
        for row in rows[::-1]:
            by = row["rejected_by_reason"]
            widths.append(sum(n for r, n in by.items() if r not in shown) if reason == "other" else by.get(reason, 0))
        if any(widths):
            ax.barh(names, widths, left=left, color=next(colors), label=reason)
            left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("documents")
    ax.set_title("Documents through the stages: kept, and removed by reason", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, path)


def plot_languages(card: dict[str, Any], path: Path) -> Path:
    """Documents kept per language, and the documents langid removed per language it found."""
    kept = card["profile"].get("languages", {})
    langid = next((row for row in card["funnel"] if row["stage"] == "langid"), None)
    removed = {("uncertain" if r == "langid_low_confidence" else r.removeprefix("langid_not_")): n
               for r, n in (langid or {}).get("rejected_by_reason", {}).items()}
    langs = sorted(set(kept) | set(removed), key=lambda k: -(kept.get(k, 0) + removed.get(k, 0)))[:20]
    fig, ax = new_figure(7, 3.2)
    ax.bar(langs, [kept.get(k, 0) for k in langs], color="tab:green", label="kept")
    ax.bar(langs, [removed.get(k, 0) for k in langs], bottom=[kept.get(k, 0) for k in langs], color="tab:red", label="removed by langid")
    ax.set_yscale("symlog")
    ax.set_ylim(0, 3 * max([kept.get(k, 0) + removed.get(k, 0) for k in langs] or [1]))  # room above the tallest bar
    ax.set_ylabel("documents")
    ax.set_title("Language mix", fontsize=10)
    ax.tick_params(axis="x", labelsize=8, rotation=45)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_lengths(card: dict[str, Any], path: Path) -> Path:
    """Document length histograms (log scale) of what was read and what was kept."""
    lengths = card["lengths"]
    fig, ax = new_figure(7, 3.2)
    for key, label, color in (("before", "read (ingest)", "tab:gray"), ("after", "kept (corpus)", "tab:green")):
        if lengths.get(key):
            ax.stairs(lengths[key], LENGTH_EDGES, label=f"{label}: {sum(lengths[key]):,}", color=color, fill=key == "after", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.set_title("Document lengths before and after curation", fontsize=10)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_duplicates(card: dict[str, Any], path: Path) -> Path:
    """Duplicates removed by kind, and the largest clusters (kept document -> copies removed)."""
    dup = card["duplicates"]
    fig, ax = new_figure(7, 3.2)
    clusters = dup["largest_clusters"]
    if clusters:
        ax.barh([c["kept_id"][:24] for c in clusters][::-1], [c["duplicates"] for c in clusters][::-1], color="tab:purple")
        ax.set_xlabel("copies removed")
        ax.tick_params(axis="y", labelsize=7)
    else:
        ax.text(0.5, 0.5, "no duplicates found", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    by = ", ".join(f"{k} {v:,}" for k, v in dup.get("by_reason", {}).items()) or "none"
    ax.set_title(f"{dup['duplicates_removed']:,} duplicates removed ({by}); largest clusters", fontsize=10)
    return save_png(fig, path)


FIGURES = {"funnel": plot_funnel, "languages": plot_languages, "lengths": plot_lengths, "duplicates": plot_duplicates}


def card_figures(card: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Every figure the card has data for, as ``card_<name>.png`` in ``out_dir``."""
    return {name: draw(card, out_dir / f"card_{name}.png") for name, draw in FIGURES.items() if name != "lengths" or "lengths" in card}
