"""Supervised fine-tuning data: prompt/response pairs -> fixed-length token rows with loss masks.

Pairs come from JSONL files (configurable field names; ``instances`` lists as in
self-instruct are expanded) or from ``builtin:pydocs-sft``: a function's signature and
the summary of its docstring, for every documented public function of the standard
library, so fine-tuning needs no download.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sysconfig
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from lmwright.data_quality import ValidationSettings, validate_summary
from lmwright.data_quality.sft import sft_suite
from lmwright.models.tokenizer import SpecialTokens, load_tokenizer, special_token_ids, vocab_size_of
from lmwright.tasks.core.files import atomic_write_array, write_json
from lmwright.tasks.core.ref import Ref
from lmwright.tasks.curate.sources import open_binary, pydocs_files
from lmwright.tasks.core.stage import StageWork, plan_stage, stage_step, stage_task
from lmwright.tasks.train.token_dataset import TokenDatasetRef, assign_split

VERSION = "1"
BUILTIN_SFT = "builtin:pydocs-sft"


class SftDataParams(BaseModel):
    """Where fine-tuning pairs come from and how they are split."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=lambda: [BUILTIN_SFT], description="JSONL files of pairs, or builtin:pydocs-sft.")
    prompt_field: str = Field("prompt", description="JSONL field with the prompt (also tried: instruction, question).")
    response_field: str = Field("response", description="JSONL field with the response (also tried: output, answer).")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of pairs held out (by hash of the pair) for evaluation.")
    max_pairs: int | None = Field(None, ge=1, description="Use at most this many pairs (deterministic: the first ones).")


PROMPT_FALLBACKS = ("prompt", "instruction", "question")
RESPONSE_FALLBACKS = ("response", "output", "answer")


def builtin_pairs() -> Iterator[tuple[str, str, str]]:
    """(id, prompt, response): 'What does `mod.func(sig)` do?' -> the docstring's first paragraph."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for rel in pydocs_files("stdlib"):
        try:
            tree = ast.parse((root / rel).read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            summary = doc.strip().split("\n\n")[0].strip()
            if len(summary.split()) < 5:
                continue
            signature = f"{module}.{node.name}({ast.unparse(node.args)})"
            yield f"{module}.{node.name}", f"What does `{signature}` do?", summary


def read_pairs(source: str, prompt_field: str, response_field: str) -> Iterator[tuple[str, str, str]]:
    """(id, prompt, response) from a JSONL file; lines without both fields are skipped and counted by the caller."""
    if source == BUILTIN_SFT:
        yield from builtin_pairs()
        return
    with open_binary(source) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            prompt = _field(obj, prompt_field, PROMPT_FALLBACKS)
            response = _field(obj, response_field, RESPONSE_FALLBACKS)
            if isinstance(obj.get("instances"), list):  # self-instruct: one instruction, several instances
                for k, inst in enumerate(obj["instances"]):
                    extra = inst.get("input") or ""
                    out = inst.get("output")
                    if prompt and isinstance(out, str) and out:
                        yield f"{source}#L{line_no}.{k}", f"{prompt}\n{extra}".strip(), out
            elif isinstance(prompt, str) and isinstance(response, str) and prompt and response:
                yield f"{source}#L{line_no}", prompt, response
            elif isinstance(response, list) and response and isinstance(prompt, str):  # NQ-open: list of answers
                yield f"{source}#L{line_no}", prompt, str(response[0])


def _field(obj: dict, name: str, fallbacks: tuple[str, ...]) -> object:
    for key in (name, *fallbacks):
        if key in obj:
            return obj[key]
    return None


def encode_sft(
    tokenizer: Tokenizer,
    pairs: Iterable[tuple[str, str] | Mapping[str, str]],
    block_size: int,
    special: SpecialTokens | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode prompt/response pairs with the chat template, masking the loss to the response.

    Template: ``<|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|endoftext|>``.

    Returns ``ids`` (int64) and ``loss_mask`` (uint8), both ``(len(pairs), block_size)``.
    ``loss_mask[i, t] == 1`` exactly when token ``ids[i, t]`` is a response token or the final
    end-of-text: the mask is aligned with the *token*, so for next-token training with
    ``x = ids[:, :-1]`` and ``y = ids[:, 1:]`` use ``loss_mask[:, 1:]`` as the target mask.
    Template and response are encoded separately (markers by id, never parsed from text),
    so the mask boundary is exact. Examples longer than ``block_size`` are cut on the right
    (the response tail, possibly its end-of-text, is lost); shorter ones are padded with
    ``<|pad|>`` under mask 0. Use ``load_tokenizer`` so that marker strings inside a prompt
    or response stay plain text.
    """
    special = special or SpecialTokens()
    sid = special_token_ids(tokenizer, special)

    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids if text else []

    rows_ids, rows_mask = [], []
    for pair in pairs:
        prompt, response = (pair["prompt"], pair["response"]) if isinstance(pair, Mapping) else pair
        head = [sid["user"], *enc("\n" + prompt + "\n"), sid["assistant"], *enc("\n")]
        tail = [*enc(response), sid["eot"]]
        ids = (head + tail)[:block_size]
        mask = ([0] * len(head) + [1] * len(tail))[:block_size]
        pad = block_size - len(ids)
        rows_ids.append(ids + [sid["pad"]] * pad)
        rows_mask.append(mask + [0] * pad)
    if not rows_ids:
        return np.zeros((0, block_size), np.int64), np.zeros((0, block_size), np.uint8)
    return np.array(rows_ids, dtype=np.int64), np.array(rows_mask, dtype=np.uint8)


