"""Multiplying a trained model by a second distribution r(x) (paper section 2.5):
sampling from p~(x_0) proportional to p(x_0) r(x_0) without retraining.

A *condition* is r, given in the data's own units: ``Known`` (a delta on some
coordinates: inpainting), ``GaussianObservation`` (y = A x + noise of known sigma:
denoising, inpainting with noise, downsampling), ``Box`` (a soft box constraint),
``ClassifierGuidance`` (log r = a classifier's log-probability of a class),
``Smooth`` (any differentiable log r) and ``BitProbabilities`` (independent
r(x_i = 1) = d_i for binary data).

``Conditioning(condition, method)`` turns a condition into a stepper that the
ancestral sampler runs in place of its plain step (``sample(..., condition=...)``),
for both processes and any chain (all steps, respaced, continuous time). Methods:

- ``guidance``: eq. 61, the kernel's mean shifted by scale * Sigma grad log r(mu);
  for binary data the flip rate c d / (c d + (1 - c)(1 - d)) with d = r(x_i = 1).
- ``product``: the reverse kernel times r in closed form each step: a Gaussian
  observation (precision-weighted mean), or bit probabilities (the flip rate above).
- ``clamp``: known coordinates set to their clean values at every step (the
  paper's inpainting, r constant in t).
- ``replace``: known coordinates replaced by forward-noised clean values at each step,
  with ``resample`` - 1 extra round trips (re-noise one hop, step again) per hop
  (RePaint), so the unknown coordinates can adapt to the known ones.
- ``start``: plain denoising (A = I): y is x_0 plus noise of variance sigma^2, which is
  x_t / sqrt(abar_t) at the time where (1 - abar_t) / abar_t = sigma^2; the chain starts
  there from sqrt(abar_t) y and runs unconditioned. With an exact model this samples
  p(x_0 | y) exactly (the paper's Figure 3 starts its reverse chain from the noisy image).
- ``smc``: sequential Monte Carlo with ``particles`` per sample: particles are
  proposed by the model's kernel (for a Gaussian observation: the kernel times the
  observation's likelihood seen from the next time), weighted by p / proposal and by
  a twist r_t(x_t) that ends at r (``Conditioning._twist``), and resampled when the
  effective sample size falls below half. One particle per sample is returned, drawn
  by weight: as particles grow, the samples approach p~ (asymptotically exact,
  unlike the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError, DataError
from ..kernels import Bernoulli, Kernel, Normal
from ..model import DiffusionModel
from ..tensors import expand_as, sum_dims
from .ancestral import Plain, sample

METHODS = ("guidance", "product", "clamp", "replace", "start", "smc")


# ----------------------------------------------------------------------------- conditions


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


@dataclass
class Known:
    """r a delta on the coordinates where mask is 1, at the given values (data units).

    Shapes: values (*D) or (n, *D); mask the same, 0/1."""

    values: torch.Tensor
    mask: torch.Tensor

    def scaled(self, model: DiffusionModel):
        """Known values in model units and the mask as bool. Shapes: -> (1 or n, *D) twice."""
        values = _broadcast(self.values, model, "the known values")
        mask = _broadcast(self.mask, model, "the mask")
        if not ((mask == 0) | (mask == 1)).all():
            raise DataError("the mask must hold only 0 (unknown) and 1 (known)")
        if (model.process.name == "binomial"):
            from ..processes.binomial import check_binary

            check_binary(torch.where(mask == 1, values, torch.zeros_like(values)).reshape(values.shape[0], -1),
                         "the known values")
        return ((values - model.scaler.shift) / model.scaler.scale), mask.bool()

    def log_r(self, model, x):
        raise ConfigError("a Known condition is a delta: use method clamp or replace")


@dataclass
class GaussianObservation:
    """y = A x + N(0, sigma^2 I) in data units. A: None (identity), a gain per coordinate
    shaped like the data (0 where unobserved), or a matrix (m, D) over the flattened data.

    Shapes: y (*D) or (n, *D) for A None or a gain, (m,) or (n, m) for a matrix."""

    y: torch.Tensor
    sigma: float
    A: torch.Tensor | None = None

    def __post_init__(self):
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise DataError(f"the observation noise sigma must be a positive number, got {self.sigma!r}")

    def scaled(self, model: DiffusionModel):
        """(y', sigma', A) with y' = A x + N(0, sigma'^2) for x in model units.

        x_data = s x + shift, so y - A shift = s A x + noise: divide by s.
        Shapes: -> y' (1 or n, *D) or (1 or n, m), sigma' float, A None / (1, *D) / (m, D).
        """
        s = float(model.scaler.scale)
        shift = model.scaler.shift
        if self.A is None:
            y = _broadcast(self.y, model, "the observation")
            return (y - shift) / s, self.sigma / s, None
        a = torch.as_tensor(self.A, dtype=torch.float64)
        if a.dim() == 2 and tuple(a.shape) != model.data_shape:
            if a.shape[1] != model.n_dims:
                raise DataError(f"the observation matrix has {a.shape[1]} columns; the data have {model.n_dims} dimensions")
            y = torch.as_tensor(self.y, dtype=torch.float64).reshape(-1, a.shape[0])
            return (y - shift.reshape(-1) @ a.T) / s, self.sigma / s, a
        a = _broadcast(a, model, "the observation gain")
        y = _broadcast(self.y, model, "the observation")
        return (y - a * shift) / s, self.sigma / s, a

    def log_r(self, model, x):
        y, sigma, a = self.scaled(model)
        x = x.to(torch.float64)
        if a is None:
            pred = x
        elif _is_matrix(self, model):
            pred = x.reshape(x.shape[0], -1) @ a.T.to(x.device)
        else:
            pred = a.to(x.device) * x
        return -0.5 * sum_dims((y.to(x.device) - pred) ** 2) / sigma**2


@dataclass
class Smooth:
    """Any differentiable log r, called on data-unit batches. Shapes: (B, *D) -> (B,)."""

    log_r_data: Callable[[torch.Tensor], torch.Tensor]

    def log_r(self, model, x):
        return self.log_r_data(model.scaler.inverse(x))


@dataclass
class Box:
    """A soft box constraint lo <= x <= hi (data units): log r = sum of
    log Phi((hi - x) / width) + log Phi((x - lo) / width), an indicator as width -> 0.

    Shapes: lo, hi floats or (*D)."""

    lo: float | torch.Tensor
    hi: float | torch.Tensor
    width: float = 0.05

    def log_r(self, model, x):
        y = model.scaler.inverse(x)
        lo, hi = torch.as_tensor(self.lo, dtype=torch.float64), torch.as_tensor(self.hi, dtype=torch.float64)
        return sum_dims(torch.special.log_ndtr((hi - y) / self.width) + torch.special.log_ndtr((y - lo) / self.width))


@dataclass
class ClassifierGuidance:
    """log r(x) = log p(label | x) from a classifier of data-unit batches returning
    log-probabilities (classifier guidance).

    Shapes: classifier (B, *D) -> (B, K); label an int in [0, K)."""

    classifier: Callable[[torch.Tensor], torch.Tensor]
    label: int

    def log_r(self, model, x):
        logp = self.classifier(model.scaler.inverse(x))
        return logp[:, self.label]


@dataclass
class BitProbabilities:
    """r(x) = prod_i d_i^x_i (1 - d_i)^(1 - x_i) over binary x; d = 1/2 says nothing.

    Shapes: d (*D) or (n, *D) in [0, 1]."""

    d: torch.Tensor

    def probs(self, model):
        d = _broadcast(self.d, model, "the bit probabilities")
        if ((d < 0) | (d > 1)).any():
            raise DataError("bit probabilities must lie in [0, 1]")
        return d

    def log_r(self, model, x):
        d = self.probs(model)
        x = x.to(torch.float64)
        return sum_dims(torch.xlogy(x, d) + torch.xlogy(1 - x, 1 - d))


# ----------------------------------------------------------------------------- the stepper


def _rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a (1, ...) tensor to n rows; an (m, ...) one with n a multiple of m gives
    each of its rows to n / m consecutive rows (the particles of one sample)."""
    if v.shape[0] == 1:
        return v.expand((n,) + tuple(v.shape[1:]))
    if n % v.shape[0]:
        raise DataError(f"the condition holds {v.shape[0]} examples, but {n} samples were asked for")
    return v.repeat_interleave(n // v.shape[0], 0)


class Conditioning(Plain):
    """The sampler's step for p(x_0) r(x_0); see the module docstring for the methods.

    scale multiplies the guidance term (eq. 61); resample is RePaint's number of
    round trips per hop; particles is the SMC population per sample; steer makes SMC
    weight particles during the chain by r at the model's x_0 prediction (for an r
    that is rare under the model: fewer particles wasted, but a bias at few particles;
    Gaussian observations and bit probabilities always use their closed-form twist);
    eta runs the chain with DDIM kernels (``ancestral.Plain``).

    Shapes: as ``ancestral.Plain``; with smc the chain carries n x particles rows and
    finish returns n.
    """

    def __init__(self, condition, method: str | None = None, scale: float = 1.0, resample: int = 1,
                 particles: int = 16, steer: bool = False, eta: float | None = None):
        super().__init__(eta)
        method = method or default_method(condition)
        if method not in METHODS:
            raise ConfigError(f"unknown conditioning method {method!r}; choose one of {', '.join(METHODS)}")
        delta = isinstance(condition, Known)
        if delta and method not in ("clamp", "replace", "smc"):
            raise ConfigError(f"known coordinates (a mask) take method clamp or replace (smc for binary data), not {method}")
        if not delta and method in ("clamp", "replace"):
            raise ConfigError(f"method {method} needs known coordinates (--known and --mask)")
        if method == "start" and not (isinstance(condition, GaussianObservation) and condition.A is None):
            raise ConfigError("method start denoises a full observation: it needs a Gaussian observation with A = I")
        if method == "product" and not isinstance(condition, (GaussianObservation, BitProbabilities)):
            raise ConfigError("method product needs a Gaussian observation or bit probabilities")
        if eta == 0 and method in ("product", "guidance", "smc"):
            raise ConfigError(f"method {method} needs a stochastic kernel: use eta > 0 (or none)")
        if resample < 1 or particles < 1:
            raise ConfigError("resample and particles must be at least 1")
        self.condition, self.method, self.scale = condition, method, float(scale)
        self.resample, self.particles, self.steer = int(resample), int(particles), bool(steer)
        self.dead_samples = 0  # smc: samples whose particles all ended with r = 0

    # -- the chain's start and end

    def start(self, model, n, grid, generator):
        if isinstance(self.condition, Known) and self.method == "smc":
            if not (model.process.name == "binomial"):
                raise ConfigError("known coordinates of continuous data are a delta, which SMC cannot weight: "
                                  "use clamp or replace, or an observation with small noise")
            # Known bits are bit probabilities of 0 or 1 (1/2 where unknown).
            values, mask = self.condition.scaled(model)
            self.condition = BitProbabilities(torch.where(mask, values, torch.full_like(values, 0.5)))
        self._check_process(model)
        self.n, self.model = n, model
        if self.method == "start":
            return self._start_from_observation(model, n, grid, generator)
        rows = n * self.particles if self.method == "smc" else n
        x, grid = super().start(model, rows, grid, generator)
        if self.method in ("clamp", "replace"):
            self.values, self.mask = (_rows(v, n).to(grid.device) for v in self.condition.scaled(model))
            if self.method == "clamp":
                x = torch.where(self.mask, self.values.to(x.dtype), x)
        if self.method == "smc":
            self.log_w = torch.zeros(rows, dtype=torch.float64, device=grid.device)
            self.twist = torch.zeros(rows, dtype=torch.float64, device=grid.device)  # log r_T = 0
        return x, grid

    def finish(self, x, generator):
        if self.method != "smc":
            return x
        # The exact r at x_0 replaces the last twist.
        self.log_w += self.condition.log_r(self.model, x.to(torch.float64)).detach() - self.twist
        w = torch.nan_to_num(self.log_w.reshape(self.n, self.particles), nan=-math.inf, posinf=-math.inf)
        dead = torch.isinf(w).all(1, keepdim=True)
        # Samples none of whose particles has r > 0: returned as drawn, and counted.
        self.dead_samples = int(dead.sum())
        w = torch.where(dead, torch.zeros_like(w), w)
        pick = torch.multinomial(torch.softmax(w, 1).cpu(), 1, generator=generator).reshape(-1)
        rows = torch.arange(self.n) * self.particles + pick
        return x[rows.to(x.device)]

    def _check_process(self, model):
        if (model.process.name == "binomial") and self.method in ("start",):
            raise ConfigError(f"method {self.method} is for the Gaussian process")
        if (model.process.name == "binomial") and self.method == "guidance" and not isinstance(self.condition, BitProbabilities):
            raise ConfigError("guidance on binary data needs bit probabilities (the flip rate of section 2.5)")
        if not (model.process.name == "binomial") and isinstance(self.condition, BitProbabilities):
            raise ConfigError("bit probabilities condition binary data (the binomial process)")
        if isinstance(self.condition, GaussianObservation):
            if (model.process.name == "binomial"):
                raise ConfigError("a Gaussian observation conditions continuous data (the Gaussian process)")
            if self.method == "product" and _is_matrix(self.condition, model):
                raise ConfigError("method product handles an identity or per-coordinate observation; use guidance or smc for a matrix")
            self.condition.scaled(model)  # shape errors now, not mid-chain

    def _start_from_observation(self, model, n, grid, generator):
        y, sigma, _ = self.condition.scaled(model)
        y = _rows(y, n).to(grid.device)
        # The first time whose noise is at least the observation's: (1 - abar) >= abar sigma^2.
        abar = model.schedule.abar(grid)
        noisy_enough = (1 - abar) >= abar * sigma**2
        k = int(noisy_enough.nonzero()[0]) if noisy_enough.any() else len(grid) - 1  # else: start at x_T
        a = abar[k]
        extra = (1 - a - a * sigma**2).clamp_min(0)  # top up the noise to exactly 1 - abar
        z = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.device)
        x = a.sqrt() * y + extra.sqrt() * z
        return x.to(torch.float32), grid[: k + 1]

    # -- one hop

    def step(self, model, x, t, abar_s, abar_t, generator):
        if self.method == "start":
            return super().step(model, x, t, abar_s, abar_t, generator)
        if self.method == "replace":
            for u in range(self.resample):
                if u > 0:  # RePaint's round trip: back up one hop with the forward kernel
                    x = model.process.forward(x, abar_s, abar_t).sample(generator).to(x.dtype)
                x = self._replace(model, self.kernel(model, x, t, abar_s, abar_t).sample(generator), abar_s, generator)
            return x
        kernel = self.kernel(model, x, t, abar_s, abar_t)
        if self.method == "clamp":
            return torch.where(self.mask, self.values.to(x.dtype), kernel.sample(generator))
        if self.method == "smc":
            return self._smc_step(model, x, kernel, abar_s, abar_t, generator)
        return self._conditioned(model, kernel).sample(generator)

    def _replace(self, model, x_s, abar_s, generator):
        known = model.process.forward(self.values, torch.ones_like(abar_s[:1]).expand(self.values.shape[0]),
                               abar_s).sample(generator)
        return torch.where(self.mask, known.to(x_s.dtype), x_s)

    def _conditioned(self, model, kernel: Kernel, abar_s=None) -> Kernel:
        """The kernel times r: closed form (product), or shifted along grad log r (guidance).
        With abar_s (the SMC proposal), a Gaussian observation enters as r_s below."""
        c = self.condition
        if isinstance(kernel, Bernoulli):  # binary data: the flip rate c d / (c d + (1 - c)(1 - d))
            d = _rows(c.probs(model), kernel.logits.shape[0]).to(kernel.logits.device)
            return Bernoulli(logits=kernel.logits + torch.logit(d), x0=kernel.x0)
        if isinstance(c, GaussianObservation) and not _is_matrix(c, model):
            if abar_s is not None:
                return _gaussian_product(kernel, *self._observation_at(model, abar_s))
            if self.method == "product":
                y, sigma, a = c.scaled(model)
                b = kernel.mean.shape[0]
                return _gaussian_product(kernel, _rows(y, b), sigma**2, None if a is None else _rows(a, b))
        with torch.enable_grad():
            mu = kernel.mean.detach().to(torch.float64).requires_grad_(True)
            (grad,) = torch.autograd.grad(c.log_r(model, mu).sum(), mu)
        var = expand_as(kernel.var.to(torch.float64), mu)
        mean = kernel.mean.to(torch.float64) + self.scale * var * grad  # eq. 61
        return Normal(mean=mean.to(kernel.mean.dtype), var=kernel.var, x0=kernel.x0)

    def _observation_at(self, model, abar):
        """A Gaussian observation seen from x_t: y = (g / sqrt(abar)) x_t + noise of variance
        sigma^2 + g^2 (1 - abar) / abar, since x_t / sqrt(abar) = x_0 + sqrt((1 - abar) / abar) eps.
        Its r_t(x_t) is the exact likelihood of y under a flat prior on x_0, and r_0 = r.

        Shapes: abar (B,) -> y (1 or B, *D), noise variance (B, *D), gain (B, *D).
        """
        y, sigma, a = self.condition.scaled(model)
        y = _rows(y, abar.shape[0]).to(abar.device)
        g = torch.ones_like(y) if a is None else _rows(a, abar.shape[0]).to(abar.device)
        ratio = expand_as(((1 - abar) / abar).to(torch.float64), g.expand((abar.shape[0],) + tuple(g.shape[1:])))
        return y, sigma**2 + g**2 * ratio, g / expand_as(abar.sqrt().to(torch.float64), ratio)

    def _smc_step(self, model, x, kernel, abar_s, abar_t, generator):
        """Weight by the twist at x_t, resample, propose x_s from the kernel times r_s."""
        twist = self._twist(model, kernel, x, abar_t)
        self.log_w += twist - self.twist
        self.twist = twist
        index = self._resample(generator)
        if index is not None:
            x, kernel, abar_s = x[index], kernel.take(index), abar_s[index]
        proposal = self._conditioned(model, kernel, abar_s) if self._proposes(model) else kernel
        x_s = proposal.sample(generator)
        self.log_w += kernel.log_prob(x_s) - proposal.log_prob(x_s)
        return x_s

    def _proposes(self, model) -> bool:
        """Whether the proposal includes r: only for a Gaussian observation, whose r_s
        (``_observation_at``) is right for each noise level. Other r's propose from the
        model's kernel and steer by their twist and resampling. eq. 61's shift is
        unbounded where r is sharp relative to the kernel; and the flip rate with r at
        every step pins known bits from the start, after which the model's prediction
        of them (the twist) no longer tells the particles apart (on heartbeat with a
        known bit, 39% of samples were the one right sequence, against 100% with the
        model's own kernel as proposal, 16 particles each)."""
        c = self.condition
        return not (model.process.name == "binomial") and isinstance(c, GaussianObservation) and not _is_matrix(c, model)

    def _twist(self, model, kernel, x_t, abar_t) -> torch.Tensor:
        """log r_t(x_t), the intermediate target's factor: for a Gaussian observation its
        likelihood seen from x_t (``_observation_at``); for binary data the expectation of
        r under the predicted P(x_0 | x_t) (closed form for bit probabilities); otherwise,
        with ``steer``, r at the model's x_0 prediction raised to abar_t, and without it
        no twist (importance resampling by r at the end). Without a prediction it stays
        as it was. Any choice keeps SMC asymptotically exact (the twists telescope and
        the last is r itself); a good one needs fewer particles."""
        c = self.condition
        if isinstance(c, GaussianObservation) and not _is_matrix(c, model):
            y, var, gain = self._observation_at(model, abar_t)
            resid = y.to(x_t.device) - gain * x_t.to(torch.float64)
            return -0.5 * sum_dims(resid**2 / var + torch.log(2 * math.pi * var))
        if kernel.x0 is None:
            return self.twist
        if (model.process.name == "binomial"):
            if not isinstance(c, BitProbabilities):
                return self.twist
            d = _rows(c.probs(model), kernel.x0.shape[0]).to(kernel.x0.device)
            p = torch.sigmoid(kernel.x0.to(torch.float64))
            return sum_dims(torch.log(p * d + (1 - p) * (1 - d)))
        if not self.steer:
            return self.twist
        # Tempered by the signal fraction: early in the chain x0_hat is a blurred guess,
        # and a sharp r at it would collapse the particles onto the guess's side.
        return abar_t.to(torch.float64) * c.log_r(model, kernel.x0.to(torch.float64)).detach()

    def _resample(self, generator) -> torch.Tensor | None:
        """Multinomial resampling of each sample's particles whose effective sample size
        fell below half; returns the row index, or None when no group needs it."""
        n, m = self.n, self.particles
        # A particle with r = 0 (or an overflow) has weight 0; a group with no weight
        # left starts over from equal weights.
        w = torch.nan_to_num(self.log_w.reshape(n, m), nan=-math.inf, posinf=-math.inf)
        w = torch.where(torch.isinf(w).all(1, keepdim=True), torch.zeros_like(w), w)
        prob = torch.softmax(w, 1)
        redo = 1.0 / (prob**2).sum(1) < m / 2
        if not redo.any():
            return None
        draws = torch.multinomial(prob.cpu(), m, replacement=True, generator=generator).to(w.device)
        keep = torch.arange(m, device=w.device).expand(n, m)
        index = (torch.where(redo[:, None], draws, keep) + (torch.arange(n, device=w.device) * m)[:, None]).reshape(-1)
        # Resampled groups restart from equal weights; each particle keeps its twist.
        self.log_w = torch.where(redo[:, None], torch.zeros_like(w), w).reshape(-1)
        self.twist = self.twist[index]
        return index


