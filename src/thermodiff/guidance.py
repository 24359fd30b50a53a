"""Classifier-free guidance (Ho & Salimans 2022) on the prediction contract.

A class-conditional model predicts with a class y and, through its null class, without
one. Guidance at weight w replaces the prediction by

    (1 + w) pred(x_t, y) - w pred(x_t, null)

for the noise, the data and the native prediction alike (each is affine in the others
at fixed x_t with coefficients that do not depend on the class, so guiding one guides
all). For eps this is the score of p_t(x | y)^(1 + w) / p_t(x)^w: with exact
predictions, guidance is exactly the score of that tilted noised density, time by
time. Its samples are not draws from the tilted data density (the tilted densities of
different times are not one diffusion's marginals). A variance output (learned-range,
the paper's kernel) is the conditional one's. w = 0 is the plain conditional model.

``Guided(model, label, w)`` is that model seen through guidance: it answers every
question a sampler, a solver, an estimator or a conditioning method asks of a
DiffusionModel (its schedule, process, data map, network, device), and its
``predict`` and ``reverse`` are the guided ones, so each of them gets guidance with
no change. With w > 0 each prediction is one network call on 2B rows (the class and
the null class side by side).
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .model import DiffusionModel
from .parametrization import Prediction


def guide(conditional: Prediction, unconditional: Prediction, w: float) -> Prediction:
    """The guided prediction (1 + w) conditional - w unconditional, field by field;
    the variance output is the conditional one's.

    Shapes: Predictions over (B, *D) -> Prediction over (B, *D).
    """

    def mix(c, u):
        return None if c is None else (1 + w) * c - w * u

    return Prediction(mix(conditional.native, unconditional.native), mix(conditional.x0, unconditional.x0),
                      mix(conditional.eps, unconditional.eps), conditional.abar_t, conditional.extra)


def check_label(model: DiffusionModel, label) -> None:
    """Refuse a class a model does not have, in one line: labels of an unconditional
    model, or outside 0..num_classes (num_classes itself is the null class).
    Shapes: label an int, (B,) int64 or None."""
    if label is None:
        return
    if not model.num_classes:
        raise ConfigError("this model is unconditional (model.num_classes = 0): it has no classes to sample or score")
    values = torch.as_tensor(label)
    if bool(((values < 0) | (values > model.num_classes)).any()):
        raise ConfigError(f"class {int(values.min()) if bool((values < 0).any()) else int(values.max())} is out of "
                          f"range: the model has classes 0..{model.num_classes - 1}")


class Guided:
    """A conditional DiffusionModel through one class (or a class per row) and a guidance
    weight: pass it wherever a DiffusionModel goes.

    label: an int (every row that class), (B,) int64 (a class per row; the rows then
    must match), or None (the null class: the unconditional model, w ignored).
    guidance: w >= 0.

    Shapes: as DiffusionModel.predict and .reverse.
    """

    def __init__(self, model: DiffusionModel, label, guidance: float = 0.0):
        if isinstance(model, Guided):
            raise ConfigError("a guided model cannot be guided again")
        check_label(model, label)
        if isinstance(label, int) and label == model.null_class:
            raise ConfigError(f"class {label} is the null class's index: give None for the unconditional model")
        if not guidance >= 0:
            raise ConfigError(f"guidance must be a number >= 0, got {guidance!r}")
        self.model = model
        self.label = label
        self.guidance = float(guidance)

    def __getattr__(self, name):
        # Everything but the prediction is the model's own (schedule, process, net, ...).
        if name == "model":  # not yet set (copying): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def labels(self, b: int, device) -> torch.Tensor | None:
        """The class of each of b rows (None: the null class). Shapes: -> (b,) int64."""
        if self.label is None:
            return None
        if isinstance(self.label, int):
            return torch.full((b,), self.label, dtype=torch.long, device=device)
        if self.label.shape[0] != b:
            raise ConfigError(f"{self.label.shape[0]} labels for {b} rows")
        return self.label.to(device)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, abar_t: torch.Tensor | None = None,
                detach_mean: bool = False) -> Prediction:
        """The guided prediction at (x_t, t); cond, where given, replaces the labels.

        Shapes: x_t (B, *D), t (B,), abar_t (B,) -> Prediction over (B, *D).
        """
        b = x_t.shape[0]
        y = self.labels(b, x_t.device) if cond is None else cond
        if y is None or self.guidance == 0:
            return self.model.predict(x_t, t, y, abar_t, detach_mean)
        abar = self.model.schedule.abar(t) if abar_t is None else abar_t
        null = torch.full_like(y, self.model.null_class)
        both = self.model.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]),
                                  torch.cat([abar, abar]), detach_mean)
        half = [Prediction(*(None if f is None else (f[:b], f[b:])[i]
                             for f in (both.native, both.x0, both.eps, both.abar_t, both.extra)))
                for i in (0, 1)]
        return guide(half[0], half[1], self.guidance)

    def reverse(self, x_t, t, abar_s, abar_t, cond=None, detach_mean: bool = False):
        """The guided p(x_s | x_t): DiffusionModel.reverse over the guided prediction.

        Shapes: x_t (B, *D), t, abar_s, abar_t (B,) -> Kernel.
        """
        return DiffusionModel.reverse(self, x_t, t, abar_s, abar_t, cond, detach_mean)

    def __repr__(self) -> str:
        return f"Guided(label={self.label!r}, guidance={self.guidance:g})"
