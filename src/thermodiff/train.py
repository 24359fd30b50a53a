"""Training: the objective, ``train_step`` and a fit loop you can read top to bottom.

``Objective`` is the module a DistributedDataParallel wrapper can sit on: its forward
returns the per-example loss, every trainable parameter is used in it, and one
``.backward()`` of the mean trains everything (a learned continuous schedule's interior
included: ``variance_gradient``). The loop keeps the learning-rate schedule, the batch
draw, AdamW with gradient clipping, an EMA of the weights (torch's own AveragedModel),
logging to ``metrics.jsonl``, held-out checks (``monitor``: the best weights kept,
early stopping) and checkpoints inline; the run folder (config, checkpoint,
resume, metrics, lock) is ``run_folder``'s. Running ``fit`` again on a run folder
continues from its last checkpoint, draw for draw. Ctrl-C (SIGINT) is taken at the end
of the step it lands in: that step's checkpoint is written, then KeyboardInterrupt is
raised, so a rerun continues from the interrupted step (a second Ctrl-C interrupts at
once, without a checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import config as config_mod
from . import defaults, distributed, run_folder
from .data import Dataset
from .errors import ConfigError, ThermodiffError
from .model import DiffusionModel, build_model
from .monitor import HeldOutMonitor
from .objectives import check_objective, loss_per_example, make_time_sampler
from .run_folder import CHECKPOINT, CONFIG, METRICS, load_run  # noqa: F401  (the run folder's names, as before)
from .time_sampler import TimeSampler
from .variance_gradient import weighted_by_loss

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


def make_optimizer(model: nn.Module, cfg_train) -> tuple[torch.optim.AdamW, AveragedModel | None]:
    """AdamW on every parameter, and the EMA of the weights and buffers (None when
    train.ema_decay is 0)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg_train.lr, weight_decay=cfg_train.weight_decay)
    ema = None
    if cfg_train.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(cfg_train.ema_decay), use_buffers=True)
    return optimizer, ema


class Objective(nn.Module):
    """The training loss of a DiffusionModel per example, with times from `sampler`.

    forward(x0, generator, cond=None) -> (loss (B,) nats, the time sampler's (bins, terms)
    or None), drawing from `generator` in a fixed order; cond: a conditional model's
    labels (B,) (the null class where dropped). Every parameter the loss depends on is
    reached in this one forward and ``loss.mean().backward()`` gives every gradient: a
    learned continuous schedule's interior gets VDM's variance gradient E[L dL/dtheta]
    from that same backward (``variance_gradient``), so DistributedDataParallel can wrap
    this module.

    Shapes: x0 (B, *D) scaled data, cond (B,) int64 or None.
    """

    def __init__(self, model: DiffusionModel, objective: str, sampler: TimeSampler, hybrid_lambda: float = 1e-3):
        super().__init__()
        self.model = model
        self.objective = objective
        self.sampler = sampler
        self.hybrid_lambda = hybrid_lambda

    def forward(self, x0: torch.Tensor, generator: torch.Generator, cond: torch.Tensor | None = None):
        with weighted_by_loss() as weights:
            loss, stats = loss_per_example(self.model, self.objective, x0, self.sampler, generator, self.hybrid_lambda,
                                           cond)
        weights.set(loss)  # read in the backward: the interior's gradient, per example, times the loss
        return loss, stats


