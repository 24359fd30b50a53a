"""Diffusion models with the exact score of Gaussian-mixture data: no network, no training.

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

from .data.toy import GaussianMixture
from .model import DiffusionModel, ModelSpec


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
