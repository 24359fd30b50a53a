"""Data sets: each resolves to training and held-out tensors in the data's own units,
plus the exact log-density where the data set has one (the ceiling no bound may pass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError, DataError

DATASETS = ("swissroll", "mixture", "array")


@dataclass(frozen=True)
class Dataset:
    """Training and held-out data, float64, in the data's own units.

    log_density: the exact log-density in nats of points in the data's own units,
    where known (generated data sets), else None.
    """

    train: torch.Tensor  # (N, *D)
    test: torch.Tensor  # (M, *D)
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """Reject empty data and data with NaN or inf, naming the first bad row.

    Shapes: x (N, *D) -> the same tensor.
    """
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise DataError(f"{what}: no data (shape {tuple(x.shape)})")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(-1)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} rows hold NaN or inf (first: row {int(bad.nonzero()[0])})")
    return x


def load(cfg) -> Dataset:
    """Resolve a DataConfig to a Dataset. Generated sets are deterministic in cfg.seed."""
    if cfg.name == "swissroll":
        from .toy import swissroll_log_density, swissroll_sample

        train = swissroll_sample(cfg.n_train, torch.Generator().manual_seed(cfg.seed))
        test = swissroll_sample(cfg.n_test, torch.Generator().manual_seed(cfg.seed + 1_000_003))
        return Dataset(train, test, swissroll_log_density)
    if cfg.name == "mixture":
        from .toy import gaussian_mixture_2d_default

        mix = gaussian_mixture_2d_default()
        train = mix.sample(cfg.n_train, torch.Generator().manual_seed(cfg.seed))
        test = mix.sample(cfg.n_test, torch.Generator().manual_seed(cfg.seed + 1_000_003))
        return Dataset(train, test, mix.log_prob)
    if cfg.name == "array":
        from .arrays import load_array, split_holdout

        if not cfg.path:
            raise ConfigError("data.name = 'array' needs data.path (or --data FILE)")
        x = load_array(cfg.path)
        if cfg.test_path:
            train, test = x, load_array(cfg.test_path)
            if test.shape[1:] != train.shape[1:]:
                raise DataError(f"{cfg.test_path}: held-out data have shape {test.shape[1:]}, training data {train.shape[1:]}")
        else:
            train, test = split_holdout(x, cfg.test_fraction, cfg.seed)
        train = check_finite(torch.as_tensor(train, dtype=torch.float64), cfg.path)
        test = check_finite(torch.as_tensor(test, dtype=torch.float64), cfg.test_path or cfg.path)
        return Dataset(train, test, None)
    raise ConfigError(f"unknown data set {cfg.name!r}; choose one of {', '.join(DATASETS)}")
