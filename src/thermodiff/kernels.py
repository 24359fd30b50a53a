"""One hop of a chain as a distribution: factorised over the data dimensions, a
diagonal Gaussian (``Normal``) or independent bits given by logits (``Bernoulli``).

The forward kernels q(x_t | x_s), the posteriors q(x_s | x_t, x_0), the priors and the
model's reverse kernels p(x_s | x_t) are all kernels, so the bound (a KL between two of
them), the sampler (a draw), the Jarzynski estimate (log-probabilities) and the entropy
diagnostics use one set of formulas. Each kernel computes its own log-probability,
entropy and KL; log-densities, KLs and entropies are in nats, summed over the data
dimensions, one number per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .tensors import expand_as, sum_dims

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- Gaussian math


def log_normal(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(var)) summed over dimensions, in nats.

    Shapes: x, mean (B, *D); var (B,) or (B, *D) -> (B,).
    """
    var = expand_as(var, x).expand_as(x)
    return -0.5 * sum_dims(LOG_2PI + torch.log(var) + (x - mean) ** 2 / var)


def kl_normal(mean_q, var_q, mean_p, var_p) -> torch.Tensor:
    """KL(N(mean_q, diag var_q) || N(mean_p, diag var_p)) summed over dimensions, nats.

    Shapes: means (B, *D); variances (B,) or (B, *D) -> (B,).
    """
    var_q = expand_as(var_q, mean_q).expand_as(mean_q)
    var_p = expand_as(var_p, mean_q).expand_as(mean_q)
    ratio = var_q / var_p
    return 0.5 * sum_dims(ratio - 1 - torch.log(ratio) + (mean_q - mean_p) ** 2 / var_p)


# ----------------------------------------------------------------------------- Bernoulli math


def sample_bernoulli(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw bits from Bernoulli distributions given by logits.

    Shapes: logits (B, *D) -> (B, *D) float32, values 0 / 1.
    """
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(logits.device)
    return (u < torch.sigmoid(logits.to(torch.float64))).to(torch.float32)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log B(x; sigmoid(logits)) summed over dimensions, nats.

    Shapes: x, logits (B, *D) -> (B,) float64.
    """
    logits = logits.to(torch.float64)
    x = x.to(torch.float64)
    return sum_dims(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits))


