"""The run folder: what a training run writes, and how it continues after a stop.

- ``config.toml``: the run's resolved config, written when training starts. A folder
  holding a different config (anything but the budget: ``train.steps``,
  ``train.max_seconds``) refuses to be trained on, so a run is never continued by
  accident with other settings.
- ``checkpoint.safetensors``: everything training needs to continue draw for draw
  (``TrainingState``: model, EMA, optimiser, time sampler, the generator's state, the
  step and the seconds spent) plus the config, written atomically (``checkpoint``).
  Under torchrun it holds every rank's generator ("rng/rank_R" beside rank 0's
  "rng/generator") and ``world_size``; rank 0 alone writes the folder's files.
- ``best.safetensors``: with held-out monitoring (``train.validate_every``), the
  weights (model, EMA, time sampler) at the check with the best held-out bound; the
  checkpoint records that step (``best_step``). A new best is written as a full
  checkpoint first, then as this file, so a kill between the two leaves a checkpoint
  that is itself the best, and the next start writes the file again.
- ``metrics.jsonl``: one JSON line per logged step. On resume the lines logged after
  the checkpoint are dropped (on a start from step 0: all of them): training redoes
  those steps and logs them again. A damaged line (not a JSON object with an integer
  step, not UTF-8) is where the file is cut. A symbolic link there is refused, never
  written through.
- ``.lock``: one training process per folder holds an ``fcntl.flock`` on it (``lock``);
  a second one is refused. The kernel drops the lock when its process dies, so a
  killed run never blocks the next.

Only a checkpoint holds trained state. A folder with a config but no checkpoint (a
start that failed or was killed before its first checkpoint) is taken over by the next
start, whatever its config. With a checkpoint, ``config.toml`` is rewritten only
together with a checkpoint (just after it), so a longer resume killed before its next
checkpoint leaves the run as it was; and ``load_run`` trusts the checkpoint's embedded
config where ``config.toml`` differs from it only in the budget (a kill between the
two renames). ``start`` removes the temporary files a killed atomic write left behind.

``load_run`` reads a finished (or interrupted) run back for evaluation and sampling.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.optim.swa_utils import AveragedModel

from . import checkpoint
from . import config as config_mod
from .atomic import atomic_write
from .distributed import stream_seed
from .errors import CheckpointError, ConfigError, ThermodiffError, one_line
from .model import DiffusionModel, build_model
from .monitor import Best
from .objectives import make_time_sampler
from .time_sampler import TimeSampler

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
LOCK = ".lock"


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
    best: Best = field(default_factory=Best)
    world: int = 1  # the processes that wrote the checkpoint resumed from


def _write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; a failure (a full disk, a read-only folder) is
    one line naming the file, and `path` keeps its previous content."""
    try:
        with atomic_write(path) as f:
            f.write(text)
    except OSError as exc:
        raise ThermodiffError(f"{path}: cannot write ({exc.strerror or one_line(exc)}); "
                              "its previous content is intact") from None


def resumable(saved: config_mod.Config, cfg: config_mod.Config) -> bool:
    """A run may continue with a longer budget, nothing else changed."""
    budget = {"steps": 1, "max_seconds": 0.0}  # any valid budget: only the rest is compared
    return config_mod.replace(saved, train=budget) == config_mod.replace(cfg, train=budget)


