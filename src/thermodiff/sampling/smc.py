"""Sequential Monte Carlo for p(x_0) r(x_0) over the chain's own kernels: a population
sampler, since it runs ``particles`` rows per sample and carries their weights.

Particles are proposed by the hop's kernel (or a condition's proposal: for a Gaussian
observation, the kernel times the observation's likelihood seen from the next time),
weighted by kernel / proposal and by a twist r_t(x_t) that ends at r, and resampled when
the effective sample size falls below half. One particle per sample is returned, drawn
by weight: as particles grow, the samples approach p~ (asymptotically exact, unlike
the other methods). Any twist keeps SMC asymptotically exact (the twists telescope
and the last is r itself); a good one needs fewer particles.
"""

from __future__ import annotations

import math

import torch

from .transforms import KernelOf, from_prior


class SMC:
    """The population sampler as a stepper (``ancestral.Plain``'s protocol).

    r: the condition whose log_r weights the last step; twist: (kernel, x_t, abar_t) ->
    log r_t(x_t) or None (the twist stays as it was), None for no twist at all;
    proposal: (kernel, abar_s) -> the kernel to draw from, None for the kernel itself.
    dead_samples: after finish, the samples none of whose particles had r > 0.

    Shapes: start -> x (n * particles, *D) and the grid; step (n * particles, *D) ->
    the same; finish -> (n, *D), one particle per sample.
    """

    def __init__(self, r, kernel_of: KernelOf, particles: int, twist=None, proposal=None):
        self.r, self.kernel_of, self.particles = r, kernel_of, particles
        self.twist_of, self.proposal_of = twist, proposal
        self.dead_samples = 0

    def start(self, model, n, grid, generator):
        """particles draws from the prior per sample, equal weights, no twist yet.
        Shapes: -> x (n * particles, *D) and the grid unchanged."""
        self.n, self.model = n, model
        rows = n * self.particles
        x, grid = from_prior(model, rows, grid, generator)
        self.log_w = torch.zeros(rows, dtype=torch.float64, device=grid.device)
        self.twist = torch.zeros(rows, dtype=torch.float64, device=grid.device)  # log r_T = 0
        return x, grid

    def step(self, model, x, t, abar_s, abar_t, generator):
        """Weight by the twist at x_t, resample, propose x_s, weight by kernel / proposal.
        Shapes: x (n * particles, *D), t, abar_s, abar_t (n * particles,) -> the same as x."""
        kernel = self.kernel_of(model, x, t, abar_s, abar_t)
        twist = None if self.twist_of is None else self.twist_of(kernel, x, abar_t)
        if twist is None:
            twist = self.twist
        self.log_w += twist - self.twist
        self.twist = twist
        index = self._resample(generator)
        if index is not None:
            x, kernel, abar_s = x[index], kernel.take(index), abar_s[index]
        proposal = kernel if self.proposal_of is None else self.proposal_of(kernel, abar_s)
        x_s = proposal.sample(generator)
        self.log_w += kernel.log_prob(x_s) - proposal.log_prob(x_s)
        return x_s

    def finish(self, x, generator):
        """One particle per sample, drawn by its final weight. Shapes: (n * particles, *D) -> (n, *D)."""
        # The exact r at x_0 replaces the last twist.
        self.log_w += self.r.log_r(self.model, x.to(torch.float64)).detach() - self.twist
        w = torch.nan_to_num(self.log_w.reshape(self.n, self.particles), nan=-math.inf, posinf=-math.inf)
        dead = torch.isinf(w).all(1, keepdim=True)
        # Samples none of whose particles has r > 0: returned as drawn, and counted.
        self.dead_samples = int(dead.sum())
        w = torch.where(dead, torch.zeros_like(w), w)
        pick = torch.multinomial(torch.softmax(w, 1).cpu(), 1, generator=generator).reshape(-1)
        rows = torch.arange(self.n) * self.particles + pick
        return x[rows.to(x.device)]

    def _resample(self, generator) -> torch.Tensor | None:
        """Multinomial resampling of each sample's particles whose effective sample size
        fell below half; returns the row index, or None when no group needs it.
        Shapes: -> (n * particles,) int64 or None."""
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
