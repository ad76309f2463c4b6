"""Sampling from a trained model: a training run's directory, an HF export, or a workdir's promoted model.

Runs without ``transformers``: an export is read back into our GPT (``models/export.py``
only renamed tensors, so this renames them back), and chat prompts are built from the
export's own Jinja chat template.

    model = load_generator(Path("W/exports/export/<fp>/hf"))
    for piece in stream(model, model.encode_prompt("def "), Sampling(max_new_tokens=50)):
        print(piece, end="")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from lmwright.models.export import LAYER_NAMES
from lmwright.models.gpt import GPT, GPTConfig
from lmwright.models.tokenizer import CHAT_TEMPLATE, SpecialTokens, load_tokenizer
from lmwright.tasks.core.errors import UserError

PROMOTED = "promoted.json"  # the pointer flows/train.py's promote() writes into a workdir


class ModelNotFound(UserError, FileNotFoundError):
    """A path that holds no model we can load; the message says what was expected."""


class ChatTemplateError(UserError, ValueError):
    """Messages the chat template refuses (a role it has no marker for), in the template's own words."""


def _raise_template_error(message: str) -> None:
    """``raise_exception`` inside a chat template, as transformers provides it."""
    raise ChatTemplateError(f"chat template: {message}")


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token."""

    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50
    seed: int = 1337


@dataclass
class Generator:
    """A model ready to sample: weights, tokenizer, chat template, and where it came from."""

    model: GPT
    tokenizer: Tokenizer  # from load_tokenizer: marker strings in user text stay plain text
    chat_template: str
    eos_id: int | None
    source: Path

    def encode_prompt(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, self.chat_template, messages)


def load_generator(path: Path, device: str = "cpu") -> Generator:
    """A training run's directory, an HF export directory, or a workdir (its promoted model)."""
    if (path / PROMOTED).is_file():
        promoted = json.loads((path / PROMOTED).read_text())["export"]
        if not Path(promoted).is_dir():
            raise ModelNotFound(f"{path / PROMOTED} points to {promoted}, which is gone")
        return load_generator(Path(promoted), device)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        kind, load, needed = "export", _load_export, ["tokenizer.json"]
    elif (path / "checkpoints" / "best").is_dir():
        kind, load, needed = "training run", _load_training_run, ["tokenizer.json", "checkpoints/best/state.json"]
    else:
        raise ModelNotFound(
            f"{path}: no model here; give a training run (W/models/<stage>/<fingerprint>), "
            f"an export (.../hf) or a workdir with a promoted model ({PROMOTED})"
        )
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise ModelNotFound(f"{path}: an incomplete {kind}, {', '.join(missing)} is missing")
    try:
        return load(path, device)
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # a file there, but not one we wrote
        raise ModelNotFound(f"{path}: not a loadable lmwright {kind} ({type(e).__name__}: {e})") from None


def _load_training_run(path: Path, device: str) -> Generator:
    from lmwright.models.run import ModelRef  # noqa: PLC0415 - one of two sources a model loads from

    path = path.resolve()  # W/latest/<stage> is a link to the fingerprint directory
    ref = ModelRef.at(path)
    tokenizer = load_tokenizer(ref.tokenizer_path)
    return Generator(ref.load(device), tokenizer, CHAT_TEMPLATE, tokenizer.token_to_id(SpecialTokens().eot), path)


