"""The run folder: what a training run writes, and how it continues after a stop.

- ``config.toml``: the run's resolved config, written when training starts. A folder
  holding a different config (anything but the budget: ``train.steps``,
  ``train.max_seconds``) refuses to be trained on, so a run is never continued by
  accident with other settings.
- ``checkpoint.safetensors``: everything training needs to continue draw for draw
  (``TrainingState``: model, EMA, optimiser, time sampler, the generator's state, the
  step and the seconds spent) plus the config, written atomically (``checkpoint``).
- ``metrics.jsonl``: one JSON line per logged step. On resume the lines logged after
  the checkpoint are dropped: training redoes those steps and logs them again.

``load_run`` reads a finished (or interrupted) run back for evaluation and sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from . import checkpoint
from . import config as config_mod
from .atomic import atomic_write
from .errors import CheckpointError, ConfigError
from .model import DiffusionModel, build_model
from .objectives import make_time_sampler
from .time_sampler import TimeSampler

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"


@dataclass
class TrainingState:
    """What a checkpoint holds besides the config: the objects are saved and restored
    in place, ``step`` and ``seconds`` (of training, excluding start-up) are counters."""

    model: DiffusionModel
    optimizer: torch.optim.Optimizer
    sampler: TimeSampler
    generator: torch.Generator
    ema: AveragedModel | None = None
    step: int = 0
    seconds: float = 0.0


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def resumable(saved: config_mod.Config, cfg: config_mod.Config) -> bool:
    """A run may continue with a longer budget, nothing else changed."""
    budget = {"steps": 0, "max_seconds": 0.0}
    return config_mod.replace(saved, train=budget) == config_mod.replace(cfg, train=budget)


def start(out: Path, cfg: config_mod.Config) -> None:
    """Create (or reopen) the run folder `out` for `cfg` and write its config.toml.

    Raises ConfigError where `out` is a file or holds a run with another config.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must name a run folder")
    if (out / CONFIG).exists():
        saved = config_mod.load(out / CONFIG)
        if not resumable(saved, cfg):
            raise ConfigError(f"{out} holds a run with a different config; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(out / CONFIG, config_mod.dumps(cfg))


def save_checkpoint(out: Path, state: TrainingState, cfg: config_mod.Config) -> None:
    """Write `state` and the config to ``out / CHECKPOINT``, atomically."""
    states = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "sampler": state.sampler.state_dict(),
        "rng": {"generator": state.generator.get_state()},
    }
    if state.ema is not None:
        states["ema"] = state.ema.state_dict()
    meta = {"step": state.step, "train_seconds": state.seconds, "config": config_mod.to_dict(cfg)}
    checkpoint.save(out / CHECKPOINT, states, meta)


def resume(out: Path, state: TrainingState) -> bool:
    """Load the run's checkpoint into `state` (in place) where there is one, and drop
    the metric lines logged after it. Returns whether a checkpoint was found.

    Raises CheckpointError where the checkpoint does not fit the state's objects.
    """
    path = out / CHECKPOINT
    if not path.exists():
        return False
    states, meta = checkpoint.load(path)
    try:
        state.model.load_state_dict(states["model"])
        if state.ema is not None:
            state.ema.load_state_dict(states["ema"])
        opt_state = states["optimizer"]
        opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}  # JSON made the keys strings
        state.optimizer.load_state_dict(opt_state)
        state.sampler.load_state_dict(states["sampler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: does not match the run's config ({str(exc).splitlines()[0][:160]})") from None
    state.generator.set_state(states["rng"]["generator"])
    state.step, state.seconds = int(meta["step"]), float(meta["train_seconds"])
    truncate_metrics(out / METRICS, state.step)
    return True


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is gone too
    _write_text_atomic(path, "".join(s + "\n" for s in keep))


def load_run(run: str | Path, use_ema: bool = True, device: str = "cpu"):
    """Load a run folder: (config, model with EMA weights if any, checkpoint metadata).

    The metadata holds "step", "train_seconds" and the run's "time_sampler".
    """
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"{run}: run folder not found")
    cfg = config_mod.load(run / CONFIG) if (run / CONFIG).exists() else None
    states, meta = checkpoint.load(run / CHECKPOINT)
    saved = config_mod.from_dict(config_mod.Config, meta.get("config", {}))
    if cfg is not None and cfg != saved:
        raise CheckpointError(f"{run}: {CONFIG} does not match the checkpoint's config")
    cfg = saved
    shape = tuple(states["model"]["scaler.shift"].shape)
    model = build_model(cfg, shape)
    state = states["model"]
    if use_ema and "ema" in states:
        state = {k[len("module."):]: v for k, v in states["ema"].items() if k.startswith("module.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{run}: checkpoint does not match its config ({str(exc).splitlines()[0][:160]})") from None
    # The time sampler's learned proposal is part of the run: evaluation reuses it.
    sampler = make_time_sampler(model, cfg.train.t_sampling, cfg.train.t_bins)
    try:
        sampler.load_state_dict(states["sampler"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{run}: checkpoint's time sampler does not match its config ({exc})") from None
    meta = dict(meta, time_sampler=sampler)
    return cfg, model.to(device).eval(), meta
