"""The model card: Hub metadata that parses, every training stage, honest limitations, loss curves as pictures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmwright.flows.config import PipelineConfig
from lmwright.models.run import ModelRef
from lmwright.tasks.train.model_card import DATA_CARD, card_figures, render_model_card

MIXTURE = {"tokens_before": 1000, "docs_before": 10, "tokens_after": 1000, "docs_after": 10, "docs_left_out": 0,
           "sources": {"notes": {"tokens_before": 1000, "share_before": 1.0, "tokens_after": 1000, "share_after": 1.0}}}
MODEL_CONFIG = {"vocab_size": 300, "block_size": 64, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "n_embd": 32, "mlp_hidden": 96,
                "tie_embeddings": True}


def training_run(root: Path, stage: str, history: list[tuple[float, float]], **extra: Any) -> str:
    """A finished run's records as the training loop writes them: result.json and one validation per line."""
    run = root / "models" / stage / f"fp-{stage}"
    run.mkdir(parents=True)
    lines = [json.dumps({"step": 10 * i, "train_loss": t, "val_loss": v, "lr": 1e-3, "seconds": i}) for i, (t, v) in enumerate(history)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    best = min(range(len(history)), key=lambda i: history[i][1])
    result = {"steps": 10 * (len(history) - 1), "planned_steps": 10 * (len(history) - 1), "best_val_loss": history[best][1],
              "best_step": 10 * best, "stopped": "max_steps", "tokens_seen": 4096, "seconds": 3.0, "flops": 1e9,
              "model_config_json": MODEL_CONFIG, "plan": {"epochs": 1.5}, **extra}
    (run / "result.json").write_text(json.dumps(result))
    return str(run)


def data_card(root: Path) -> str:
    card = {"profile": {"documents": 10, "chars": 5000, "sources": {"notes": 10}, "licenses": {"MIT": 10}, "languages": {"en": 10}},
            "funnel": [{"stage": "quality", "in": 12, "rejected": 2, "rejected_by_reason": {"gopher_short_doc": 2}}]}
    (root / "card.json").write_text(json.dumps(card))
    (root / "card.md").write_text("# Data card\n")
    return str(root / "card.md")


def metrics(val_bpb: float) -> dict[str, Any]:
    return {"params": 12_345, "val_loss": 3.1, "val_loss_ci95": [3.0, 3.2], "val_bpb": val_bpb, "val_bpb_ci95": [val_bpb - 0.1, val_bpb + 0.1],
            "val_ppl": 22.2, "train_loss": 2.9, "unigram_loss": 5.0, "bytes_per_token": 2.0, "val_tokens_scored": 640, "val_blocks": 10,
            "fit": {"reasons": [], "train_val_gap": 0.2}, "gate": {"passed": False, "failures": ["val_bpb 2.5 > max_val_bpb 2"]},
            "samples": [{"prompt": "The ", "completion": "qx zz,, the the"}],
            "tasks": {"lmwright_word_order": {"metrics": {"acc": {"value": 0.9, "stderr": 0.05, "ci95": [0.74, 0.97]}}, "examples": 30}}}


@pytest.fixture()
def finetuned(tmp_path: Path) -> tuple[ModelRef, str]:
    pre = training_run(tmp_path, "pretrain", [(5.0, 5.1), (4.0, 4.2), (3.5, 3.9)])
    ft = training_run(tmp_path, "finetune", [(3.2, 3.3), (3.0, 3.1)], base=pre)
    return ModelRef("finetune", "fp-finetune", ft), data_card(tmp_path)


def render(model: ModelRef, card: str, bpb: float = 2.5) -> str:
    config = PipelineConfig()
    return render_model_card(config, model, metrics(bpb), card, {"mixture": MIXTURE, "train_tokens": 900, "val_tokens": 100})


def test_the_card_of_a_finetuned_model_shows_both_training_stages(finetuned: tuple[ModelRef, str]) -> None:
    text = render(*finetuned)
    assert "| | pretrain | finetune |" in text
    assert "| peak / final learning rate | 0.002 / 0.0002 | 0.0005 / 5e-05 |" in text  # each stage's own hyperparameters
    assert "- **pretrain** stopped because" in text and "- **finetune** stopped because" in text
    assert "![pretrain loss curves](loss_pretrain.png)" in text


def test_training_tokens_by_source_is_a_heading_with_its_table_under_it(finetuned: tuple[ModelRef, str]) -> None:
    text = render(*finetuned)
    section = text.split("### Training tokens by source", 1)[1].split("\n## ", 1)[0]
    assert "| notes | 1,000 |" in section and "## Data mix" not in text


def test_the_hub_reads_the_metadata_header(finetuned: tuple[ModelRef, str]) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(render(*finetuned))
    assert card.data.license == "mit" and card.data.language == ["en"] and "lmwright" in card.data.tags
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} >= {("val_loss", 3.1), ("val_bpb", 2.5), ("acc", 0.9)}
    assert card.data.model_name == "lmwright-12K-notes-sft"
    assert card.text.lstrip().startswith("# lmwright-12K-notes-sft")
    assert f"]({DATA_CARD})" in card.text


