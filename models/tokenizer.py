"""The byte-level BPE tokenizer: its special tokens, training, loading.

Kept apart from the tokenize stage (which needs Prefect and polars) so that training code and
benchmarks can build and load tokenizers with ``tokenizers`` and ``pydantic`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


class SpecialTokens(BaseModel):
    """The special tokens every lmwright tokenizer has (added if a reused tokenizer lacks them)."""

    model_config = ConfigDict(extra="forbid")

    eot: str = Field("<|endoftext|>", description="End of text: appended to every document; the EOS for generation.")
    pad: str = Field("<|pad|>", description="Padding for fixed-length batches (fine-tuning); never a loss target.")
    user: str = Field("<|user|>", description="Chat marker that opens a user turn (fine-tuning template).")
    assistant: str = Field("<|assistant|>", description="Chat marker that opens an assistant turn (fine-tuning template).")
    system: str = Field("<|system|>", description="Chat marker that opens a system prompt (fine-tuning template).")

    def as_list(self) -> list[str]:
        """In id order for a freshly trained tokenizer: eot is 0, pad 1, user 2, assistant 3, system 4."""
        return [self.eot, self.pad, self.user, self.assistant, self.system]


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits (vocab <= 65535), else uint32."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE: no normalizer, no prefix space, so decode(encode(x)) == x."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int, special: SpecialTokens) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (an iterator is consumed lazily)."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special.as_list(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknown tokens, ever
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json for encoding documents.

    ``encode_special_tokens`` is switched on (it is not stored in the file): a document that
    happens to contain ``<|endoftext|>`` is encoded as plain text, never as a control token,
    so document text cannot forge markers and decode(encode(x)) == x holds. Code that wants
    a special token inserts its id (``token_to_id``), as ``encode_sft`` does.
    """
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = True
    return tok


def special_token_ids(tok: Tokenizer, special: SpecialTokens) -> dict[str, int]:
    """role -> id for every special token; raises if one is missing."""
    ids = {}
    for role, token in special.model_dump().items():
        i = tok.token_to_id(token)
        if i is None:
            raise ValueError(f"the tokenizer has no {role} token {token!r}")
        ids[role] = i
    return ids


def vocab_size_of(tok: Tokenizer) -> int:
    return tok.get_vocab_size(with_added_tokens=True)


# The chat format of fine-tuned models: the markers SFT data is encoded with, as a Jinja template for transformers.
# A system message opens with its own marker (fine-tuning data has none, so the model has not learned to
# follow one); a role the format has no marker for is an error, never silently left out of the prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}<|endoftext|>"
    "{% else %}{{ raise_exception('chat message ' ~ loop.index ~ ' has role ' ~ m['role'] ~ "
    "'; this chat format knows system, user and assistant') }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