def gpt_config_from_llama(cfg: dict) -> GPTConfig:
    """Invert ``models.export.llama_config``; a Llama we cannot represent is refused, not approximated."""
    if cfg.get("model_type") != "llama":
        raise ValueError(f"model_type {cfg.get('model_type')!r} is not llama: not an lmwright export")
    n_embd, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    if cfg.get("head_dim", n_embd // n_head) != n_embd // n_head:
        raise ValueError(f"head_dim {cfg['head_dim']} != hidden_size / num_attention_heads: not an lmwright export")
    rope = cfg.get("rope_parameters") or {}
    return GPTConfig(
        vocab_size=cfg["vocab_size"],
        block_size=cfg["max_position_embeddings"],
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads", n_head),
        n_embd=n_embd,
        mlp_hidden=cfg["intermediate_size"],
        dropout=0.0,
        tie_embeddings=cfg.get("tie_word_embeddings", True),
        rope_theta=cfg.get("rope_theta", rope.get("rope_theta", 10000.0)),
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        init_std=cfg.get("initializer_range", 0.02),
    )


def our_state_dict(hf: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """HF Llama tensor names back to ours (the inverse of ``models.export.hf_state_dict``)."""
    sd = {"tok_emb.weight": hf.pop("model.embed_tokens.weight"), "norm.weight": hf.pop("model.norm.weight")}
    for i in range(config.n_layer):
        for ours, theirs in LAYER_NAMES.items():
            sd[f"blocks.{i}.{ours}"] = hf.pop(f"model.layers.{i}.{theirs}")
    sd["lm_head.weight"] = sd["tok_emb.weight"] if config.tie_embeddings else hf.pop("lm_head.weight")
    hf.pop("lm_head.weight", None)  # a tied head saved anyway by another tool: the embedding wins, as in HF
    if hf:
        raise ValueError(f"tensors with no place in our GPT: {sorted(hf)[:5]}")
    return sd


def _load_export(path: Path, device: str) -> Generator:
    config = gpt_config_from_llama(json.loads((path / "config.json").read_text()))
    model = GPT(config)
    model.load_state_dict(our_state_dict(load_file(str(path / "model.safetensors")), config))
    tok_cfg_path = path / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    tokenizer = load_tokenizer(path / "tokenizer.json")
    template = tok_cfg.get("chat_template")
    if not template:

        template = CHAT_TEMPLATE
    eos = tokenizer.token_to_id(tok_cfg.get("eos_token") or SpecialTokens().eot)
    return Generator(model.to(device).eval(), tokenizer, template, eos, path)


def chat_prompt_ids(tokenizer: Tokenizer, template: str, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` under a Jinja chat template, ending with the assistant's opening.

    The template is rendered with placeholders for the contents, so its markers become special
    token ids while a marker typed by the user stays plain text (as in ``encode_sft``); text
    between markers is encoded in one piece, which gives exactly the ids fine-tuning saw.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # a template from a file must not run code

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders it
    env.globals["raise_exception"] = _raise_template_error
    slots = [{"role": m["role"], "content": f"\x00{i}\x00"} for i, m in enumerate(messages)]
    rendered = env.from_string(template).render(messages=slots, add_generation_prompt=True)
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    marker = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    ids: list[int] = []
    text = ""
    for k, piece in enumerate(re.split(r"\x00(\d+)\x00", rendered)):
        if k % 2:  # a placeholder: the message content, never parsed for markers
            text += messages[int(piece)]["content"]
            continue
        end = 0
        for m in marker.finditer(piece):
            text += piece[end : m.start()]
            ids += tokenizer.encode(text, add_special_tokens=False).ids if text else []
            ids.append(specials[m.group()])
            text, end = "", m.end()
        text += piece[end:]
    return ids + (tokenizer.encode(text, add_special_tokens=False).ids if text else [])


def stream(gen: Generator, prompt_ids: list[int], sampling: Sampling) -> Iterator[str]:
    """Sample up to ``max_new_tokens`` after ``prompt_ids``, yielding text as it becomes printable.

    Stops at end-of-text. One token per ``GPT.generate`` call with the same seeded generator
    draws exactly what one long call would.
    """
    device = next(gen.model.parameters()).device
    rng = torch.Generator(device=device).manual_seed(sampling.seed)
    # an empty prompt starts after an end-of-text, like a new document
    idx = torch.tensor([prompt_ids or [gen.eos_id or 0]], dtype=torch.long, device=device)
    new_ids: list[int] = []
    shown = ""
    for _ in range(sampling.max_new_tokens):
        idx = gen.model.generate(idx, 1, temperature=sampling.temperature, top_k=sampling.top_k, generator=rng)
        token = int(idx[0, -1])
        if token == gen.eos_id:
            break
        new_ids.append(token)
        text = gen.tokenizer.decode(new_ids, skip_special_tokens=False)
        if not text.endswith("\ufffd"):  # a multi-byte character cut between tokens: wait for the rest
            yield text[len(shown) :]
            shown = text
    text = gen.tokenizer.decode(new_ids, skip_special_tokens=False)
    if len(text) > len(shown):
        yield text[len(shown) :]


__all__ = ["ChatTemplateError", "Generator", "ModelNotFound", "Sampling", "chat_prompt_ids", "load_generator", "stream"]
