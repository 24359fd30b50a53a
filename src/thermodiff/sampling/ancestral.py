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
from ..kernels import ddim
from ..model import DiffusionModel


def time_grid(model: DiffusionModel, steps: int | None = None) -> torch.Tensor:
    """Network times of the chain's latents, first to last, ending at t = 1
    (``DiffusionModel.time_grid``: the schedule's grid, respaced where the kernel allows).

    Shapes: returns (n,) float64.
    """
    return model.time_grid(steps)


class Plain:
    """The unconditioned chain: draw x_T from the prior, step with p(x_s | x_t), or with
    the DDIM kernel of the same prediction when eta is given. The sampler's stepper;
    ``conditioning`` builds on it for p(x_0) r(x_0).

    Shapes: start -> x (n, *D) and the grid; step (B, *D) -> (B, *D); finish -> (n, *D).
    """

    def __init__(self, eta: float | None = None):
        self.eta = eta

    def kernel(self, model, x, t, abar_s, abar_t):
        """The chain's kernel for one hop; the last hop is always the model's decoder
        (the DDIM kernel there would be a delta at x0_hat). Shapes: as ``DiffusionModel.reverse``."""
        if self.eta is None or bool((abar_s >= 1).all()):
            return model.reverse(x, t, abar_s, abar_t)
        if "ddim" not in model.process.supports or not model.param.predicts_eps:
            raise ConfigError("DDIM (eta) needs a Gaussian model that predicts eps, x0 or v")
        pred = model.predict(x, t, abar_t=abar_t)
        return ddim(pred.x0, pred.eps, abar_s, abar_t, self.eta)

    def start(self, model, n, grid, generator):
        return model.process.prior((n,) + model.data_shape, grid.device).sample(generator), grid

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
    chunk: int | None = None,
    solver: str = "ancestral",
    grid: str | None = None,
):
    """Draw n samples in the model's (scaled) units.

    solver: ``ancestral`` (this chain), or a fixed-step solver of the probability-flow
    ODE (``ddim``, ``heun``, ``dpm++``: ``ode.sample.sample_ode``) over ``steps`` grid
    times (default 20) of ``grid`` (``ode.flow.GRIDS``; default the solver's own).

    keep > 0 also returns `keep` snapshots of the whole batch along the chain
    (including the start x_T and the end x_0), for trajectory figures.
    condition: a ``conditioning.Conditioning`` (samples from p(x_0) r(x_0)); it
    chooses the start of the chain and replaces each step (give eta to it, not here).
    eta: step with the DDIM kernel (0: deterministic) instead of the model's own.
    chunk: run the chain on at most this many samples at a time, one chunk after the
    other from the same generator (a batch of 10,000 images runs 2.5x slower per image
    on a CPU than chunks of 500, whose activations stay in cache). The draws then
    depend on the chunk size: the same chunk and seed give the same samples; samples
    of a chunked and an unchunked call differ but have the same distribution.

    Shapes: returns x0 (n, *D), and with keep a list of (time, (n, *D)) pairs.
    """
    if solver != "ancestral":
        if condition is not None or eta is not None or keep:
            raise ConfigError(f"the {solver} solver samples the probability-flow ODE; conditioning, eta and "
                              "trajectory snapshots belong to the ancestral chain (solver 'ancestral')")
        from ..ode.sample import sample_ode  # the ODE's solvers import the model only

        return sample_ode(model, n, generator, solver, 20 if steps is None else steps, grid, chunk, progress)
    if grid is not None:
        raise ConfigError("grid sets the time grid of an ODE solver (ddim, heun or dpm++)")
    if condition is not None and eta is not None:
        raise ConfigError("give eta to the Conditioning, which runs the chain")
    if chunk is not None and chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk}")
    if chunk is not None and n > chunk:
        if keep:
            raise ConfigError("keep (trajectory snapshots) needs one chunk: leave chunk unset")
        starts = range(0, n, chunk)
        if progress:
            from tqdm import tqdm  # progress bars are optional: imported where shown

            starts = tqdm(starts, desc=f"sample {n} in chunks of {chunk}", unit="chunk")
        return torch.cat([_chain(model, min(chunk, n - s), generator, steps, 0, False, condition, eta)
                          for s in starts])
    return _chain(model, n, generator, steps, keep, progress, condition, eta)


def _chain(model, n, generator, steps, keep, progress, condition, eta):
    """One run of the chain for n samples (``sample``)."""
    dev = next(model.parameters()).device
    stepper = condition or Plain(eta)
    x, grid = stepper.start(model, n, model.time_grid(steps).to(dev), generator)
    snaps = []
    stride = max(1, len(grid) // max(1, keep - 1)) if keep else 0
    hops = range(len(grid) - 1, -1, -1)
    if progress:
        from tqdm import tqdm  # progress bars are optional: imported where shown

        hops = tqdm(hops, desc="sample", unit="step", leave=False)
    abar = model.schedule.abar(grid)
    for k in hops:
        t = grid[k].expand(x.shape[0])
        abar_t = abar[k].expand(x.shape[0])
        if keep and (len(grid) - 1 - k) % stride == 0:
            snaps.append((float(grid[k]), x.cpu().clone()))
        abar_s = abar[k - 1].expand(x.shape[0]) if k > 0 else torch.ones_like(abar_t)
        x = stepper.step(model, x, t, abar_s, abar_t, generator)
    x = stepper.finish(x, generator)
    if keep:
        snaps.append((0.0, x.cpu().clone()))
        return x, snaps
    return x


@torch.no_grad()
def drift(model: DiffusionModel, x: torch.Tensor, t: float) -> torch.Tensor:
    """The learned reverse drift f_mu(x_t, t) - x_t at one time (paper Figure 1, bottom):
    the mean of the reverse kernel towards the step before t (continuous time: 0.01
    earlier).

    Shapes: x (B, *D) scaled units -> (B, *D).
    """
    tt = torch.full((x.shape[0],), float(t), dtype=torch.float64)
    abar_t = model.schedule.abar(tt)
    # The network's own kernel even at the first step, where a paper decoder would be fixed.
    kernel = model.param.reverse(model.predict(x, tt, abar_t=abar_t), x, model.schedule.abar_before(tt), abar_t)
    return kernel.mean - x
