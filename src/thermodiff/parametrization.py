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

Each parametrisation is an object (``resolve`` builds it once from the config's names):
``predict(out, x_t, abar_t)`` turns a network output into a typed ``Prediction`` and
``reverse(prediction, x_t, abar_s, abar_t)`` into the reverse kernel; ``target`` is
the regression target of the ``simple`` objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .kernels import Bernoulli, Kernel, Normal
from .processes import binomial
from .processes.gaussian import posterior
from .tensors import expand_as

PARAMETRIZATIONS = ("paper", "eps", "x0", "v")
BINOMIAL_PARAMETRIZATIONS = ("paper", "x0")
VARIANCES = ("fixed-small", "fixed-large", "learned-range")


# Per process: the parametrisations, the variances, and what an unknown choice is told.
_CHOICES = {
    "gaussian": (PARAMETRIZATIONS, VARIANCES, "unknown parametrization {name!r}; choose one of {choices}",
                 "unknown variance {name!r}; choose one of {choices}"),
    "binomial": (BINOMIAL_PARAMETRIZATIONS, ("fixed-small",),
                 "parametrization {name!r} is not defined for the binomial process; choose one of {choices}",
                 "the binomial process has no variance to choose; leave model.variance at fixed-small"),
}


def check(parametrization: str, variance: str, process: str = "gaussian") -> None:
    """Raise ConfigError for an unknown parametrisation or variance."""
    names, variances, unknown_name, unknown_variance = _CHOICES[process]
    if parametrization not in names:
        raise ConfigError(unknown_name.format(name=parametrization, choices=", ".join(names)))
    if variance not in variances:
        raise ConfigError(unknown_variance.format(name=variance, choices=", ".join(variances)))


def output_channels(parametrization: str, variance: str, process: str = "gaussian") -> int:
    """How many outputs per data dimension the network needs (1 or 2)."""
    return resolve(parametrization, variance, process).channels


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


# Each eps / x0 / v prediction's conversions, resolved once per parametrisation object:
# (x0, eps) from the prediction, and the ``simple`` objective's target from (x0, eps).
_TO_X0_EPS = {
    "eps": lambda pred, x_t, abar_t: (eps_to_x0(pred, x_t, abar_t), pred),
    "x0": lambda pred, x_t, abar_t: (pred, x0_to_eps(pred, x_t, abar_t)),
    "v": lambda pred, x_t, abar_t: (v_to_x0(pred, x_t, abar_t), v_to_eps(pred, x_t, abar_t)),
}
_TARGETS = {
    "eps": lambda x0, eps, abar_t: eps,
    "x0": lambda x0, eps, abar_t: x0,
    "v": lambda x0, eps, abar_t: to_v(x0, eps, abar_t),
}


def x0_and_eps(parametrization: str, pred, x_t, abar_t):
    """Both x0 and eps implied by a prediction of the given kind.

    Shapes: pred, x_t (B, *D), abar_t (B,) -> ((B, *D), (B, *D)).
    """
    if parametrization not in _TO_X0_EPS:
        raise ConfigError(f"parametrization {parametrization!r} does not predict x0 or eps")
    return _TO_X0_EPS[parametrization](pred, x_t, abar_t)


def target(parametrization: str, x0, eps, abar_t):
    """The regression target of the ``simple`` objective for this parametrisation (the
    paper kernel trained with ``simple`` regresses eps).

    Shapes: x0, eps (B, *D), abar_t (B,) -> (B, *D).
    """
    return _TARGETS.get(parametrization, _TARGETS["eps"])(x0, eps, abar_t)


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


@dataclass(frozen=True)
class Prediction:
    """What the network says about x_0 at (x_t, t), in every form the code needs.

    native: the quantity the parametrisation predicts, exactly as the network gave it
    (eps, x0 or v; the paper kernel's z_mu; binary data: x0-logits or the perturbation
    z), which the ``simple`` objective regresses; x0: the data prediction (binary data:
    logits of P(x_0 = 1 | x_t)), None for the paper's kernels; eps: the noise prediction
    (Gaussian eps / x0 / v), else None; extra: the second network channel (the
    learned-range variance, or the paper kernel's z_Sigma), else None.
    """

    native: torch.Tensor  # (B, *D)
    x0: torch.Tensor | None  # (B, *D)
    eps: torch.Tensor | None  # (B, *D)
    abar_t: torch.Tensor  # (B,) float64
    extra: torch.Tensor | None = None  # (B, *D)

    @property
    def v(self) -> torch.Tensor:
        """v = alpha eps - sigma x0. Shapes: (B, *D)."""
        return to_v(self._need(self.x0), self._need(self.eps), self.abar_t)

    @property
    def score(self) -> torch.Tensor:
        """grad log q(x_t) = -eps / sigma. Shapes: (B, *D)."""
        return eps_to_score(self._need(self.eps), self.abar_t)

    @staticmethod
    def _need(v):
        if v is None:
            raise ConfigError("this parametrisation predicts neither x0 nor eps (the paper's kernel); "
                              "choose parametrization eps, x0 or v")
        return v


class Parametrization:
    """How a network output becomes a prediction and a reverse kernel.

    channels: network outputs per data dimension; per_step: the kernel is defined for
    adjacent steps only (no respacing); predicts_eps: x0 and eps exist (DDIM, ODEs);
    continuous_time: the kernel has a continuous-time limit the bound can use.

    Shapes: out (B, C, *D), x_t (B, *D), abar_s, abar_t (B,) float64.
    """

    name: str
    channels: int = 1
    per_step: bool = False
    predicts_eps: bool = False
    continuous_time: bool = False

    def predict(self, out: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor) -> Prediction:  # pragma: no cover
        raise NotImplementedError

    def reverse(self, pred: Prediction, x_t: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor) -> Kernel:  # pragma: no cover
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
        """The ``simple`` objective's target for ``Prediction.native`` (here eps).
        Shapes: (B, *D)."""
        return eps


class MeanPrediction(Parametrization):
    """eps, x0 or v prediction; the kernel mean is the forward posterior's mean with x0
    replaced by the prediction (DDPM), the variance ``fixed-small``, ``fixed-large`` or
    ``learned-range`` (improved DDPM)."""

    predicts_eps = True

    def __init__(self, name: str, variance: str):
        self.name, self.variance = name, variance
        self._x0_eps, self.target = _TO_X0_EPS[name], _TARGETS[name]
        self.channels = 2 if variance == "learned-range" else 1
        # As T -> infinity every other variance converges to the posterior's.
        self.continuous_time = variance == "fixed-small"

    def predict(self, out, x_t, abar_t) -> Prediction:
        x0_hat, eps_hat = self._x0_eps(out[:, 0], x_t, abar_t)
        return Prediction(out[:, 0], x0_hat, eps_hat, abar_t, out[:, 1] if self.channels == 2 else None)

    def reverse(self, pred, x_t, abar_s, abar_t) -> Normal:
        """For the first step (abar_s = 1) the posterior variance is 0, so ``fixed-small``
        and the lower end of ``learned-range`` use the hop's beta there (the kernel must
        be a density: it is the learned decoder)."""
        beta = 1 - abar_t / abar_s
        mean, post_var = posterior(x_t, pred.x0, abar_s, abar_t)
        small = torch.where(abar_s >= 1, beta, post_var)
        if self.variance == "fixed-small":
            var = small
        elif self.variance == "fixed-large":
            var = beta
        else:
            # frac in [0, 1] from the network's second channel (improved DDPM eq. 15).
            frac = (pred.extra + 1) / 2
            log_var = frac * expand_as(beta.log(), x_t) + (1 - frac) * expand_as(small.log(), x_t)
            var = torch.exp(log_var)
        return Normal(mean=mean, var=var, x0=pred.x0)


class PaperKernel(Parametrization):
    """The paper's perturbation of the forward kernel (eq. 64-65), learned diagonal covariance."""

    name, channels, per_step = "paper", 2, True

    def predict(self, out, x_t, abar_t) -> Prediction:
        return Prediction(out[:, 0], None, None, abar_t, out[:, 1])

    def reverse(self, pred, x_t, abar_s, abar_t) -> Normal:
        mean, var = paper_kernel(pred.native, pred.extra, x_t, 1 - abar_t / abar_s)
        return Normal(mean=mean, var=var)


class BinomialX0(Parametrization):
    """Binary data: logits of P(x_0 = 1 | x_t) per bit, mixed over the two posteriors."""

    name = "x0"

    def predict(self, out, x_t, abar_t) -> Prediction:
        z = out[:, 0].to(torch.float64)
        return Prediction(z, z, None, abar_t)

    def reverse(self, pred, x_t, abar_s, abar_t) -> Bernoulli:
        return Bernoulli(logits=binomial.x0_mixture_logits(pred.x0, x_t, abar_s, abar_t), x0=pred.x0)


class BinomialPaper(Parametrization):
    """Binary data: a perturbation z of the forward kernel's logit."""

    name, per_step = "paper", True

    def predict(self, out, x_t, abar_t) -> Prediction:
        return Prediction(out[:, 0].to(torch.float64), None, None, abar_t)

    def reverse(self, pred, x_t, abar_s, abar_t) -> Bernoulli:
        return Bernoulli(logits=pred.native + binomial.forward_logits(x_t, abar_s, abar_t))


_BUILD = {
    ("gaussian", "paper"): lambda name, variance: PaperKernel(),
    **{("gaussian", name): MeanPrediction for name in ("eps", "x0", "v")},
    ("binomial", "x0"): lambda name, variance: BinomialX0(),
    ("binomial", "paper"): lambda name, variance: BinomialPaper(),
}


def resolve(parametrization: str, variance: str, process: str = "gaussian") -> Parametrization:
    """The parametrisation object for the config's names (ConfigError when unknown)."""
    check(parametrization, variance, process)
    return _BUILD[process, parametrization](parametrization, variance)


def reverse_kernel(parametrization, variance, out, x_t, abar_s, abar_t):
    """Mean and variance of p(x_s | x_t) for s < t from a network output (Gaussian).

    ``out`` has shape (B, C, *D) with C = output_channels(...) stacked on dim 1.
    The hop's beta is 1 - abar_t / abar_s (beta_t for adjacent steps).

    Shapes: out (B, C, *D), x_t (B, *D), abar_s, abar_t (B,) float64
    -> mean (B, *D), var (B,) or (B, *D), x0_hat (B, *D) or None.
    """
    p = resolve(parametrization, variance)
    k = p.reverse(p.predict(out, x_t, abar_t), x_t, abar_s, abar_t)
    return k.mean, k.var, k.x0


def binomial_reverse_logits(parametrization, out, x_t, abar_s, abar_t):
    """Logits of the binomial reverse kernel p(x_s = 1 | x_t) for s < t, and the logits of
    the x0 prediction (None for the paper's kernel).

    Shapes: out (B, 1, *D), x_t (B, *D), abar_s, abar_t (B,) float64
    -> (B, *D) float64, (B, *D) float64 or None.
    """
    p = resolve(parametrization, "fixed-small", "binomial")
    k = p.reverse(p.predict(out, x_t, abar_t), x_t, abar_s, abar_t)
    return k.logits, k.x0
