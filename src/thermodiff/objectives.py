"""Training objectives, one loss per example, and the samplers of diffusion time.

- ``bound``: an unbiased estimate of -K (nats): analytic prior and reconstruction
  terms plus one importance-weighted diffusion term per example.
- ``simple``: DDPM's unweighted regression of eps (or x0, or v) at a uniform t.
- ``hybrid``: simple + lambda * bound with the kernel mean's gradient stopped in the
  bound, so the bound trains only the variance (improved DDPM).
Times come from ``time_sampler.TimeSampler``.
"""

from __future__ import annotations

import torch

from . import processes
from .errors import ConfigError
from .likelihood import diffusion_integrand, kl_term, prior_term, reconstruction_term, reference_diffusion
from .model import DiffusionModel
from .tensors import sum_dims
from .time_sampler import TimeSampler

OBJECTIVES = ("bound", "simple", "hybrid")
T_SAMPLING = ("uniform", "importance")


def check_objective(objective: str, parametrization: str, process: str = "gaussian") -> None:
    """Raise ConfigError for an objective that cannot train this parametrisation."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective != "bound" and "simple-loss" not in processes.get(process).supports:
        raise ConfigError(f"objective {objective!r} regresses Gaussian noise; the {process} process trains on the bound")
    if objective != "bound" and parametrization == "paper":
        raise ConfigError(f"objective {objective!r} regresses eps, x0 or v; the paper's kernel trains on the bound")


def make_time_sampler(model: DiffusionModel, t_sampling: str, n_bins: int = 100) -> TimeSampler:
    """Bins: the T - 1 steps 2..T in discrete time, n_bins of [0, 1] in continuous time."""
    if t_sampling not in T_SAMPLING:
        raise ConfigError(f"unknown t_sampling {t_sampling!r}; choose one of {', '.join(T_SAMPLING)}")
    return TimeSampler(model.schedule.n_bins(n_bins), importance=t_sampling == "importance")


def bound_loss(model: DiffusionModel, x0, sampler: TimeSampler, generator, detach_mean: bool = False, cond=None):
    """Unbiased one-sample estimate of -K per example, nats.

    Returns the loss and (bins, unweighted diffusion terms) for the time sampler.

    Shapes: x0 (B, *D), cond (B,) labels or None -> (B,) float64.
    """
    b = x0.shape[0]
    dev = x0.device
    bins, pos, weight = sampler.sample(b, generator)
    # Times: step indices 2..T (discrete, weights scaled from a mean to a sum over steps)
    # or t in [0, 1] (continuous), so that E[weight * term] is the diffusion term.
    when, factor = model.schedule.bin_times(bins, pos, sampler.n_bins)
    weight = weight * factor
    eps = model.process.noise(x0.shape, generator, dev)
    sched = model.schedule
    if sched.continuous:
        term = diffusion_integrand(model, x0, when.to(dev), eps, cond)
        known = reference_diffusion(x0, sched.gamma_min, sched.gamma_max)  # the control variate's mean
    else:
        term = kl_term(model, x0, when.to(dev), eps, detach_mean=detach_mean, cond=cond).to(torch.float64)
        known = 0.0
    # The prior and reconstruction terms are kept even where they are constant: they
    # depend on a learned schedule's endpoints, and the loss then reads as -K.
    eps0 = model.process.noise(x0.shape, generator, dev)
    loss = prior_term(model, x0) + known + term * weight.to(dev) + reconstruction_term(model, x0, eps0, cond)
    return loss, (bins, term)


def simple_loss(model: DiffusionModel, x0, generator, cond=None) -> torch.Tensor:
    """DDPM's L_simple: mean squared error of the prediction at a uniform time.

    Shapes: x0 (B, *D), cond (B,) labels or None -> (B,).
    """
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    t, abar_t = model.schedule.uniform_times(x0.shape[0], generator, x0.device)
    x_t = model.process.q_sample(x0, abar_t, eps)
    pred = model.predict(x_t, t, cond, abar_t=abar_t)
    goal = model.param.target(x0, eps, abar_t)
    return sum_dims((pred.native - goal) ** 2) / pred.native[0].numel()


def loss_per_example(model: DiffusionModel, objective: str, x0, sampler, generator, hybrid_lambda: float = 1e-3,
                     cond=None):
    """The training loss per example for the named objective (cond: a conditional
    model's labels, the null class where dropped).

    Shapes: x0 (B, *D), cond (B,) or None -> loss (B,), and the time sampler's (bins, terms) or None.
    """
    check_objective(objective, model.spec.parametrization, model.process.name)
    if objective == "bound":
        return bound_loss(model, x0, sampler, generator, cond=cond)
    if objective == "simple":
        return simple_loss(model, x0, generator, cond), None
    vb, info = bound_loss(model, x0, sampler, generator, detach_mean=True, cond=cond)  # hybrid
    return simple_loss(model, x0, generator, cond) + hybrid_lambda * vb, info
