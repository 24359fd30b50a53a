"""Held-out monitoring during training: the bound K on a validation set, cheaply.

A small data set is overfitted long before a default step budget is spent, and the
training loss does not show it. ``HeldOutMonitor`` estimates K on the validation set
(and, for comparison, on as many training examples) every ``train.validate_every``
steps. Every check uses the same examples, the same times and the same noise (one
seed), so two checks differ only by the model: comparing them is a paired comparison,
far less noisy than the two estimates' own standard errors. ``Best`` keeps the best
check and counts the checks since, which early stopping (``train.patience``) reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .likelihood import evaluate, summarize
from .model import DiffusionModel


@dataclass
class Best:
    """The best held-out check so far: its step (None: no check yet), its K in bits
    (data units), and the checks since it that were not better."""

    step: int | None = None
    bits: float = -math.inf
    checks_since: int = 0

    def update(self, step: int, bits: float) -> bool:
        """Record a check; True where it is a new best (strictly higher K)."""
        if bits > self.bits:
            self.step, self.bits, self.checks_since = step, bits, 0
            return True
        self.checks_since += 1
        return False

    def exhausted(self, patience: int) -> bool:
        """Whether `patience` checks in a row brought no better bound (patience 0: never)."""
        return patience > 0 and self.step is not None and self.checks_since >= patience

    def to_meta(self) -> dict:
        """The checkpoint's record of it (JSON: no infinities). Shapes: none."""
        return {"best_step": self.step, "best_val_bits": None if self.step is None else self.bits,
                "checks_since_best": self.checks_since}

    @classmethod
    def from_meta(cls, meta: dict) -> "Best":
        """Read back ``to_meta`` (a checkpoint written before monitoring: no best). Shapes: none."""
        if meta.get("best_step") is None:
            return cls()
        return cls(int(meta["best_step"]), float(meta["best_val_bits"]), int(meta.get("checks_since_best", 0)))


class HeldOutMonitor:
    """K on the first `n_examples` validation examples and on as many training examples
    (data units, bits), with `n_t` stratified times per example and a fixed seed.

    A class-conditional model is checked on log p(x | y) where both sets have labels
    (`validation_labels`, `train_labels`), else on log p(x) (the null class).

    Shapes: validation (V, *D), train (N, *D), both in the data's own units (integer
    levels already dequantised once); labels (V,), (N,) int64 or None.
    """

    def __init__(self, validation: torch.Tensor, train: torch.Tensor, n_examples: int, n_t: int,
                 batch_size: int, seed: int, validation_labels: torch.Tensor | None = None,
                 train_labels: torch.Tensor | None = None):
        self.validation = validation[:n_examples]
        self.train = train[: self.validation.shape[0]]
        self.n_t, self.batch_size, self.seed = n_t, batch_size, seed
        both = validation_labels is not None and train_labels is not None
        self.validation_labels = validation_labels[:n_examples] if both else None
        self.train_labels = train_labels[: self.validation.shape[0]] if both else None

    def _bits(self, model: DiffusionModel, y: torch.Tensor, labels: torch.Tensor | None) -> dict:
        # Stratified uniform times, not the run's learned proposal: that one moves as
        # training goes on, and the checks would no longer share their times.
        terms = evaluate(model, y, n_t=self.n_t, batch_size=self.batch_size, seed=self.seed,
                         labels=labels if model.num_classes else None)
        return summarize(model, terms, y)

    def __call__(self, model: DiffusionModel) -> dict:
        """One check of `model` (left in eval mode): val_bits and its standard error,
        train_eval_bits on the training examples. Shapes: none (a dict of floats)."""
        val = self._bits(model, self.validation, self.validation_labels)
        train = self._bits(model, self.train, self.train_labels)
        return {"val_bits": val["K_bits"], "val_stderr_bits": val["stderr_bits"], "train_eval_bits": train["K_bits"]}
