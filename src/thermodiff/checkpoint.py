"""Checkpoints: one safetensors file holding tensors and a JSON header, written atomically.

Nothing is ever unpickled: tensors go through safetensors, everything else (the
resolved config, the step, the optimizer's hyper-parameters, the time sampler's
statistics are tensors too) through JSON in the file's metadata. A checkpoint is
written to a temporary file in the same folder and moved into place with
os.replace, so a crash mid-write leaves the previous checkpoint intact.

A checkpoint may come from anywhere (downloaded, edited), so ``load`` trusts nothing
in it: the header's structure, every tensor's finiteness and, for a run checkpoint,
the sections and metadata ``run_folder`` writes and the shapes its embedded config
implies are checked before anything is built from it. Any defect is one
``CheckpointError`` line saying "corrupted checkpoint" and what is wrong; in
particular a small file cannot make the loader build (allocate) a huge network,
since every tensor the config implies must be present, with its shape, in the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import config as config_mod
from .atomic import atomic_path
from .errors import CheckpointError, ThermodiffError, one_line
from .model import build_model

FORMAT = "thermodiff-checkpoint-1"

# The sections a run checkpoint holds (run_folder.save_checkpoint); "ema" is optional.
RUN_SECTIONS = ("model", "optimizer", "sampler", "rng")
# The sections of a run's best weights (run_folder.save_best): no optimiser, no generator.
WEIGHT_SECTIONS = ("model", "sampler")


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


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, else None."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name
    return None


def save(path: str | Path, states: dict[str, dict], meta: dict) -> None:
    """Write named state dicts (model, ema, optimizer, ...) and JSON metadata atomically.

    Raises CheckpointError, writing nothing, where a tensor holds NaN or inf (a run
    that diverged must not replace its last good checkpoint).

    Shapes: states maps a name to a (nested) state dict of tensors and JSON values.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    rest = {name: _flatten(f"{name}/", state, tensors) for name, state in states.items()}
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"{path}: not saving a checkpoint whose tensor {bad!r} holds NaN or inf (training diverged)")
    header = {"format": FORMAT, "meta": meta, "rest": rest}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"thermodiff": json.dumps(header)})


def _sections_are_tables(rest) -> str | None:
    """What is wrong with the header's "rest" (a table of sections, each a table of JSON
    values), else None."""
    if not isinstance(rest, dict):
        return "list of sections is not a table"
    for key, value in rest.items():
        if not isinstance(value, dict):
            return f"section {key!r} is not a table"
    return None


def load(path: str | Path, run: bool = True, weights_only: bool = False) -> tuple[dict[str, dict], dict]:
    """Read a checkpoint: (named state dicts, metadata). Any defect is a CheckpointError.

    Always checked: the header's structure, and that no tensor holds NaN or inf. With
    ``run`` (the default; False reads any file ``save`` wrote), also what a run folder's
    checkpoint must hold (``validate_run``); with ``weights_only``, what its best
    weights must hold (no optimiser or generator state).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("thermodiff", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupted checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a thermodiff checkpoint")

    def corrupted(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupted checkpoint: {what}")

    if not isinstance(header.get("meta"), dict):
        raise corrupted("its header has no 'meta' table")
    problem = _sections_are_tables(header.get("rest"))
    if problem:
        raise corrupted(f"its header's {problem}")
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise corrupted(f"tensor {bad!r} holds NaN or inf")
    states = {name: _unflatten(f"{name}/", rest, tensors) for name, rest in header["rest"].items()}
    meta = header["meta"]
    if run:
        try:
            validate_run(states, meta, WEIGHT_SECTIONS if weights_only else RUN_SECTIONS)
        except CheckpointError as exc:
            raise corrupted(str(exc)) from None
    return states, meta


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_run(states: dict[str, dict], meta: dict, sections=RUN_SECTIONS) -> None:
    """Check a run checkpoint's sections and metadata, and that its model tensors have
    exactly the shapes its embedded config implies (the config is built on the meta
    device, which allocates nothing); raise CheckpointError naming what is wrong.

    A run checkpoint holds the sections ``RUN_SECTIONS`` (and optionally "ema"), the
    model's "scaler.shift" and "scaler.scale", an optimizer state ("state" and
    "param_groups"), the CPU generator's state (uint8, its exact size), and metadata
    "step" (integer >= 0), "train_seconds" (finite number >= 0) and "config" (a table).
    `sections`: those required (``WEIGHT_SECTIONS``: the optimiser and generator are
    checked only where present).
    """
    for name in sections:
        if name not in states:
            raise CheckpointError(f"missing section {name!r}")
    model = states["model"]
    for key in ("scaler.shift", "scaler.scale"):
        if not isinstance(model.get(key), torch.Tensor):
            raise CheckpointError(f"missing tensor 'model/{key}'")
        if not model[key].is_floating_point():
            raise CheckpointError(f"tensor 'model/{key}' is {model[key].dtype}, not floating point")
    if model["scaler.shift"].ndim == 0 or model["scaler.shift"].numel() == 0:
        raise CheckpointError(f"tensor 'model/scaler.shift' has shape {tuple(model['scaler.shift'].shape)}, "
                              "not the shape of an example")
    scale = model["scaler.scale"]
    if scale.shape not in ((), model["scaler.shift"].shape) or not bool((scale > 0).all()):
        raise CheckpointError("tensor 'model/scaler.scale' is not one positive number, nor one per dimension")
    opt = states.get("optimizer")
    if opt is not None and (not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list)):
        raise CheckpointError("section 'optimizer' lacks its 'state' table or 'param_groups' list")
    size = torch.Generator().get_state().numel()
    if "rng" in states:
        # "generator": one process's (rank 0's) stream; "rank_R": rank R's under torchrun.
        world = meta.get("world_size", 1)
        if not isinstance(world, int) or isinstance(world, bool) or world < 1:
            raise CheckpointError(f"'world_size' must be an integer >= 1, got {world!r}")
        if world != len(states["rng"]):
            raise CheckpointError(f"'world_size' is {world}, but section 'rng' holds {len(states['rng'])} stream(s)")
        names = ["generator"] + [f"rank_{r}" for r in range(1, world)]
        extra = sorted(set(states["rng"]) - set(names))
        if extra:
            raise CheckpointError(f"unexpected 'rng/{extra[0]}' for a checkpoint of {world} process(es)")
        for name in names:
            gen = states["rng"].get(name)
            if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8 or tuple(gen.shape) != (size,):
                got = f"{gen.dtype} of shape {tuple(gen.shape)}" if isinstance(gen, torch.Tensor) else repr(type(gen).__name__)
                raise CheckpointError(f"'rng/{name}' must be the generator's state, uint8 of shape ({size},); got {got}")
    if "ema" in states and not isinstance(states["ema"], dict):
        raise CheckpointError("section 'ema' is not a table")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"'step' must be an integer >= 0, got {step!r}")
    seconds = meta.get("train_seconds")
    if not _is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
        raise CheckpointError(f"'train_seconds' must be a finite number >= 0, got {seconds!r}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError("its metadata hold no 'config' table")
    _check_best(meta)
    _check_shapes(states, meta["config"])


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_best(meta: dict) -> None:
    """The best held-out check a checkpoint records (run_folder, monitor.Best): none, or
    a step no later than the checkpoint's, a finite K and a count of checks since."""
    best = meta.get("best_step")
    if best is None:
        return
    if not _is_count(best) or best > meta["step"]:
        raise CheckpointError(f"'best_step' must be an integer in [0, step], got {best!r}")
    bits = meta.get("best_val_bits")
    if not _is_number(bits) or not math.isfinite(bits):
        raise CheckpointError(f"'best_val_bits' must be a finite number, got {bits!r}")
    if not _is_count(meta.get("checks_since_best", 0)):
        raise CheckpointError(f"'checks_since_best' must be an integer >= 0, got {meta.get('checks_since_best')!r}")


