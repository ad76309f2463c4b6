"""models/: the GPT, its checkpoints and its Hugging Face export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmwright.models.checkpoint import load_checkpoint, load_config, save_checkpoint
from lmwright.models.export import export_hf
from lmwright.models.gpt import GPT, PRESETS, GPTConfig, apply_lora, has_lora, merge_lora

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]


def small_config(**kw) -> GPTConfig:
    base = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    base.update(kw)
    return GPTConfig(**base)


# --------------------------------------------------------------------------- config


def test_config_collects_all_problems():
    with pytest.raises(ValueError) as e:
        GPTConfig(vocab_size=0, n_embd=30, n_head=4, dropout=1.5)
    msg = str(e.value)
    assert "vocab_size" in msg and "divisible by n_head" in msg and "dropout" in msg


def test_config_defaults_and_presets():
    cfg = GPTConfig(n_embd=256)
    assert cfg.mlp_hidden == 704 and cfg.mlp_hidden % 64 == 0  # int(8/3*256)=682 -> 704
    assert cfg.n_kv_head == cfg.n_head
    assert GPTConfig.preset("gpt2-124m").mlp_hidden == 2048
    # overriding n_embd re-derives mlp_hidden; overriding vocab keeps the rest
    t = GPTConfig.preset("tiny", n_embd=128, vocab_size=512)
    assert t.mlp_hidden == 384 and t.vocab_size == 512 and t.n_layer == PRESETS["tiny"].n_layer
    assert GPTConfig.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError):
        GPTConfig.preset("huge")


def test_param_count_matches_formula():
    for tie in (True, False):
        cfg = small_config(n_kv_head=2, tie_embeddings=tie)
        m = GPT(cfg)
        C, V, H, L, hs = cfg.n_embd, cfg.vocab_size, cfg.mlp_hidden, cfg.n_layer, cfg.head_dim
        per_layer = C * C * 2 + 2 * C * cfg.n_kv_head * hs + 3 * C * H + 2 * C  # q,o + k,v + mlp + 2 norms
        non_emb = L * per_layer + C + (0 if tie else V * C)
        assert m.num_params(non_embedding=True) == non_emb
        assert m.num_params(non_embedding=False) == non_emb + V * C
        assert m.num_params(False) == len(torch.nn.utils.parameters_to_vector(m.parameters()))
    # GPT-2 small's shape lands at ~124M with the padded GPT-2 vocab
    with torch.device("meta"):
        big = GPT(GPTConfig.preset("gpt2-124m"))
    assert 120e6 < big.num_params(non_embedding=False) < 128e6


def test_flops_and_mfu():
    m = GPT(small_config())
    cfg = m.config
    n_matmul = cfg.n_layer * (4 * cfg.n_embd**2 + 3 * cfg.n_embd * cfg.mlp_hidden) + cfg.vocab_size * cfg.n_embd
    expect = 6 * n_matmul + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * cfg.block_size
    assert m.flops_per_token() == expect
    assert m.estimate_mfu(1000.0, expect * 1000.0 * 2) == pytest.approx(0.5)


# --------------------------------------------------------------------------- forward


def test_forward_backward_shapes():
    torch.manual_seed(0)
    m = GPT(small_config(dropout=0.1, n_kv_head=2))
    idx = torch.randint(0, 96, (3, 17))
    logits, loss = m(idx)
    assert logits.shape == (3, 17, 96) and loss is None
    logits, loss = m(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    with pytest.raises(ValueError):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_causal():
    """Changing a later token never changes earlier logits."""
    torch.manual_seed(0)
    m = GPT(small_config()).eval()
    idx = torch.randint(0, 96, (1, 20))
    idx2 = idx.clone()
    idx2[0, 12] = (idx2[0, 12] + 1) % 96
    a, _ = m(idx)
    b, _ = m(idx2)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_mask_and_ignore_index():
    torch.manual_seed(0)
    m = GPT(small_config()).eval()
    idx = torch.randint(0, 96, (2, 10))
    targets = torch.randint(0, 96, (2, 10))
    mask = torch.zeros(2, 10)
    mask[0, 3:7] = 1
    mask[1, 5:] = 1
    logits, loss = m(idx, targets, loss_mask=mask)
    per = F.cross_entropy(logits.view(-1, 96), targets.view(-1), reduction="none")
    manual = (per * mask.view(-1)).sum() / mask.sum()
    assert torch.allclose(loss, manual, atol=1e-6)
    # ignore_index=-100 is the same as a zero in the mask
    t2 = targets.masked_fill(mask == 0, -100)
    _, loss2 = m(idx, t2)
    assert torch.allclose(loss2, manual, atol=1e-6)
    # plain mean without a mask
    _, loss3 = m(idx, targets)
    assert torch.allclose(loss3, F.cross_entropy(logits.view(-1, 96), targets.view(-1)), atol=1e-6)


def test_param_groups_decay_matrices_only():
    m = GPT(small_config())
    decay, no_decay = m.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == m.num_params(non_embedding=False)  # tied embedding counted once


def test_generate_deterministic():
    torch.manual_seed(0)
    m = GPT(small_config(dropout=0.2))  # in train mode: generate must switch dropout off
    prompt = torch.randint(0, 96, (2, 5))
    outs = [m.generate(prompt, 40, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert outs[0].shape == (2, 45) and torch.equal(outs[0], outs[1])  # 45 > block_size: cropping works
    other = m.generate(prompt, 40, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(outs[0], other)
    assert m.training  # mode restored
    greedy = m.generate(prompt, 5, temperature=0)
    assert torch.equal(greedy, m.generate(prompt, 5, temperature=0))


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    cfg = small_config(n_layer=2, n_embd=64, vocab_size=64, block_size=32)
    m = GPT(cfg)
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=3e-3)
    x = torch.randint(0, 64, (4, 32))
    y = torch.roll(x, -1, dims=1)
    for step in range(150):
        _, loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1, f"did not overfit: loss {loss.item():.3f} after {step + 1} steps"


# --------------------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_merges_exactly():
    torch.manual_seed(0)
    m = GPT(small_config())
    apply_lora(m, rank=4, alpha=8, targets=("q", "k", "v", "o", "gate"))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # one step so B != 0 and the adapters matter
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=1e-2)
    idx = torch.randint(0, 96, (2, 16))
    _, loss = m(idx, idx)
    loss.backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        before, _ = m(idx)
        merge_lora(m)
        after, _ = m(idx)
    assert not has_lora(m)
    assert set(m.state_dict()) == set(GPT(small_config()).state_dict())
    assert torch.allclose(before, after, atol=1e-5)
    assert all(p.requires_grad for p in m.parameters())
    with pytest.raises(ValueError):
        apply_lora(m, 4, 8, targets=("qkv",))


# --------------------------------------------------------------------------- checkpoint


def _train(m, opt, batches):
    for x, y in batches:
        _, loss = m(x, y)  # dropout on: consumes the torch RNG, so RNG restore matters
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _make(cfg):
    torch.manual_seed(1234)
    m = GPT(cfg)
    opt = torch.optim.AdamW(m.param_groups(0.1), lr=1e-3, betas=(0.9, 0.95))
    return m, opt


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path):
    cfg = small_config(dropout=0.1, tie_embeddings=True)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 96, (2, 16), generator=g), torch.randint(0, 96, (2, 16), generator=g)) for _ in range(4)]

    # 4 steps straight
    ref, ref_opt = _make(cfg)
    torch.manual_seed(99)
    _train(ref, ref_opt, batches)

    # 2 steps, save, fresh model + optimizer, load, 2 steps
    m, opt = _make(cfg)
    torch.manual_seed(99)
    _train(m, opt, batches[:2])
    ck = tmp_path / "ckpt"
    save_checkpoint(ck, m, opt, {"step": 2, "data_cursor": 2, "metrics": {"loss": 1.5}})
    save_checkpoint(ck, m, opt, {"step": 2, "data_cursor": 2, "metrics": {"loss": 1.5}})  # replaces
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no tmp/old leftovers
    torch.manual_seed(12345)  # scramble the RNG: load must restore it
    m2, opt2 = _make(GPTConfig.from_dict(load_config(ck)))
    state = load_checkpoint(ck, m2, opt2)
    assert state["step"] == 2 and state["data_cursor"] == 2 and state["model_config"] == cfg.to_dict()
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95)
    _train(m2, opt2, batches[2:])

    for (n, a), (_, b) in zip(ref.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    sa, sb = ref_opt.state_dict()["state"], opt2.state_dict()["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert m2.lm_head.weight is m2.tok_emb.weight  # tying survived the load


def test_checkpoint_never_pickles_and_recovers(tmp_path: Path):
    m, opt = _make(small_config())
    ck = tmp_path / "ck"
    save_checkpoint(ck, m, opt, {"step": 0})
    assert sorted(p.name for p in ck.iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "state.json"
    ]
    json.loads((ck / "optimizer.json").read_text())
    # a kill between the two renames of a replace leaves only <dir>.old-*: it comes back
    ck.rename(tmp_path / ".ck.deadbeef.old")
    (tmp_path / ".ck.cafe.tmp").mkdir()  # and a half-written tmp dir, never trusted
    assert load_checkpoint(ck, GPT(small_config()))["step"] == 0
    save_checkpoint(ck, m, None, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    with pytest.raises(TypeError):
        save_checkpoint(ck, m, None, {"bad": object()})
    assert load_checkpoint(ck, None)["step"] == 1  # the failed save left the old one intact


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = [
        "The quick brown fox jumps over the lazy dog.",
        "To be, or not to be, that is the question.",
        "def add(a, b):\n    return a + b\n",
    ] * 5
    tok.train_from_iterator(text, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_export_refuses_qk_norm_and_lora(tmp_path, tokenizer_json):
    m = GPT(small_config(qk_norm=True))
    with pytest.raises(ValueError, match="qk_norm"):
        export_hf(m, m.config, tokenizer_json, tmp_path / "a")
    m = apply_lora(GPT(small_config()), 2, 4)
    with pytest.raises(ValueError, match="merge_lora"):
        export_hf(m, m.config, tokenizer_json, tmp_path / "b")
    with pytest.raises(ValueError, match="not in"):
        export_hf(GPT(small_config()), None, tokenizer_json, tmp_path / "c", bos_token="<s>")


@pytest.mark.parametrize("tie,n_kv_head", [(True, 4), (False, 2)])
def test_export_matches_transformers_logits(tmp_path, tokenizer_json, tie, n_kv_head):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    cfg = small_config(vocab_size=vocab, tie_embeddings=tie, n_kv_head=n_kv_head, rope_theta=500.0)
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    with torch.no_grad():  # random norm gains too, so a mis-mapped norm would show
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    out = export_hf(
        m, cfg, tokenizer_json, tmp_path / "hf", model_card="# tiny\n",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    assert (out / "README.md").read_text() == "# tiny\n"
    hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, vocab, (2, cfg.block_size))
    with torch.no_grad():
        ours, _ = m(idx)
        theirs = hf(idx).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id == hf.config.eos_token_id and tok.pad_token_id == hf.config.pad_token_id
    assert tok.model_max_length == cfg.block_size
    text = "to be or not to be <|user|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and tok.convert_tokens_to_ids("<|user|>") in ids
