"""Export a GPT to a Hugging Face directory that `transformers` loads as LlamaForCausalLM.

Our GPT makes Llama's choices (RMSNorm, rotate-half rotary, SwiGLU, no biases), so export
is a renaming of tensors: no permutation of q/k rows, no recomputation. transformers is
not needed to export, only to load the result (optional extra `hf`).

    out_dir/
      config.json              LlamaConfig
      model.safetensors        HF parameter names, float32
      generation_config.json
      tokenizer.json           copied as is
      tokenizer_config.json    PreTrainedTokenizerFast, special tokens, model_max_length
      special_tokens_map.json
      README.md                the model card, if given
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from lmwright.models.gpt import GPT, GPTConfig, has_lora
from lmwright.tasks.core.files import atomic_copy, atomic_path, atomic_write_text

# our name -> HF Llama name, per layer ("{i}" is the layer index)
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under HF Llama names, float32, contiguous, on CPU."""
    cfg = model.config
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}

    def put(hf_name: str, ours: str) -> None:
        # clone: tied tensors must be separate storages for safetensors' save_file
        out[hf_name] = sd.pop(ours).detach().to("cpu", torch.float32).contiguous().clone()

    put("model.embed_tokens.weight", "tok_emb.weight")
    for i in range(cfg.n_layer):
        for ours, theirs in LAYER_NAMES.items():
            put(f"model.layers.{i}.{theirs}", f"blocks.{i}.{ours}")
    put("model.norm.weight", "norm.weight")
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight")  # same tensor as the embedding; HF re-ties it on load
    else:
        put("lm_head.weight", "lm_head.weight")
    if sd:
        raise ValueError(f"parameters with no Llama equivalent: {sorted(sd)}")
    return out


def llama_config(
    config: GPTConfig, bos_token_id: int, eos_token_id: int, pad_token_id: int | None
) -> dict[str, Any]:
    """config.json for LlamaForCausalLM (readable by transformers 4.40+ and 5.x)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        # 4.x reads rope_theta; 5.x moved it into rope_parameters (and still accepts both)
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _token_ids(tokenizer_json: Path, tokens: Sequence[str]) -> dict[str, int]:
    from tokenizers import Tokenizer  # a core dependency of the tokenize stage

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = {t: tok.token_to_id(t) for t in tokens}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"special tokens not in {tokenizer_json}: {missing}")
    return ids  # type: ignore[return-value]


def export_hf(
    model: GPT,
    config: GPTConfig | None,
    tokenizer_json_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_card: str | None = None,
    *,
    bos_token: str = "<|endoftext|>",
    eos_token: str = "<|endoftext|>",
    pad_token: str | None = "<|pad|>",
    additional_special_tokens: Sequence[str] = (),
    chat_template: str | None = None,
) -> Path:
    """Write a Hugging Face Llama directory for model into out_dir and return it.

    Special tokens are given as strings (the tokenizer issue's "<|endoftext|>", "<|pad|>",
    chat markers such as "<|user|>", "<|assistant|>" in additional_special_tokens); their ids
    are looked up in tokenizer.json, and a token missing there is an error.
    chat_template (a Jinja string) goes into tokenizer_config.json for apply_chat_template.
    """
    config = config or model.config
    if config != model.config:
        raise ValueError("config does not match model.config")
    if config.qk_norm:
        raise ValueError("cannot export a model with qk_norm=True: Llama has no QK-norm")
    if has_lora(model):
        raise ValueError("model still has LoRA adapters: call models.gpt.merge_lora(model) first")
    tokenizer_json_path = Path(tokenizer_json_path)
    specials = [bos_token, eos_token] + ([pad_token] if pad_token else []) + list(additional_special_tokens)
    ids = _token_ids(tokenizer_json_path, specials)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # config + weights
    cfg = llama_config(config, ids[bos_token], ids[eos_token], ids[pad_token] if pad_token else None)
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(hf_state_dict(model), str(tmp), metadata={"format": "pt"})
    # No max_length: transformers warns on every generate(max_new_tokens=...) when it is set; the
    # context length is config.json's max_position_embeddings.
    gen = {
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "pad_token_id": cfg["pad_token_id"],
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 50,
    }
    atomic_write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")

    # tokenizer
    atomic_copy(tokenizer_json_path, out / "tokenizer.json")
    special_map: dict[str, Any] = {"bos_token": bos_token, "eos_token": eos_token}
    if pad_token:
        special_map["pad_token"] = pad_token
    if additional_special_tokens:
        special_map["additional_special_tokens"] = list(additional_special_tokens)
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.block_size,
        # byte-level BPE decodes exactly; HF's space clean-up would alter text
        "clean_up_tokenization_spaces": False,
        **special_map,
    }
    if chat_template:
        tok_cfg["chat_template"] = chat_template
    atomic_write_text(out / "tokenizer_config.json", json.dumps(tok_cfg, indent=2) + "\n")
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special_map, indent=2) + "\n")

    if model_card:
        atomic_write_text(out / "README.md", model_card)
    return out
