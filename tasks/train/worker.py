"""One rank of data-parallel training, launched by torchrun: ``python -m torch.distributed.run ... -m tasks.train.worker SPEC``.

The spec (JSON, written by the training task) names the token data, the params and the
output directory; rank 0 writes checkpoints, metrics and ``train_result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lmwright.tasks.core.files import write_json
from lmwright.tasks.train.loop import Batches, LoraParams, TrainParams, train


def _map(path: str, dtype: np.dtype) -> np.ndarray:
    if Path(path).stat().st_size == 0:
        return np.empty(0, dtype=dtype)  # numpy cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r")


def load_batches(spec: dict) -> Batches:
    data = spec["data"]
    if data["kind"] == "tokens":
        dtype = np.dtype(data["dtype"]).newbyteorder("<")
        tail = int(data.get("heldout_tail", 0))
        if tail:  # too few documents for a document split: one split's tail validates (TokenDatasetRef.heldout_tail)
            pool = _map(data[data.get("heldout_from", "train")], dtype)
            return Batches(train=pool[: len(pool) - tail], val=pool[len(pool) - tail :])
        return Batches(train=_map(data["train"], dtype), val=_map(data["val"], dtype))
    d = Path(data["dir"])
    return Batches(
        train=np.load(d / "train_ids.npy"),
        val=np.load(d / "val_ids.npy"),
        train_mask=np.load(d / "train_mask.npy"),
        val_mask=np.load(d / "val_mask.npy"),
    )


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    params = TrainParams.model_validate(spec["params"])
    backend = "nccl" if torch.cuda.is_available() and params.device in ("auto", "cuda") else "gloo"
    dist.init_process_group(backend)
    try:
        result = train(
            Path(spec["out_dir"]),
            load_batches(spec),
            params,
            spec["vocab_size"],
            Path(spec["init_from"]) if spec.get("init_from") else None,
            lora=LoraParams.model_validate(spec["lora"]) if spec.get("lora") else None,
        )
        if dist.get_rank() == 0:
            write_json(Path(spec["out_dir"]) / "train_result.json", result.model_dump())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