@contextmanager
def lock(out: Path):
    """Hold the run folder `out` (created where missing) for this process: an exclusive
    ``fcntl.flock`` on ``out / LOCK``, released on exit or when the process dies.

    Raises ConfigError where `out` is a file, and ThermodiffError where another process
    holds the folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must name a run folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise ThermodiffError(f"{out}: cannot open the run folder ({one_line(exc)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ThermodiffError(f"{out} is in use by another thermodiff process; wait for it to finish "
                                      "or choose another --out") from None
            raise ThermodiffError(f"{out}: cannot lock the run folder ({one_line(exc)})") from None
        yield out
    finally:
        os.close(fd)  # releases the lock


def remove_stale_temps(out: Path) -> None:
    """Remove the temporary files of atomic writes (``.NAME.*.tmp``) of the run's files,
    left by a process killed mid-write. Only under ``lock``: no live writer then."""
    for name in (CHECKPOINT, BEST, CONFIG, METRICS):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def start(out: Path, cfg: config_mod.Config, fresh: bool = False) -> None:
    """Open the run folder `out` for `cfg`; the caller holds ``lock(out)``.

    With a checkpoint the run continues (config.toml is then rewritten with the next
    checkpoint, not here); without one the folder holds no trained state and `cfg`
    takes it over. `fresh` (demo, bench): a checkpoint is refused, never deleted.

    Raises ConfigError where `out` holds a run with another config (or any run, when
    fresh), or a symbolic link as its metrics file.
    """
    metrics = out / METRICS
    if metrics.is_symlink():
        raise ConfigError(f"{metrics} is a symbolic link; thermodiff does not write through it: remove it")
    if metrics.exists() and not metrics.is_file():
        raise ConfigError(f"{metrics} is not a file; remove it")
    remove_stale_temps(out)
    if (out / CHECKPOINT).exists():
        if fresh:
            raise ConfigError(refuse_trained(out))
        if (out / CONFIG).exists():
            saved = config_mod.load(out / CONFIG)
        else:  # config.toml removed: the checkpoint's own config is the run's
            _, meta = checkpoint.load(out / CHECKPOINT)
            saved = config_mod.from_dict(config_mod.Config, meta["config"])
        if not resumable(saved, cfg):
            raise ConfigError(f"{out} holds a run with a different config; choose another --out")
        return
    (out / BEST).unlink(missing_ok=True)  # no checkpoint: a best file left beside none is another run's
    _write_text_atomic(out / CONFIG, config_mod.dumps(cfg))


def refuse_trained(out: Path) -> str:
    """The one line for a demo or benchmark pointed at a folder holding a trained run."""
    return (f"{out} holds a trained run ({CHECKPOINT}); choose another --out, "
            "or remove the folder to train it again")


def stream_key(rank: int) -> str:
    """The name of rank `rank`'s random stream in a checkpoint's "rng" section: the
    generator of one process (and of rank 0) is "generator", as it always was."""
    return "generator" if rank == 0 else f"rank_{rank}"


def save_checkpoint(out: Path, state: TrainingState, cfg: config_mod.Config,
                    streams: list[torch.Tensor] | None = None) -> None:
    """Write `state` and the config to ``out / CHECKPOINT``, atomically.

    streams: under several ranks, every rank's generator state in rank order (rank 0's
    is state.generator's); None: one process.
    """
    streams = streams if streams is not None else [state.generator.get_state()]
    states = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "sampler": state.sampler.state_dict(),
        "rng": {stream_key(r): g for r, g in enumerate(streams)},
    }
    if state.ema is not None:
        states["ema"] = state.ema.state_dict()
    meta = {"step": state.step, "train_seconds": state.seconds, "config": config_mod.to_dict(cfg), **state.best.to_meta()}
    if len(streams) > 1:
        meta["world_size"] = len(streams)
    _save(out / CHECKPOINT, states, meta)
    # config.toml follows the checkpoint (a longer budget is recorded only once trained on).
    text = config_mod.dumps(cfg)
    try:
        same = (out / CONFIG).is_file() and (out / CONFIG).read_bytes() == text.encode()
    except OSError:
        same = False
    if not same:
        _write_text_atomic(out / CONFIG, text)


def _save(path: Path, states: dict, meta: dict) -> None:
    try:
        checkpoint.save(path, states, meta)
    except (OSError, SafetensorError) as exc:  # a full disk: the previous file stays
        raise CheckpointError(f"{path}: cannot write the checkpoint ({one_line(exc)}); "
                              "the previous checkpoint is intact") from None


def save_best(out: Path, state: TrainingState, cfg: config_mod.Config) -> None:
    """Write the weights of `state` (model, EMA, time sampler; no optimiser) to
    ``out / BEST`` as the best held-out check; call it after ``save_checkpoint``."""
    states = {"model": state.model.state_dict(), "sampler": state.sampler.state_dict()}
    if state.ema is not None:
        states["ema"] = state.ema.state_dict()
    meta = {"step": state.step, "train_seconds": state.seconds, "config": config_mod.to_dict(cfg),
            "val_bits": state.best.bits}
    _save(out / BEST, states, meta)


def _best_step_on_disk(out: Path) -> int | None:
    """The step of ``out / BEST`` (None: none, or unreadable)."""
    try:
        return int(checkpoint.load(out / BEST, weights_only=True)[1]["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def resume(out: Path, state: TrainingState, cfg: config_mod.Config | None = None, ranks=None) -> bool:
    """Load the run's checkpoint into `state` (in place) where there is one, and drop
    the metric lines logged after it. Returns whether a checkpoint was found.

    ranks: under several processes (``distributed.Ranks``), each loads the checkpoint
    and takes its own rank's random stream; rank 0 alone writes (the metrics' cut, a
    best file a kill left behind). A rank the checkpoint holds no stream for (it was
    written by fewer processes) starts stream `step` of its rank's seed.

    Raises CheckpointError where the checkpoint does not fit the state's objects.
    """
    path = out / CHECKPOINT
    rank, main = (ranks.rank, ranks.main) if ranks is not None else (0, True)
    if not path.exists():
        if main:
            truncate_metrics(out / METRICS, 0)  # no trained state: every step is redone
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
    state.step, state.seconds = int(meta["step"]), float(meta["train_seconds"])
    state.world = int(meta.get("world_size", 1))
    own = states["rng"].get(stream_key(rank))
    if own is not None:
        state.generator.set_state(own)
    else:
        seed = cfg.train.seed if cfg is not None else 0
        state.generator.manual_seed(stream_seed(stream_seed(seed, rank), state.step))
    state.best = Best.from_meta(meta)
    if main:
        # A kill between a new best's checkpoint and its best file: the checkpoint is the best.
        if cfg is not None and state.best.step == state.step and _best_step_on_disk(out) != state.step:
            save_best(out, state, cfg)
        truncate_metrics(out / METRICS, state.step)
    return True


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be redone).

    The first unreadable line (cut by a kill, not UTF-8, not a JSON object with an
    integer "step") is the cut: it and everything after it are dropped.
    """
    if not path.exists():
        return
    keep = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ThermodiffError(f"{path}: cannot read the metrics ({exc.strerror or one_line(exc)})") from None
    for raw in lines:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            break
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            break
        if step <= last_step:
            keep.append(raw.decode("utf-8"))
    _write_text_atomic(path, "".join(s + "\n" for s in keep))


