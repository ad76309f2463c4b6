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
from typing import Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lmwright.tasks.core.files import atomic_write_array, write_json
from lmwright.tasks.curate.sources import _pydocs_files, open_binary
from lmwright.tasks.core.stage import StageWork, plan_stage, stage_task
from lmwright.tasks.train.tokenize import TokenDatasetRef, assign_split, encode_sft, load_tokenizer

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
    for rel in _pydocs_files("stdlib"):
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


class SftDatasetRef(BaseModel):
    path: str
    fingerprint: str

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        d = Path(self.path)
        return np.load(d / f"{split}_ids.npy"), np.load(d / f"{split}_mask.npy")

    def meta(self) -> dict:
        return json.loads((Path(self.path) / "meta.json").read_text())


@stage_task(task_run_name="sft-data")
def build_sft_data(work: StageWork, tokens: TokenDatasetRef, params: SftDataParams, block_size: int) -> SftDatasetRef:
    """Encode pairs with the chat template into (rows, block+1) ids and loss masks, split by pair hash."""
    out = Path(work.out_dir)
    if work.done():
        return SftDatasetRef(path=str(out), fingerprint=work.fingerprint)
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
    for name in ("train", "val"):
        chosen = [(p, r) for (_, p, r), s in zip(pairs, split) if s == name]
        ids, mask = encode_sft(tok, chosen, block_size + 1)
        atomic_write_array(out / f"{name}_ids.npy", ids.astype(np.int32))
        atomic_write_array(out / f"{name}_mask.npy", mask)
        meta[f"{name}_pairs"] = len(chosen)
        meta[f"{name}_response_tokens"] = int(mask[:, 1:].sum())
        meta[f"{name}_truncated"] = int((mask[:, -1] == 1).sum())
    meta["seconds"] = round(time.perf_counter() - start, 3)
    write_json(out / "meta.json", meta)
    write_json(work.marker, {"stage": "sft", "fingerprint": work.fingerprint, "meta": meta})
    return SftDatasetRef(path=str(out), fingerprint=work.fingerprint)


def run_sft_data(workdir: str | Path, tokens: TokenDatasetRef, params: SftDataParams, block_size: int) -> SftDatasetRef:
    inputs = [tokens.fingerprint, str(block_size), *[_source_stamp(s) for s in params.sources]]
    work = plan_stage(workdir, "sft", VERSION, params, inputs)
    return build_sft_data(work, tokens, params, block_size)


def _source_stamp(source: str) -> str:
    if source == BUILTIN_SFT:
        return hashlib.sha256(sysconfig.get_paths()["stdlib"].encode()).hexdigest()
    p = Path(source)
    return f"{source}|{p.stat().st_size}|{p.stat().st_mtime_ns}" if p.exists() else source
