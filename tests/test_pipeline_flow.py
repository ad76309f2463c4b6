"""The whole pipeline under Prefect: curate -> tokenize -> pretrain -> finetune -> evaluate -> export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmwright.flows.config import PipelineConfig, load_config
from lmwright.flows.pipeline import pipeline
from tests.prefect_states import all_task_states, by_stage

pytestmark = pytest.mark.usefixtures("prefect_harness")


def small_config(workdir: Path, shared_data: Path, *extra: str) -> PipelineConfig:
    book = shared_data / "gutenberg" / "pg1342_pride_and_prejudice.txt"
    pairs = shared_data / "instructions" / "gsm8k_train.jsonl"
    return load_config(
        PipelineConfig,
        "tiny",
        [
            f"ingest.sources=[{book}]",
            "ingest.text_split=paragraph",
            "quality.gopher_quality.min_doc_words=20",
            "quality.c4.min_num_sentences=1",
            "tokenize.vocab_size=512",
            "pretrain.model.overrides={n_layer: 2, n_embd: 64, n_head: 2, block_size: 64}",
            "pretrain.max_steps=30",
            "pretrain.eval_interval=10",
            "pretrain.batch_size=8",
            f"finetune.data.sources=[{pairs}]",
            "finetune.data.max_pairs=300",
            "finetune.train.max_steps=10",
            "finetune.train.eval_interval=5",
            "finetune.lora={rank: 4}",
            "evaluate.max_tokens=5000",
            "evaluate.gate.min_gain_over_unigram=null",
            "evaluate.gate.max_val_bpb=100",
            *extra,
        ],
        workdir=str(workdir),
    )


def test_pipeline_end_to_end_then_fully_cached(tmp_path: Path, shared_data: Path) -> None:
    config = small_config(tmp_path / "w", shared_data)
    state = pipeline(config, return_state=True)
    result = state.result()
    ev = result.evaluation
    metrics = json.loads((Path(ev.report) / "metrics.json").read_text())
    for key in ("val_loss", "val_ppl", "val_bpb", "sft_response_loss", "unigram_loss"):
        assert metrics[key] > 0, key
    assert metrics["val_ppl"] == pytest.approx(torch.tensor(metrics["val_loss"]).exp().item(), rel=1e-3)
    assert len(metrics["samples"]) == 3
    assert ev.promoted and json.loads((tmp_path / "w" / "promoted.json").read_text())["export"] == ev.export
    hf = Path(ev.export)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (hf / name).is_file(), name
    assert "## Evaluation" in (hf / "README.md").read_text()
    assert (result.models.pretrained.dir / "loss.png").stat().st_size > 1000

    # energy and CO2 are present and positive for every stage, tokenize and both training runs included
    work = tmp_path / "w"
    blocks = {p.parent.parent.name: json.loads(p.read_text()).get("energy") for p in work.glob("datasets/*/*/stats.json")}
    blocks |= {p.parent.parent.name: json.loads(p.read_text()).get("energy") for p in work.glob("models/*/*/result.json")}
    assert {"ingest", "license", "quality", "dedup", "tokenize", "pretrain", "finetune"} <= set(blocks)
    for stage, energy in blocks.items():
        if stage in ("card", "sft"):  # the card reads stats; SFT pairs are formatted, not measured
            continue
        assert energy and energy["duration_s"] > 0 and energy["energy_kwh"] > 0 and energy["co2_kg"] > 0, (stage, energy)
    assert "| tokenize |" in (hf / "README.md").read_text() and "| pretrain |" in (hf / "README.md").read_text()

    # training planned, validated its final weights, and its progress artifact ended at the real end
    pre = json.loads((result.models.pretrained.dir / "result.json").read_text())
    assert pre["plan"]["steps"] == pre["steps"] == 30 and pre["stopped"] == "max_steps"
    history = (result.models.pretrained.dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["step"] == 30
    assert progress_artifact("pretrain-progress") == 100.0

    # the fine-tuned model starts from the pretrained weights (transfer), with LoRA merged away
    ft = result.models.finetuned
    assert not any("lora" in k for k in ft.load().state_dict())

    # an immediate rerun: every task of every subflow is a cache hit
    again = pipeline(config, return_state=True)
    assert again.result().evaluation.export == ev.export
    states = all_task_states(again.state_details.flow_run_id, subflows=3)
    assert {"ingest", "tokenize", "pretrain", "sft", "finetune", "evaluate", "export"} <= set(by_stage(states))
    subflow_runs = {"curate-0", "train-0", "evaluate-0"}  # the parent's records of its subflows
    # promote and publish_energy report on every run by design; everything else must be a cache hit
    reporting = ("promote", "publish_energy")
    not_cached = {k: v for k, v in states.items() if v != "Cached" and k not in subflow_runs and not k.startswith(reporting)}
    assert not not_cached, not_cached
    # one task run per finished stage, none per shard: curate 10 (9 stages + card), decontaminate, tokenize 2, pretrain,
    # sft, finetune, 2 evaluations, export, promote, publish_energy (benchmarks/cached_rerun.py counts the same for `lmwright run`)
    assert len(set(states) - subflow_runs) <= 21, sorted(states)


def progress_artifact(key: str) -> float:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key}"
    return float(found[-1].data)


def test_export_loads_in_transformers_with_the_same_logits(tmp_path: Path, shared_data: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = small_config(tmp_path / "w", shared_data, "finetune.enabled=false")
    result = pipeline(config)
    ours = result.models.pretrained.load()
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.evaluation.export).eval()
    tok = transformers.AutoTokenizer.from_pretrained(result.evaluation.export)
    ids = torch.tensor([tok("It is a truth universally acknowledged")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(ours(ids)[0], hf(ids).logits, atol=1e-4)


def test_one_document_still_gets_a_validation_split(tmp_path: Path, shared_data: Path) -> None:
    """README's `lmwright pretrain --source notes.txt`: one document left the document split's val empty
    (ValueError: high <= 0 after three retries). It validates on the tail of its training tokens now."""
    notes = tmp_path / "notes.txt"
    notes.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:40_000])
    config = load_config(
        PipelineConfig,
        "tiny",
        [
            f"ingest.sources=[{notes}]",
            "tokenize.vocab_size=512",
            "pretrain.model.overrides={n_layer: 1, n_embd: 32, n_head: 2, block_size: 64}",
            "pretrain.max_steps=6",
            "pretrain.eval_interval=3",
            "pretrain.batch_size=4",
        ],
        workdir=str(tmp_path / "w"),
    )
    result = pipeline(config, until="pretrain")
    tokens = result.models.tokens
    assert sorted(tokens.meta()["docs"].values()) == [0, 1]  # the one document is on one side
    train, val = tokens.heldout_split(block_size=64)
    assert len(val) >= 4 * 65 and len(train) + len(val) == len(tokens.train_tokens()) + len(tokens.val_tokens())
    pre = json.loads((result.models.pretrained.dir / "result.json").read_text())
    assert pre["steps"] == 6 and any("too few documents" in w for w in pre["plan"]["warnings"])
