"""The model card (README.md of the Hugging Face export), generated from the run's own records.

It opens with the Hub's YAML metadata (built with ``huggingface_hub.ModelCardData``, so the
model-index parses as the Hub parses it) and then says, in this order: what the model is and
whether it was promoted, how to use it, its architecture, how each stage trained and why it
stopped (with loss curves), how it scores with intervals, what it was trained on (linking the
data card shipped beside it), contamination, bias probes, energy, and what it cannot do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmwright.tasks.core.energy import energy_markdown, energy_table
from lmwright.tasks.core.plots import new_figure, save_png
from lmwright.tasks.curate.mixture import render_mixture_markdown
from lmwright.models.run import ModelRef

DATA_CARD = "data_card.md"  # the corpus's card, copied beside the model card in the export

# Hub licence ids that are also SPDX ids (lowercased); any other training licence makes the weights `other`.
HUB_LICENSES = {
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "bsl-1.0", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0",
    "cc-by-3.0", "isc", "mpl-2.0", "unlicense", "zlib", "pddl", "odc-by", "cdla-permissive-2.0", "ncsa",
}

STOP_REASONS = {
    "max_steps": "it spent its step budget",
    "early_stopping": "validation loss stopped improving (early stopping)",
    "max_seconds": "the wall-clock guard fired before the step budget was spent: the model is the best validation so far",
}


def plot_loss_curves(history: list[dict[str, Any]], path: Path, stage: str) -> Path | None:
    """Training and validation loss per validation step, the best step marked and the final gap drawn."""
    if not history:
        return None
    steps = [r["step"] for r in history]
    train = [r["train_loss"] for r in history]
    val = [r["val_loss"] for r in history]
    best = min(range(len(val)), key=val.__getitem__)
    fig, ax = new_figure()
    ax.plot(steps, train, label="train", color="tab:blue")
    ax.plot(steps, val, label="validation", color="tab:orange")
    ax.axvline(steps[best], color="tab:green", linestyle="--", linewidth=1)
    ax.annotate(f"best val {val[best]:.3f}\nstep {steps[best]}", (steps[best], val[best]), textcoords="offset points",
                xytext=(-75 if best > len(val) / 2 else 6, 12), fontsize=8, color="tab:green")
    gap = val[-1] - train[-1]
    ax.annotate("", xy=(steps[-1], val[-1]), xytext=(steps[-1], train[-1]), arrowprops={"arrowstyle": "<->", "color": "gray"})
    ax.text(steps[-1], (val[-1] + train[-1]) / 2, f" gap {gap:+.3f}", fontsize=8, color="gray", va="center", ha="right")
    # the verdict in the title: overfitting is validation rising from its best while training falls
    rise = val[-1] - val[best]
    verdict = f"val {rise:+.3f} from its best at the end" if best < len(val) - 1 else "val still falling at the end"
    ax.set_title(f"{stage}: {verdict}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    return save_png(fig, path)


def training_stages(model: ModelRef) -> list[tuple[str, dict[str, Any], Path]]:
    """(stage, result.json, run directory) of every training run in the model's history, oldest first."""
    out = []
    path: str | None = model.path
    while path:
        run_dir = Path(path)
        if run_dir.parent.name == "checkpoints":  # continued from a checkpoint: its run directory holds the record
            run_dir = run_dir.parent.parent
        if not (run_dir / "result.json").is_file():
            break
        result = json.loads((run_dir / "result.json").read_text())
        out.append((run_dir.parent.name, result, run_dir))
        path = result.get("base") or result.get("init_from")
    return out[::-1]


def model_title(config: Any, model: ModelRef, metrics: dict[str, Any], profile: dict[str, Any]) -> str:
    if config.evaluate.card.title:
        return str(config.evaluate.card.title)
    params = metrics["params"]
    size = f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params / 1e3:.0f}K"
    sources = "-".join(list(profile.get("sources", {}))[:2]) or "text"
    kind = "sft" if model.stage == "finetune" else "base"
    return f"lmwright-{size}-{sources}-{kind}"


def model_license(config: Any, licenses: dict[str, int]) -> dict[str, str]:
    """The Hub's license fields: the configured id, or the training data's one licence if the Hub knows it, else other."""
    if config.evaluate.card.license:
        return {"license": config.evaluate.card.license}
    names = [k for k in licenses if k != "unknown"]
    if len(names) == 1 and names[0].lower() in HUB_LICENSES:
        return {"license": names[0].lower()}
    return {"license": "other", "license_name": "training-data-licences", "license_link": f"{DATA_CARD}#licenses-and-consent"}


