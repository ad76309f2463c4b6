"""A Llama-style decoder-only language model in one readable file.

Reading order: RMSNorm -> rotary embeddings -> attention -> SwiGLU MLP -> Block ->
GPTConfig (+ presets) -> GPT -> LoRA.

Every choice here is the one Hugging Face's `LlamaForCausalLM` makes (RMSNorm, rotary in
the rotate-half convention, SwiGLU, no biases, grouped-query heads), so `models/export.py`
only renames tensors: no permutation, no re-computation, and the exported model gives the
same logits. The one exception is the optional QK-norm, which Llama lacks; a model with it
trains fine but refuses export.

References: nanoGPT (karpathy/nanoGPT model.py), Llama (Touvron et al. 2023),
RoFormer (Su et al. 2021), GLU variants (Shazeer 2020), PaLM appendix B (FLOPs / MFU),
LoRA (Hu et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------- norm


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in float32 even under bf16 autocast, then cast back: exactly what HF
        # LlamaRMSNorm does, so exported logits match.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# --------------------------------------------------------------------------- rotary


def rotary_cos_sin(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (max_len, head_dim) for rotary embeddings, computed like HF Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hs/2,)
    t = torch.arange(max_len, dtype=torch.float32)  # (T,)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    # rotate-half convention: the head dim is split in two halves (not interleaved pairs),
    # so frequency i rotates the pair (x[i], x[i + hs/2]). HF Llama does the same.
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # (..., hs/2) each
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, nh, T, hs); cos/sin: (T, hs) -> x rotated by its position."""
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------- attention


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + causal mask) v for (B, nh, T, hs) tensors.

    SDPA (flash / memory-efficient kernels) everywhere but under bf16 autocast on the CPU, where
    SDPA's CPU flash kernel runs slower than in fp32 (`python benchmarks/cpu_step.py` times both).
    There it is one bf16 baddbmm (scale and causal mask inside the matmul), a softmax that upcasts
    to fp32 inside its kernel, and a bf16 matmul. Same function; the scores are rounded to bf16
    once, which SDPA's CPU kernel does not do: outputs differ from fp32 attention by up to ~2e-2
    (SDPA under bf16 autocast: ~7e-3), gradients alike."""
    if not _cpu_bf16(q):
        # flash / memory-efficient kernels where available; scale is 1/sqrt(hs) by default
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    B, nh, T, hs = q.shape
    with torch.autocast(device_type="cpu", enabled=False):
        q, k, v = (t.to(torch.bfloat16).reshape(B * nh, T, hs) for t in (q, k, v))
        causal = torch.full((T, T), float("-inf"), dtype=torch.bfloat16, device=q.device).triu_(1)
        # scale and mask inside the matmul (one rounding to bf16), the softmax upcast inside its kernel
        scores = torch.baddbmm(causal.expand(B * nh, T, T), q, k.mT, alpha=hs**-0.5)  # (B*nh, T, T)
        weights = scores.softmax(dim=-1, dtype=torch.float32)
        if dropout_p:
            weights = F.dropout(weights, dropout_p)
        return (weights.to(torch.bfloat16) @ v).view(B, nh, T, hs)


def _cpu_bf16(t: torch.Tensor) -> bool:
    """t is on the CPU inside bf16 autocast: the case where attention and rotary take their bf16 paths."""
    return t.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


class Attention(nn.Module):
    """Causal self-attention with rotary positions and optional grouped-query heads."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        C, hs = config.n_embd, config.head_dim
        self.q = nn.Linear(C, self.n_head * hs, bias=False)
        self.k = nn.Linear(C, self.n_kv_head * hs, bias=False)
        self.v = nn.Linear(C, self.n_kv_head * hs, bias=False)
        self.o = nn.Linear(self.n_head * hs, C, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm (OLMo 2, Gemma 3, modded-nanoGPT) keeps attention logits bounded and
        # tolerates higher learning rates; Llama has no such norm, hence export refuses it.
        self.q_norm = RMSNorm(hs, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(hs, config.norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if _cpu_bf16(q):  # rotate in bf16 (q, k are bf16 there); elsewhere in fp32, as HF Llama does under autocast
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.n_kv_head != self.n_head:
            # each kv head serves n_head // n_kv_head query heads, in consecutive blocks
            # (HF's repeat_kv). SDPA's enable_gqa needs torch >= 2.5; we support 2.4.
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, T, hs)
            v = v.repeat_interleave(rep, dim=1)  # (B, nh, T, hs)
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, T, nh*hs)
        return self.resid_dropout(self.o(y))  # (B, T, C)


# --------------------------------------------------------------------------- MLP


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))  # (B, T, C)


