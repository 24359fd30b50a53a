"""The pieces a conditioned chain is built from (paper section 2.5), each a small object
that does one thing to one hop; ``conditioning`` picks and joins them.

Kernel transforms, Kernel -> Kernel (the hop's kernel times r, or moved towards it):

- ``Guidance(log_r, scale)``: eq. 61, the mean shifted by scale * Sigma grad log r(mu);
- ``FlipRate(d)``: bits, the kernel times r = prod d^x (1 - d)^(1 - x) exactly: the flip
  rate c d / (c d + (1 - c)(1 - d)), i.e. logit c + logit d;
- ``GaussianProduct(y, noise_var, gain)``: the kernel times a Gaussian observation's
  likelihood, in closed form (``gaussian_product``).

Step transforms, one hop of the chain from the hop's kernel (``kernel_of``):

- ``Sample(transform)``: a draw from the kernel, transformed or not;
- ``Clamp(values, mask)``: known coordinates set to their clean values at every step;
- ``Replace(values, mask, resample)``: known coordinates replaced by forward-noised clean
  values, with resample - 1 extra round trips per hop (RePaint).

Starts, (model, n, grid, generator) -> (x, grid): ``from_prior`` (x_T from the prior,
as the unconditioned chain) and ``FromObservation`` (a noisy observation as a latent).

``Chain(kernel_of, move, begin)`` joins a start and a step transform into a stepper
(``ancestral.Plain``'s protocol: start, step, finish) that ``sample`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import DataError
from ..kernels import Bernoulli, Kernel, Normal
from ..tensors import expand_as
from .ancestral import Plain

# (model, x_t, t, abar_s, abar_t) -> the hop's kernel p(x_s | x_t) (``Plain.kernel``).
KernelOf = Callable[..., Kernel]


def repeat_rows(v: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a (1, ...) tensor to n rows; an (m, ...) one with n a multiple of m gives
    each of its rows to n / m consecutive rows (the particles of one sample).

    Shapes: v (1 or m, ...) -> (n, ...).
    """
    if v.shape[0] == 1:
        return v.expand((n,) + tuple(v.shape[1:]))
    if n % v.shape[0]:
        raise DataError(f"the condition holds {v.shape[0]} examples, but {n} samples were asked for")
    return v.repeat_interleave(n // v.shape[0], 0)


# ----------------------------------------------------------------------------- kernel transforms


def gaussian_product(kernel: Normal, y: torch.Tensor, noise_var, gain: torch.Tensor | None) -> Normal:
    """N(mu, var) times N(y; gain x, noise_var), normalised over x, per coordinate:
    precision 1/var + gain^2 / noise_var (gain 1 when None, 0 where unobserved).

    Shapes: kernel over (B, *D); y (1 or B, *D); noise_var float or (B, *D);
    gain None or (1 or B, *D) -> Normal over (B, *D).
    """
    mean = kernel.mean.to(torch.float64)
    var = expand_as(kernel.var.to(torch.float64), mean).expand(mean.shape)
    gain = torch.ones_like(mean) if gain is None else gain.to(mean.device).expand(mean.shape)
    y = y.to(mean.device).expand(mean.shape)
    precision = 1 / var + gain**2 / noise_var
    new_var = 1 / precision
    new_mean = new_var * (mean / var + gain * y / noise_var)
    return Normal(mean=new_mean.to(kernel.mean.dtype), var=new_var, x0=kernel.x0)


@dataclass(frozen=True)
class Guidance:
    """eq. 61: the kernel's mean shifted by scale * Sigma grad log r(mu), the first-order
    form of the product with r for a kernel narrow relative to r's variation.

    log_r: model-unit batches -> log r, nats. Shapes: (B, *D) -> (B,); the kernel
    Normal over (B, *D) -> Normal over (B, *D).
    """

    log_r: Callable[[torch.Tensor], torch.Tensor]
    scale: float

    def __call__(self, kernel: Normal) -> Normal:
        """The shifted kernel (same variance). Shapes: over (B, *D) -> over (B, *D)."""
        with torch.enable_grad():
            mu = kernel.mean.detach().to(torch.float64).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_r(mu).sum(), mu)
        var = expand_as(kernel.var.to(torch.float64), mu)
        mean = kernel.mean.to(torch.float64) + self.scale * var * grad  # eq. 61
        return Normal(mean=mean.to(kernel.mean.dtype), var=kernel.var, x0=kernel.x0)


