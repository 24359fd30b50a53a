"""Defaults that fit the data's size.

A config value of -1 (``AUTO``) for one of ``AUTO_KEYS`` is chosen from the training
set when training starts (``for_data``); the run folder records the value chosen, so
a rerun resolves to the same config and resumes. The defaults for a user's own data
(``configs/vectors.toml``) set them all to -1.

Why these rules (measured on 1,260 rows of 64 dequantised 8-bit values and on the
`small-data` benchmark's 900 rows of 196): a small training set is overfitted after a
few hundred passes over it, whatever the budget; dropout 0.3 in the MLP delays that
and lifts the best held-out bound by 10 bits (64 values), while a smaller network or
a shorter learning-rate schedule lowers it. More dimensions take more steps before
the held-out bound stops rising (196 values: still rising at 11,000 steps, 160 bits
above where 4,000 steps leave it). So the budget is the larger of a number of passes
over the data and a number of steps per dimension, long enough for held-out
monitoring and early stopping (``train.patience``) to find the best point, capped for
large sets, where few passes fit in any budget and dropout only slows training down.
"""

from __future__ import annotations

import math

from . import config as config_mod
from .config import AUTO, AUTO_KEYS

PASSES = 2000  # passes over the training set the budget allows (early stopping ends it sooner)
STEPS_PER_DIM = 60  # and at least this many steps per dimension of an example
STEPS_MIN, STEPS_MAX = 4000, 20_000
CHECKS = 40  # held-out checks over the budget
CHECK_EVERY_MIN = 50
# Dropout by training examples: (below this many, dropout).
DROPOUT = ((20_000, 0.3), (200_000, 0.1))
# Width of the MLP by values in the training set (examples x dimensions): (below, width).
WIDTH = ((10_000, 64),)
WIDTH_LARGE = 256


def steps_for(n_examples: int, n_dims: int, batch_size: int) -> int:
    """The step budget for n examples of d values: PASSES passes or STEPS_PER_DIM steps
    per dimension, whichever is more, within [STEPS_MIN, STEPS_MAX]. Shapes: none."""
    steps = max(math.ceil(PASSES * n_examples / batch_size), STEPS_PER_DIM * n_dims)
    return int(min(STEPS_MAX, max(STEPS_MIN, steps)))


def dropout_for(n_examples: int) -> float:
    """Dropout in the MLP's residual blocks for n training examples. Shapes: none."""
    return next((p for below, p in DROPOUT if n_examples < below), 0.0)


def width_for(n_values: int) -> int:
    """The MLP's width for a training set of n values (examples x dimensions). Shapes: none."""
    return next((w for below, w in WIDTH if n_values < below), WIDTH_LARGE)


def for_data(cfg: config_mod.Config, n_examples: int, n_dims: int) -> tuple[config_mod.Config, list[str]]:
    """cfg with every AUTO value chosen for a training set of n_examples x n_dims, and
    the choices in words ("train.steps = 4922", ...) for the log. Shapes: none."""
    train, model = {}, {}
    if cfg.train.steps == AUTO:
        train["steps"] = steps_for(n_examples, n_dims, cfg.train.batch_size)
    steps = train.get("steps", cfg.train.steps)
    if cfg.train.validate_every == AUTO:
        train["validate_every"] = max(CHECK_EVERY_MIN, steps // CHECKS)
    if cfg.model.dropout == AUTO:
        model["dropout"] = dropout_for(n_examples)
    if cfg.model.width == AUTO:
        model["width"] = width_for(n_examples * n_dims)
    chosen = [f"train.{k} = {v}" for k, v in train.items()] + [f"model.{k} = {v:g}" for k, v in model.items()]
    return config_mod.replace(cfg, train=train, model=model), chosen


def unresolved(cfg: config_mod.Config) -> list[str]:
    """The keys of cfg still AUTO (a config that ``for_data`` has not seen). Shapes: none."""
    return [key for key in AUTO_KEYS if getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) == AUTO]
