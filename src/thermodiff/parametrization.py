"""What the network predicts, and how it becomes a reverse kernel.

The only module that converts between eps, x0, v and the score, and that builds the
mean and variance of p(x_s | x_t) from a network output. With
x_t = alpha x_0 + sigma eps, alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t):
  x0    = (x_t - sigma eps) / alpha
  eps   = (x_t - alpha x0) / sigma
  v     = alpha eps - sigma x0,   x0 = alpha x_t - sigma v,   eps = sigma x_t + alpha v
  score = grad log q(x_t) = -E[eps | x_t] / sigma

Parametrisations:
- ``eps``, ``x0``, ``v``: the network predicts that quantity; the mean is the forward
  posterior's mean with x0 replaced by the prediction (DDPM). Variance ``fixed-small``
  (the posterior variance), ``fixed-large`` (the hop's beta), or ``learned-range``
  (improved DDPM: log-variance interpolated between the two by a network output).
- ``paper``: the paper's perturbation of the forward kernel (eq. 64-65),
  Sigma = sigmoid(z_Sigma + logit beta_t), mu = (x_t - z_mu)(1 - Sigma) + z_mu,
  with learned diagonal covariance.

Binomial process (binary data): the reverse kernel is B(f_b(x_t, t)), carried as logits.
- ``x0``: the network gives logits of P(x_0 = 1 | x_t) per bit; f_b mixes the forward
  posteriors q(x_s | x_t, x_0 = 1) and q(x_s | x_t, x_0 = 0) with them, which can
  represent the best factorised kernel exactly, and works for any hop s < t.
- ``paper``: the network gives a perturbation z of the forward kernel's logit,
  f_b = sigmoid(z + logit(x_t (1 - beta_t) + beta_t / 2)), in the spirit of the paper's
  eq. 64-65 (an untrained net reverses each step with the forward kernel itself).
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .processes import binomial
from .processes.gaussian import expand_as, posterior

PARAMETRIZATIONS = ("paper", "eps", "x0", "v")
BINOMIAL_PARAMETRIZATIONS = ("paper", "x0")
VARIANCES = ("fixed-small", "fixed-large", "learned-range")


def check(parametrization: str, variance: str, process: str = "gaussian") -> None:
    """Raise ConfigError for an unknown parametrisation or variance."""
    if process == "binomial":
        if parametrization not in BINOMIAL_PARAMETRIZATIONS:
            raise ConfigError(
                f"parametrization {parametrization!r} is not defined for the binomial process; "
                f"choose one of {', '.join(BINOMIAL_PARAMETRIZATIONS)}"
            )
        if variance != "fixed-small":
            raise ConfigError("the binomial process has no variance to choose; leave model.variance at fixed-small")
        return
    if parametrization not in PARAMETRIZATIONS:
        raise ConfigError(f"unknown parametrization {parametrization!r}; choose one of {', '.join(PARAMETRIZATIONS)}")
    if variance not in VARIANCES:
        raise ConfigError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")


def output_channels(parametrization: str, variance: str, process: str = "gaussian") -> int:
    """How many outputs per data dimension the network needs (1 or 2)."""
    check(parametrization, variance, process)
    if process == "binomial":
        return 1
    return 2 if parametrization == "paper" or variance == "learned-range" else 1


def _alpha_sigma(abar_t: torch.Tensor, x: torch.Tensor):
    return expand_as(abar_t.sqrt(), x), expand_as((1 - abar_t).sqrt(), x)


def eps_to_x0(eps, x_t, abar_t):
    """Shapes: eps, x_t (B, *D), abar_t (B,) -> (B, *D)."""
    alpha, sigma = _alpha_sigma(abar_t, x_t)
    return (x_t - sigma * eps) / alpha


def x0_to_eps(x0, x_t, abar_t):
    """Shapes: x0, x_t (B, *D), abar_t (B,) -> (B, *D)."""
    alpha, sigma = _alpha_sigma(abar_t, x_t)
    return (x_t - alpha * x0) / sigma


def v_to_x0(v, x_t, abar_t):
    """Shapes: v, x_t (B, *D), abar_t (B,) -> (B, *D)."""
    alpha, sigma = _alpha_sigma(abar_t, x_t)
    return alpha * x_t - sigma * v


def v_to_eps(v, x_t, abar_t):
    """Shapes: v, x_t (B, *D), abar_t (B,) -> (B, *D)."""
    alpha, sigma = _alpha_sigma(abar_t, x_t)
    return sigma * x_t + alpha * v


def to_v(x0, eps, abar_t):
    """v = alpha eps - sigma x0. Shapes: x0, eps (B, *D), abar_t (B,) -> (B, *D)."""
    alpha, sigma = _alpha_sigma(abar_t, x0)
    return alpha * eps - sigma * x0


def eps_to_score(eps, abar_t):
    """Score of q(x_t) from the predicted noise. Shapes: eps (B, *D), abar_t (B,) -> (B, *D)."""
    return -eps / expand_as((1 - abar_t).sqrt(), eps)


def score_to_eps(score, abar_t):
    """Shapes: score (B, *D), abar_t (B,) -> (B, *D)."""
    return -score * expand_as((1 - abar_t).sqrt(), score)


def x0_and_eps(parametrization: str, pred, x_t, abar_t):
    """Both x0 and eps implied by a prediction of the given kind.

    Shapes: pred, x_t (B, *D), abar_t (B,) -> ((B, *D), (B, *D)).
    """
    if parametrization == "eps":
        return eps_to_x0(pred, x_t, abar_t), pred
    if parametrization == "x0":
        return pred, x0_to_eps(pred, x_t, abar_t)
    if parametrization == "v":
        return v_to_x0(pred, x_t, abar_t), v_to_eps(pred, x_t, abar_t)
    raise ConfigError(f"parametrization {parametrization!r} does not predict x0 or eps")


def target(parametrization: str, x0, eps, abar_t):
    """The regression target of the ``simple`` objective for this parametrisation.

    Shapes: x0, eps (B, *D), abar_t (B,) -> (B, *D).
    """
    if parametrization == "x0":
        return x0
    if parametrization == "v":
        return to_v(x0, eps, abar_t)
    return eps  # eps, and the paper kernel trained with `simple` regresses eps too


def paper_kernel(z_mu, z_sigma, x_t, beta):
    """The paper's reverse kernel (eq. 64-65), a perturbation of the forward kernel.

    Sigma = sigmoid(z_Sigma + logit beta), mu = (x_t - z_mu)(1 - Sigma) + z_mu.
    With z = 0 it is N((1 - beta) x_t, beta): close to the forward kernel's reversal.

    Shapes: z_mu, z_sigma, x_t (B, *D); beta (B,) float64 -> mean (B, *D), var (B, *D).
    """
    logit_beta = expand_as(torch.logit(beta), x_t)
    var = torch.sigmoid(z_sigma + logit_beta)
    mean = (x_t - z_mu) * (1 - var) + z_mu
    return mean, var


def reverse_kernel(parametrization, variance, out, x_t, abar_s, abar_t):
    """Mean and variance of p(x_s | x_t) for s < t from a network output.

    ``out`` has shape (B, C, *D) with C = output_channels(...) stacked on dim 1.
    The hop's beta is 1 - abar_t / abar_s (beta_t for adjacent steps). For the first
    step (abar_s = 1) the posterior variance is 0, so ``fixed-small`` and the lower end
    of ``learned-range`` use beta instead there (the kernel must be a density: it is
    the learned decoder).

    Shapes: out (B, C, *D), x_t (B, *D), abar_s, abar_t (B,) float64
    -> mean (B, *D), var (B,) or (B, *D), x0_hat (B, *D) or None.
    """
    beta = 1 - abar_t / abar_s
    if parametrization == "paper":
        mean, var = paper_kernel(out[:, 0], out[:, 1], x_t, beta)
        return mean, var, None
    x0_hat, _ = x0_and_eps(parametrization, out[:, 0], x_t, abar_t)
    mean, post_var = posterior(x_t, x0_hat, abar_s, abar_t)
    small = torch.where(abar_s >= 1, beta, post_var)
    if variance == "fixed-small":
        var = small
    elif variance == "fixed-large":
        var = beta
    else:
        # frac in [0, 1] from the network's second channel (improved DDPM eq. 15).
        frac = (out[:, 1] + 1) / 2
        log_var = frac * expand_as(beta.log(), x_t) + (1 - frac) * expand_as(small.log(), x_t)
        var = torch.exp(log_var)
    return mean, var, x0_hat


def binomial_reverse_logits(parametrization, out, x_t, abar_s, abar_t):
    """Logits of the binomial reverse kernel p(x_s = 1 | x_t) for s < t, and the logits of
    the x0 prediction (None for the paper's kernel).

    Shapes: out (B, 1, *D), x_t (B, *D), abar_s, abar_t (B,) float64
    -> (B, *D) float64, (B, *D) float64 or None.
    """
    z = out[:, 0].to(torch.float64)
    if parametrization == "x0":
        return binomial.x0_mixture_logits(z, x_t, abar_s, abar_t), z
    if parametrization == "paper":
        return z + binomial.forward_logits(x_t, abar_s, abar_t), None
    raise ConfigError(f"parametrization {parametrization!r} is not defined for the binomial process")
