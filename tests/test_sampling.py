"""Samplers against exact answers: with the exact reverse process of Gaussian data,
ancestral samples must be distributed as the data."""

import math

import pytest
import torch

from conftest import oracle_model
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule
from thermodiff.errors import ConfigError
from thermodiff.sampling.ancestral import drift, sample, time_grid


def _check_normal(x, var, n):
    # mean within 5 standard errors; variance within 5 standard errors of a sample variance
    assert torch.all(x.mean(0).abs() < 5 * math.sqrt(var / n))
    assert torch.all((x.var(0) - var).abs() < 5 * var * math.sqrt(2 / n))


def test_exact_discrete_chain_samples_the_data():
    model = oracle_model(DiscreteSchedule("linear", 50), 1.0, "x0", "fixed-large")
    x = sample(model, 20_000, torch.Generator().manual_seed(0))
    _check_normal(x, 1.0, 20_000)


@pytest.mark.parametrize("steps", [None, 400])
def test_exact_continuous_chain_samples_narrow_data(steps):
    """Even with the exact x0, coarse ancestral hops with the posterior's variance shrink
    the spread (25 hops give 0.036 for 0.05): the chain needs hundreds of steps here."""
    s2 = 0.05
    model = oracle_model(ContinuousSchedule("linear-logsnr"), s2, "eps", "fixed-small")
    x = sample(model, 20_000, torch.Generator().manual_seed(1), steps=steps or 400)
    _check_normal(x, s2, 20_000)


def test_respaced_discrete_chain_and_trajectory():
    """Coarse hops bracket the truth: the posterior's variance (fixed-small) ignores the
    uncertainty of x0 and under-disperses, the hop's beta (fixed-large) over-disperses."""
    small = oracle_model(DiscreteSchedule("cosine", 200), 0.3, "x0", "fixed-small")
    large = oracle_model(DiscreteSchedule("cosine", 200), 0.3, "x0", "fixed-large")
    grid = time_grid(small, 20)
    assert grid[0] == 1 / 200 and grid[-1] == 1 and len(grid) == 20
    x, snaps = sample(small, 20_000, torch.Generator().manual_seed(2), steps=20, keep=4)
    assert snaps[0][0] == 1.0 and snaps[-1][0] == 0.0 and len(snaps) >= 4
    assert torch.all(x.mean(0).abs() < 0.02)
    x_large = sample(large, 20_000, torch.Generator().manual_seed(3), steps=20)
    assert torch.all(x.var(0) < 0.3) and torch.all(x_large.var(0) > 0.3)
    x_full = sample(small, 20_000, torch.Generator().manual_seed(4))
    _check_normal(x_full, 0.3, 20_000)


def test_drift_points_toward_the_data():
    model = oracle_model(DiscreteSchedule("linear", 100), 0.1, "x0", "fixed-small")
    x = torch.tensor([[2.0, -2.0]], dtype=torch.float64)
    d = drift(model, x, 0.5)
    assert torch.all(torch.sign(d) == -torch.sign(x))


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_drift_is_the_closed_form_posterior_mean_step(time):
    """For x0 ~ N(mu, Sigma) (correlated, off-centre) and the exact eps model, the reverse
    kernel's mean at t is the posterior mean of q(x_s | x_t, x0) with x0 replaced by
      E[x0 | x_t] = mu + sqrt(abar_t) Sigma C_t^-1 (x_t - sqrt(abar_t) mu),
      C_t = abar_t Sigma + (1 - abar_t) I,
    so drift = [sqrt(abar_t / abar_s)(1 - abar_s) x_t + sqrt(abar_s)(1 - abar_t / abar_s)
    E[x0 | x_t]] / (1 - abar_t) - x_t, with s the step before t (discrete; at the first
    step abar_s = 1 and the mean is E[x0 | x_t]) or t - 0.01, clamped at 0 (continuous:
    abar = sigmoid(-gamma), gamma linear from -13.3 to 5). Checked on a 7 x 7 grid of
    points at four times to 1e-8 relative in float64."""
    from thermodiff.data.toy import GaussianMixture
    from thermodiff.oracle import mixture_model

    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    sigma = torch.tensor([[0.3, 0.1], [0.1, 0.6]], dtype=torch.float64)
    mix = GaussianMixture(torch.ones(1), mu[None], sigma[None])
    if time == "discrete":
        T = 100
        model = mixture_model(mix, DiscreteSchedule("linear", T))
        table = model.schedule.abar()
        times = [1 / T, 0.3, 0.77, 1.0]
        abar = lambda t: table[round(t * T)]  # noqa: E731
        before = lambda t: table[round(t * T) - 1]  # noqa: E731
    else:
        model = mixture_model(mix, ContinuousSchedule("linear-logsnr", gamma_min=-13.3, gamma_max=5.0))
        times = [0.004, 0.3, 0.77, 1.0]
        abar = lambda t: torch.sigmoid(torch.tensor(-(-13.3 + 18.3 * t), dtype=torch.float64))  # noqa: E731
        before = lambda t: abar(max(t - 1e-2, 0.0))  # noqa: E731
    g = torch.linspace(-3.0, 3.0, 7, dtype=torch.float64)
    x = torch.cartesian_prod(g, g)  # (49, 2)
    for t in times:
        a_t, a_s = abar(t), before(t)
        c = a_t * sigma + (1 - a_t) * torch.eye(2, dtype=torch.float64)
        x0_hat = mu + a_t.sqrt() * torch.linalg.solve(c, (x - a_t.sqrt() * mu).T).T @ sigma
        mean = ((a_t / a_s).sqrt() * (1 - a_s) * x + a_s.sqrt() * (1 - a_t / a_s) * x0_hat) / (1 - a_t)
        exact = mean - x
        d = drift(model, x, t)
        assert d.dtype == torch.float64 and d.shape == x.shape
        torch.testing.assert_close(d, exact, rtol=1e-8, atol=1e-8 * float(exact.abs().max()))


def test_ddim_with_eta_one_is_the_ancestral_chain_and_eta_zero_keeps_the_spread():
    """eta = 1 gives the posterior's mean and variance (fixed-small), so the samples
    equal the ancestral ones draw for draw. eta = 0 (deterministic but for the last,
    decoder hop) loses less of the data's spread with few hops than the ancestral
    chain does (with the exact x0: 0.259 against 0.224 of 0.3 at 20 hops)."""
    model = oracle_model(DiscreteSchedule("cosine", 200), 0.3, "x0", "fixed-small")
    a = sample(model, 500, torch.Generator().manual_seed(5), steps=20)
    b = sample(model, 500, torch.Generator().manual_seed(5), steps=20, eta=1.0)
    assert torch.allclose(a, b, atol=1e-5)
    for steps in (20, 50):
        ancestral = sample(model, 20_000, torch.Generator().manual_seed(6), steps=steps).var(0)
        ddim = sample(model, 20_000, torch.Generator().manual_seed(6), steps=steps, eta=0.0).var(0)
        assert torch.all(ancestral < ddim) and torch.all(ddim < 0.3)
    with pytest.raises(ConfigError, match="eps, x0 or v"):
        sample(_paper_model(), 4, torch.Generator(), eta=0.0)


def _paper_model():
    from thermodiff.model import DiffusionModel, ModelSpec
    from torch import nn

    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x, t):
            return torch.zeros(x.shape[0], 2 * x.shape[1])

    return DiffusionModel(Zero(), DiscreteSchedule("linear", 10), ModelSpec("paper", "fixed-small", "paper"), (2,), 2)
