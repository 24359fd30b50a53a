"""Training: ``train_step`` and a fit loop you can read top to bottom.

The loop keeps AdamW, the learning-rate schedule, gradient clipping, an EMA of the
weights (torch's own AveragedModel), ``metrics.jsonl``, atomic checkpoints and resume
inline. Running ``fit`` again on a run folder continues from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from . import checkpoint
from .atomic import atomic_write
from . import config as config_mod
from .data import Dataset
from .errors import CheckpointError, ConfigError, ThermodiffError
from .model import DiffusionModel, build_model
from .objectives import check_objective, loss_per_example, make_time_sampler
from .time_sampler import TimeSampler

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
LR_SCHEDULES = ("constant", "cosine", "linear")


def select_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """train.precision -> the network's autocast dtype (None: plain float32).

    ``auto`` is bf16 on CUDA, where tensor cores run it several times faster than
    float32 with float32's range, and float32 on the CPU, where bf16 is slower.
    """
    if precision not in ("auto", "float32", "bf16"):
        raise ConfigError(f"unknown train.precision {precision!r}; choose auto, float32 or bf16")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def lr_factor(schedule: str, progress: float, step: int, warmup: int) -> float:
    """Learning-rate multiplier at a fraction `progress` in [0, 1] of the budget."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return warm
    if schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return warm * (1 - progress)
    raise ConfigError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def ema_with_warmup(decay: float):
    """An update for torch's AveragedModel: EMA whose decay ramps up as (1 + n) / (10 + n)
    to ``decay``, so that a short run's average is not dominated by the initial weights
    (a plain EMA of 0.999 still holds 82% of them after 200 steps)."""

    def update(averaged: list, current: list, num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def train_step(model, optimizer, x0, cfg_train, sampler: TimeSampler, generator) -> dict:
    """One optimisation step on a batch of scaled data. Shapes: x0 (B, *D)."""
    loss, info = loss_per_example(model, cfg_train.objective, x0, sampler, generator, cfg_train.hybrid_lambda)
    optimizer.zero_grad(set_to_none=True)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    shape = getattr(model.schedule, "shape_net", None)
    if shape is None:
        loss.mean().backward()
    else:
        # VDM: the continuous-time bound does not depend on the schedule's interior
        # (only on its endpoints), so the interior is trained to minimise the variance
        # of the loss estimate instead: d Var[L] / d theta = 2 E[L dL/d theta].
        inner = set(shape.parameters())
        rest = [p for p in params if p not in inner]
        grads = torch.autograd.grad(loss.mean(), rest, retain_graph=True, allow_unused=True)
        grads += torch.autograd.grad((loss.detach() * loss).mean(), list(inner), allow_unused=True)
        for p, g in zip(rest + list(inner), grads):
            p.grad = g
    if cfg_train.grad_clip > 0:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg_train.grad_clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    optimizer.step()
    if info is not None:
        sampler.update(*info)
    return {"loss": float(loss.detach().mean()), "grad_norm": grad_norm}


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def _truncate_metrics(path: Path, last_step: int) -> None:
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


def _resumable(saved: config_mod.Config, cfg: config_mod.Config) -> bool:
    """A run may continue with a longer budget, nothing else changed."""
    budget = {"steps": 0, "max_seconds": 0.0}
    return config_mod.replace(saved, train=budget) == config_mod.replace(cfg, train=budget)


def fit(cfg: config_mod.Config, data: Dataset, out: str | Path, progress: bool = True, log=print) -> DiffusionModel:
    """Train (or resume) a model on data.train, writing the run folder `out`.

    Returns the EMA model (or the model when EMA is off) on the CPU.
    """
    out = Path(out)
    tc = cfg.train
    lr_factor(tc.lr_schedule, 0.0, 0, 0)  # validate before anything is written
    check_objective(tc.objective, cfg.model.parametrization, cfg.process.kind)
    device = select_device(tc.device)
    net_dtype = autocast_dtype(tc.precision, device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    model = build_model(cfg, data.shape)
    model.check_data(data.train, "training data")
    if data.dequantize:  # integer levels are fitted as the model will see them: dequantised (one draw)
        noise = torch.rand(data.train.shape, generator=torch.Generator().manual_seed(tc.seed), dtype=torch.float64)
        model.fit_data(data.train + noise)
    else:
        model.fit_data(data.train)
    model.to(device)

    ckpt_path = out / CHECKPOINT
    sampler = make_time_sampler(model, tc.t_sampling, tc.t_bins)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must name a run folder")
    if (out / CONFIG).exists():
        saved = config_mod.load(out / CONFIG)
        if not _resumable(saved, cfg):
            raise ConfigError(f"{out} holds a run with a different config; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(out / CONFIG, config_mod.dumps(cfg))

    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = (
        AveragedModel(model, multi_avg_fn=ema_with_warmup(tc.ema_decay), use_buffers=True)
        if tc.ema_decay > 0
        else None
    )
    gen = torch.Generator().manual_seed(tc.seed)
    step, seconds = 0, 0.0

    if ckpt_path.exists():
        states, meta = checkpoint.load(ckpt_path)
        try:
            model.load_state_dict(states["model"])
            if ema is not None:
                ema.load_state_dict(states["ema"])
            opt_state = states["optimizer"]
            opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
            optimizer.load_state_dict(opt_state)
            sampler.load_state_dict(states["sampler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_path}: does not match the run's config ({str(exc).splitlines()[0][:160]})") from None
        gen.set_state(states["rng"]["generator"])
        step, seconds = int(meta["step"]), float(meta["train_seconds"])
        _truncate_metrics(out / METRICS, step)
        log(f"resuming {out} from step {step}")

    def save() -> None:
        states = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {"generator": gen.get_state()},
        }
        if ema is not None:
            states["ema"] = ema.state_dict()
        checkpoint.save(ckpt_path, states, {"step": step, "train_seconds": seconds, "config": config_mod.to_dict(cfg)})

    # The whole training set lives on the device, already scaled: batches are an index.
    x_train = model.scaler(data.train).to(device)
    n = x_train.shape[0]

    def budget_used() -> float:
        by_time = seconds / tc.max_seconds if tc.max_seconds > 0 else 0.0
        return max(step / tc.steps, by_time)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    metrics = open(out / METRICS, "a")
    model.train()
    model.net_dtype = net_dtype
    try:
        while budget_used() < 1.0:
            t0 = time.perf_counter()
            # The schedule follows whichever budget (steps or seconds) is further spent,
            # so a time-limited run still ends with a decayed learning rate.
            lr = tc.lr * lr_factor(tc.lr_schedule, budget_used(), step, tc.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, n, (tc.batch_size,), generator=gen).to(device)
            x = x_train[idx]
            if data.dequantize:  # fresh uniform noise in [0, 1) level, in model units
                u = torch.rand(x.shape, generator=gen).to(device)
                x = x + u / model.scaler.scale.to(device=device, dtype=x.dtype)
            stats = train_step(model, optimizer, x, tc, sampler, gen)
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            seconds += time.perf_counter() - t0
            if not math.isfinite(stats["loss"]):
                raise ThermodiffError(f"loss became {stats['loss']} at step {step}; try a lower train.lr")
            if step % tc.log_every == 0 or budget_used() >= 1.0:
                record = {"step": step, "loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"], "seconds": round(seconds, 3)}
                if tc.objective == "bound":
                    record["bound_bits"] = -stats["loss"] / math.log(2)  # K estimate, scaled data
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if step % tc.checkpoint_every == 0:
                save()
            if bar is not None:
                bar.update(1)
    finally:
        model.net_dtype = None  # evaluation and sampling run in full precision
        metrics.close()
        if bar is not None:
            bar.close()
    save()
    final = ema.module if ema is not None else model
    return final.cpu().eval()


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
