"""Diffusion models with exact predictions for data of known distribution: no network,
no training. Gaussian mixtures (continuous; the exact score) and tables over a
finite set of binary vectors (binomial process; the exact P(x_0 = 1 | x_t) per bit).

For data x_0 ~ sum_k w_k N(mu_k, Sigma_k), the forward marginal at any time is the
mixture with means sqrt(abar) mu_k and covariances abar Sigma_k + (1 - abar) I, whose
score is known in closed form, and so is E[eps | x_t] = -sqrt(1 - abar) grad log q_t.
A model built on it isolates what a sampler, an estimator or a conditioning method
does from what a trained network gets wrong: the reference for tests and for the
conditioning benchmark.
"""

from __future__ import annotations

import torch
from torch import nn

import math

from .data.toy import GaussianMixture
from .model import DiffusionModel, ModelSpec
from .processes import binomial
from .schedules import DiscreteSchedule


class MixtureScore(nn.Module):
    """The exact eps prediction for Gaussian-mixture data (reads the model's schedule).

    Shapes: x (B, D), t (B,) -> (B, D), in x's dtype.
    """

    def __init__(self, model: DiffusionModel, mix: GaussianMixture):
        super().__init__()
        self.model = [model]  # a list: not a submodule (the model owns this net)
        self.mix = mix
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # the model's device and dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.model[0].abar_at(t.to(torch.float64))
        out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        eye = torch.eye(self.mix.dim, dtype=torch.float64)
        for a in torch.unique(abar):  # one mixture per distinct time
            rows = abar == a
            q_t = GaussianMixture(self.mix.weights, a.sqrt() * self.mix.means, a * self.mix.covariances + (1 - a) * eye)
            out[rows] = -(1 - a).sqrt() * q_t.score(x[rows].to(torch.float64))
        return out.to(x.dtype)


def mixture_model(mix: GaussianMixture, schedule, variance: str = "fixed-small", decoder: str = "learned") -> DiffusionModel:
    """A float64 DiffusionModel whose eps prediction is exact for the mixture, with the
    identity data scaling (data units are model units).

    Shapes: the model's data are (D,) with D = mix.dim.
    """
    model = DiffusionModel(nn.Identity(), schedule, ModelSpec("eps", variance, decoder), (mix.dim,), 1)
    model.net = MixtureScore(model, mix)
    return model.double()


class ClassMixtureScore(nn.Module):
    """The exact eps prediction of a class-conditional model for a mixture whose
    components are the classes: class k is component k alone (p(x | y = k)), the null
    class (index K, or no labels) the whole mixture (p(x)).

    Shapes: x (B, D), t (B,), y (B,) int64 or None -> (B, D), in x's dtype.
    """

    def __init__(self, model: DiffusionModel, mix: GaussianMixture):
        super().__init__()
        self.model = [model]
        self.mix = mix
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # Every row at once: row b's noised components N(sqrt(a_b) mu_k, a_b Sigma_k + (1 - a_b) I),
        # weighted by the mixture's weights (null class) or by one-hot on its class.
        abar = self.model[0].abar_at(t.to(torch.float64))
        mix, k_all = self.mix, self.mix.n_components
        if y is None:
            y = torch.full((x.shape[0],), k_all, dtype=torch.long)
        dtype, x = x.dtype, x.to(torch.float64)
        a = abar[:, None, None]
        means = a.sqrt() * mix.means[None]  # (B, K, D)
        covs = a[..., None] * mix.covariances[None] + (1 - a[..., None]) * torch.eye(mix.dim, dtype=torch.float64)
        chol = torch.linalg.cholesky(covs)  # (B, K, D, D)
        diff = (x[:, None, :] - means)[..., None]  # (B, K, D, 1)
        white = torch.linalg.solve_triangular(chol, diff, upper=False)
        log_n = -0.5 * white.square().sum((-2, -1)) - chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_w = torch.where(y[:, None] == k_all, mix.weights.log()[None],
                            torch.where(torch.arange(k_all)[None] == y[:, None], 0.0, -math.inf))
        resp = torch.softmax(log_w + log_n, 1)  # (B, K): the components' posterior
        # grad log N_k = -C_k^{-1} (x - m_k) = -L^{-T} (L^{-1} (x - m_k))
        grads = -torch.linalg.solve_triangular(chol.transpose(-2, -1), white, upper=True)[..., 0]
        score = (resp[..., None] * grads).sum(1)
        return (-(1 - abar).sqrt()[:, None] * score).to(dtype)


def class_mixture_model(mix: GaussianMixture, schedule, variance: str = "fixed-small",
                        decoder: str = "learned") -> DiffusionModel:
    """A float64 class-conditional DiffusionModel with the exact eps prediction of each
    component of the mixture as a class (``ClassMixtureScore``) and of the whole
    mixture as the null class; identity data scaling.

    Shapes: the model's data are (D,), classes 0..K-1 with K = mix.n_components.
    """
    model = DiffusionModel(nn.Identity(), schedule, ModelSpec("eps", variance, decoder), (mix.dim,), 1,
                           num_classes=mix.n_components)
    model.net = ClassMixtureScore(model, mix)
    return model.double()


class TableX0(nn.Module):
    """logit P(x0_i = 1 | x_t) for binary data with a known table of probabilities over
    support points (reads the model's schedule). With it, the x0-parametrised kernel is
    the exact per-bit marginal q(x_{t-1, i} | x_t): the best factorised kernel.

    Shapes: x (B, D), t (B,) -> (B, D) float64.
    """

    def __init__(self, model: DiffusionModel, support: torch.Tensor, probs: torch.Tensor):
        super().__init__()
        self.model = [model]
        self.support, self.log_probs = support.to(torch.float64), probs.to(torch.float64).log()
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar_t = self.model[0].abar_at(t.to(torch.float64))
        x = x.to(torch.float64)
        out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        logsig = torch.nn.functional.logsigmoid
        for a in torch.unique(abar_t):  # the support's likelihoods once per distinct time
            rows = abar_t == a
            lg = binomial.q_logits(self.support, a.expand(len(self.support)))  # (K, D)
            # log q(x_t | x0 = support point k) for each example and k: one product over bits.
            log_lik = x[rows] @ logsig(lg).T + (1 - x[rows]) @ logsig(-lg).T
            log_w = log_lik + self.log_probs  # (B, K) unnormalised log posterior of x0
            # Per bit, the posterior mass of the support points with that bit 1 (and 0),
            # laid out (B, D, K) so that each reduction runs over contiguous memory.
            bit = self.support.T[None]  # (1, D, K)
            ones = torch.where(bit == 1, log_w[:, None, :], -math.inf).logsumexp(-1)
            zeros = torch.where(bit == 0, log_w[:, None, :], -math.inf).logsumexp(-1)
            out[rows] = ones - zeros
        return out


def table_model(support: torch.Tensor, probs: torch.Tensor, T: int, decoder: str = "learned") -> DiffusionModel:
    """A float64 binomial DiffusionModel (the paper's schedule, T steps) with the exact
    x0 prediction for the distribution probs over the rows of support.

    Shapes: support (K, D) binary, probs (K,) -> model over (D,).
    """
    sched = DiscreteSchedule("binomial", T, beta_1=0.0)
    model = DiffusionModel(nn.Identity(), sched, ModelSpec("x0", "fixed-small", decoder), (support.shape[1],), 1, "binomial")
    model.net = TableX0(model, support, probs)
    return model.double()