def test_promotion_status_and_intervals_are_stated(finetuned: tuple[ModelRef, str]) -> None:
    text = render(*finetuned)
    assert "**Promotion gate: failed; not promoted.** val_bpb 2.5 > max_val_bpb 2." in text
    assert "| validation loss (nats/token) | 3.1 | 3.0000 – 3.2000 |" in text
    assert "| lmwright_word_order | acc | 0.900 | 0.740 – 0.970 | 30 |" in text


@pytest.mark.parametrize("bpb, says, never", [(2.5, "not coherent text", "fluent"), (0.8, "fluent-looking but unreliable", "not coherent")])
def test_limitations_follow_the_measured_quality(finetuned: tuple[ModelRef, str], bpb: float, says: str, never: str) -> None:
    limitations = render(*finetuned, bpb=bpb).split("## Limitations", 1)[1]
    assert says in limitations and never not in limitations


def test_loss_curves_of_every_stage_are_pictures(finetuned: tuple[ModelRef, str], tmp_path: Path) -> None:
    paths = card_figures(finetuned[0], tmp_path / "hf")
    assert [p.name for p in paths] == ["loss_pretrain.png", "loss_finetune.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)


def test_heldout_loss_is_the_models_own_loss_and_its_interval_brackets_it() -> None:
    import numpy as np
    import torch

    from lmwright.models.gpt import GPT, GPTConfig
    from lmwright.tasks.train.evaluate import EvalParams, block_losses, heldout_loss, interval95

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)).eval()
    tokens = np.random.default_rng(0).integers(0, 50, size=16 * 12 + 1).astype(np.uint16)
    params = EvalParams(batch_size=5)
    loss, scored = heldout_loss(model, tokens, params)
    x = torch.from_numpy(tokens[:-1].astype(np.int64)).view(12, 16)
    y = torch.from_numpy(tokens[1:].astype(np.int64)).view(12, 16)
    assert loss == pytest.approx(model(x, y)[1].item(), rel=1e-5) and scored == 12 * 16
    low, high = interval95(block_losses(model, tokens, params))
    assert low < loss < high


def test_the_card_states_throughput_and_mfu_as_the_loop_measured_them(tmp_path: Path) -> None:
    pre = training_run(tmp_path, "pretrain", [(5.0, 5.1), (4.0, 4.2)], tokens_per_s=12_345.6, mfu=0.4567, peak_flops=8.9e10)
    card = render(ModelRef("pretrain", "fp-pretrain", pre), data_card(tmp_path))
    assert "| tokens/s in training steps, MFU (of a measured matmul peak) | 12,346, 45.7% of 0.089 TFLOP/s |" in card