# --------------------------------------------------------------------------- block


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        x = x + self.mlp(self.mlp_norm(x))
        return x


# --------------------------------------------------------------------------- config


def llama_mlp_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """Llama's rule: 2/3 of 4*n_embd (SwiGLU has 3 matrices, not 2, so this keeps the
    parameter count of a 4x GELU MLP), rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class GPTConfig:
    """Shape and regularisation of the model. Saved, resolved, inside every checkpoint."""

    vocab_size: int = 4096
    """Number of token ids; set it to the tokenizer's vocabulary size."""
    block_size: int = 256
    """Longest context in tokens (rotary tables are built for this many positions)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Number of query heads; n_embd must be divisible by it."""
    n_kv_head: int | None = None
    """Number of key/value heads (grouped-query attention); None means n_head (plain MHA)."""
    n_embd: int = 256
    """Width of the residual stream."""
    mlp_hidden: int | None = None
    """Inner width of the SwiGLU MLP; None means Llama's rule (8/3 * n_embd, multiple of 64)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and both residual branches (0 for pretraining)."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head (saves vocab*n_embd parameters)."""
    rope_theta: float = 10000.0
    """Base wavelength of the rotary embeddings."""
    norm_eps: float = 1e-5
    """Epsilon of every RMSNorm."""
    qk_norm: bool = False
    """RMSNorm on queries and keys per head. Not in Llama, so export refuses it."""
    init_std: float = 0.02
    """Std of the normal init of embeddings and linear weights (GPT-2's value)."""

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.mlp_hidden is None and isinstance(self.n_embd, int) and self.n_embd > 0:
            self.mlp_hidden = llama_mlp_hidden(self.n_embd)
        problems = []
        ok = set()  # fields that are positive ints, so the relations below can be checked
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
            else:
                ok.add(name)
        if {"n_embd", "n_head"} <= ok:
            if self.n_embd % self.n_head:
                problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            elif self.head_dim % 2:
                problems.append(f"head_dim (n_embd/n_head = {self.head_dim}) must be even for rotary embeddings")
        if {"n_head", "n_kv_head"} <= ok and self.n_head % self.n_kv_head:
            problems.append(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            problems.append(f"rope_theta must be positive, got {self.rope_theta}")
        if self.norm_eps <= 0:
            problems.append(f"norm_eps must be positive, got {self.norm_eps}")
        if self.init_std <= 0:
            problems.append(f"init_std must be positive, got {self.init_std}")
        if problems:
            raise ValueError("invalid GPTConfig:\n  - " + "\n  - ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset with field overrides, e.g. preset("tiny", vocab_size=2048)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]
        # derived fields follow their source unless given: re-derive them on override
        if "n_embd" in overrides and "mlp_hidden" not in overrides:
            overrides["mlp_hidden"] = None
        if "n_head" in overrides and "n_kv_head" not in overrides:
            overrides["n_kv_head"] = None
        return replace(base, **overrides)


# Presets are small named overrides. vocab_size is a placeholder: callers set it to the
# tokenizer's size. Parameter and FLOP counts are in the tests / the README note.
PRESETS: dict[str, GPTConfig] = {
    # minutes on 2 CPU cores: ~1.8M non-embedding params, ~13 MFLOP/token (vocab 1024).
    # nanoGPT's CPU width (128) with a longer context (BPE tokens carry ~2.3 bytes each).
    # Measured on tinyshakespeare, byte-level BPE vocab 1024, batch 32, AdamW lr 6e-3
    # cosine, 130 s on 2 quiet cores: 2.27 val bits/byte; 192 wide at batch 16 reached
    # only 2.54 in the same budget (fewer tokens seen; benchmarks/TRAINING.md).
    "tiny": GPTConfig(vocab_size=1024, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    # nanoGPT's shakespeare-char GPU model, Llama-style: ~10.6M non-embedding params.
    "small": GPTConfig(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384, dropout=0.1),
    # GPT-2 small's shape (GPU): 12 layers, 12 heads, 768 wide, 1024 context, tied
    # embeddings as GPT-2; with the (padded) GPT-2 vocab: ~124M params.
    "gpt2-124m": GPTConfig(
        vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0
    ),
}


# --------------------------------------------------------------------------- model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # one tensor, two uses (Press & Wolf 2017). safetensors' save_model/load_model
            # handle the sharing; plain save_file would refuse it.
            self.lm_head.weight = self.tok_emb.weight
        # rotary tables are not parameters and not saved: they follow from the config.
        cos, sin = rotary_cos_sin(config.head_dim, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hs)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch output is scaled by 1/sqrt(2 * n_layer)
        # so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.o.weight") or name.endswith("mlp.down.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets, loss_mask: (B, T). Returns logits (B, T, vocab) and the mean cross
        entropy over positions whose loss_mask is nonzero and whose target is not -100."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hs)
        x = self.emb_dropout(self.tok_emb(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        x = self.norm(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        if targets is None:
            return logits, None
        # per-position loss in float32 (autocast runs cross_entropy in float32 anyway)
        per_tok = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="none"
        )  # (B*T,)
        weight = (targets.reshape(-1) != -100).to(per_tok.dtype)  # (B*T,)
        if loss_mask is not None:
            weight = weight * loss_mask.reshape(-1).to(per_tok.dtype)
        # clamp: an all-masked batch gives loss 0, not NaN (no host sync to check it)
        loss = (per_tok * weight).sum() / weight.sum().clamp(min=1.0)
        return logits, loss

    # ----------------------------------------------------------------- accounting

    def num_params(self, non_embedding: bool = True) -> int:
        """Unique parameters (a tied embedding counts once). non_embedding=True leaves out
        the token embedding table (and so a head tied to it), as in Kaplan et al. 2020."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token at full context: 6N + 12 * L * n_head * head_dim * T.

        N counts the weights used in matmuls (all blocks + the output head, tied or not;
        the embedding lookup is free). 6 = 2 (multiply-add) * 3 (forward + 2x backward).
        The attention term is PaLM's / nanoGPT's convention; it counts the full T x T scores
        although causal SDPA skips about half of them, so MFU comparisons stay like-for-like.
        """
        cfg = self.config
        n_matmul = sum(p.numel() for n, p in self.blocks.named_parameters() if p.dim() == 2)
        n_matmul += cfg.vocab_size * cfg.n_embd  # lm_head
        attn = 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
        return 6 * n_matmul + attn

    def estimate_mfu(self, tokens_per_sec: float, peak_flops: float) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""
        return self.flops_per_token() * tokens_per_sec / peak_flops

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on 2D matrices (embeddings, linear weights), not on norm
        gains. Frozen parameters (LoRA's base weights) are left out."""
        params = [p for p in self.parameters() if p.requires_grad]  # unique: tied counted once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # ----------------------------------------------------------------- sampling

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx (B, T). temperature 0 is greedy.
        Deterministic for a given seeded generator; runs in eval mode (no dropout)."""
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                # no KV cache: recompute the (cropped) context each step. Simple, and cheap at
                # the sizes this project trains.
                idx_cond = idx[:, -self.config.block_size :]  # (B, <=block_size)
                logits, _ = self(idx_cond)
                logits = logits[:, -1, :].float()  # (B, vocab)
                if temperature == 0:
                    idx_next = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                        logits[logits < v[:, [-1]]] = -float("inf")
                    probs = F.softmax(logits, dim=-1)
                    idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
                idx = torch.cat((idx, idx_next), dim=1)
        finally:
            self.train(was_training)
        return idx


# --------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / rank) * B(A(x)), with the base frozen (Hu et al. 2021).
    B starts at zero so the wrapped model initially computes exactly what it did."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.base.weight.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)  # (out, in)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def apply_lora(
    model: GPT, rank: int, alpha: float, targets: Iterable[str] = ("q", "k", "v", "o")
) -> GPT:
    """Freeze every parameter of model and wrap the named linear layers of each block
    (attention: q, k, v, o; MLP: gate, up, down) with trainable LoRA adapters. In place."""
    targets = tuple(targets)
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad:
        raise ValueError(f"unknown LoRA targets {bad}; choose from {LORA_TARGETS}")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for name in targets:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear):
                    setattr(parent, name, LoRALinear(layer, rank, alpha))
    return model


def merge_lora(model: GPT) -> GPT:
    """Fold every LoRA adapter into its base weight and unwrap it, so the state dict is a
    plain GPT's again; all parameters become trainable again. In place."""
    for block in model.blocks:
        for parent in (block.attn, block.mlp):
            for name, layer in list(parent.named_children()):
                if isinstance(layer, LoRALinear):
                    with torch.no_grad():
                        layer.base.weight.copy_(layer.merged_weight())
                    setattr(parent, name, layer.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
