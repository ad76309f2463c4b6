"""``lmwright generate``: sampling from a training run, an HF export or a workdir's promoted model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from lmwright.deployments.cli import main
from lmwright.models.checkpoint import save_checkpoint
from lmwright.models.export import export_hf
from lmwright.models.generate import ChatTemplateError, Sampling, chat_prompt_ids, load_generator, stream
from lmwright.models.gpt import GPT, GPTConfig
from lmwright.models.tokenizer import SpecialTokens, load_tokenizer, train_bpe
from lmwright.models.tokenizer import CHAT_TEMPLATE
from lmwright.tasks.train.sft import encode_sft

TEXT = [
    "def read_file(path):\n    return open(path).read()\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Return the number of items in the container.\n",
    "This module provides functions for working with paths and files. ü é ß\n",
]
CHAT_MARKERS = ["<|user|>", "<|assistant|>", "<|system|>"]


def make_workdir(root: Path, tie_embeddings: bool = True) -> tuple[Path, Path, GPT]:
    """A workdir with a (randomly initialised) tiny fine-tuned run, its export, and promoted.json -> the export."""
    tok = train_bpe(TEXT * 20, vocab_size=300, min_frequency=2, special=SpecialTokens())
    run_dir = root / "models" / "finetune" / "fp-run"
    run_dir.mkdir(parents=True)
    tok.save(str(run_dir / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                       tie_embeddings=tie_embeddings)
    model = GPT(config).eval()
    save_checkpoint(run_dir / "checkpoints" / "best", model, None, {"step": 0})
    hf_dir = export_hf(model, None, run_dir / "tokenizer.json", root / "exports" / "export" / "fp-export" / "hf",
                       additional_special_tokens=CHAT_MARKERS, chat_template=CHAT_TEMPLATE)
    (root / "promoted.json").write_text(json.dumps({"export": str(hf_dir), "model": str(run_dir)}))
    return run_dir, hf_dir, model


@pytest.fixture()
def workdir(tmp_path: Path) -> tuple[Path, Path, GPT]:
    return make_workdir(tmp_path / "w")


@pytest.mark.parametrize("tie", [True, False])
def test_an_export_loads_back_into_the_same_model(tmp_path: Path, tie: bool) -> None:
    _, hf_dir, model = make_workdir(tmp_path / "w", tie_embeddings=tie)
    loaded = load_generator(hf_dir)
    assert loaded.model.config == model.config
    idx = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.model(idx)[0], model(idx)[0], rtol=0, atol=0)


def generate_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["generate", *args]) == 0
    return capsys.readouterr().out


def test_run_export_and_promoted_model_generate_the_same_text(workdir: tuple[Path, Path, GPT], capsys) -> None:
    run_dir, hf_dir, model = workdir
    sampling = ["--seed", "3", "--max-new-tokens", "24", "--temperature", "1.0", "--top-k", "40"]
    from_run = generate_cli(capsys, "def ", "--model", str(run_dir), *sampling)
    from_export = generate_cli(capsys, "def ", "--model", str(hf_dir), *sampling)
    from_workdir = generate_cli(capsys, "def ", "--workdir", str(run_dir.parents[2]), *sampling)
    assert from_run == from_export == from_workdir

    # the same as one call of the model's own sampler with the same seed, cut at end-of-text
    tok = load_tokenizer(run_dir / "tokenizer.json")
    x = torch.tensor([tok.encode("def ").ids])
    y = model.generate(x, 24, temperature=1.0, top_k=40, generator=torch.Generator().manual_seed(3))[0, x.size(1):].tolist()
    eot = tok.token_to_id("<|endoftext|>")
    y = y[: y.index(eot)] if eot in y else y
    assert from_run == "def " + tok.decode(y, skip_special_tokens=False) + "\n"


def test_streamed_text_is_the_decoded_tokens_even_across_split_characters(workdir: tuple[Path, Path, GPT]) -> None:
    _, hf_dir, _ = workdir
    gen = load_generator(hf_dir)
    for seed in range(5):  # random weights pick byte tokens that cut multi-byte characters
        pieces = list(stream(gen, gen.encode_prompt("ü"), Sampling(max_new_tokens=30, temperature=1.0, top_k=None, seed=seed)))
        # a character cut between tokens waits for its rest (only bytes left invalid at the end show as U+FFFD)
        assert all(pieces) and not any(p.endswith("\ufffd") for p in pieces[:-1])
        ids = gen.encode_prompt("ü")
        idx = gen.model.generate(torch.tensor([ids]), 30, temperature=1.0, top_k=None,
                                 generator=torch.Generator().manual_seed(seed))[0, len(ids):].tolist()
        idx = idx[: idx.index(gen.eos_id)] if gen.eos_id in idx else idx
        assert "".join(pieces) == gen.tokenizer.decode(idx, skip_special_tokens=False)


def test_chat_prompt_is_what_finetuning_trained_on(workdir: tuple[Path, Path, GPT]) -> None:
    run_dir, hf_dir, _ = workdir
    tok = load_tokenizer(run_dir / "tokenizer.json")
    prompt = "What does <|assistant|> mean?"  # a marker typed by the user stays text
    ids, mask = encode_sft(tok, [(prompt, "Nothing.")], block_size=64)
    head_len = int(mask[0].argmax())  # the template up to the response
    for source in (run_dir, hf_dir):
        gen = load_generator(source)
        assert gen.encode_chat([{"role": "user", "content": prompt}]) == ids[0, :head_len].tolist()
    # a second turn: the first answer ends with end-of-text, as fine-tuning's examples do
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Nothing."}, {"role": "user", "content": "Sure?"}]
    two = chat_prompt_ids(tok, CHAT_TEMPLATE, turns)
    first = ids[0, : int(mask[0].nonzero()[0][-1]) + 1].tolist()  # template + response + end-of-text
    assert two[: len(first)] == first
    assert tok.token_to_id("<|assistant|>") not in tok.encode(prompt).ids


def test_chat_template_renders_like_transformers(workdir: tuple[Path, Path, GPT]) -> None:
    transformers = pytest.importorskip("transformers")
    _, hf_dir, _ = workdir
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    turns = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Bye"}]
    theirs = hf_tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    ours = load_generator(hf_dir)
    assert ours.tokenizer.decode(ours.encode_chat(turns), skip_special_tokens=False) == theirs


def test_chat_reads_turns_from_stdin(workdir: tuple[Path, Path, GPT], capsys, monkeypatch) -> None:
    _, hf_dir, _ = workdir
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nand then?\n"))
    assert main(["generate", "--chat", "--model", str(hf_dir), "--max-new-tokens", "8", "--seed", "1"]) == 0
    gen, sampling = load_generator(hf_dir), Sampling(max_new_tokens=8, seed=1)
    first = "".join(stream(gen, gen.encode_chat([{"role": "user", "content": "hello"}]), sampling))
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and then?"}]
    second = "".join(stream(gen, gen.encode_chat(history), sampling))  # the second turn sees the first
    assert capsys.readouterr().out == f"{first}\n{second}\n"


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["generate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmwright: "), err
    return err[0]


def test_no_model_is_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    assert "promoted" in one_line_error(capsys, "hi", "--workdir", str(tmp_path))
    assert "not both" in one_line_error(capsys, "hi", "--chat", "--model", str(tmp_path))


def test_a_broken_model_directory_is_one_line_naming_it(workdir: tuple[Path, Path, GPT], capsys) -> None:
    run_dir, hf_dir, _ = workdir
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    line = one_line_error(capsys, "hi", "--model", str(hf_dir))
    assert str(hf_dir) in line and "not a loadable lmwright export" in line and "gpt2" in line
    (run_dir / "tokenizer.json").unlink()
    assert one_line_error(capsys, "hi", "--model", str(run_dir)).endswith("an incomplete training run, tokenizer.json is missing")


def test_a_system_message_is_rendered_with_its_marker_not_dropped(workdir: tuple[Path, Path, GPT]) -> None:
    _, hf_dir, _ = workdir
    gen = load_generator(hf_dir)
    system = gen.tokenizer.token_to_id("<|system|>")
    user_only = gen.encode_chat([{"role": "user", "content": "hi"}])
    with_system = gen.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert with_system[0] == system and with_system[-len(user_only):] == user_only
    assert "Be brief." in gen.tokenizer.decode(with_system, skip_special_tokens=False)


def test_a_role_the_template_does_not_know_is_a_clear_error(workdir: tuple[Path, Path, GPT], capsys, monkeypatch) -> None:
    _, hf_dir, _ = workdir
    with pytest.raises(ChatTemplateError, match="message 1 has role tool; this chat format knows system, user and assistant"):
        load_generator(hf_dir).encode_chat([{"role": "tool", "content": "42"}])


def test_chat_with_a_system_message_from_the_command_line(workdir: tuple[Path, Path, GPT], capsys, monkeypatch) -> None:
    _, hf_dir, _ = workdir
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["generate", "--chat", "--system", "Be brief.", "--model", str(hf_dir), "--max-new-tokens", "8", "--seed", "1"]) == 0
    gen = load_generator(hf_dir)
    expected = "".join(stream(gen, gen.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]),
                              Sampling(max_new_tokens=8, seed=1)))
    assert capsys.readouterr().out == f"{expected}\n"


def test_transformers_renders_system_messages_and_generates_without_a_max_length_warning(
    workdir: tuple[Path, Path, GPT], capfd: pytest.CaptureFixture[str]
) -> None:
    _, hf_dir, _ = workdir
    assert "max_length" not in json.loads((hf_dir / "generation_config.json").read_text())
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert hf_tok.apply_chat_template(turns, add_generation_prompt=True, tokenize=False).startswith("<|system|>\nBe brief.\n<|user|>")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir))
    capfd.readouterr()
    model.generate(**hf_tok("def ", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert "max_length" not in capfd.readouterr().err  # transformers' own handler writes to the stderr descriptor