def hub_metadata(config: Any, title: str, metrics: dict[str, Any], profile: dict[str, Any]) -> str:
    """The YAML header the Hub reads: licence, languages, datasets, tags, and the evaluation as a model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(task_type="text-generation", dataset_type="heldout", dataset_name="held-out split of the training corpus",
                   dataset_split="validation", metric_type=key, metric_name=name, metric_value=metrics[key])
        for key, name in (("val_loss", "loss (nats/token)"), ("val_bpb", "bits per byte"), ("val_ppl", "perplexity"))
        if key in metrics
    ]
    for task, scores in (metrics.get("tasks") or {}).items():
        for metric, value in scores["metrics"].items():
            results.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=task, metric_type=metric,
                                      metric_value=value["value"]))
    data = ModelCardData(
        model_name=title,
        language=list(profile.get("languages", {}))[:10] or ["en"],
        datasets=list(config.evaluate.card.datasets) or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["lmwright", "llama", "text-generation", "small-language-model"],
        eval_results=results or None,
        **model_license(config, profile.get("licenses", {})),
    )
    return data.to_yaml()


def _fmt(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)


def usage_lines(title: str, chat: bool) -> list[str]:
    lines = [
        "## How to use",
        "",
        "With `transformers` (the export is a plain `LlamaForCausalLM` directory):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{title}")  # or the export directory',
        f'model = AutoModelForCausalLM.from_pretrained("{title}")',
        'inputs = tokenizer("Return the ", return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=40, do_sample=True, temperature=0.8, top_k=50)",
        "print(tokenizer.decode(out[0]))",
    ]
    if chat:
        lines += [
            "",
            '# fine-tuned on prompt/response pairs: prompt with its chat template',
            'ids = tokenizer.apply_chat_template([{"role": "user", "content": "def read_text(path):"}],',
            "                                    add_generation_prompt=True, return_tensors=\"pt\")",
        ]
    lines += [
        "```",
        "",
        "With lmwright (no `transformers` needed):",
        "",
        "```bash",
        "lmwright generate 'Return the ' --model EXPORT_DIR --max-new-tokens 40 --seed 1",
    ]
    if chat:
        lines.append("lmwright generate --chat --model EXPORT_DIR --system 'Answer briefly.'")
    return lines + ["```"]


def architecture_lines(result: dict[str, Any], metrics: dict[str, Any], tokens_meta: dict[str, Any]) -> list[str]:
    cfg = result["model_config_json"]
    rows = [
        ("architecture", f"Llama-style decoder (`LlamaForCausalLM`): RMSNorm, rotary positions, SwiGLU, no biases"
                         f"{', tied embeddings' if cfg.get('tie_embeddings') else ''}"),
        ("parameters", f"{metrics['params']:,}"),
        ("layers / heads / KV heads", f"{cfg['n_layer']} / {cfg['n_head']} / {cfg.get('n_kv_head', cfg['n_head'])}"),
        ("hidden size / MLP hidden", f"{cfg['n_embd']} / {cfg.get('mlp_hidden', '')}"),
        ("context length", f"{cfg['block_size']} tokens"),
        ("tokenizer", f"byte-level BPE, {cfg['vocab_size']:,} tokens"
                      + (f", {metrics['bytes_per_token']:.2f} bytes per token on held-out text" if metrics.get("bytes_per_token") else "")
                      + "; special tokens `<|endoftext|>` `<|pad|>` `<|user|>` `<|assistant|>` `<|system|>`"),
    ]
    if tokens_meta.get("train_tokens"):
        rows.append(("training / validation tokens", f"{tokens_meta['train_tokens']:,} / {tokens_meta.get('val_tokens', 0):,}"))
    return ["## Model", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def training_lines(config: Any, stages: list[tuple[str, dict[str, Any], Path]]) -> list[str]:
    """Hyperparameters, budgets and outcome of each stage side by side, then why each stopped."""
    params = {"pretrain": config.pretrain, "finetune": config.finetune.train}
    names = [s for s, _, _ in stages]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: list[Any]) -> None:
        rows.append((label, [_fmt(v) if v is not None else "–" for v in values]))

    p = [params.get(s, config.pretrain) for s in names]
    r = [res for _, res, _ in stages]
    row("objective", ["next token" if s == "pretrain" else "response tokens of prompt/response pairs" for s in names])
    row("initialised from", ["random" if not res.get("base") and not res.get("init_from") else "the stage before" for res in r])
    row("peak / final learning rate", [f"{x.lr:g} / {x.min_lr:g}" for x in p])
    row("warmup steps", [x.warmup_steps for x in p])
    row("batch (sequences x accumulation)", [f"{x.batch_size} x {x.grad_accum}" for x in p])
    row("weight decay / grad clip", [f"{x.weight_decay:g} / {x.grad_clip}" for x in p])
    row("step budget (max_steps, max_epochs)", [f"{x.max_steps:,}, {x.max_epochs or 'no cap'}" for x in p])
    row("wall-clock guard (s)", [x.max_seconds or "none" for x in p])
    row("early stopping (patience x interval)", [f"{x.patience} x {x.eval_interval}" if x.patience else "off" for x in p])
    row("LoRA", [("rank " + str(res["lora"]["rank"])) if res.get("lora") else "no" for res in r])
    row("steps run / planned", [f"{res['steps']:,} / {res['planned_steps']:,}" for res in r])
    row("epochs", [res.get("plan", {}).get("epochs") for res in r])
    row("tokens seen", [res["tokens_seen"] for res in r])
    row("best validation loss (step)", [f"{res['best_val_loss']:.4f} ({res['best_step']})" for res in r])
    row("training FLOPs", [f"{res['flops']:.3g}" for res in r])
    row("tokens/s in training steps, MFU (of a measured matmul peak)", [_speed(res) for res in r])
    row("wall clock (s)", [round(res["seconds"]) for res in r])
    lines = ["## Training", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    lines.append("")
    for (stage, res, _), x in zip(stages, p):
        why = STOP_REASONS.get(res["stopped"], res["stopped"])
        if res["stopped"] == "max_steps" and res["planned_steps"] < x.max_steps:
            why = f"it spent its step budget, capped at {x.max_epochs} epochs ({res['planned_steps']:,} of max_steps {x.max_steps:,})"
        lines.append(f"- **{stage}** stopped because {why}.")
    lines += ["", *[f"![{stage} loss curves](loss_{stage}.png)" for stage, _, _ in stages]]
    return lines


def _speed(result: dict[str, Any]) -> str | None:
    """Throughput and MFU as the loop measured them (the same way on a CPU and a GPU); absent in older results."""
    if not result.get("mfu"):
        return None
    return f"{result['tokens_per_s']:,.0f}, {result['mfu']:.1%} of {result['peak_flops'] / 1e12:.3g} TFLOP/s"


def _ci(metrics: dict[str, Any], key: str) -> str:
    low_high = metrics.get(f"{key}_ci95")
    return f"{low_high[0]:.4f} – {low_high[1]:.4f}" if low_high else ""


def evaluation_lines(metrics: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    has_base = base is not None and base is not metrics
    head = "| metric | this model | 95% interval |" + (" pretrained only |" if has_base else "")
    lines = ["## Evaluation", "", f"Held-out split of the training corpus ({metrics.get('val_tokens_scored', 0):,} tokens in "
             f"{metrics.get('val_blocks', 0):,} blocks; interval: mean ± 1.96 standard errors over blocks). "
             "The unigram baseline is a model that learned only token frequencies.", "",
             head, "|---|---:|---:|" + ("---:|" if has_base else "")]
    for key, label in (("val_loss", "validation loss (nats/token)"), ("val_bpb", "bits per byte"), ("val_ppl", "perplexity"),
                       ("train_loss", "training loss"), ("unigram_loss", "unigram baseline loss"),
                       ("sft_response_loss", "response loss (held-out pairs)")):
        if key in metrics:
            other = f" {_fmt(base.get(key, ''))} |" if has_base and base else ""
            lines.append(f"| {label} | {_fmt(metrics[key])} | {_ci(metrics, key)} |{other}")
    tasks = metrics.get("tasks") or {}
    if tasks:
        lines += ["", "### Benchmarks (lm-evaluation-harness)", "", "| task | metric | score | 95% interval | examples |",
                  "|---|---|---:|---:|---:|"]
        for task, scores in tasks.items():
            for metric, v in scores["metrics"].items():
                interval = f"{v['ci95'][0]:.3f} – {v['ci95'][1]:.3f}" if v.get("ci95") else ""
                lines.append(f"| {task} | {metric} | {v['value']:.3f} | {interval} | {scores.get('examples', '')} |")
    if metrics.get("tasks_skipped"):
        lines += ["", f"Benchmarks not run: {metrics['tasks_skipped']}."]
    fit = metrics.get("fit", {})
    verdict = "overfitting" if metrics.get("overfitting") else "underfitting" if metrics.get("underfitting") else "neither over- nor underfitting"
    lines += ["", f"Fit: **{verdict}**" + (f" ({'; '.join(fit['reasons'])})" if fit.get("reasons") else "")
              + (f"; validation minus training loss at the end: {fit['train_val_gap']:+.4f}." if fit.get("train_val_gap") is not None else ".")]
    return lines


def promotion_lines(metrics: dict[str, Any]) -> list[str]:
    gate = metrics.get("gate", {})
    if gate.get("passed"):
        return ["**Promotion gate: passed.** Every configured threshold holds; this export became the workdir's promoted model."]
    failures = gate.get("failures") or ["no gate result"]
    return ["**Promotion gate: failed; not promoted.** " + "; ".join(failures) + "."]


def samples_lines(metrics: dict[str, Any]) -> list[str]:
    samples = metrics.get("samples") or []
    if not samples:
        return []
    lines = ["## Samples", "", "Fixed seeds, temperature and top-k as configured; unedited:", ""]
    for s in samples:
        text = (s["prompt"] + s["completion"]).replace("```", "'''")
        lines += ["```text", text, "```", ""]
    return lines[:-1]


def data_lines(data: dict[str, Any], tokens_meta: dict[str, Any], withdrawals_markdown: str) -> list[str]:
    profile = data.get("profile", {})
    if not profile:
        return []
    sources = ", ".join(f"{k} ({v:,})" for k, v in profile.get("sources", {}).items())
    licenses = ", ".join(f"{k} ({v:,})" for k, v in profile.get("licenses", {}).items())
    funnel = data.get("funnel", [])
    first = funnel[0]["in"] if funnel else profile.get("documents", 0)
    lines = ["## Training data", "",
             f"{profile.get('documents', 0):,} documents ({profile.get('chars', 0):,} characters) kept of {first:,} read; "
             f"sources: {sources}; licences: {licenses}. Every filter, threshold, drop reason, language, duplicate and the bias "
             f"audit are in the [data card]({DATA_CARD}).", ""]
    dropped = [(row["stage"], row["rejected"], sorted(row["rejected_by_reason"].items(), key=lambda kv: -kv[1])[:2])
               for row in funnel if row["rejected"]]
    if dropped:
        lines.append("Removed on the way: " + "; ".join(f"{stage} {n:,} ({', '.join(f'{k} {v}' for k, v in top)})"
                                                        for stage, n, top in dropped) + ".")
    if tokens_meta.get("mixture"):
        lines += ["", render_mixture_markdown(tokens_meta["mixture"]).strip().replace("## Data mix", "### Training tokens by source")]
    if withdrawals_markdown:  # the refresh layer renders it: the card only places it
        lines += ["", withdrawals_markdown.strip()]
    return lines


def contamination_lines(report: dict[str, Any] | None) -> list[str]:
    from lmwright.tasks.train.decontaminate import render_contamination_markdown

    return render_contamination_markdown(report).strip().splitlines() if report else []


def bias_lines(metrics: dict[str, Any], data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if metrics.get("bias_probes"):
        lines += ["## Bias probes", "", "Counterfactual templates that differ only in the group term; gap = spread of mean "
                  "log-likelihood across groups, valence gap = spread of (negative - positive).", "",
                  "| axis | gap | valence gap |", "|---|---:|---:|"]
        for key, value in sorted(metrics.items()):
            if key.startswith("bias_gap_") and key != "bias_gap_max":
                axis = key.removeprefix("bias_gap_")
                lines.append(f"| {axis} | {value} | {metrics.get(f'bias_valence_gap_{axis}')} |")
    elif metrics.get("bias_probes_skipped"):
        lines += ["## Bias probes", "", f"Not run: {metrics['bias_probes_skipped']}."]
    if data.get("bias"):
        flagged = [f for f in data["bias"].get("filter_fairness", []) if f.get("flagged")]
        lines += ["", f"Data audit: {len(flagged)} filtering stage(s) flagged for removing documents about one group far more "
                  f"than others (see the [data card]({DATA_CARD}#bias))."]
    return lines


def energy_lines(stages: list[tuple[str, dict[str, Any], Path]], blocks: dict[str, Any]) -> list[str]:
    """Energy and CO2 of the run: curation stages, tokenize and training (``flows.train.run_energy``)."""
    if not blocks:
        return []
    mode = next((res.get("energy", {}).get("mode") for _, res, _ in stages if res.get("energy")), None)
    lines = ["## Energy and CO2", "", energy_markdown(energy_table(blocks), mode), ""]
    for stage, res, _ in stages:
        if (res.get("efficiency") or {}).get("tokens_per_joule"):
            lines.append(f"- {stage}: {res['efficiency']['tokens_per_joule']:.3g} training tokens per joule.")
    return lines


def limitations_lines(metrics: dict[str, Any]) -> list[str]:
    """What the samples above show, in words chosen by held-out bits per byte (not by hope)."""
    bpb = metrics.get("val_bpb", float("inf"))
    if bpb > 1.5:
        quality = (f"At {bpb:.2f} bits per byte it has learned the corpus's characters, common words, layout and local word "
                   "order, not meaning: its samples are not coherent text, and it follows no instructions.")
    elif bpb > 1.0:
        quality = (f"At {bpb:.2f} bits per byte it writes locally plausible fragments without coherent content; do not expect "
                   "correct facts, code or answers.")
    else:
        quality = f"At {bpb:.2f} bits per byte it produces fluent-looking but unreliable text: check anything it writes."
    return ["## Limitations", "", quality,
            "It is a small research artefact trained on a small, narrow corpus (see the data card), in the corpus's languages only. "
            "Bias probes cover a handful of templates and say little about behaviour elsewhere. Do not use it for decisions "
            "about people or in any product."]


def render_model_card(
    config: Any,
    model: ModelRef,
    metrics: dict[str, Any],
    data_card: str | None,
    tokens_meta: dict[str, Any] | None = None,
    withdrawals_markdown: str = "",
    energy: dict[str, Any] | None = None,
    base_metrics: dict[str, Any] | None = None,
    decontamination: dict[str, Any] | None = None,
) -> str:
    """README.md of the export; ``base_metrics``: the pretrained model's, when this one is fine-tuned."""
    data = json.loads(Path(data_card).with_suffix(".json").read_text()) if data_card else {}
    profile = data.get("profile", {})
    tokens_meta = tokens_meta or {}
    stages = training_stages(model)
    result = stages[-1][1]
    title = model_title(config, model, metrics, profile)
    what = ("pretrained on next-token prediction, then fine-tuned on prompt/response pairs"
            if model.stage == "finetune" else "pretrained on next-token prediction")
    lines = [
        "---", hub_metadata(config, title, metrics, profile).strip(), "---", "",
        f"# {title}", "",
        f"A {metrics['params']:,}-parameter Llama-style language model {what} with "
        f"lmwright on {profile.get('documents', 0):,} curated documents "
        f"({', '.join(profile.get('sources', {})) or 'see the data card'}). Run `{Path(model.path).name}`.", "",
        *promotion_lines(metrics), "",
        *usage_lines(title, chat=model.stage == "finetune"), "",
        *architecture_lines(result, metrics, tokens_meta), "",
        *training_lines(config, stages), "",
        *evaluation_lines(metrics, base_metrics), "",
        *samples_lines(metrics), "",
        *data_lines(data, tokens_meta, withdrawals_markdown), "",
        *contamination_lines(decontamination), "",
        *bias_lines(metrics, data), "",
        *energy_lines(stages, energy or {}), "",
        *limitations_lines(metrics),
    ]
    text = "\n".join(lines)
    while "\n\n\n" in text:  # an absent section leaves no gap
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def card_figures(model: ModelRef, out_dir: Path) -> list[Path]:
    """The loss curves of every training stage of the model, as loss_<stage>.png in ``out_dir``."""
    paths = []
    for stage, _, run_dir in training_stages(model):
        records = run_dir / "metrics.jsonl"  # one validation per line, written by the training loop
        history = [json.loads(line) for line in records.read_text().splitlines() if line] if records.is_file() else []
        path = plot_loss_curves(history, out_dir / f"loss_{stage}.png", stage)
        if path:
            paths.append(path)
    return paths