def _check_shapes(states: dict[str, dict], config: dict) -> None:
    """The model (and EMA) tensors have exactly the shapes the embedded config implies."""
    model = states["model"]
    tensors = {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}
    n_values = sum(t.numel() for t in tensors.values())
    try:
        cfg = config_mod.from_dict(config_mod.Config, config)
    except ThermodiffError as exc:
        raise CheckpointError(f"embedded config: {one_line(exc)}") from None
    # Every size in the model's and the process's config sizes some tensor of the file
    # (a layer of width w holds >= w values, each of `depth` blocks >= 1): one larger
    # than all the file's values cannot be right, and would make building slow.
    for section in ("model", "process"):
        for key, value in vars(getattr(cfg, section)).items():
            values = value if isinstance(value, (tuple, list)) else (value,)
            for v in values:
                if isinstance(v, int) and not isinstance(v, bool) and v > max(n_values, 4096):
                    if section == "process" and key == "T" and cfg.process.time != "discrete":
                        continue  # continuous time: T is only a default number of sampling steps
                    raise CheckpointError(
                        f"embedded config's {section}.{key} = {v} is larger than the {n_values} values of the model's tensors"
                    )
    shape = tuple(model["scaler.shift"].shape)
    try:
        with torch.device("meta"):
            built = build_model(cfg, shape)
        expected = {k: tuple(v.shape) for k, v in built.state_dict().items()}
        n_bins = built.schedule.n_bins(cfg.train.t_bins)
    except ThermodiffError as exc:
        raise CheckpointError(f"embedded config: {one_line(exc)}") from None
    except (RuntimeError, ValueError, TypeError, ArithmeticError) as exc:  # the file's config and shapes are untrusted
        raise CheckpointError(f"its config cannot be built for examples of shape {shape} ({one_line(exc)[:160]})") from None
    # The time sampler is built from the config too (train.t_bins bins in continuous time).
    sampler = states["sampler"]
    for key in ("counts", "second_moment"):
        t = sampler.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n_bins,):
            got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else "none"
            raise CheckpointError(f"tensor 'sampler/{key}' has {got}, its config implies ({n_bins},)")
    for section, prefix in (("model", ""), ("ema", "module.")):
        if section not in states:
            continue
        got = {k[len(prefix):]: tuple(v.shape) for k, v in states[section].items()
               if isinstance(v, torch.Tensor) and k.startswith(prefix)}
        missing = sorted(set(expected) - set(got))
        if missing:
            raise CheckpointError(f"tensor '{section}/{prefix}{missing[0]}' that its config implies is missing")
        for key, want in expected.items():
            if got[key] != want:
                raise CheckpointError(
                    f"tensor '{section}/{prefix}{key}' has shape {got[key]}, its config implies {want}"
                )
