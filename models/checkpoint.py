"""Checkpoints that load without unpickling anything.

A checkpoint is one directory:

    model.safetensors      weights (tied tensors stored once)
    optimizer.safetensors  optimizer tensors, flattened: "state.<param index>.<name>"
    optimizer.json         optimizer non-tensor parts: param_groups hyperparameters, scalars
    state.json             everything else: step, scheduler, data cursor, metrics, the
                           resolved model config (under "model_config") and the RNG states
                           (under "rng"), all plain JSON

It is written into a temp directory and swapped in whole (`tasks.core.files.atomic_dir`), so a
killed process leaves either the previous checkpoint or the new one, never half of one. torch.save /
torch.load (pickle: arbitrary code on load) are never used.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from lmwright.tasks.core.files import atomic_dir, recover_dir, remove_stale_temps

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
OPTIM_JSON = "optimizer.json"
STATE_FILE = "state.json"


# --------------------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as JSON-able values."""
    np_state = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch_cpu": _b64(torch.get_rng_state()),  # ByteTensor, ~5 KB
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured (the CUDA part only where CUDA is present)."""
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["torch_cuda"]])


# --------------------------------------------------------------------------- optimizer


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split optimizer.state_dict() into tensors (for safetensors) and the rest (JSON)."""
    sd = optimizer.state_dict()  # {"state": {idx: {name: value}}, "param_groups": [...]}
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                # AdamW's `step` is a 0-dim float32 tensor; safetensors stores 0-dim fine
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def _unflatten_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, per_param in meta.get("state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(per_param)
    # JSON turned tuples (AdamW's betas) into lists: take the types from the fresh optimizer
    groups = []
    for saved, current in zip(meta["param_groups"], optimizer.param_groups, strict=True):
        group = dict(saved)
        for k, v in group.items():
            if isinstance(current.get(k), tuple) and isinstance(v, list):
                group[k] = tuple(v)
        groups.append(group)
    # load_state_dict moves state tensors to each parameter's device (and dtype, except step)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --------------------------------------------------------------------------- save / load


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"checkpoint state must be JSON-serialisable; got {type(o).__name__}: {o!r:.80}")


def _write_json(path: Path, obj: Any) -> None:
    """Inside the checkpoint's temp directory, which atomic_dir syncs and swaps in whole."""
    path.write_text(json.dumps(obj, indent=1, default=_json_default, allow_nan=True))


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
) -> Path:
    """Write model, optimizer and state (JSON-able dict) to `directory`, atomically,
    replacing any previous checkpoint there. Adds "rng" (current RNG states, unless the
    caller gave them) and "model_config" (model.config, when the model has one)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIM_FILE), metadata={"format": "pt"})
            _write_json(tmp / OPTIM_JSON, meta)
        full_state = dict(state)
        full_state.setdefault("rng", rng_state())
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            full_state.setdefault("model_config", config.to_dict())
        _write_json(tmp / STATE_FILE, full_state)
    # leftovers of earlier killed saves: half-written, never trusted, safe to delete (one trainer per directory)
    remove_stale_temps(directory)
    return directory


def load_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights into model (strict) and, if given, optimizer state into optimizer;
    restore the RNG states (restore_rng) and return the state dict. Never unpickles."""
    directory = Path(directory)
    recover_dir(directory)  # a kill between the two renames of a save left the previous checkpoint aside
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"no checkpoint at {directory} (missing {STATE_FILE})")
    state = json.loads((directory / STATE_FILE).read_text())
    if model is not None:
        device = next(model.parameters()).device
        load_model(model, str(directory / MODEL_FILE), strict=True, device=str(device))
    if optimizer is not None:
        if not (directory / OPTIM_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no optimizer state")
        tensors = load_file(str(directory / OPTIM_FILE))
        meta = json.loads((directory / OPTIM_JSON).read_text())
        _unflatten_optimizer(optimizer, tensors, meta)
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


def load_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The resolved model config stored in a checkpoint (to build the model before loading)."""
    return json.loads((Path(directory) / STATE_FILE).read_text())["model_config"]
