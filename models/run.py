"""A finished training run on disk: its directory, what it was trained on, and its best weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmwright.tasks.core.ref import Ref

if TYPE_CHECKING:  # torch loads only when a model is
    from lmwright.models.gpt import GPT


class ModelRef(Ref):
    """A finished training run: its best checkpoint, its tokenizer and result.json."""

    @property
    def best(self) -> Path:
        return Path(self.path) / "checkpoints" / "best"

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.path) / "tokenizer.json"

    def result(self) -> dict[str, Any]:
        return json.loads((Path(self.path) / "result.json").read_text())

    def load(self, device: str = "cpu") -> GPT:
        from lmwright.models.checkpoint import load_checkpoint, load_config
        from lmwright.models.gpt import GPT, GPTConfig

        model = GPT(GPTConfig.from_dict(load_config(self.best))).to(device)
        load_checkpoint(self.best, model, restore_rng=False)
        return model.eval()
