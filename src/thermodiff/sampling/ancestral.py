"""Ancestral sampling: plain functions over a DiffusionModel, with an explicit Generator.

Discrete time with all T steps draws from p(x_{t-1} | x_t) exactly as the bound
scores it. With fewer steps (respacing) or in continuous time the chain hops between
times s < t of a grid with the kernel built from the same prediction (posterior of
the hop with x0 replaced by the model's x0), which needs an eps / x0 / v model.
The last hop, from the first latent to the data, is the model's decoder.
The binomial process (binary data) runs the same chain with Bernoulli kernels from
x_T ~ B(1/2); respacing works with its x0 parametrisation.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..kernels import ddim_step, reverse_step
from ..model import DiffusionModel
from ..parametrization import reverse_kernel
from ..processes import binomial


def time_grid(model: DiffusionModel, steps: int | None = None) -> torch.Tensor:
    """Network times of the chain's latents, first to last, ending at t = 1.

    Discrete: steps 1..T (or `steps` of them, evenly spaced, always including 1 and T)
    as t = i / T. Continuous: `steps` + 1 points of [0, 1] (default T of the config).

    Shapes: returns (n,) float64.
    """
    if model.continuous:
        n = steps or 1000
        return torch.linspace(0, 1, n + 1, dtype=torch.float64)
    T = model.schedule.T
    if steps is None or steps >= T:
        return torch.arange(1, T + 1, dtype=torch.float64) / T
    if model.spec.parametrization == "paper":
        raise ConfigError("the paper's kernel is defined per step: sample with all T steps")
    idx = torch.unique(torch.round(torch.linspace(1, T, steps, dtype=torch.float64)))
    return idx / T


class Plain:
    """The unconditioned chain: draw x_T from the prior, step with p(x_s | x_t), or with
    the DDIM kernel of the same prediction when eta is given. The sampler's stepper;
    ``conditioning.Conditioning`` extends it for p(x_0) r(x_0).

    Shapes: start -> x (n, *D) and the grid; step (B, *D) -> (B, *D); finish -> (n, *D).
    """

    def __init__(self, eta: float | None = None):
        self.eta = eta

    def kernel(self, model, x, t, abar_s, abar_t):
        """The chain's kernel for one hop; the last hop is always the model's decoder
        (the DDIM kernel there would be a delta at x0_hat). Shapes: as ``kernels.reverse_step``."""
        if self.eta is None or bool((abar_s >= 1).all()):
            return reverse_step(model, x, t, abar_s, abar_t)
        return ddim_step(model, x, t, abar_s, abar_t, self.eta)

    def start(self, model, n, grid, generator):
        dev = grid.device
        if model.binomial:
            return binomial.sample_bernoulli(torch.zeros((n,) + model.data_shape, dtype=torch.float64), generator).to(dev), grid
        return torch.randn((n,) + model.data_shape, generator=generator).to(dev), grid

    def step(self, model, x, t, abar_s, abar_t, generator):
        return self.kernel(model, x, t, abar_s, abar_t).sample(generator)

    def finish(self, x, generator):
        return x


@torch.no_grad()
def sample(
    model: DiffusionModel,
    n: int,
    generator: torch.Generator,
    steps: int | None = None,
    keep: int = 0,
    progress: bool = False,
    condition=None,
    eta: float | None = None,
):
    """Draw n samples in the model's (scaled) units.

    keep > 0 also returns `keep` snapshots of the whole batch along the chain
    (including the start x_T and the end x_0), for trajectory figures.
    condition: a ``conditioning.Conditioning`` (samples from p(x_0) r(x_0)); it
    chooses the start of the chain and replaces each step (give eta to it, not here).
    eta: step with the DDIM kernel (0: deterministic) instead of the model's own.

    Shapes: returns x0 (n, *D), and with keep a list of (time, (n, *D)) pairs.
    """
    dev = next(model.parameters()).device
    if condition is not None and eta is not None:
        raise ConfigError("give eta to the Conditioning, which runs the chain")
    stepper = condition or Plain(eta)
    x, grid = stepper.start(model, n, time_grid(model, steps).to(dev), generator)
    snaps = []
    stride = max(1, len(grid) // max(1, keep - 1)) if keep else 0
    hops = range(len(grid) - 1, -1, -1)
    if progress:
        from tqdm import tqdm

        hops = tqdm(hops, desc="sample", unit="step", leave=False)
    for k in hops:
        t = grid[k].expand(x.shape[0])
        abar_t = model.abar_at(t)
        if keep and (len(grid) - 1 - k) % stride == 0:
            snaps.append((float(grid[k]), x.cpu().clone()))
        abar_s = model.abar_at(grid[k - 1].expand(x.shape[0])) if k > 0 else torch.ones_like(abar_t)
        x = stepper.step(model, x, t, abar_s, abar_t, generator)
    x = stepper.finish(x, generator)
    if keep:
        snaps.append((0.0, x.cpu().clone()))
        return x, snaps
    return x


@torch.no_grad()
def drift(model: DiffusionModel, x: torch.Tensor, t: float) -> torch.Tensor:
    """The learned reverse drift f_mu(x_t, t) - x_t at one time (paper Figure 1, bottom).

    Shapes: x (B, *D) scaled units -> (B, *D).
    """
    b = x.shape[0]
    tt = torch.full((b,), float(t), dtype=torch.float64)
    abar_t = model.abar_at(tt)
    if model.continuous:
        abar_s = model.abar_at((tt - 1e-2).clamp_min(0))
    else:
        T = model.schedule.T
        abar_s = model.schedule.abar()[torch.round(tt * T).long() - 1]
    out = model(x, tt)
    mean, _, _ = reverse_kernel(model.spec.parametrization, model.spec.variance, out, x, abar_s, abar_t)
    return mean - x
