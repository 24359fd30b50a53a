"""The Gaussian forward process: pure tensor functions, and ``GaussianProcess``, the object
that carries them for the rest of the package.

q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I), prior pi = N(0, I).
Everything is written in terms of the signal fractions abar (float64, one per example)
so that the same functions serve adjacent steps, respaced steps and continuous time:
for two times s < t, q(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, (1 - abar_t / abar_s) I).

All log-densities, KLs and entropies are in nats and summed over the data
dimensions, one number per example. Conversions to bits happen once, in the caller.
"""

from __future__ import annotations

import torch

# log_normal and kl_normal are the Gaussian kernel's math; they live with the kernels
# and are re-exported here as part of this process's vocabulary.
from ..kernels import LOG_2PI, Normal, kl_normal, log_normal  # noqa: F401
from ..tensors import expand_as, num_dims, sum_dims

def q_mean_var(x0: torch.Tensor, abar_t: torch.Tensor):
    """Moments of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

    Shapes: x0 (B, *D), abar_t (B,) -> mean (B, *D), var (B,) float64.
    """
    return expand_as(abar_t.sqrt(), x0) * x0, 1 - abar_t


def q_sample(x0: torch.Tensor, abar_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, differentiable in abar_t (frozen noise).

    Shapes: x0 (B, *D), abar_t (B,), eps (B, *D) -> (B, *D).
    """
    return expand_as(abar_t.sqrt(), x0) * x0 + expand_as((1 - abar_t).sqrt(), x0) * eps


def posterior(x_t: torch.Tensor, x0: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor):
    """q(x_s | x_t, x_0) for s < t: Gaussian by Bayes' rule (Luo eq. 84-85 for s = t - 1).

    With a_ts = abar_t / abar_s (the signal fraction of the s -> t hop):
      mean = [sqrt(a_ts)(1 - abar_s) x_t + sqrt(abar_s)(1 - a_ts) x_0] / (1 - abar_t)
      var  = (1 - a_ts)(1 - abar_s) / (1 - abar_t)
    abar_s = 1 (s is the data) gives mean x_0 and variance 0.

    Shapes: x_t, x0 (B, *D); abar_s, abar_t (B,) -> mean (B, *D), var (B,) float64.
    """
    a_ts = abar_t / abar_s
    one_minus_abar_t = 1 - abar_t
    coef_t = a_ts.sqrt() * (1 - abar_s) / one_minus_abar_t
    coef_0 = abar_s.sqrt() * (1 - a_ts) / one_minus_abar_t
    mean = expand_as(coef_t, x_t) * x_t + expand_as(coef_0, x0) * x0
    var = (1 - a_ts) * (1 - abar_s) / one_minus_abar_t
    return mean, var


def entropy_normal(var: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Entropy of N(., var I) in n_dims dimensions, nats.

    Shapes: var (B,) -> (B,).
    """
    return 0.5 * n_dims * (1 + LOG_2PI + torch.log(var))


def entropy_q_t_given_0(abar_t: torch.Tensor, n_dims: int) -> torch.Tensor:
    """H_q(X_t | X_0), the same for every x_0: entropy of N(., (1 - abar_t) I).

    Shapes: abar_t (B,) or () -> same.
    """
    return entropy_normal(1 - abar_t, n_dims)


def prior_entropy(n_dims: int) -> float:
    """H_p(X_T): entropy of pi = N(0, I), nats."""
    return 0.5 * n_dims * (1 + LOG_2PI)


def log_prior(x: torch.Tensor) -> torch.Tensor:
    """log pi(x) for pi = N(0, I), nats.

    Shapes: x (B, *D) -> (B,).
    """
    return -0.5 * sum_dims(LOG_2PI + x**2)


def prior_kl(x0: torch.Tensor, abar_T: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)), the prior-matching term, analytic, nats.

    Shapes: x0 (B, *D), abar_T (B,) -> (B,).
    """
    mean, var = q_mean_var(x0, abar_T)
    return kl_normal(mean, var, torch.zeros_like(mean), torch.ones_like(var))


def forward_decoder_nll(x0: torch.Tensor, abar_1: torch.Tensor) -> torch.Tensor:
    """-E_{q(x_1|x_0)} log p(x_0 | x_1) for the paper's fixed last step, analytic, nats.

    The last reverse step is the forward kernel's reversal under pi (paper App. B.2):
    p(x_0 | x_1) = q(x_1 | x_0) pi(x_0) / pi(x_1) = N(sqrt(1 - beta_1) x_1, beta_1 I),
    beta_1 = 1 - abar_1. With x_0 - sqrt(1 - beta_1) x_1 = beta_1 x_0 - sqrt((1 - beta_1) beta_1) eps,
      -E log p = D/2 log(2 pi beta_1) + beta_1 |x_0|^2 / 2 + (1 - beta_1) D / 2.

    Shapes: x0 (B, *D), abar_1 (B,) -> (B,).
    """
    beta_1 = (1 - abar_1).to(torch.float64)
    d = num_dims(x0)
    sq = sum_dims(x0.to(torch.float64) ** 2)
    return 0.5 * d * (LOG_2PI + torch.log(beta_1)) + 0.5 * beta_1 * sq + 0.5 * (1 - beta_1) * d


def paper_entropy_terms(abar_1: torch.Tensor, abar_T: torch.Tensor, n_dims: int) -> torch.Tensor:
    """H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T): the paper's eq. 14 edge terms, nats.

    K = -sum_{t>=2} E KL_t + this, in expectation over data whose second moment per
    dimension is exactly 1 (the paper's scaling; App. B.1). The per-example
    counterpart, exact for any x_0, is -prior_kl(x_0) - forward_decoder_nll(x_0):
    the two agree in expectation, which the tests check.

    Shapes: abar_1, abar_T () or (B,) -> same.
    """
    return (
        entropy_q_t_given_0(abar_T, n_dims)
        - entropy_q_t_given_0(abar_1, n_dims)
        - prior_entropy(n_dims)
    )


class GaussianProcess:
    """The Gaussian forward process as an object: what every feature asks of a process
    (see ``processes.Process``), for continuous data scaled by the model's affine map.

    Shapes: as the module's functions; kernels over (B, *D).
    """

    name = "gaussian"
    # continuous-time: the VDM limit; simple-loss: eps / x0 / v regression (and hybrid);
    # learned-schedule: a reparametrised x_t (frozen noise); ddim: deterministic hops;
    # rescaling: data are centred and scaled (binary data never are).
    # noisy-latents: x_t / sqrt(abar_t) is x_0 plus Gaussian noise, so a noisy observation
    # of x_0 is a latent of the chain (conditioning's ``start``).
    # ode: a score, so a probability-flow ODE (``ode``).
    supports = frozenset({"continuous-time", "simple-loss", "learned-schedule", "ddim", "rescaling", "noisy-latents",
                          "ode"})
    binary = False  # the data are real values

    def noise(self, shape, generator: torch.Generator, device) -> torch.Tensor:
        """eps ~ N(0, I), the randomness behind one x_t. Shapes: shape (B, *D) -> (B, *D) float32."""
        return torch.randn(shape, generator=generator).to(device)

    def q_sample(self, x0, abar_t, noise) -> torch.Tensor:
        """x_t from x_0 and eps. Shapes: x0, noise (B, *D), abar_t (B,) -> (B, *D)."""
        return q_sample(x0, abar_t, noise)

    def forward(self, x_s, abar_s, abar_t) -> Normal:
        """q(x_t | x_s) = N(sqrt(a) x_s, (1 - a) I), a = abar_t / abar_s.
        Shapes: x_s (B, *D), abar_s, abar_t (B,) float64 -> Normal over (B, *D)."""
        a = abar_t / abar_s
        return Normal(mean=expand_as(a.sqrt(), x_s) * x_s, var=1 - a)

    def posterior(self, x_t, x0, abar_s, abar_t) -> Normal:
        """q(x_s | x_t, x_0) (``posterior``). Shapes: x_t, x0 (B, *D), abar_s, abar_t (B,) -> Normal."""
        mean, var = posterior(x_t, x0, abar_s, abar_t)
        return Normal(mean=mean, var=var)

    def prior(self, shape, device) -> Normal:
        """pi = N(0, I). Shapes: shape (B, *D) -> Normal over (B, *D)."""
        return Normal(mean=torch.zeros(shape, device=device), var=torch.ones(shape[0], device=device))

    def log_prior(self, x) -> torch.Tensor:
        """log pi(x), nats. Shapes: x (B, *D) -> (B,) float64."""
        return log_prior(x.to(torch.float64))

    def prior_kl(self, x0, abar_T) -> torch.Tensor:
        """KL(q(x_T | x_0) || pi), nats. Shapes: x0 (B, *D), abar_T (B,) -> (B,)."""
        return prior_kl(x0, abar_T)

    def fixed_decoder(self, x_1, abar_1) -> Normal:
        """The paper's last step, the forward kernel's reversal under pi (App. B.2):
        N(sqrt(abar_1) x_1, beta_1 I). Shapes: x_1 (B, *D), abar_1 (B,) -> Normal."""
        return Normal(mean=expand_as(abar_1.sqrt(), x_1) * x_1, var=1 - abar_1)

    def fixed_decoder_nll(self, x0, abar_1) -> torch.Tensor:
        """-E_q log p(x_0 | x_1) under ``fixed_decoder``, analytic, nats. Shapes: x0 (B, *D) -> (B,)."""
        return forward_decoder_nll(x0, abar_1)

    def entropy_q_t_given_0(self, abar_t, n_dims: int) -> torch.Tensor:
        return entropy_q_t_given_0(abar_t, n_dims)

    def register_buffers(self, model) -> None:
        """Nothing beyond the model's affine map."""

    def fit_data(self, model, y: torch.Tensor) -> None:
        """Centre and scale (the model's affine map). Shapes: y (N, *D) data units."""
        model.scaler.fit(y)

    def null_log_likelihood(self, model, x: torch.Tensor) -> torch.Tensor:
        """L_null per example: log pi(x) on scaled data, nats. Shapes: x (B, *D) scaled -> (B,) float64."""
        return log_prior(x.to(torch.float64))

    def check_data(self, y: torch.Tensor, what: str) -> torch.Tensor:
        """Any finite data (the model checks finiteness and shape). Shapes: y (N, *D) -> the same tensor."""
        return y

    def check_schedule(self, continuous: bool, schedule: str) -> None:
        """Every kind of time and schedule (the parametrisation has its own limits)."""
