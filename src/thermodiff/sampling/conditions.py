"""The second distribution r(x) of section 2.5, given in the data's own units, each
condition carrying its own behaviour so that nothing else branches on which it is.

``Known`` (a delta on some coordinates: inpainting), ``GaussianObservation`` (y = A x +
noise of known sigma: denoising, inpainting with noise, downsampling), ``Box`` (a soft
box constraint), ``ClassifierGuidance`` (log r = a classifier's log-probability of a
class), ``Smooth`` (any differentiable log r) and ``BitProbabilities`` (independent
r(x_i = 1) = d_i for binary data).

Every condition answers (``Condition`` gives the defaults of a differentiable log r):

    methods, default         the conditioning methods it takes, and its default one
    refusal(method)          its own message for a method it does not take, or None
    check(model)             what it needs of the model (binary or real-valued data,
                             shapes), before the chain runs
    log_r(model, x)          log r at model-unit x, nats per example
    guidance(model, scale)   the kernel transform of method guidance
    product(model)           the kernel transform of method product (closed form)
    for_smc(model)           the condition SMC weights by (known bits: bit probabilities)
    twist(model, steer)      SMC's intermediate factor log r_t(x_t), as a function of
                             (kernel, x_t, abar_t), or None for none
    proposal(model)          SMC's proposal from the hop's kernel, or None: the kernel
    pin(model, y)            samples in data units with what r fixes set exactly

Where binary and real-valued data differ, a condition asks the process's ``binary``,
never its name: r over bits and r over real values differ in what they can do
(the flip rate against eq. 61).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..errors import ConfigError, DataError
from ..kernels import Kernel
from ..model import DiffusionModel
from ..tensors import expand_as, sum_dims
from .transforms import FlipRate, GaussianProduct, Guidance, gaussian_product, repeat_rows

# SMC's intermediate factor: (the hop's kernel, x_t, abar_t) -> log r_t(x_t) (B,), or
# None where it stays as it was (no prediction to evaluate it at).
Twist = Callable[[Kernel, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def _broadcast(v, model: DiffusionModel, name: str) -> torch.Tensor:
    """A per-example or shared tensor in the data's shape. Shapes: (*D) or (n, *D) -> (1 or n, *D)."""
    v = torch.as_tensor(v, dtype=torch.float64)
    if tuple(v.shape) == model.data_shape:
        v = v[None]
    if tuple(v.shape[1:]) != model.data_shape:
        raise DataError(f"{name} has shape {tuple(v.shape)}; the model's data have shape {model.data_shape}")
    if not torch.isfinite(v).all():
        raise DataError(f"{name} holds NaN or inf")
    return v


