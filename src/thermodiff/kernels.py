"""One hop of the chain as a distribution: the forward kernel q(x_t | x_s) and the
model's reverse kernel p(x_s | x_t), for both processes.

The sampler draws from the reverse kernels, the Jarzynski estimate scores forward
trajectories under both, and the entropy diagnostics read the reverse kernels'
entropies; all three take their kernels from here, so a chain is built in one place.
Each kernel is a product over the data dimensions: Bernoullis given by logits
(binomial process) or a diagonal Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import DiffusionModel
from .errors import ConfigError
from .parametrization import binomial_reverse_logits, reverse_kernel, x0_and_eps
from .processes import binomial
from .processes.gaussian import LOG_2PI, expand_as, log_normal, sum_dims


@dataclass(frozen=True)
class Kernel:
    """A factorised distribution over x given per example: Bernoulli logits, or a
    Gaussian mean and variance (variance per example or per dimension). A reverse
    kernel built from a network output also carries the network's x_0 prediction
    (x0-logits for binary data), which conditioning uses."""

    logits: torch.Tensor | None = None  # (B, *D) float64
    mean: torch.Tensor | None = None  # (B, *D)
    var: torch.Tensor | None = None  # (B,) or (B, *D)
    x0: torch.Tensor | None = None  # (B, *D)

    def take(self, index: torch.Tensor) -> "Kernel":
        """The kernel of the rows in index (e.g. after resampling). Shapes: index (B',) -> over (B', *D)."""
        pick = lambda v: None if v is None else v[index]  # noqa: E731
        return Kernel(logits=pick(self.logits), mean=pick(self.mean), var=pick(self.var), x0=pick(self.x0))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One draw. Shapes: -> (B, *D) (binary draws are float32, Gaussian draws keep
        the mean's dtype)."""
        if self.logits is not None:
            return binomial.sample_bernoulli(self.logits, generator)
        noise = torch.randn(self.mean.shape, generator=generator).to(self.mean.device)
        return self.mean + expand_as(self.var.sqrt(), self.mean) * noise.to(self.mean.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log density (Gaussian) or log probability (binary) of x, nats.
        Shapes: x (B, *D) -> (B,) float64."""
        if self.logits is not None:
            return binomial.log_bernoulli(x, self.logits)
        return log_normal(x.to(torch.float64), self.mean.to(torch.float64), self.var.to(torch.float64))

    def entropy(self) -> torch.Tensor:
        """Entropy, nats. Shapes: -> (B,) float64."""
        if self.logits is not None:
            return binomial.entropy_bernoulli(self.logits)
        var = expand_as(self.var.to(torch.float64), self.mean).expand(self.mean.shape)
        return 0.5 * sum_dims(1 + LOG_2PI + torch.log(var))


def forward_kernel(model: DiffusionModel, x_s: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor) -> Kernel:
    """q(x_t | x_s) for s < t: keep fraction a = abar_t / abar_s of the signal.

    Gaussian N(sqrt(a) x_s, (1 - a) I); binomial B(x_s a + (1 - a) / 2).

    Shapes: x_s (B, *D), abar_s, abar_t (B,) float64 -> Kernel over (B, *D).
    """
    if model.binomial:
        return Kernel(logits=binomial.forward_logits(x_s, abar_s, abar_t))
    a = abar_t / abar_s
    return Kernel(mean=expand_as(a.sqrt(), x_s) * x_s, var=1 - a)


def reverse_step(model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, abar_s: torch.Tensor,
                 abar_t: torch.Tensor) -> Kernel:
    """The model's p(x_s | x_t) for s < t; the decoder p(x_0 | x_1) when abar_s = 1.

    A ``paper`` decoder is the last forward kernel's reversal under pi (App. B.2):
    N(sqrt(abar_1) x_1, beta_1 I) for the Gaussian process, the forward kernel itself
    for the binomial one. Otherwise the network's output at (x_t, t) gives the kernel
    through ``parametrization``. x_t may be float64 (a chain kept in double precision);
    the network sees it in its own dtype, the kernel is built from the float64 values.

    Shapes: x_t (B, *D), t (B,) network times, abar_s, abar_t (B,) float64 -> Kernel.
    """
    decoder = bool((abar_s >= 1).all())
    if decoder and model.spec.decoder == "paper":
        if model.binomial:
            return Kernel(logits=binomial.forward_logits(x_t, abar_s, abar_t))
        return Kernel(mean=expand_as(abar_t.sqrt(), x_t) * x_t, var=1 - abar_t)
    net_dtype = next(model.parameters()).dtype
    out = model(x_t.to(net_dtype), t)
    if model.binomial:
        logits, x0_logits = binomial_reverse_logits(model.spec.parametrization, out, x_t, abar_s, abar_t)
        return Kernel(logits=logits, x0=x0_logits)
    mean, var, x0_hat = reverse_kernel(model.spec.parametrization, model.spec.variance, out, x_t, abar_s, abar_t)
    return Kernel(mean=mean, var=var, x0=x0_hat)


def ddim_step(model: DiffusionModel, x_t: torch.Tensor, t: torch.Tensor, abar_s: torch.Tensor,
              abar_t: torch.Tensor, eta: float) -> Kernel:
    """The DDIM kernel (Song et al. 2021, eq. 12) for a hop s < t:
    N(sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat, sigma^2) with
    sigma^2 = eta^2 (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s), the posterior's
    variance times eta^2. eta = 1 is the ancestral kernel with fixed-small variance;
    eta = 0 is deterministic given x_T, which keeps samples sharp with few hops. At the
    last hop (abar_s = 1) it is a delta at x0_hat; the sampler uses the model's decoder
    there. Gaussian eps / x0 / v models only.

    Shapes: x_t (B, *D), t, abar_s, abar_t (B,) -> Kernel over (B, *D).
    """
    if model.binomial or model.spec.parametrization == "paper":
        raise ConfigError("DDIM (eta) needs a Gaussian model that predicts eps, x0 or v")
    net_dtype = next(model.parameters()).dtype
    out = model(x_t.to(net_dtype), t)
    x0_hat, eps_hat = x0_and_eps(model.spec.parametrization, out[:, 0], x_t, abar_t)
    var = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
    mean = expand_as(abar_s.sqrt(), x0_hat) * x0_hat + expand_as((1 - abar_s - var).clamp_min(0).sqrt(), x0_hat) * eps_hat
    return Kernel(mean=mean, var=var, x0=x0_hat)


def log_prior(model: DiffusionModel, x: torch.Tensor) -> torch.Tensor:
    """log pi(x_T): N(0, I) or B(1/2) per dimension, nats. Shapes: x (B, *D) -> (B,) float64."""
    from .processes import gaussian

    return (binomial if model.binomial else gaussian).log_prior(x.to(torch.float64)).to(torch.float64)
