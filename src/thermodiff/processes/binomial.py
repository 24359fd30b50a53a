"""The binomial forward process for binary data: pure tensor functions, and
``BinomialProcess``, the object that carries them for the rest of the package.

q(x_t | x_{t-1}) = B(x_{t-1} (1 - beta_t) + beta_t / 2), prior pi = B(1/2) per bit
(paper Table App.1). Each step keeps a bit with probability 1 - beta_t and otherwise
redraws it from a fair coin, so after several steps the kept fraction multiplies:
for s < t, q(x_t | x_s) = B(x_s a + (1 - a) / 2) with a = abar_t / abar_s, and
q(x_t | x_0) = B(x_0 abar_t + (1 - abar_t) / 2). With the paper's schedule
beta_t = 1 / (T - t + 1), abar_t = 1 - t / T.

Bernoulli distributions are carried as logits, float64: a kernel that is nearly
deterministic (the first steps flip a bit with probability beta_1 / 2 ~ 1e-4) keeps
both of its probabilities to full relative precision, and a delta (the posterior at
s = 0) is a logit of +-inf. Log-probabilities, KLs and entropies are in nats and
summed over the data dimensions, one number per example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
# The Bernoulli kernel's math lives with the kernels; re-exported here as part of this
# process's vocabulary.
from ..kernels import Bernoulli, entropy_bernoulli, kl_bernoulli, log_bernoulli, sample_bernoulli  # noqa: F401
from ..tensors import expand_as, sum_dims

LOG2 = math.log(2.0)


def q_logits(x0: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Logits of q(x_t = 1 | x_0) = x_0 abar_t + (1 - abar_t) / 2, for binary or fractional x_0.

    Shapes: x0 (B, *D) in [0, 1], abar_t (B,) float64 -> (B, *D) float64.
    """
    a = expand_as(abar_t.to(torch.float64), x0.to(torch.float64))
    p1 = x0.to(torch.float64) * a + (1 - a) / 2
    p0 = (1 - x0.to(torch.float64)) * a + (1 - a) / 2
    return torch.log(p1) - torch.log(p0)


def q_sample(x0: torch.Tensor, abar_t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0) from uniforms u: the bit is 1 where u < q(x_t = 1 | x_0).

    Shapes: x0, u (B, *D), abar_t (B,) -> (B, *D) in x0's dtype, values 0 / 1.
    """
    p1 = torch.sigmoid(q_logits(x0, abar_t))
    return (u.to(torch.float64) < p1).to(x0.dtype)


def forward_logits(x_s: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Logits of the hop's forward kernel q(x_t = 1 | x_s) for s < t.

    Shapes: x_s (B, *D), abar_s, abar_t (B,) -> (B, *D) float64.
    """
    return q_logits(x_s, abar_t.to(torch.float64) / abar_s.to(torch.float64))