@dataclass(frozen=True)
class FlipRate:
    """A Bernoulli kernel times r(x) = prod_i d_i^x_i (1 - d_i)^(1 - x_i), exactly: each
    bit's rate c becomes c d / (c d + (1 - c)(1 - d)), so its logit adds logit d.

    Shapes: d (1 or n, *D) in [0, 1]; the kernel Bernoulli over (B, *D) -> Bernoulli.
    """

    d: torch.Tensor

    def __call__(self, kernel: Bernoulli) -> Bernoulli:
        """The kernel times r. Shapes: over (B, *D) -> over (B, *D)."""
        d = repeat_rows(self.d, kernel.logits.shape[0]).to(kernel.logits.device)
        return Bernoulli(logits=kernel.logits + torch.logit(d), x0=kernel.x0)


@dataclass(frozen=True)
class GaussianProduct:
    """A Normal kernel times the likelihood of y = gain x + N(0, noise_var), the same
    observation at every step (the paper's r constant in t; ``gaussian_product``).

    Shapes: y (1 or n, *D); noise_var a float; gain None or (1 or n, *D); the kernel
    Normal over (B, *D) -> Normal over (B, *D).
    """

    y: torch.Tensor
    noise_var: float
    gain: torch.Tensor | None

    def __call__(self, kernel: Normal) -> Normal:
        """The kernel times the likelihood. Shapes: over (B, *D) -> over (B, *D)."""
        b = kernel.mean.shape[0]
        return gaussian_product(kernel, repeat_rows(self.y, b), self.noise_var,
                                None if self.gain is None else repeat_rows(self.gain, b))


# ----------------------------------------------------------------------------- step transforms


@dataclass(frozen=True)
class Sample:
    """A draw from the hop's kernel, through a kernel transform where one is given.

    Shapes: x (B, *D) -> (B, *D).
    """

    transform: Callable[[Kernel], Kernel] | None = None

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's first latent, as the start drew it. Shapes: (B, *D) -> (B, *D)."""
        return x

    def __call__(self, kernel_of: KernelOf, model, x, t, abar_s, abar_t, generator) -> torch.Tensor:
        """x_s. Shapes: x (B, *D), t, abar_s, abar_t (B,) -> (B, *D)."""
        kernel = kernel_of(model, x, t, abar_s, abar_t)
        if self.transform is not None:
            kernel = self.transform(kernel)
        return kernel.sample(generator)


@dataclass(frozen=True)
class Clamp:
    """The paper's inpainting: the known coordinates at their clean values at every step,
    the first latent included (r constant in t).

    Shapes: values (n, *D) model units, mask (n, *D) bool; x (n, *D) -> (n, *D).
    """

    values: torch.Tensor
    mask: torch.Tensor

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The first latent with the known coordinates clamped. Shapes: (n, *D) -> (n, *D)."""
        return torch.where(self.mask, self.values.to(x.dtype), x)

    def __call__(self, kernel_of: KernelOf, model, x, t, abar_s, abar_t, generator) -> torch.Tensor:
        """x_s with the known coordinates clean. Shapes: x (n, *D), t, abar_s, abar_t (n,) -> (n, *D)."""
        kernel = kernel_of(model, x, t, abar_s, abar_t)
        return torch.where(self.mask, self.values.to(x.dtype), kernel.sample(generator))


@dataclass(frozen=True)
class Replace:
    """RePaint: after each hop the known coordinates are replaced by their clean values
    noised forward to the hop's time; resample - 1 extra round trips (re-noise one hop
    with the forward kernel, step again) let the unknown coordinates adapt to them.

    Shapes: values (n, *D) model units, mask (n, *D) bool; x (n, *D) -> (n, *D).
    """

    values: torch.Tensor
    mask: torch.Tensor
    resample: int = 1

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The first latent, as the start drew it. Shapes: (n, *D) -> (n, *D)."""
        return x

    def __call__(self, kernel_of: KernelOf, model, x, t, abar_s, abar_t, generator) -> torch.Tensor:
        """x_s after resample round trips. Shapes: x (n, *D), t, abar_s, abar_t (n,) -> (n, *D)."""
        for u in range(self.resample):
            if u > 0:  # RePaint's round trip: back up one hop with the forward kernel
                x = model.process.forward(x, abar_s, abar_t).sample(generator).to(x.dtype)
            x = self._replace(model, kernel_of(model, x, t, abar_s, abar_t).sample(generator), abar_s, generator)
        return x

    def _replace(self, model, x_s, abar_s, generator):
        """x_s with the known coordinates drawn from q(x_s | x_0 = values). Shapes: (n, *D) -> (n, *D)."""
        known = model.process.forward(self.values, torch.ones_like(abar_s[:1]).expand(self.values.shape[0]),
                                      abar_s).sample(generator)
        return torch.where(self.mask, known.to(x_s.dtype), x_s)