def sft_summary(split: str, ids: np.ndarray, mask: np.ndarray, tokenizer: Tokenizer,
                special: SpecialTokens | None = None) -> pl.DataFrame:
    """One row per example of ``encode_sft``'s (ids, loss_mask): what the sft suite checks.

    The prompt's end is found in the ids themselves (the assistant marker and the newline after
    it), independently of the mask: ``masked_prompt_tokens`` counts loss on the prompt or the
    markers, ``target_tokens`` the loss-carrying tokens among the targets (``mask[:, 1:]``), and
    ``prompt_fits`` says whether any response token fits the block at all.
    """
    sid = special_token_ids(tokenizer, special or SpecialTokens())
    rows, width = ids.shape
    block = width - 1  # targets are positions 1..block
    is_marker = ids == sid["assistant"]
    found = is_marker.any(axis=1)
    head = np.where(found, is_marker.argmax(axis=1) + 1 + len(tokenizer.encode("\n", add_special_tokens=False).ids), width)
    in_head = np.arange(width)[None, :] < head[:, None]
    return pl.DataFrame({
        "example": [f"{split}#{i}" for i in range(rows)],
        "target_tokens": mask[:, 1:].sum(axis=1).astype(np.int64),
        "prompt_fits": (head <= block).astype(np.int64),
        "masked_prompt_tokens": (mask.astype(bool) & in_head).sum(axis=1).astype(np.int64),
        "masked_pad_tokens": (mask.astype(bool) & (ids == sid["pad"])).sum(axis=1).astype(np.int64),
        "mask_max": (mask.max(axis=1) if width else np.zeros(rows)).astype(np.int64),
        "max_id": (ids.max(axis=1) if width else np.zeros(rows)).astype(np.int64),
        "vocab_size": np.full(rows, vocab_size_of(tokenizer), dtype=np.int64),
    }, schema={"example": pl.String, **{c: pl.Int64 for c in (
        "target_tokens", "prompt_fits", "masked_prompt_tokens", "masked_pad_tokens", "mask_max", "max_id", "vocab_size")}})


class SftDatasetRef(Ref):
    """Fine-tuning pairs encoded with the chat template: ids and loss masks per split, meta.json."""

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        d = Path(self.path)
        return np.load(d / f"{split}_ids.npy"), np.load(d / f"{split}_mask.npy")

    def meta(self) -> dict:
        return json.loads((Path(self.path) / "meta.json").read_text())


def sft_data_of(work: StageWork) -> SftDatasetRef:
    return SftDatasetRef.at(work.out_dir)


@stage_task(task_run_name="sft-data")
@stage_step(read=sft_data_of, metered=False)
def build_sft_data(
    work: StageWork, tokens: TokenDatasetRef, params: SftDataParams, block_size: int, validation: ValidationSettings
) -> dict[str, Any]:
    """Encode pairs with the chat template into (rows, block+1) ids and loss masks, split by pair hash, validate."""
    out = Path(work.out_dir)
    start = time.perf_counter()
    pairs = []
    for source in params.sources:
        for pair in read_pairs(source, params.prompt_field, params.response_field):
            pairs.append(pair)
            if params.max_pairs and len(pairs) >= params.max_pairs:
                break
    if not pairs:
        raise ValueError(f"no prompt/response pairs found in {params.sources}")
    split = assign_split([p[0] for p in pairs], params.val_fraction, 0)
    tok = load_tokenizer(Path(tokens.path) / "tokenizer.json")
    meta = {"pairs": len(pairs), "block_size": block_size, "sources": params.sources}
    summaries = []
    for name in ("train", "val"):
        chosen = [(p, r) for (_, p, r), s in zip(pairs, split) if s == name]
        ids, mask = encode_sft(tok, chosen, block_size + 1)
        summaries.append(sft_summary(name, ids, mask, tok))
        atomic_write_array(out / f"{name}_ids.npy", ids.astype(np.int32))
        atomic_write_array(out / f"{name}_mask.npy", mask)
        meta[f"{name}_pairs"] = len(chosen)
        meta[f"{name}_response_tokens"] = int(mask[:, 1:].sum())
        meta[f"{name}_truncated"] = int((mask[:, -1] == 1).sum())
    summary = pl.concat(summaries)
    unfit = summary.filter(pl.col("prompt_fits") == 0)["example"].to_list()
    notes = [f"{len(unfit)} example(s) whose prompt fills the block teach nothing, e.g. {unfit[:3]}"] if unfit else []
    validate_summary("sft", sft_suite(), summary, validation, "examples", notes=notes, index_column="example")
    meta["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out / "meta.json", meta)
    return {"stage": "sft", "fingerprint": work.fingerprint, "meta": meta}


def run_sft_data(
    workdir: str | Path, tokens: TokenDatasetRef, params: SftDataParams, block_size: int, validation: ValidationSettings
) -> SftDatasetRef:
    inputs = [tokens.fingerprint, str(block_size), *[_source_stamp(s) for s in params.sources]]
    work = plan_stage(workdir, "sft", VERSION, params, inputs)
    return build_sft_data(work, tokens, params, block_size, validation)


def _source_stamp(source: str) -> str:
    if source == BUILTIN_SFT:
        return hashlib.sha256(sysconfig.get_paths()["stdlib"].encode()).hexdigest()
    p = Path(source)
    return f"{source}|{p.stat().st_size}|{p.stat().st_mtime_ns}" if p.exists() else source