def posterior_logits(x_t: torch.Tensor, x0: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Logits of the posterior q(x_s = 1 | x_t, x_0) for s < t and binary x_0 (Bayes' rule per bit).

    q(x_s | x_t, x_0) is proportional to q(x_t | x_s) q(x_s | x_0); bits are independent,
    so it is a product of Bernoullis. At s = 0 (abar_s = 1) it is the delta at x_0
    (logits +-inf).

    Shapes: x_t, x0 (B, *D), abar_s, abar_t (B,) float64 -> (B, *D) float64.
    """
    x_t = x_t.to(torch.float64)
    # log q(x_t | x_s = 1) - log q(x_t | x_s = 0) is +-logit(keep): the hop's forward
    # logit from a 1, with the sign of x_t.
    log_lik_ratio = (2 * x_t - 1) * forward_logits(torch.ones_like(x_t), abar_s, abar_t)
    return log_lik_ratio + q_logits(x0, abar_s)


def x0_mixture_logits(x0_logits: torch.Tensor, x_t: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Logits of p(x_s = 1 | x_t) = sum over x_0 of p(x_0 | x_t) q(x_s = 1 | x_t, x_0), per bit.

    x0_logits are a prediction of P(x_0 = 1 | x_t) per bit. With the exact per-bit
    posterior of x_0 this is the exact marginal q(x_s = 1 | x_t) of each bit: the best a
    factorised reverse kernel can do, so this parametrisation loses nothing.
    At s = 0 it is B(sigmoid(x0_logits)) itself.

    Shapes: x0_logits, x_t (B, *D), abar_s, abar_t (B,) float64 -> (B, *D) float64.
    """
    z = x0_logits.to(torch.float64)
    w1, w0 = F.logsigmoid(z), F.logsigmoid(-z)  # log P(x_0 = 1 | x_t), log P(x_0 = 0 | x_t)
    post_if_1 = posterior_logits(x_t, torch.ones_like(x_t), abar_s, abar_t)
    post_if_0 = posterior_logits(x_t, torch.zeros_like(x_t), abar_s, abar_t)
    log_one = torch.logaddexp(w1 + F.logsigmoid(post_if_1), w0 + F.logsigmoid(post_if_0))
    log_zero = torch.logaddexp(w1 + F.logsigmoid(-post_if_1), w0 + F.logsigmoid(-post_if_0))
    return log_one - log_zero


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """h(p) = -p log p - (1 - p) log(1 - p), nats.

    Shapes: any -> same, float64.
    """
    p = torch.as_tensor(p, dtype=torch.float64)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def entropy_q_t_given_0(abar_t: torch.Tensor, n_dims: int) -> torch.Tensor:
    """H_q(X_t | X_0) = D h((1 - abar_t) / 2), the same for every binary x_0, nats.

    Shapes: abar_t () or (B,) -> same.
    """
    return n_dims * binary_entropy((1 - abar_t.to(torch.float64)) / 2)


def prior_entropy(n_dims: int) -> float:
    """H_pi(X_T) = D log 2 for pi = B(1/2), nats."""
    return n_dims * LOG2


def log_prior(x: torch.Tensor) -> torch.Tensor:
    """log pi(x) = -D log 2, nats. Shapes: x (B, *D) -> (B,) float64."""
    return torch.full((x.shape[0],), -x[0].numel() * LOG2, dtype=torch.float64, device=x.device)


def prior_kl(x0: torch.Tensor, abar_T: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || B(1/2)) = D (log 2 - h((1 - abar_T) / 2)) for binary x_0, nats.

    Shapes: x0 (B, *D), abar_T (B,) -> (B,) float64.
    """
    return prior_entropy(x0[0].numel()) - entropy_q_t_given_0(abar_T, x0[0].numel()).expand(x0.shape[0])


def forward_decoder_nll(x0: torch.Tensor, abar_1: torch.Tensor) -> torch.Tensor:
    """-E_q log p(x_0 | x_1) with the last reverse step fixed to the forward kernel
    B(x_1 (1 - beta_1) + beta_1 / 2) (the paper's choice, App. B.2), nats.

    x_1 agrees with x_0 in a bit with probability 1 - beta_1 / 2, and the fixed kernel then
    gives x_0 that same probability, so the expectation is D h(beta_1 / 2) exactly.

    Shapes: x0 (B, *D), abar_1 (B,) -> (B,) float64.
    """
    return x0[0].numel() * binary_entropy((1 - abar_1.to(torch.float64)) / 2)


def paper_entropy_terms(abar_1: torch.Tensor, abar_T: torch.Tensor, n_dims: int) -> torch.Tensor:
    """H_q(X_T|X_0) - H_q(X_1|X_0) - H_p(X_T): the paper's eq. 14 edge terms, nats.

    For binary data they equal -prior_kl - forward_decoder_nll for every x_0 (both are
    functions of the schedule alone), which the tests check.

    Shapes: abar_1, abar_T () or (B,) -> same.
    """
    return entropy_q_t_given_0(abar_T, n_dims) - entropy_q_t_given_0(abar_1, n_dims) - prior_entropy(n_dims)


def log_null(x: torch.Tensor, rate: float | torch.Tensor) -> torch.Tensor:
    """log-likelihood under independent Bernoullis of one rate (the paper's L_null), nats.

    Shapes: x (B, *D), rate () -> (B,) float64.
    """
    r = torch.as_tensor(rate, dtype=torch.float64)
    x = x.to(torch.float64)
    return sum_dims(torch.xlogy(x, r) + torch.xlogy(1 - x, 1 - r))


def check_binary(x: torch.Tensor, what: str) -> torch.Tensor:
    """Reject data with any value other than 0 and 1, naming the first offending row.

    Shapes: x (N, *D) -> the same tensor.
    """
    flat = x.reshape(x.shape[0], -1)
    bad = ~((flat == 0) | (flat == 1)).all(-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        value = flat[row][(flat[row] != 0) & (flat[row] != 1)][0].item()
        raise DataError(
            f"{what}: the binomial process needs binary data (0 or 1); row {row} holds {value:g}"
            f" ({int(bad.sum())} rows are not binary)"
        )
    return x


class BinomialProcess:
    """The binomial forward process as an object (see ``processes.Process``), for binary
    data: never rescaled; the model keeps the training data's rate of ones for L_null.

    Shapes: as the module's functions; kernels over (B, *D).
    """

    name = "binomial"
    supports = frozenset()  # discrete time, the bound objective, a fixed schedule, ancestral kernels
    binary = True  # the data are bits: conditions on them are bit probabilities, not densities

    def noise(self, shape, generator: torch.Generator, device) -> torch.Tensor:
        """u ~ U[0, 1), the randomness behind one x_t (``q_sample``). Shapes: -> (B, *D) float64."""
        return torch.rand(shape, generator=generator, dtype=torch.float64).to(device)

    def q_sample(self, x0, abar_t, noise) -> torch.Tensor:
        """x_t from x_0 and uniforms. Shapes: x0, noise (B, *D), abar_t (B,) -> (B, *D)."""
        return q_sample(x0, abar_t, noise)

    def forward(self, x_s, abar_s, abar_t) -> Bernoulli:
        """q(x_t | x_s) = B(x_s a + (1 - a) / 2). Shapes: x_s (B, *D), abar_s, abar_t (B,) -> Bernoulli."""
        return Bernoulli(logits=forward_logits(x_s, abar_s, abar_t))

    def posterior(self, x_t, x0, abar_s, abar_t) -> Bernoulli:
        """q(x_s | x_t, x_0) (``posterior_logits``). Shapes: x_t, x0 (B, *D), abar_s, abar_t (B,) -> Bernoulli."""
        return Bernoulli(logits=posterior_logits(x_t, x0, abar_s, abar_t))

    def prior(self, shape, device) -> Bernoulli:
        """pi = B(1/2) per bit. Shapes: shape (B, *D) -> Bernoulli over (B, *D)."""
        return Bernoulli(logits=torch.zeros(shape, dtype=torch.float64, device=device))

    def log_prior(self, x) -> torch.Tensor:
        """log pi(x) = -D log 2, nats. Shapes: x (B, *D) -> (B,) float64."""
        return log_prior(x)

    def prior_kl(self, x0, abar_T) -> torch.Tensor:
        """KL(q(x_T | x_0) || B(1/2)), nats. Shapes: x0 (B, *D), abar_T (B,) -> (B,) float64."""
        return prior_kl(x0, abar_T)

    def fixed_decoder(self, x_1, abar_1) -> Bernoulli:
        """The paper's last step: the forward kernel itself, B(x_1 (1 - beta_1) + beta_1 / 2).
        Shapes: x_1 (B, *D), abar_1 (B,) -> Bernoulli."""
        return Bernoulli(logits=forward_logits(x_1, torch.ones_like(abar_1), abar_1))

    def fixed_decoder_nll(self, x0, abar_1) -> torch.Tensor:
        """-E_q log p(x_0 | x_1) under ``fixed_decoder``: D h(beta_1 / 2), nats. Shapes: -> (B,) float64."""
        return forward_decoder_nll(x0, abar_1)

    def entropy_q_t_given_0(self, abar_t, n_dims: int) -> torch.Tensor:
        return entropy_q_t_given_0(abar_t, n_dims)

    def register_buffers(self, model) -> None:
        """The null model's rate of ones (paper: L_null of the heartbeat data at p = 0.2)."""
        model.register_buffer("null_rate", torch.full((), 0.5, dtype=torch.float64))

    def fit_data(self, model, y: torch.Tensor) -> None:
        """The training data's rate of ones, kept inside (0, 1) so that L_null stays finite.
        Shapes: y (N, *D) binary."""
        model.null_rate.copy_(y.to(torch.float64).mean().clamp(1e-6, 1 - 1e-6))

    def null_log_likelihood(self, model, x: torch.Tensor) -> torch.Tensor:
        """L_null per example: independent Bernoullis at the training rate, nats.
        Shapes: x (B, *D) -> (B,) float64."""
        return log_null(x, model.null_rate)

    def check_data(self, y: torch.Tensor, what: str) -> torch.Tensor:
        """Binary data (the model checks finiteness and shape). Shapes: y (N, *D) -> the same tensor."""
        return check_binary(y, what)

    def check_schedule(self, continuous: bool, schedule: str) -> None:
        """Discrete time and a fixed schedule only."""
        if continuous:
            raise ConfigError("the binomial process is discrete: set process.time = 'discrete'")
        if schedule == "learned":
            # Paper 2.4.1: frozen-noise gradient ascent on beta needs a reparametrised x_t;
            # binary states have none, so the binomial process uses a fixed schedule.
            raise ConfigError("the binomial process cannot learn its schedule (x_t is discrete); "
                              "choose binomial, linear or cosine")