def train_step(objective: nn.Module, optimizer: torch.optim.Optimizer, x0: torch.Tensor, cfg_train, sampler: TimeSampler,
               generator: torch.Generator, precision: torch.dtype | None = None, global_batch: int | None = None,
               cond: torch.Tensor | None = None) -> dict:
    """One optimisation step on a batch of scaled data: the forward (under autocast where
    `precision` names a dtype), one backward, clipping, the optimiser's step, and the
    time sampler's update from the batch's terms.

    objective: an ``Objective`` (or a DistributedDataParallel around one) whose times
    come from `sampler`; a bare DiffusionModel is wrapped in one from cfg_train.
    global_batch: under several ranks (``distributed``), the batch of the whole step, of
    which x0 is this rank's share (None: x0 is all of it). The gradient is then that of
    the global batch's mean loss, the time sampler records every rank's terms, and the
    loss returned is the global mean, the same on every rank. cond: a conditional
    model's labels for x0 (the null class where dropped), else None.

    Shapes: x0 (B, *D), cond (B,) int64 or None.
    """
    if isinstance(objective, DiffusionModel):
        objective = Objective(objective, cfg_train.objective, sampler, cfg_train.hybrid_lambda)
    b = x0.shape[0]
    n = global_batch or b
    # Mixed precision for the forward alone: the network's matmuls and convolutions run
    # in bf16, while float64 (the schedule, the bound's terms) is left alone by autocast.
    with nullcontext() if precision is None else torch.autocast(x0.device.type, dtype=precision):
        loss, stats = objective(x0, generator, cond)
    optimizer.zero_grad(set_to_none=True)
    # DistributedDataParallel averages the ranks' gradients; weighting each rank's mean
    # by its share of the global batch makes that average the gradient of the global
    # batch's mean, shares equal or not (the weight is exactly 1 on one process).
    (loss.mean() * (b * distributed.current().world / n)).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if cfg_train.grad_clip > 0:  # on the synchronised gradient: the backward has reduced it
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg_train.grad_clip))
    else:
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
    optimizer.step()
    # One collective for the step's figures: the loss's sum and the time sampler's
    # per-bin moments, summed over the ranks, so every rank records the same.
    moments = sampler.moments(*stats) if stats is not None and sampler.importance else None
    packed = loss.detach().sum().to(torch.float64).cpu().reshape(1)
    if moments is not None:
        packed = torch.cat([packed, moments.flatten()])
    packed = distributed.all_sum(packed)
    if moments is not None:
        sampler.add_moments(packed[1:].reshape(moments.shape))
    return {"loss": float(packed[0]) / n, "grad_norm": grad_norm}


def with_classes(cfg: config_mod.Config, data: Dataset) -> config_mod.Config:
    """cfg with a conditional model's classes taken from the data's labels:
    model.num_classes (-1: as many as the labels name) and model.class_names. An
    unconditional config (num_classes = 0) is returned as it is, labels or none.

    Raises ConfigError where the data have no labels or their classes do not fit.
    """
    m = cfg.model
    if m.num_classes == 0:
        return cfg
    if not data.labelled:
        raise ConfigError(f"model.num_classes = {m.num_classes} needs class labels: MNIST, CIFAR-10, an image folder "
                          "of class sub-folders, or --labels FILE (data.labels) beside --data")
    names = tuple(data.class_names)
    k = len(names) if m.num_classes == config_mod.AUTO else m.num_classes
    if k > len(names) and all(n == str(i) for i, n in enumerate(names)):
        names = tuple(str(i) for i in range(k))  # integer labels: classes without examples are allowed
    if k != len(names):
        raise ConfigError(f"model.num_classes = {k}, but the labels hold {len(names)} classes "
                          f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); set it to {len(names)} or -1")
    if m.class_names and tuple(m.class_names) != names:
        raise ConfigError(f"model.class_names {list(m.class_names)} differ from the labels' classes {list(names)}")
    return config_mod.replace(cfg, model={"num_classes": k, "class_names": names})


def _fitted_model(cfg: config_mod.Config, data: Dataset) -> DiffusionModel:
    """A fresh model (initialised from the global seed) with its data map fitted."""
    model = build_model(cfg, data.shape)
    model.check_data(data.train, "training data")
    model.fit_data(data.train_continuous(cfg.train.seed))  # integer levels as the model sees them
    return model