# ----------------------------------------------------------------------------- starts


def from_prior(model, n: int, grid: torch.Tensor, generator: torch.Generator):
    """x_T from the process's prior, as the unconditioned chain starts (``Plain.start``).

    Shapes: -> x (n, *D) and the grid unchanged.
    """
    return Plain().start(model, n, grid, generator)


@dataclass(frozen=True)
class FromObservation:
    """Plain denoising (A = I): y is x_0 plus noise of variance sigma^2, which is
    x_t / sqrt(abar_t) at the time where (1 - abar_t) / abar_t = sigma^2, so the chain
    starts there from sqrt(abar_t) y (topped up with noise to exactly 1 - abar_t) and
    runs unconditioned; with an exact model this samples p(x_0 | y) exactly (the paper's
    Figure 3 starts its reverse chain from the noisy image).

    Shapes: y (1 or n, *D) model units, sigma in model units; -> x (n, *D) float32 and
    the grid cut after the start's time.
    """

    y: torch.Tensor
    sigma: float

    def __call__(self, model, n: int, grid: torch.Tensor, generator: torch.Generator):
        """The first latent and the grid from the start's time. Shapes: -> (n, *D) float32, (k + 1,)."""
        y = repeat_rows(self.y, n).to(grid.device)
        # The first time whose noise is at least the observation's: (1 - abar) >= abar sigma^2.
        abar = model.schedule.abar(grid)
        noisy_enough = (1 - abar) >= abar * self.sigma**2
        k = int(noisy_enough.nonzero()[0]) if noisy_enough.any() else len(grid) - 1  # else: start at x_T
        a = abar[k]
        extra = (1 - a - a * self.sigma**2).clamp_min(0)  # top up the noise to exactly 1 - abar
        z = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(y.device)
        x = a.sqrt() * y + extra.sqrt() * z
        return x.to(torch.float32), grid[: k + 1]


# ----------------------------------------------------------------------------- the chain


class Chain:
    """One conditioned chain as a stepper (``ancestral.Plain``'s protocol): a start
    strategy, then the same step transform at every hop over the kernels of kernel_of.
    It keeps the row count and carries no weights (``smc.SMC`` does both).

    Shapes: start -> x (n, *D) and the grid; step (n, *D) -> (n, *D); finish -> (n, *D).
    """

    dead_samples = 0  # only a population sampler can lose a sample

    def __init__(self, kernel_of: KernelOf, move=None, begin=from_prior):
        self.kernel_of, self.move, self.begin = kernel_of, move or Sample(), begin

    def start(self, model, n, grid, generator):
        """The first latent and the grid left to run. Shapes: -> x (n, *D), grid (k,)."""
        x, grid = self.begin(model, n, grid, generator)
        return self.move.enter(x), grid

    def step(self, model, x, t, abar_s, abar_t, generator):
        """One hop t -> s. Shapes: x (n, *D), t, abar_s, abar_t (n,) -> (n, *D)."""
        return self.move(self.kernel_of, model, x, t, abar_s, abar_t, generator)

    def finish(self, x, generator):
        """The chain's end as it is. Shapes: (n, *D) -> (n, *D)."""
        return x
