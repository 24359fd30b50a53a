"""Samplers of diffusion time for the training loss and the bound's estimate.

Time is sampled in bins: the steps 2..T in discrete time, equal-width bins of [0, 1]
in continuous time. ``TimeSampler`` draws bins uniformly (stratified over the batch)
or by importance sampling on the running second moment of each bin's term
(improved DDPM's loss-second-moment resampler), and returns the weight that keeps
the estimate unbiased.
"""

from __future__ import annotations

import torch


class TimeSampler:
    """Draws time bins and the weights 1 / (n_bins p_bin) that keep estimates unbiased.

    Importance sampling: p_bin proportional to sqrt(E[L_bin^2]) (the variance-optimal
    proposal for a positive integrand), the second moment tracked as an exponential
    moving average, mixed with a little of the uniform distribution so that no bin is
    starved; uniform until every bin has been seen ``warmup`` times.
    """

    def __init__(self, n_bins: int, importance: bool = False, warmup: int = 10, decay: float = 0.99, uniform_mix: float = 0.1):
        self.n_bins = n_bins
        self.importance = importance
        self.warmup = warmup
        self.decay = decay
        self.uniform_mix = uniform_mix
        self.second_moment = torch.zeros(n_bins, dtype=torch.float64)
        self.counts = torch.zeros(n_bins, dtype=torch.long)

    def probabilities(self) -> torch.Tensor:
        """Shapes: returns (n_bins,) float64, sums to 1."""
        uniform = torch.full((self.n_bins,), 1.0 / self.n_bins, dtype=torch.float64)
        if not self.importance or int(self.counts.min()) < self.warmup:
            return uniform
        p = self.second_moment.sqrt()
        p = p / p.sum()
        return (1 - self.uniform_mix) * p + self.uniform_mix * uniform

    def quantile(self, u: torch.Tensor):
        """Map uniforms to (bin, position in bin, weight) through the proposal's inverse CDF.

        Stratified uniforms stay stratified in the proposal, so importance sampling and
        stratification combine.

        Shapes: u (N,) float64 in [0, 1) -> bin (N,) long, pos (N,) float64, weight (N,) float64.
        """
        p = self.probabilities()
        cdf = torch.cat([p.new_zeros(1), p.cumsum(0)])
        cdf[-1] = 1.0
        bins = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, self.n_bins - 1)
        pos = ((u - cdf[bins]) / p[bins]).clamp(0.0, 1.0 - 1e-12)
        return bins, pos, 1.0 / (self.n_bins * p[bins])

    def sample(self, batch: int, generator: torch.Generator):
        """Bins, positions within them, and weights for a batch.

        The uniforms behind the draws are stratified over the batch (a shared random
        offset, VDM's low-discrepancy sampler), which lowers the variance of the batch
        mean for free.

        Shapes: returns bin (B,) long, pos (B,) float64 in [0, 1), weight (B,) float64.
        """
        offset = torch.rand((), generator=generator, dtype=torch.float64)
        u = (offset + torch.arange(batch, dtype=torch.float64) / batch) % 1.0
        return self.quantile(u[torch.randperm(batch, generator=generator)])

    def update(self, bins: torch.Tensor, values: torch.Tensor) -> None:
        """Record the unweighted per-bin terms of a batch.

        Shapes: bins (B,) long, values (B,).
        """
        if self.importance:
            self.add_moments(self.moments(bins, values))

    def moments(self, bins: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """A batch's sums of squared terms and counts per bin, the statistics ``update``
        records. Summed over the shards of one batch (the ranks of a distributed step)
        they are those of the whole batch, so every rank records the same.

        Shapes: bins (B,) long, values (B,) -> (2, n_bins) float64 (sums; counts).
        """
        bins = bins.cpu()
        v2 = values.detach().to(torch.float64).cpu() ** 2
        out = torch.zeros(2, self.n_bins, dtype=torch.float64)
        out[0].index_add_(0, bins, v2)
        out[1].index_add_(0, bins, torch.ones_like(v2))
        return out

    def add_moments(self, moments: torch.Tensor) -> None:
        """Record a batch's ``moments``: a bin's first batch sets its second moment,
        later ones enter its moving average.

        Shapes: moments (2, n_bins) float64.
        """
        if not self.importance:
            return
        total, count = moments[0], moments[1].round().to(torch.long)
        seen = count > 0
        fresh = seen & (self.counts == 0)
        self.second_moment[fresh] = (total[fresh] / count[fresh])
        old = seen & ~fresh
        self.second_moment[old] = self.decay * self.second_moment[old] + (1 - self.decay) * (total[old] / count[old])
        self.counts += count

    def state_dict(self) -> dict:
        return {"second_moment": self.second_moment.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.second_moment.copy_(state["second_moment"])
        self.counts.copy_(state["counts"])
