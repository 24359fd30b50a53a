"""Checkpoints: one safetensors file holding tensors and a JSON header, written atomically.

Nothing is ever unpickled: tensors go through safetensors, everything else (the
resolved config, the step, the optimizer's hyper-parameters, the time sampler's
statistics are tensors too) through JSON in the file's metadata. A checkpoint is
written to a temporary file in the same folder and moved into place with
os.replace, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path
from .errors import CheckpointError

FORMAT = "thermodiff-checkpoint-1"


def _flatten(prefix: str, state: dict, tensors: dict) -> dict:
    """Move tensors of a (nested) state dict into `tensors`; return the JSON-able rest."""
    rest = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            rest[str(key)] = _flatten(name + "/", value, tensors)
        else:
            rest[str(key)] = value
    return rest


def _unflatten(prefix: str, rest: dict, tensors: dict) -> dict:
    out = {}
    for key, value in rest.items():
        out[key] = _unflatten(f"{prefix}{key}/", value, tensors) if isinstance(value, dict) else value
    for name, tensor in tensors.items():
        if name.startswith(prefix) and "/" not in name[len(prefix):]:
            out[name[len(prefix):]] = tensor
    return out


def save(path: str | Path, states: dict[str, dict], meta: dict) -> None:
    """Write named state dicts (model, ema, optimizer, ...) and JSON metadata atomically.

    Shapes: states maps a name to a (nested) state dict of tensors and JSON values.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    rest = {name: _flatten(f"{name}/", state, tensors) for name, state in states.items()}
    header = {"format": FORMAT, "meta": meta, "rest": rest}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"thermodiff": json.dumps(header)})


def load(path: str | Path) -> tuple[dict[str, dict], dict]:
    """Read a checkpoint: (named state dicts, metadata). Any defect is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("thermodiff", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupted checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a thermodiff checkpoint")
    states = {name: _unflatten(f"{name}/", rest, tensors) for name, rest in header["rest"].items()}
    return states, header["meta"]