def _xlogp(p: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """p * log p' with the convention 0 * log 0 = 0 (and 0 * -inf = 0)."""
    return torch.where(p > 0, p * logp, torch.zeros_like(p))


def kl_bernoulli(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """KL(B(q) || B(p)) summed over dimensions, nats, both given as logits.

    Shapes: logits_q, logits_p (B, *D) -> (B,) float64.
    """
    lq, lp = logits_q.to(torch.float64), logits_p.to(torch.float64)
    q1, q0 = torch.sigmoid(lq), torch.sigmoid(-lq)
    kl = _xlogp(q1, F.logsigmoid(lq) - F.logsigmoid(lp)) + _xlogp(q0, F.logsigmoid(-lq) - F.logsigmoid(-lp))
    return sum_dims(kl)


def entropy_bernoulli(logits: torch.Tensor) -> torch.Tensor:
    """H(B(sigmoid(logits))) summed over dimensions, nats.

    Shapes: logits (B, *D) -> (B,) float64.
    """
    lg = logits.to(torch.float64)
    return -sum_dims(_xlogp(torch.sigmoid(lg), F.logsigmoid(lg)) + _xlogp(torch.sigmoid(-lg), F.logsigmoid(-lg)))


# ----------------------------------------------------------------------------- kernels


class Kernel:
    """A factorised distribution over x, one per example. A reverse kernel built from a
    network output also carries the network's x_0 prediction (``x0``: data for
    Gaussian kernels, logits of P(x_0 = 1 | x_t) for Bernoulli ones), which
    conditioning uses; None where the parametrisation has none.

    Shapes: every method's per-example results are (B,) float64; draws are (B, *D).
    """

    x0: torch.Tensor | None

    def sample(self, generator: torch.Generator) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def entropy(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def kl(self, other: "Kernel") -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def take(self, index: torch.Tensor) -> "Kernel":
        """The kernel of the rows in index (e.g. after resampling). Shapes: index (B',) -> over (B', *D)."""
        fields = {k: (None if v is None else v[index]) for k, v in vars(self).items()}
        return replace(self, **fields)


@dataclass(frozen=True)
class Normal(Kernel):
    """N(mean, diag(var)), var per example (B,) or per dimension (B, *D)."""

    mean: torch.Tensor  # (B, *D)
    var: torch.Tensor  # (B,) or (B, *D)
    x0: torch.Tensor | None = None  # (B, *D)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One draw, in the mean's dtype. Shapes: -> (B, *D)."""
        noise = torch.randn(self.mean.shape, generator=generator).to(self.mean.device)
        return self.mean + expand_as(self.var.sqrt(), self.mean) * noise.to(self.mean.dtype)

    def log_prob(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """log density of x, nats, computed in dtype (float64 by default: a chain's log
        weights are sums of many such terms; None keeps x's own precision).
        Shapes: x (B, *D) -> (B,) float64."""
        dtype = dtype or x.dtype
        return log_normal(x.to(dtype), self.mean.to(dtype), self.var.to(dtype)).to(torch.float64)

    def entropy(self) -> torch.Tensor:
        """Entropy, nats. Shapes: -> (B,) float64."""
        var = expand_as(self.var.to(torch.float64), self.mean).expand(self.mean.shape)
        return 0.5 * sum_dims(1 + LOG_2PI + torch.log(var))

    def kl(self, other: "Normal") -> torch.Tensor:
        """KL(self || other), nats, in the tensors' own precision. Shapes: -> (B,)."""
        return kl_normal(self.mean, self.var, other.mean, other.var)


@dataclass(frozen=True)
class Bernoulli(Kernel):
    """Independent bits with P(x_i = 1) = sigmoid(logits_i); float64 logits keep a nearly
    deterministic kernel's small probability to full relative precision, and +-inf is
    a delta."""

    logits: torch.Tensor  # (B, *D) float64
    x0: torch.Tensor | None = None  # (B, *D) logits of P(x_0 = 1 | x_t)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One draw, float32 0 / 1. Shapes: -> (B, *D)."""
        return sample_bernoulli(self.logits, generator)

    def log_prob(self, x: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
        """log probability of the bits x, nats, always in float64 (dtype is accepted for a
        common signature with ``Normal``). Shapes: x (B, *D) -> (B,) float64."""
        return log_bernoulli(x, self.logits)

    def entropy(self) -> torch.Tensor:
        """Entropy, nats. Shapes: -> (B,) float64."""
        return entropy_bernoulli(self.logits)

    def kl(self, other: "Bernoulli") -> torch.Tensor:
        """KL(self || other), nats. Shapes: -> (B,) float64."""
        return kl_bernoulli(self.logits, other.logits)


def ddim(x0: torch.Tensor, eps: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor, eta: float) -> Normal:
    """The DDIM kernel (Song et al. 2021, eq. 12) for a hop s < t from a prediction:
    N(sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat, sigma^2) with
    sigma^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s), the posterior's
    variance times eta^2. eta = 1 is the ancestral kernel with fixed-small variance;
    eta = 0 is deterministic given x_T, which keeps samples sharp with few hops. At the
    last hop (abar_s = 1) it is a delta at x0_hat; the sampler uses the model's decoder
    there.

    Shapes: x0, eps (B, *D), abar_s, abar_t (B,) -> Normal over (B, *D).
    """
    var = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
    mean = expand_as(abar_s.sqrt(), x0) * x0 + expand_as((1 - abar_s - var).clamp_min(0).sqrt(), x0) * eps
    return Normal(mean=mean, var=var, x0=x0)


def _log_interval_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, accurate in both tails (the difference is taken
    on the side of zero where the CDFs are small). Shapes: a, b (...) -> (...) float64."""
    upper = a > 0  # both far right: Phi(-a) - Phi(-b) keeps the digits
    hi = torch.where(upper, torch.special.ndtr(-a), torch.special.ndtr(b))
    lo = torch.where(upper, torch.special.ndtr(-b), torch.special.ndtr(a))
    return torch.log((hi - lo).clamp_min(1e-300))


@dataclass(frozen=True)
class DiscretizedNormal(Kernel):
    """improved DDPM's discretised Gaussian decoder, as a density on dequantised 8-bit
    levels: the mass the Normal puts on an example's level bin [k, k + 1) (levels 0 and
    255 reaching out to -inf and +inf), spread evenly over the bin. Its log-density on
    the model's scale is log mass + log(scale) per dimension, so that K in the data's
    units (adding the scaling's Jacobian) holds the log-probability of the levels
    themselves.

    shift, scale: the model's affine map, level y <-> (y - shift) / scale.
    """

    normal: Normal
    shift: torch.Tensor  # () or (*D)
    scale: torch.Tensor  # () or (*D)
    levels: int = 256
    x0: torch.Tensor | None = None

    def _bin(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float64) * self.scale + self.shift
        return torch.floor(y).clamp(0, self.levels - 1)

    def log_prob(self, x: torch.Tensor, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
        """Shapes: x (B, *D) model units -> (B,) float64."""
        k = self._bin(x)
        mean = self.normal.mean.to(torch.float64)
        sd = expand_as(self.normal.var.to(torch.float64).sqrt(), mean)
        a = torch.where(k > 0, ((k - self.shift) / self.scale - mean) / sd, torch.full_like(mean, -math.inf))
        b = torch.where(k < self.levels - 1, ((k + 1 - self.shift) / self.scale - mean) / sd,
                        torch.full_like(mean, math.inf))
        return sum_dims(_log_interval_mass(a, b) + torch.log(self.scale).expand_as(mean))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A level drawn with the Normal's mass on its bin, then a uniform position in it.
        Shapes: -> (B, *D) in the mean's dtype."""
        k = self._bin(self.normal.sample(generator))
        u = torch.rand(k.shape, generator=generator, dtype=torch.float64).to(k.device)
        return ((k + u - self.shift) / self.scale).to(self.normal.mean.dtype)

    def entropy(self) -> torch.Tensor:  # pragma: no cover - no closed form; nothing asks for it
        raise NotImplementedError("the discretised decoder has no closed-form entropy")

    def take(self, index: torch.Tensor) -> "DiscretizedNormal":
        """Shapes: index (B',) -> over (B', *D)."""
        return replace(self, normal=self.normal.take(index), x0=None if self.x0 is None else self.x0[index])