CHOICES = ("best", "last")


def load_run(run: str | Path, use_ema: bool = True, device: str = "cpu", which: str = "best"):
    """Load a run folder: (config, model with EMA weights if any, checkpoint metadata).

    which: "best", the weights of the best held-out check where the run monitored one
    (else the last), or "last", the last checkpoint. The metadata holds "step" (of the
    weights loaded), "train_seconds", "checkpoint" (which weights, in words:
    "best held-out check, step 3500 of 10000"), "trained_steps" and the run's
    "time_sampler".
    """
    run = Path(run)
    if which not in CHOICES:
        raise ConfigError(f"unknown checkpoint {which!r}; choose best or last")
    if not run.is_dir():
        raise CheckpointError(f"{run}: run folder not found")
    cfg = config_mod.load(run / CONFIG) if (run / CONFIG).exists() else None
    states, meta = checkpoint.load(run / CHECKPOINT)
    saved = config_mod.from_dict(config_mod.Config, meta.get("config", {}))
    if cfg is not None and cfg != saved and not resumable(cfg, saved):
        raise CheckpointError(f"{run}: {CONFIG} does not match the checkpoint's config")
    cfg = saved  # the checkpoint's config rules (config.toml may differ in the budget)
    trained, trained_seconds = int(meta["step"]), float(meta["train_seconds"])
    best = Best.from_meta(meta)
    label = f"last checkpoint, step {trained}"
    if which == "best" and best.step is not None:
        label = f"best held-out check, step {best.step} of {trained} (validation K = {best.bits:.2f} bits)"
        if not cfg.data.validation_path and cfg.data.validation_fraction == 0:
            label += ", chosen on the held-out test set"
        if best.step != trained:  # else the checkpoint is itself the best
            if not (run / BEST).is_file():
                raise CheckpointError(f"{run / BEST}: not found, though the checkpoint's best is step {best.step}; "
                                      "use --checkpoint last (the last weights)")
            states, best_meta = checkpoint.load(run / BEST, weights_only=True)
            if int(best_meta.get("step", -1)) != best.step:
                raise CheckpointError(f"{run / BEST}: holds step {best_meta.get('step')}, the checkpoint's best "
                                      f"is step {best.step}; use --checkpoint last (the last weights)")
            meta = dict(meta, step=best.step, train_seconds=best_meta["train_seconds"])
    elif which == "best":
        label += " (the run has no held-out checks)"
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
    meta = dict(meta, time_sampler=sampler, checkpoint=label, trained_steps=trained, trained_seconds=trained_seconds)
    return cfg, model.to(device).eval(), meta
