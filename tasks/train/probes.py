"""Counterfactual bias probes for evaluation: does the model continue differently after one group?

``probe_bias`` scores the same continuations after templates that differ only in the group
term (``configs/lexicons/probes.yaml``); ``probe_metrics`` flattens the result for the metrics
table and ``probe_gate_failures`` says which axes fail the promotion gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmwright.tasks.curate.bias.lexicons import LEXICON_DIR, resolve_path, slug

PROBES_FILE = "probes.yaml"


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
