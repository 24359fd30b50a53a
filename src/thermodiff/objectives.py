"""Training objectives, one loss per example, and the samplers of diffusion time.

- ``bound``: an unbiased estimate of -K (nats): analytic prior and reconstruction
  terms plus one importance-weighted diffusion term per example.
- ``simple``: DDPM's unweighted regression of eps (or x0, or v) at a uniform t.
- ``hybrid``: simple + lambda * bound with the kernel mean's gradient stopped in the
  bound, so the bound trains only the variance (improved DDPM).

Time is sampled in bins: the steps 2..T in discrete time, equal-width bins of [0, 1]
in continuous time. ``TimeSampler`` draws bins uniformly (stratified over the batch)
or by importance sampling on the running second moment of each bin's term
(improved DDPM's loss-second-moment resampler), and returns the weight that keeps
the estimate unbiased.
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .likelihood import diffusion_integrand, draw_noise, kl_term, prior_term, reconstruction_term, reference_diffusion
from .model import DiffusionModel
from .parametrization import reverse_kernel, target
from .processes.gaussian import q_sample, sum_dims

OBJECTIVES = ("bound", "simple", "hybrid")
T_SAMPLING = ("uniform", "importance")


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
        if not self.importance:
            return
        bins = bins.cpu()
        v2 = values.detach().to(torch.float64).cpu() ** 2
        total = torch.zeros(self.n_bins, dtype=torch.float64).index_add_(0, bins, v2)
        count = torch.zeros(self.n_bins, dtype=torch.long).index_add_(0, bins, torch.ones_like(bins))
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


def check_objective(objective: str, parametrization: str, process: str = "gaussian") -> None:
    """Raise ConfigError for an objective that cannot train this parametrisation."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective != "bound" and process == "binomial":
        raise ConfigError(f"objective {objective!r} regresses Gaussian noise; the binomial process trains on the bound")
    if objective != "bound" and parametrization == "paper":
        raise ConfigError(f"objective {objective!r} regresses eps, x0 or v; the paper's kernel trains on the bound")


def make_time_sampler(model: DiffusionModel, t_sampling: str, n_bins: int = 100) -> TimeSampler:
    """Bins: the T - 1 steps 2..T in discrete time, n_bins of [0, 1] in continuous time."""
    if t_sampling not in T_SAMPLING:
        raise ConfigError(f"unknown t_sampling {t_sampling!r}; choose one of {', '.join(T_SAMPLING)}")
    bins = n_bins if model.continuous else model.schedule.T - 1
    return TimeSampler(bins, importance=t_sampling == "importance")


def _times(model: DiffusionModel, sampler: TimeSampler, batch: int, generator):
    """Sampled times: step indices (discrete) or t in [0, 1] (continuous), with weights
    such that E[weight * term] is the diffusion term (sum over steps, or integral)."""
    bins, u, weight = sampler.sample(batch, generator)
    if model.continuous:
        return bins, (bins + u) / sampler.n_bins, weight
    return bins, bins + 2, weight * sampler.n_bins


def bound_loss(model: DiffusionModel, x0, sampler: TimeSampler, generator, detach_mean: bool = False):
    """Unbiased one-sample estimate of -K per example, nats.

    Returns the loss and (bins, unweighted diffusion terms) for the time sampler.

    Shapes: x0 (B, *D) -> (B,) float64.
    """
    b = x0.shape[0]
    dev = x0.device
    bins, when, weight = _times(model, sampler, b, generator)
    eps = draw_noise(model, x0.shape, generator, dev)
    if model.continuous:
        term = diffusion_integrand(model, x0, when.to(dev), eps)
        sched = model.schedule
        known = reference_diffusion(x0, sched.gamma_min, sched.gamma_max)  # the control variate's mean
    else:
        term = kl_term(model, x0, when.to(dev), eps, detach_mean=detach_mean).to(torch.float64)
        known = 0.0
    # The prior and reconstruction terms are kept even where they are constant: they
    # depend on a learned schedule's endpoints, and the loss then reads as -K.
    eps0 = draw_noise(model, x0.shape, generator, dev)
    loss = prior_term(model, x0) + known + term * weight.to(dev) + reconstruction_term(model, x0, eps0)
    return loss, (bins, term)


def simple_loss(model: DiffusionModel, x0, generator) -> torch.Tensor:
    """DDPM's L_simple: mean squared error of the prediction at a uniform time.

    Shapes: x0 (B, *D) -> (B,).
    """
    b = x0.shape[0]
    dev = x0.device
    eps = torch.randn(x0.shape, generator=generator).to(dev)
    if model.continuous:
        t = torch.rand(b, generator=generator, dtype=torch.float64).to(dev)
        abar_t = model.schedule.abar(t).detach()
    else:
        T = model.schedule.T
        i = torch.randint(1, T + 1, (b,), generator=generator).to(dev)
        t = i.to(torch.float64) / T
        abar_t = model.schedule.abar().detach()[i]
    x_t = q_sample(x0, abar_t, eps)
    out = model(x_t, t)
    goal = target(model.spec.parametrization, x0, eps, abar_t)
    return sum_dims((out[:, 0] - goal) ** 2) / out[0, 0].numel()


def loss_per_example(model: DiffusionModel, objective: str, x0, sampler, generator, hybrid_lambda: float = 1e-3):
    """The training loss per example for the named objective.

    Shapes: x0 (B, *D) -> loss (B,), and the time sampler's (bins, terms) or None.
    """
    check_objective(objective, model.spec.parametrization, model.process)
    if objective == "bound":
        return bound_loss(model, x0, sampler, generator)
    if objective == "simple":
        return simple_loss(model, x0, generator), None
    vb, info = bound_loss(model, x0, sampler, generator, detach_mean=True)  # hybrid
    return simple_loss(model, x0, generator) + hybrid_lambda * vb, info
