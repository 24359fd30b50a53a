"""Data sets: each resolves to training and held-out tensors in the data's own units,
plus the exact log-density where the data set has one (the ceiling no bound may pass)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError

from pathlib import Path

# The held-out images' one dequantisation draw is seeded data.seed + this (so that a
# file given to `evaluate --data` is dequantised as the run's own held-out set is).
TEST_NOISE_SEED = 2_000_003

# The named image sets' classes, in the order of their label indices.
MNIST_CLASSES = tuple(str(k) for k in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS = ("swissroll", "mixture", "heartbeat", "array", "mnist", "cifar10", "imagefolder", "deadleaves")


@dataclass(frozen=True)
class Dataset:
    """Training and held-out data, float64, in the data's own units.

    log_density: the exact log-density in nats of points in the data's own units,
    where known (generated data sets), else None.
    dequantize: the data are integer levels (8-bit images, in units of one level):
    training adds fresh uniform noise in [0, 1) to every batch, and the held-out set
    is stored with one fixed draw, so K is a bound on the discrete data's
    log-probability (bins of width 1: no further Jacobian).
    """

    train: torch.Tensor  # (N, *D)
    test: torch.Tensor  # (M, *D)
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None
    dequantize: bool = False
    validation: torch.Tensor | None = None  # (V, *D), dequantised once like test; None: no validation set
    validation_source: str = ""  # where the validation set came from, in words
    kind: str = ""  # array files: how their values are read (data.kind, resolved: vectors, levels, images)
    # Class labels, where the data set has them (MNIST, CIFAR-10, an image folder of
    # class sub-folders, data.labels): indices into class_names, one per example.
    train_labels: torch.Tensor | None = None  # (N,) int64
    test_labels: torch.Tensor | None = None  # (M,) int64
    validation_labels: torch.Tensor | None = None  # (V,) int64
    class_names: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def labelled(self) -> bool:
        """Whether every training example has a class label."""
        return self.train_labels is not None

    def train_continuous(self, seed: int) -> torch.Tensor:
        """The training examples as a density on continuous values sees them: integer
        levels dequantised once (uniform in [0, 1), seeded), other data as they are.

        Shapes: (N, *D) float64.
        """
        if not self.dequantize:
            return self.train
        return self.train + torch.rand(self.train.shape, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64)


def is_binary(x: torch.Tensor) -> bool:
    """Whether every value is 0 or 1 (the data, not the model, decide how a figure shows them).

    Shapes: x (N, *D) -> bool.
    """
    return bool(((x == 0) | (x == 1)).all())


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
    """Resolve a DataConfig to a Dataset, with its validation set (``with_validation``).
    Generated sets are deterministic in cfg.seed."""
    return with_validation(_load(cfg), cfg)


def with_validation(ds: Dataset, cfg) -> Dataset:
    """The validation set that monitors training: the file data.validation_path, or
    else data.validation_fraction of the training examples, held out at random (seeded)
    and removed from the training set; neither: ds as it is. Integer levels are
    dequantised once (seeded), like the held-out set.

    Shapes: ds.train (N, *D) -> train (N - V, *D), validation (V, *D).
    """
    if cfg.validation_path:
        v = read_held_out(cfg.validation_path, ds.kind, dequantize_seed=None)
        if tuple(v.shape[1:]) != ds.shape:
            raise DataError(f"{cfg.validation_path}: validation data have shape {tuple(v.shape[1:])}, "
                            f"training data {ds.shape}")
        train, source, labels, v_labels = ds.train, cfg.validation_path, ds.train_labels, None
    elif cfg.validation_fraction > 0:
        from .arrays import split_holdout

        n = ds.train.shape[0]
        if not 1 <= round(cfg.validation_fraction * n) <= n - 1:  # split_holdout's own rule, named for this key
            raise DataError(f"data.validation_fraction = {cfg.validation_fraction:g} of {n} training examples "
                            "leaves an empty part; change it, or give data.validation_path")
        # The split as indices, so that the labels follow their examples.
        keep, held = (torch.as_tensor(a) for a in split_holdout(torch.arange(n).numpy(), cfg.validation_fraction,
                                                                cfg.seed + 7))
        train, v = ds.train[keep], ds.train[held]
        labels, v_labels = ((ds.train_labels[keep], ds.train_labels[held]) if ds.labelled else (None, None))
        source = f"{v.shape[0]} of the {n} training examples, held out"
    else:
        return ds
    if ds.dequantize:
        v = dequantize_once(v, cfg.seed + 3_000_017)
    return replace(ds, train=train, validation=v, validation_source=source, train_labels=labels,
                   validation_labels=v_labels)


def _load(cfg) -> Dataset:
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
    if cfg.name == "heartbeat":
        from .toy import heartbeat_log_density, heartbeat_sample

        train = heartbeat_sample(cfg.n_train, torch.Generator().manual_seed(cfg.seed))
        test = heartbeat_sample(cfg.n_test, torch.Generator().manual_seed(cfg.seed + 1_000_003))
        return Dataset(train, test, heartbeat_log_density)
    if cfg.name == "mnist" and not cfg.binarize:
        from .images import load_mnist

        root = resolve_root(cfg.root)
        (train, train_y), (test, test_y) = (load_mnist(root, split) for split in ("train", "test"))
        return _levels(torch.as_tensor(train[:, None], dtype=torch.float64), torch.as_tensor(test[:, None], dtype=torch.float64),
                       cfg, labels=(train_y, test_y, MNIST_CLASSES))
    if cfg.name == "mnist":
        from .images import load_binary_mnist

        if cfg.binarize not in ("threshold", "stochastic"):
            raise ConfigError(f"data.binarize must be threshold, stochastic or empty (8-bit levels), got {cfg.binarize!r}")
        train, test, _, _ = load_binary_mnist(resolve_root(cfg.root), cfg.binarize, cfg.seed)
        train = torch.as_tensor(train, dtype=torch.float64)
        test = torch.as_tensor(test, dtype=torch.float64)
        if cfg.n_train and cfg.n_train < train.shape[0]:
            train = train[: cfg.n_train]
        if cfg.n_test and cfg.n_test < test.shape[0]:
            test = test[: cfg.n_test]
        return Dataset(train, test, None)
    if cfg.name == "cifar10":
        from .cifar import load_cifar10

        root = resolve_root(cfg.root)
        (train, train_y), (test, test_y) = (load_cifar10(root, split) for split in ("train", "test"))
        return _levels(torch.as_tensor(train, dtype=torch.float64), torch.as_tensor(test, dtype=torch.float64), cfg,
                       labels=(train_y, test_y, CIFAR10_CLASSES))
    if cfg.name == "imagefolder":
        from .arrays import split_holdout
        from .imagefolder import load_class_folders

        images, y, names = load_class_folders(resolve_root(cfg.root))  # y None: no class sub-folders
        keep, held = split_holdout(np.arange(len(images)), cfg.test_fraction, cfg.seed)
        labels = (y[keep], y[held], names) if y is not None else None
        return _levels(torch.as_tensor(images[keep], dtype=torch.float64), torch.as_tensor(images[held], dtype=torch.float64),
                       cfg, labels=labels)
    if cfg.name == "deadleaves":
        from .deadleaves import deadleaves

        train = torch.as_tensor(deadleaves(cfg.n_train, size=cfg.size, seed=cfg.seed))
        test = torch.as_tensor(deadleaves(cfg.n_test, size=cfg.size, seed=cfg.seed + 1_000_003))
        return Dataset(train, test, None)
    if cfg.name == "array":
        from .arrays import interpret, load_array, split_holdout

        if not cfg.path:
            raise ConfigError("data.name = 'array' needs data.path (or --data FILE)")
        # The kind (vectors, 8-bit images, continuous images) is the training file's;
        # a held-out file is read as the same kind.
        x, kind = interpret(load_array(cfg.path, as_float=False), cfg.kind, cfg.path)
        labels = _array_labels(cfg, x.shape[0])
        if cfg.test_path:
            train, test = x, interpret(load_array(cfg.test_path, as_float=False), kind, cfg.test_path)[0]
            if test.shape[1:] != train.shape[1:]:
                raise DataError(f"{cfg.test_path}: held-out data have shape {test.shape[1:]}, training data {train.shape[1:]}")
            if labels is not None:
                labels = (labels[0], _test_labels(cfg, test.shape[0], labels[2]), labels[2])
        else:
            keep, held = split_holdout(np.arange(x.shape[0]), cfg.test_fraction, cfg.seed)
            train, test = x[keep], x[held]
            labels = (labels[0][keep], labels[0][held], labels[2]) if labels is not None else None
        train = check_finite(torch.as_tensor(train, dtype=torch.float64), cfg.path)
        test = check_finite(torch.as_tensor(test, dtype=torch.float64), cfg.test_path or cfg.path)
        if kind == "levels":  # 8-bit images: dequantised like MNIST's, every row kept
            return replace(_levels(train, test, cfg, cut=False, labels=labels), kind=kind)
        return _with_labels(Dataset(train, test, None, kind=kind), labels)
    raise ConfigError(f"unknown data set {cfg.name!r}; choose one of {', '.join(DATASETS)}")


def _levels(train: torch.Tensor, test: torch.Tensor, cfg, cut: bool = True, labels=None) -> Dataset:
    """8-bit images as integer levels: the held-out set dequantised once (seeded),
    the training set per batch (``Dataset.dequantize``); with `cut`, n_train / n_test
    cut (the named image sets; a user's array keeps every row), their labels with them.

    Shapes: train (N, C, H, W), test (M, C, H, W) with values 0..255; labels
    (train (N,), test (M,), class names) or None.
    """
    if cut and cfg.n_train and cfg.n_train < train.shape[0]:
        train = train[: cfg.n_train]
    if cut and cfg.n_test and cfg.n_test < test.shape[0]:
        test = test[: cfg.n_test]
    if labels is not None:
        labels = (labels[0][: train.shape[0]], labels[1][: test.shape[0]], labels[2])
    ds = Dataset(train, dequantize_once(test, cfg.seed + TEST_NOISE_SEED), None, dequantize=True)
    return _with_labels(ds, labels)


def _with_labels(ds: Dataset, labels) -> Dataset:
    """ds with its labels (train, test, class names; None: unlabelled). Shapes: none."""
    if labels is None:
        return ds
    train_y, test_y, names = labels
    return replace(ds, train_labels=torch.as_tensor(train_y, dtype=torch.long),
                   test_labels=torch.as_tensor(test_y, dtype=torch.long), class_names=tuple(names))


def _array_labels(cfg, n: int):
    """data.labels for an array file of n examples: (labels, None, class names), None
    without a labels file. Shapes: -> (n,) int64."""
    if not cfg.labels:
        if cfg.test_labels:
            raise ConfigError("data.test_labels needs data.labels (the training examples' labels) beside it")
        return None
    from .labels import class_names_for, read_labels

    y, names = read_labels(cfg.labels, n)
    return y, None, class_names_for(y, names)


def _test_labels(cfg, m: int, classes: tuple[str, ...]):
    """The labels of data.test_path (data.test_labels), as the training classes'
    indices. Shapes: -> (m,) int64."""
    from .labels import index_by_names, read_labels

    if not cfg.test_labels:
        raise ConfigError("data.test_path has no labels: give data.test_labels (or --test-labels) beside it")
    y, names = read_labels(cfg.test_labels, m)
    return index_by_names(y, names, classes, cfg.test_labels)


def dequantize_once(levels: torch.Tensor, seed: int) -> torch.Tensor:
    """Integer levels plus one seeded uniform draw in [0, 1) each: held-out images as a
    density on continuous values sees them. Shapes: (M, *D) -> (M, *D) float64."""
    return levels + torch.rand(levels.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def read_held_out(path, kind: str, dequantize_seed: int | None) -> torch.Tensor:
    """A file of held-out examples read as a run's data are (`kind`: data.kind, "auto"
    deciding by the file itself; "" for data that are no array file: as stored;
    "levels" are dequantised once with `dequantize_seed`, None: left as levels), checked
    finite.

    Shapes: returns (M, *D) float64.
    """
    from .arrays import interpret, load_array, resolve_kind

    x = load_array(path, as_float=False)
    if kind:
        kind = resolve_kind(x, kind)
        x = interpret(x, kind, str(path))[0]
    x = check_finite(torch.as_tensor(x, dtype=torch.float64), str(path))
    if kind == "levels" and dequantize_seed is not None:
        x = dequantize_once(x, dequantize_seed)
    return x


def resolve_root(root: str) -> Path:
    """A data folder: as given (relative to the working directory), or else relative to the
    project's checkout, so that shipped configs can name ``../shared/data/mnist``."""
    if not root:
        raise ConfigError("data.root must name the folder holding the data files")
    path = Path(root).expanduser()
    if path.is_dir() or path.is_absolute():
        return path
    beside_checkout = Path(__file__).resolve().parents[3] / path
    return beside_checkout if beside_checkout.is_dir() else path
