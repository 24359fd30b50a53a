"""Conditioning the probability-flow ODE on r(x) (paper section 2.5) where a method
works by changing the score, not by drawing from a kernel:

- ``guidance``: eq. 61's shift of the kernel mean by Sigma grad log r is, per unit of
  the chain's variance, a shift of the score by grad log r at the current point; the
  ODE takes the shifted score, scale * grad log r(x_t) (model units, as the chain's).
- ``product`` (a Gaussian observation y = g x + N(0, sigma^2)): the chain multiplies
  each kernel by r; the ODE adds the score of r_t, the observation seen from x_t
  (``GaussianObservation.observation_at``: y = (g / alpha) x_t + noise of variance
  sigma^2 + g^2 sigma_t^2 / alpha^2, r_0 = r), the likelihood of y under a flat prior
  on x_0, which widens with the noise where a fixed r would pull x_t too early.

Both are approximations, as in the chain (``bench condition`` measures the chain's).
Clamping, replacement, the noisy start and SMC need the stochastic chain: a clear error.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import ConfigError
from ..parametrization import eps_to_x0
from ..ode.flow import check_model
from ..tensors import expand_as
from .conditions import GaussianObservation, as_condition

ODE_METHODS = ("guidance", "product")


def tilted(predict, grad_log_r):
    """A prediction function whose score is the model's plus grad_log_r(x_t, abar_t):
    eps' = eps - sigma grad_log_r, x0' from eps' (the same x_t).

    Shapes: grad_log_r (B, *D), (B,) -> (B, *D); the prediction over (B, *D).
    """

    def guided(x_t, t, cond=None, abar_t=None):
        pred = predict(x_t, t, cond, abar_t)
        grad = grad_log_r(x_t.detach().to(torch.float64), abar_t)
        sigma = expand_as((1 - abar_t).sqrt(), grad)
        eps = pred.eps.to(torch.float64) - sigma * grad
        return replace(pred, eps=eps, x0=eps_to_x0(eps, x_t.to(torch.float64), abar_t))

    return guided


def _gradient(fun, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fun(x).sum(), x)
    return g


def conditioned_predict(model, condition, method: str | None, scale: float = 1.0):
    """The tilted prediction function of ``method`` for r = ``condition`` (see the module),
    or a ConfigError naming why the method needs the stochastic chain.

    Shapes: as ``DiffusionModel.predict``.
    """
    r = as_condition(condition)
    # The ODE's default: the closed-form observation where r is one, else guidance.
    method = method or ("product" if isinstance(r, GaussianObservation) else "guidance")
    if method not in ODE_METHODS:
        raise ConfigError(f"method {method} needs the stochastic chain (solver ancestral); the ODE solvers take "
                          f"{' or '.join(ODE_METHODS)}")
    if method not in r.methods:
        raise ConfigError(r.refusal(method) or f"method {method} does not apply to this condition")
    check_model(model)
    r.check(model)
    if method == "guidance":
        return tilted(model.predict, lambda x, abar: scale * _gradient(lambda u: r.log_r(model, u), x))
    if r.is_matrix(model):
        raise ConfigError("method product handles an identity or per-coordinate observation; use guidance for a "
                          "matrix")

    def observed(x, abar):
        y, var, gain = r.observation_at(model, abar)
        return gain * (y - gain * x) / var

    return tilted(model.predict, observed)