class Condition:
    """r(x) given by a differentiable log r (implemented by each condition): guidance
    by eq. 61 on real-valued data, SMC with no twist, or with ``steer`` r at the
    model's x_0 prediction. The defaults that the conditions below refine.

    Shapes: log_r (B, *D) model units -> (B,) nats.
    """

    methods = frozenset({"guidance", "smc"})
    default = "guidance"

    def refusal(self, method: str) -> str | None:
        """Its own message for a method outside ``methods``; None: the method's own.
        Shapes: none (a method name -> a message)."""
        return None

    # The data this r is of: None (any), True (bits only) or False (real values only),
    # and what it says on the other kind.
    bits: bool | None = None
    wrong_data = ""

    def check(self, model: DiffusionModel) -> None:
        """Raise, before the chain, what this r cannot condition on this model: data of
        the wrong kind, then what ``check_values`` finds. Shapes: none."""
        self.check_kind(model)
        self.check_values(model)

    def check_kind(self, model: DiffusionModel) -> None:
        """Raise where the model's data are not of the kind r is of (bits or real values)."""
        if self.bits is not None and self.bits != model.process.binary:
            raise ConfigError(self.wrong_data)

    def check_values(self, model: DiffusionModel) -> None:
        """Raise the shape or value errors of r's own tensors now, not mid-chain (nothing
        here). Shapes: none."""

    def log_r(self, model: DiffusionModel, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """log r at x in model units, nats. Shapes: x (B, *D) -> (B,)."""
        raise NotImplementedError

    def guidance(self, model: DiffusionModel, scale: float):
        """eq. 61's shift along grad log r; it needs real-valued kernels, whose mean can
        move. Shapes: a kernel transform over (B, *D)."""
        if model.process.binary:
            raise ConfigError("guidance on binary data needs bit probabilities (the flip rate of section 2.5)")
        self.check(model)
        return Guidance(partial(self.log_r, model), scale)

    def product(self, model: DiffusionModel):  # pragma: no cover - refused by ``methods``
        """The kernel times r in closed form, where r has one. Shapes: a kernel transform."""
        raise ConfigError("method product needs a Gaussian observation or bit probabilities")

    def for_smc(self, model: DiffusionModel) -> Condition:
        """The condition SMC weights its particles by: r itself. Shapes: none."""
        return self

    def twist(self, model: DiffusionModel, steer: bool) -> Twist | None:
        """With ``steer``: r at the model's x_0 prediction raised to abar_t (for an r that
        is rare under the model: fewer particles wasted, a bias at few particles);
        without it no twist (importance resampling by r at the end). On bits the x_0
        prediction is a logit, not a point to evaluate r at: no twist either.

        Shapes: the twist maps (kernel over (B, *D), x_t (B, *D), abar_t (B,)) -> (B,) or None.
        """
        if not steer or model.process.binary:
            return None

        def steered(kernel, x_t, abar_t):
            if kernel.x0 is None:  # no prediction: the twist stays as it was
                return None
            # Tempered by the signal fraction: early in the chain x0_hat is a blurred guess,
            # and a sharp r at it would collapse the particles onto the guess's side.
            return abar_t.to(torch.float64) * self.log_r(model, kernel.x0.to(torch.float64)).detach()

        return steered

    def proposal(self, model: DiffusionModel):
        """SMC proposes from the model's kernel: eq. 61's shift is unbounded where r is
        sharp relative to the kernel. Shapes: None (no proposal of its own)."""
        return None

    def pin(self, model: DiffusionModel, y: torch.Tensor) -> torch.Tensor:
        """Samples in data units as drawn: a soft r fixes nothing. Shapes: (n, *D) -> (n, *D)."""
        return y


@dataclass
class Known(Condition):
    """r a delta on the coordinates where mask is 1, at the given values (data units).

    Shapes: values (*D) or (n, *D); mask the same, 0/1."""

    values: torch.Tensor
    mask: torch.Tensor

    methods = frozenset({"clamp", "replace", "smc"})
    default = "clamp"  # the paper's choice

    def refusal(self, method: str) -> str | None:
        """A delta takes only the methods that set coordinates. Shapes: none."""
        return f"known coordinates (a mask) take method clamp or replace (smc for binary data), not {method}"

    def scaled(self, model: DiffusionModel):
        """Known values in model units and the mask as bool. Shapes: -> (1 or n, *D) twice."""
        values = _broadcast(self.values, model, "the known values")
        mask = _broadcast(self.mask, model, "the mask")
        if not ((mask == 0) | (mask == 1)).all():
            raise DataError("the mask must hold only 0 (unknown) and 1 (known)")
        # The process says which values its data may take (0 or 1 for bits); unknown
        # coordinates may hold anything.
        model.process.check_data(torch.where(mask == 1, values, torch.zeros_like(values)), "the known values")
        return ((values - model.scaler.shift) / model.scaler.scale), mask.bool()

    def log_r(self, model, x):
        """A delta has no log density to evaluate. Shapes: x (B, *D) -> raises."""
        raise ConfigError("a Known condition is a delta: use method clamp or replace")

    def for_smc(self, model: DiffusionModel) -> Condition:
        """Known bits are bit probabilities of 0 or 1 (1/2 where unknown); a delta on
        real values has no density to weight particles by. Shapes: d (1 or n, *D)."""
        if not model.process.binary:
            raise ConfigError("known coordinates of continuous data are a delta, which SMC cannot weight: "
                              "use clamp or replace, or an observation with small noise")
        values, mask = self.scaled(model)
        return BitProbabilities(torch.where(mask, values, torch.full_like(values, 0.5)))

    def pin(self, model: DiffusionModel, y: torch.Tensor) -> torch.Tensor:
        """The known coordinates at the given values exactly, not through the scaling's
        rounding. Shapes: y (n, *D) data units -> (n, *D)."""
        n = y.shape[0]
        values = repeat_rows(_broadcast(self.values, model, "the known values"), n).to(y.device)
        mask = repeat_rows(_broadcast(self.mask, model, "the mask"), n).to(y.device).bool()
        return torch.where(mask, values, y)


@dataclass
class GaussianObservation(Condition):
    """y = A x + N(0, sigma^2 I) in data units. A: None (identity), a gain per coordinate
    shaped like the data (0 where unobserved), or a matrix (m, D) over the flattened data.

    Shapes: y (*D) or (n, *D) for A None or a gain, (m,) or (n, m) for a matrix."""

    y: torch.Tensor
    sigma: float
    A: torch.Tensor | None = None

    def __post_init__(self):
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise DataError(f"the observation noise sigma must be a positive number, got {self.sigma!r}")

    @property
    def methods(self) -> frozenset:
        """guidance, product and smc; start only for a full observation (A = I), the
        one that is a latent of the chain. Shapes: none."""
        return frozenset({"guidance", "product", "smc"} | ({"start"} if self.A is None else set()))

    @property
    def default(self) -> str:
        """start for A = I (exact with an exact model), product otherwise. Shapes: none."""
        return "start" if self.A is None else "product"

    def is_matrix(self, model: DiffusionModel) -> bool:
        """Whether A is a matrix over the flattened data (not a gain shaped like them).
        Shapes: A (m, D) for True."""
        return self.A is not None and tuple(torch.as_tensor(self.A).shape) != model.data_shape

    def scaled(self, model: DiffusionModel):
        """(y', sigma', A) with y' = A x + N(0, sigma'^2) for x in model units.

        x_data = s x + shift, so y - A shift = s A x + noise: with one scale s, divide
        by it; with a scale per dimension (data.scaling = "per-dim"), s moves into the
        gain (the identity's gain is s itself, a matrix's columns are scaled) and the
        noise stays sigma.
        Shapes: -> y' (1 or n, *D) or (1 or n, m), sigma' float, A None / (1, *D) / (m, D).
        """
        s, shift = model.scaler.scale, model.scaler.shift

        def in_model_units(residual, a, a_times_s):
            if model.scaler.per_dim:
                return residual, self.sigma, a_times_s
            return residual / float(s), self.sigma / float(s), a

        if self.A is None:
            y = _broadcast(self.y, model, "the observation")
            return in_model_units(y - shift, None, s.unsqueeze(0) if s.dim() else None)
        a = torch.as_tensor(self.A, dtype=torch.float64)
        if a.dim() == 2 and tuple(a.shape) != model.data_shape:
            if a.shape[1] != model.n_dims:
                raise DataError(f"the observation matrix has {a.shape[1]} columns; "
                                f"the data have {model.n_dims} dimensions")
            y = torch.as_tensor(self.y, dtype=torch.float64).reshape(-1, a.shape[0])
            return in_model_units(y - shift.reshape(-1) @ a.T, a, a * s.reshape(-1))
        a = _broadcast(a, model, "the observation gain")
        y = _broadcast(self.y, model, "the observation")
        return in_model_units(y - a * shift, a, a * s)

    # An observation with Gaussian noise is of real values.
    bits = False
    wrong_data = "a Gaussian observation conditions continuous data (the Gaussian process)"

    def check_values(self, model: DiffusionModel) -> None:
        """y and A shaped for the data. Shapes: see ``scaled``."""
        self.scaled(model)

    def log_r(self, model, x):
        """-|y - A x|^2 / (2 sigma^2), nats, up to a constant. Shapes: x (B, *D) -> (B,) float64."""
        y, sigma, a = self.scaled(model)
        x = x.to(torch.float64)
        if a is None:
            pred = x
        elif self.is_matrix(model):
            pred = x.reshape(x.shape[0], -1) @ a.T.to(x.device)
        else:
            pred = a.to(x.device) * x
        return -0.5 * sum_dims((y.to(x.device) - pred) ** 2) / sigma**2

    def product(self, model: DiffusionModel):
        """The kernel times the observation's likelihood at every step (precision-weighted
        mean), per coordinate: an identity or a gain, not a matrix. Shapes: a kernel
        transform over (B, *D)."""
        self.check_kind(model)  # real-valued data first, as check() orders it
        if self.is_matrix(model):
            raise ConfigError("method product handles an identity or per-coordinate observation; "
                              "use guidance or smc for a matrix")
        y, sigma, a = self.scaled(model)
        return GaussianProduct(y, sigma**2, a)

    def observation_at(self, model: DiffusionModel, abar: torch.Tensor):
        """The observation seen from x_t: y = (g / sqrt(abar)) x_t + noise of variance
        sigma^2 + g^2 (1 - abar) / abar, since x_t / sqrt(abar) = x_0 + sqrt((1 - abar) / abar) eps.
        Its r_t(x_t) is the exact likelihood of y under a flat prior on x_0, and r_0 = r.

        Shapes: abar (B,) -> y (1 or B, *D), noise variance (B, *D), gain (B, *D).
        """
        y, sigma, a = self.scaled(model)
        y = repeat_rows(y, abar.shape[0]).to(abar.device)
        g = torch.ones_like(y) if a is None else repeat_rows(a, abar.shape[0]).to(abar.device)
        ratio = expand_as(((1 - abar) / abar).to(torch.float64), g.expand((abar.shape[0],) + tuple(g.shape[1:])))
        return y, sigma**2 + g**2 * ratio, g / expand_as(abar.sqrt().to(torch.float64), ratio)

    def twist(self, model: DiffusionModel, steer: bool) -> Twist | None:
        """The observation's likelihood seen from x_t (``observation_at``), which needs no
        prediction; a matrix observation has no such form and twists as any r.
        Shapes: the twist maps (kernel, x_t (B, *D), abar_t (B,)) -> (B,) float64."""
        if self.is_matrix(model):
            return super().twist(model, steer)

        def observed(kernel, x_t, abar_t):
            y, var, gain = self.observation_at(model, abar_t)
            resid = y.to(x_t.device) - gain * x_t.to(torch.float64)
            return -0.5 * sum_dims(resid**2 / var + torch.log(2 * math.pi * var))

        return observed

    def proposal(self, model: DiffusionModel):
        """The kernel times r_s, the observation seen from the next time, which is right
        for each noise level (a matrix observation: the kernel itself).
        Shapes: (kernel over (B, *D), abar_s (B,)) -> Normal over (B, *D)."""
        if self.is_matrix(model):
            return None
        return lambda kernel, abar_s: gaussian_product(kernel, *self.observation_at(model, abar_s))


@dataclass
class Smooth(Condition):
    """Any differentiable log r, called on data-unit batches. Shapes: (B, *D) -> (B,)."""

    log_r_data: Callable[[torch.Tensor], torch.Tensor]

    def log_r(self, model, x):
        """The callable at x in data units. Shapes: x (B, *D) -> (B,)."""
        return self.log_r_data(model.scaler.inverse(x))


@dataclass
class Box(Condition):
    """A soft box constraint lo <= x <= hi (data units): log r = sum of
    log Phi((hi - x) / width) + log Phi((x - lo) / width), an indicator as width -> 0.

    Shapes: lo, hi floats or (*D)."""

    lo: float | torch.Tensor
    hi: float | torch.Tensor
    width: float = 0.05

    def log_r(self, model, x):
        """The soft indicator in data units, nats. Shapes: x (B, *D) -> (B,) float64."""
        y = model.scaler.inverse(x)
        lo, hi = torch.as_tensor(self.lo, dtype=torch.float64), torch.as_tensor(self.hi, dtype=torch.float64)
        return sum_dims(torch.special.log_ndtr((hi - y) / self.width) + torch.special.log_ndtr((y - lo) / self.width))


@dataclass
class ClassifierGuidance(Condition):
    """log r(x) = log p(label | x) from a classifier of data-unit batches returning
    log-probabilities (classifier guidance).

    Shapes: classifier (B, *D) -> (B, K); label an int in [0, K)."""

    classifier: Callable[[torch.Tensor], torch.Tensor]
    label: int

    def log_r(self, model, x):
        """log p(label | x) at x in data units. Shapes: x (B, *D) -> (B,)."""
        logp = self.classifier(model.scaler.inverse(x))
        return logp[:, self.label]


@dataclass
class BitProbabilities(Condition):
    """r(x) = prod_i d_i^x_i (1 - d_i)^(1 - x_i) over binary x; d = 1/2 says nothing.

    Shapes: d (*D) or (n, *D) in [0, 1]."""

    d: torch.Tensor

    methods = frozenset({"guidance", "product", "smc"})
    default = "product"

    def probs(self, model):
        """d checked, in the data's shape. Shapes: -> (1 or n, *D) float64."""
        d = _broadcast(self.d, model, "the bit probabilities")
        if ((d < 0) | (d > 1)).any():
            raise DataError("bit probabilities must lie in [0, 1]")
        return d

    bits = True
    wrong_data = "bit probabilities condition binary data (the binomial process)"

    def check_values(self, model: DiffusionModel) -> None:
        """d shaped for the data, in [0, 1]. Shapes: d (*D) or (n, *D)."""
        self.probs(model)

    def log_r(self, model, x):
        """sum x log d + (1 - x) log(1 - d), nats. Shapes: x (B, *D) binary -> (B,) float64."""
        d = self.probs(model)
        x = x.to(torch.float64)
        return sum_dims(torch.xlogy(x, d) + torch.xlogy(1 - x, 1 - d))

    def product(self, model: DiffusionModel):
        """The flip rate c d / (c d + (1 - c)(1 - d)) at every step. Shapes: a kernel
        transform over (B, *D)."""
        self.check(model)
        return FlipRate(self.probs(model))

    def guidance(self, model: DiffusionModel, scale: float):
        """On bits, eq. 61's shift has no mean to move; r multiplies the kernel exactly
        instead (the flip rate), so guidance is the product and scale plays no part.
        Shapes: a kernel transform over (B, *D)."""
        return self.product(model)

    def twist(self, model: DiffusionModel, steer: bool) -> Twist:
        """The expectation of r under the predicted P(x_0 | x_t), in closed form (steer or
        not); without a prediction it stays as it was. Shapes: the twist maps
        (kernel with x0 logits (B, *D), x_t, abar_t) -> (B,) float64."""
        d0 = self.probs(model)

        def expected_r(kernel, x_t, abar_t):
            if kernel.x0 is None:
                return None
            d = repeat_rows(d0, kernel.x0.shape[0]).to(kernel.x0.device)
            p = torch.sigmoid(kernel.x0.to(torch.float64))
            return sum_dims(torch.log(p * d + (1 - p) * (1 - d)))

        return expected_r


@dataclass
class _LogR(Condition):
    """Any other object with log_r(model, x) on model-unit batches: guidance and SMC,
    as any differentiable r. Shapes: log_r (B, *D) -> (B,)."""

    r: object

    def log_r(self, model, x):
        """The object's own log r. Shapes: x (B, *D) -> (B,)."""
        return self.r.log_r(model, x)


def as_condition(condition) -> Condition:
    """The condition with its behaviour; an object that only has a log_r gets the
    defaults of a differentiable r. Shapes: none."""
    return condition if isinstance(condition, Condition) else _LogR(condition)