class _Interrupt:
    """SIGINT deferred to the end of the step: ``requested`` is set by the first Ctrl-C,
    which restores the previous handler, so a second one interrupts at once. Installed
    only in the main thread (the only one signals reach)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        # Not where signals cannot reach, nor over a handler installed outside Python
        # (getsignal gives None: it could not be put back).
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not None:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _append_line(fd: int, path: Path, line: str) -> None:
    """Append one metrics line whole or not at all: on a failed write (a full disk) the
    file is cut back to where it was, and the error is one line naming the file."""
    data = line.encode("utf-8")
    end = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        try:
            os.ftruncate(fd, end)
        except OSError:
            pass
        raise ThermodiffError(f"{path}: cannot write the metrics ({exc.strerror or exc}); "
                              "the last checkpoint is intact") from None


def fit(cfg: config_mod.Config, data: Dataset, out: str | Path, progress: bool = True, log=print,
        fresh: bool = False) -> DiffusionModel:
    """Train (or resume) a model on data.train, writing the run folder `out`, which this
    process holds (``run_folder.lock``) until it returns. `fresh` (demo, bench): refuse
    a folder that holds a trained run rather than continue it. Config values of -1
    (``config.AUTO_KEYS``) are first chosen from the training set's size
    (``defaults.for_data``); the run folder records the choice.

    Returns the EMA model (or the model when EMA is off) on the CPU.
    """
    out = Path(out)
    cfg, chosen = defaults.for_data(cfg, data.train.shape[0], math.prod(data.shape))
    cfg = with_classes(cfg, data)
    tc = cfg.train
    lr_factor(tc.lr_schedule, 0.0, 0, 0)  # validate before anything is written
    check_objective(tc.objective, cfg.model.parametrization, cfg.process.kind)
    if cfg.model.decoder == "discretized" and not data.dequantize:
        raise ConfigError("model.decoder = 'discretized' puts mass on the bins of 8-bit levels; these data are not "
                          "levels (uint8 images, MNIST, CIFAR-10, an image folder): choose learned or paper")
    ranks = distributed.init(select_device(tc.device))
    if tc.batch_size < ranks.world:
        raise ConfigError(f"train.batch_size = {tc.batch_size} is smaller than the {ranks.world} processes: "
                          "each needs at least one example a step")
    if not ranks.main:  # rank 0 alone speaks and writes
        log, progress = (lambda *a, **k: None), False
    if chosen:
        log(f"for {data.train.shape[0]} training examples of {math.prod(data.shape)} values: {', '.join(chosen)}")
    if ranks.world > 1:
        share = distributed.shares(tc.batch_size, ranks.world)
        log(f"{ranks.world} processes ({ranks.device.type}): a global batch of {tc.batch_size}, "
            f"{share[0]}{'' if share[0] == share[-1] else ' or ' + str(share[-1])} examples on each")
    device = ranks.device
    precision = autocast_dtype(tc.precision, device)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = _fitted_model(cfg, data).to(device)
    sampler = make_time_sampler(model, tc.t_sampling, tc.t_bins)
    with run_folder.lock(out) if ranks.main else nullcontext():
        if ranks.main:
            run_folder.start(out, cfg, fresh=fresh)
        distributed.barrier()  # the folder is open (or rank 0 has failed, and torchrun stops the rest)
        optimizer, ema = make_optimizer(model, tc)
        # Every draw of training in a fixed order, from this rank's own stream.
        gen = distributed.stream(tc.seed, ranks.rank)
        state = run_folder.TrainingState(model, optimizer, sampler, gen, ema)
        if run_folder.resume(out, state, cfg, ranks=ranks):
            log(f"resuming {out} from step {state.step}")
            if state.world != ranks.world:
                log(f"the checkpoint was written by {state.world} process(es), this run has {ranks.world}: it "
                    "continues, not draw for draw (a process the checkpoint holds no random stream for "
                    "starts a new one)")
        monitor = _monitor(cfg, data, log)
        _loop(cfg, data, out, state, precision, ranks, progress, monitor)
        _save(out, state, cfg, ranks)
        if state.best.exhausted(tc.patience):
            log(f"stopped early at step {state.step}: no better held-out bound in {tc.patience} checks")
        if state.best.step is not None:
            log(f"best held-out check: step {state.best.step} of {state.step}, validation K = "
                f"{state.best.bits:.2f} bits (evaluate, sample and report use these weights; --checkpoint last "
                "the last ones)")
    final = ema.module if ema is not None else model
    return final.cpu().eval()


def _save(out: Path, state: run_folder.TrainingState, cfg: config_mod.Config, ranks: distributed.Ranks,
          best: bool = False) -> None:
    """The checkpoint (and with `best` the best weights beside it), written by rank 0
    alone; every rank calls it, since the checkpoint holds every rank's random stream
    (gathered here)."""
    streams = distributed.all_gather(state.generator.get_state())
    if ranks.main:
        run_folder.save_checkpoint(out, state, cfg, streams=streams)
        if best:
            run_folder.save_best(out, state, cfg)


def _monitor(cfg: config_mod.Config, data: Dataset, log) -> HeldOutMonitor | None:
    """The held-out monitor train.validate_every asks for (None: off): on the validation
    set, else on the held-out test set, which then guides the choice of weights."""
    tc = cfg.train
    if tc.validate_every == 0:
        return None
    held_out, where = data.validation, f"validation set ({data.validation_source})"
    labels = data.validation_labels
    if held_out is None:
        held_out, where = data.test, "held-out test set (no validation set: its K then guides the choice of weights)"
        labels = data.test_labels
    train = data.train_continuous(cfg.train.seed)  # integer levels: the one draw the scaling was fitted to
    conditional = cfg.model.num_classes != 0 and labels is not None
    monitor = HeldOutMonitor(held_out, train, tc.validate_examples, tc.validate_n_t, cfg.eval.batch_size, cfg.eval.seed,
                             labels if conditional else None, data.train_labels if conditional else None)
    if cfg.model.num_classes:
        where += ", with its labels: log p(x | y)" if conditional else ", without labels: log p(x)"
    stop = f"; training stops after {tc.patience} checks without a better one" if tc.patience else ""
    log(f"held-out K every {tc.validate_every} steps on {monitor.validation.shape[0]} examples of the {where}{stop}")
    return monitor


def _loop(cfg: config_mod.Config, data: Dataset, out: Path, state: run_folder.TrainingState,
          precision: torch.dtype | None, ranks: distributed.Ranks, progress: bool,
          monitor: HeldOutMonitor | None = None) -> None:
    """The training loop: `state` (its objects in place) from state.step to the end of
    the budget, or until `monitor`'s checks stop improving (train.patience), logging to
    and checkpointing into `out`.

    Under several ranks every rank runs it in step: DistributedDataParallel reduces the
    gradients (so the weights, and the EMA each rank keeps of them, stay the same
    everywhere), ``train_step`` reduces the loss and the time sampler's statistics, and
    rank 0's clock and any Ctrl-C are agreed each step, so every rank takes the same
    number of steps; the held-out check is computed across the ranks; rank 0 alone
    writes the metrics and the checkpoints.
    """
    tc = cfg.train
    model, optimizer, sampler, gen, ema = state.model, state.optimizer, state.sampler, state.generator, state.ema
    device = ranks.device
    objective = Objective(model, tc.objective, sampler, tc.hybrid_lambda)
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (the data map, a fixed schedule) are equal on every rank by construction.
        objective = DistributedDataParallel(objective, device_ids=[device] if device.type == "cuda" else None,
                                            forward_sync_buffers=False)
    batch = distributed.shares(tc.batch_size, ranks.world)[ranks.rank]

    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    # The whole training set lives on the device, already scaled: batches are an index.
    x_train = model.scaler(data.train).to(device)
    y_train = data.train_labels.to(device) if model.num_classes else None
    n = x_train.shape[0]

    def budget_used() -> float:
        by_time = state.seconds / tc.max_seconds if tc.max_seconds > 0 else 0.0
        return max(state.step / tc.steps, by_time)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    # O_NOFOLLOW: a symbolic link put there after start() is refused, not written through.
    metrics_path = out / METRICS
    metrics = None
    if ranks.main:
        try:
            metrics = os.open(metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise ThermodiffError(f"{metrics_path}: cannot open the metrics ({exc.strerror or exc})") from None

    def write_metrics(record: dict) -> None:
        if metrics is not None:
            _append_line(metrics, metrics_path, json.dumps(record) + "\n")

    model.train()
    try:
        with _Interrupt() as interrupt:
            while budget_used() < 1.0 and not state.best.exhausted(tc.patience):
                t0 = time.perf_counter()
                # The schedule follows whichever budget (steps or seconds) is further spent,
                # so a time-limited run still ends with a decayed learning rate.
                lr = tc.lr * lr_factor(tc.lr_schedule, budget_used(), state.step, tc.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # A batch, and for integer levels fresh uniform noise in [0, 1) level, in model units.
                # Under several ranks, this rank's share of the global batch.
                idx = torch.randint(0, n, (batch,), generator=gen).to(device)
                x = x_train[idx]
                if data.dequantize:
                    u = torch.rand(x.shape, generator=gen).to(device)
                    x = x + u / model.scaler.scale.to(device=device, dtype=x.dtype)
                # A conditional model: the batch's labels, each dropped to the null class with
                # probability train.label_dropout, so that the one network also learns p(x).
                cond = None
                if y_train is not None:
                    drop = torch.rand(batch, generator=gen).to(device) < tc.label_dropout
                    cond = torch.where(drop, model.null_class, y_train[idx])
                # Dropout draws from torch's global generator, which no checkpoint holds:
                # seeding it from the run's generator each step keeps a resume draw for draw.
                if dropout:
                    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen)))
                # The step: forward, backward, clip, AdamW; then the EMA follows the weights.
                stats = train_step(objective, optimizer, x, tc, sampler, gen, precision, tc.batch_size, cond)
                if ema is not None:
                    ema.update_parameters(model)
                state.step += 1
                state.seconds += time.perf_counter() - t0
                if ranks.world > 1:
                    _agree(state, interrupt, ranks)
                if not math.isfinite(stats["loss"]):
                    raise ThermodiffError(f"loss became {stats['loss']} at step {state.step}; try a lower train.lr")
                # Logging: a metrics line every log_every steps and at the end of the budget.
                if state.step % tc.log_every == 0 or budget_used() >= 1.0:
                    record = {"step": state.step, "loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"],
                              "seconds": round(state.seconds, 3)}
                    if tc.objective == "bound":
                        record["bound_bits"] = -stats["loss"] / math.log(2)  # K estimate, scaled data
                    write_metrics(record)
                    if bar is not None and monitor is None:
                        bar.set_postfix(loss=f"{stats['loss']:.4f}")
                # Held-out check: K on the validation set; a new best is checkpointed at once.
                improved = False
                if monitor is not None and (state.step % tc.validate_every == 0 or budget_used() >= 1.0):
                    t1 = time.perf_counter()
                    check = monitor(ema.module if ema is not None else model)
                    model.train()
                    improved = state.best.update(state.step, check["val_bits"])
                    state.seconds += time.perf_counter() - t1  # the budget counts the checks too
                    if ranks.world > 1:
                        _agree(state, interrupt, ranks)
                    record = {"step": state.step, **check, "best_step": state.best.step,
                              "best_val_bits": state.best.bits, "seconds": round(state.seconds, 3)}
                    write_metrics(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{stats['loss']:.4f}", val=f"{check['val_bits']:.2f}",
                                        best=f"{state.best.bits:.2f}@{state.best.step}")
                # Checkpointing: everything needed to continue draw for draw; on a new best
                # (then the best weights beside it); and on Ctrl-C, which lands here (the
                # step is whole), before stopping.
                if state.step % tc.checkpoint_every == 0 or interrupt.requested or improved:
                    _save(out, state, cfg, ranks, best=improved)
                if interrupt.requested:
                    raise KeyboardInterrupt
                if bar is not None:
                    bar.update(1)
    finally:
        if metrics is not None:
            os.close(metrics)
        if bar is not None:
            bar.close()


def _agree(state: run_folder.TrainingState, interrupt: "_Interrupt", ranks: distributed.Ranks) -> None:
    """Make every rank see rank 0's clock (the time budget) and any rank's Ctrl-C, so
    that all of them stop at the same step. Collective."""
    mine = torch.tensor([state.seconds if ranks.main else 0.0, float(interrupt.requested)], dtype=torch.float64)
    agreed = distributed.all_sum(mine)
    state.seconds = float(agreed[0])
    interrupt.requested = bool(agreed[1] > 0)