def _is_matrix(c: GaussianObservation, model) -> bool:
    return c.A is not None and tuple(torch.as_tensor(c.A).shape) != model.data_shape


def _gaussian_product(kernel: Kernel, y, noise_var, gain) -> Kernel:
    """N(mu, var) times N(y; gain x, noise_var), normalised over x, per coordinate:
    precision 1/var + gain^2 / noise_var (gain 1 when None, 0 where unobserved).

    Shapes: kernel over (B, *D); y (1 or B, *D); noise_var float or (B, *D) -> Kernel.
    """
    mean = kernel.mean.to(torch.float64)
    var = expand_as(kernel.var.to(torch.float64), mean).expand(mean.shape)
    gain = torch.ones_like(mean) if gain is None else gain.to(mean.device).expand(mean.shape)
    y = y.to(mean.device).expand(mean.shape)
    precision = 1 / var + gain**2 / noise_var
    new_var = 1 / precision
    new_mean = new_var * (mean / var + gain * y / noise_var)
    return Normal(mean=new_mean.to(kernel.mean.dtype), var=new_var, x0=kernel.x0)


def sample_conditioned(model: DiffusionModel, condition, n: int, generator: torch.Generator,
                       method: str | None = None, steps: int | None = None, progress: bool = False,
                       **options) -> torch.Tensor:
    """n samples of p(x_0) r(x_0) in the data's own units; known coordinates equal the
    given values exactly (not through the scaling's rounding). options: scale, resample,
    particles, steer (see ``Conditioning``).

    Shapes: returns (n, *D) float64.
    """
    stepper = Conditioning(condition, method, **options)
    x = sample(model, n, generator, steps=steps, progress=progress, condition=stepper)
    if stepper.dead_samples:
        import warnings

        warnings.warn(f"{stepper.dead_samples} of {n} samples had no particle with r > 0 and do not satisfy r; "
                      "use more particles", RuntimeWarning, stacklevel=2)
    y = model.scaler.inverse(x)
    if isinstance(condition, Known):
        values = _rows(_broadcast(condition.values, model, "the known values"), n).to(y.device)
        mask = _rows(_broadcast(condition.mask, model, "the mask"), n).to(y.device).bool()
        y = torch.where(mask, values, y)
    return y


def default_method(condition) -> str:
    """clamp for known coordinates (the paper's choice), start for a plain Gaussian
    observation (A = I), product for other Gaussian observations and for bit
    probabilities, guidance otherwise. Shapes: none (a condition -> a method name)."""
    if isinstance(condition, Known):
        return "clamp"
    if isinstance(condition, GaussianObservation):
        return "start" if condition.A is None else "product"
    if isinstance(condition, BitProbabilities):
        return "product"
    return "guidance"
