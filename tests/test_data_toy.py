"""Toy distributions against exact answers."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from thermodiff.data.toy import (
    SWISSROLL_NOISE,
    SWISSROLL_S_MAX,
    SWISSROLL_S_MIN,
    GaussianMixture,
    gaussian_1d,
    gaussian_mixture_2d_default,
    swissroll_curve,
    swissroll_log_density,
    swissroll_sample,
)
from thermodiff.errors import DataError


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _nearest_curve_param(y):
    """Curve parameter of the nearest point on the roll, for points near the roll.

    |c(s)| = s and c(s) has angle s, so the nearest winding is the one whose
    parameter theta + 2 pi k is closest to the radius; Newton then minimises
    |y - c(s)|^2 / 2 over s, clamped to the roll's ends.
    """
    r = y.norm(dim=1)
    theta = torch.atan2(y[:, 1], y[:, 0])
    k = torch.round((r - theta) / (2 * math.pi))
    s = theta + 2 * math.pi * k
    for _ in range(20):
        cs, sn = torch.cos(s), torch.sin(s)
        res = y - swissroll_curve(s)
        d1 = torch.stack((cs - s * sn, sn + s * cs), 1)
        d2 = torch.stack((-2 * sn - s * cs, 2 * cs - s * sn), 1)
        grad = -(res * d1).sum(1)
        hess = (d1 * d1).sum(1) - (res * d2).sum(1)
        s = (s - grad / hess).clamp(SWISSROLL_S_MIN, SWISSROLL_S_MAX)
    return s


# ---------------------------------------------------------------- swiss roll


def test_swissroll_sample_shape_dtype_and_reproducible():
    a = swissroll_sample(500, _gen(3))
    b = swissroll_sample(500, _gen(3))
    assert a.shape == (500, 2) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert swissroll_sample(0, _gen(0)).shape == (0, 2)
    with pytest.raises(DataError):
        swissroll_sample(-1, _gen(0))


def test_swissroll_samples_have_defined_s_range_and_noise():
    n = 20000
    y = swissroll_sample(n, _gen(1))
    s = _nearest_curve_param(y)
    dist = (y - swissroll_curve(s)).norm(dim=1)
    # Noise along the curve is absorbed by the nearest-point parameter, so the
    # distance is the normal component: half-normal with scale 0.25, E[d^2] = sig^2
    # (stderr of the mean of d^2/sig^2 is sqrt(2/n) = 0.01; curvature and end
    # effects add well under 0.02).
    ratio = float((dist**2).mean()) / SWISSROLL_NOISE**2
    assert abs(ratio - 1.0) < 0.05
    frac_within = float((dist < SWISSROLL_NOISE).double().mean())
    assert abs(frac_within - (2 * stats.norm.cdf(1.0) - 1)) < 0.02
    # The recovered parameter is uniform on [1.5 pi, 4.5 pi] (smeared by ~0.05).
    u = ((s - SWISSROLL_S_MIN) / (SWISSROLL_S_MAX - SWISSROLL_S_MIN)).numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert u.min() < 0.005 and u.max() > 0.995


def test_swissroll_density_integrates_to_one():
    # Trapezoid on a uniform grid is spectrally accurate for this smooth, decaying
    # density: with spacing h = 0.2 the error is ~exp(-2 pi^2 sigma^2 / h^2) ~ 4e-14.
    # The box reaches 9 noise stds beyond the roll's extent (|x| <= 12.6, |y| <= 14.2).
    h = 0.2
    ax = torch.arange(-16.4, 16.4 + h / 2, h, dtype=torch.float64)
    grid = torch.cartesian_prod(ax, ax)
    # 1024 nodes converge to ~1e-9 wherever the density carries mass, at 1/4 the cost.
    mass = torch.exp(swissroll_log_density(grid, n_grid=1024)).sum() * h * h
    assert abs(float(mass) - 1.0) < 1e-6


def test_swissroll_density_matches_monte_carlo():
    # On the roll (including both ends, where the integral is cut off), just off it,
    # and between two windings.
    s0 = torch.tensor([SWISSROLL_S_MIN, 6.0, 9.0, 12.5, SWISSROLL_S_MAX], dtype=torch.float64)
    offsets = torch.tensor([[0.0, 0.0], [0.2, -0.1], [0.0, 0.3], [-0.25, 0.1], [0.1, 0.1]], dtype=torch.float64)
    points = torch.cat([swissroll_curve(s0) + offsets, torch.tensor([[0.0, 11.0]], dtype=torch.float64)])
    exact = torch.exp(swissroll_log_density(points))
    s = SWISSROLL_S_MIN + (SWISSROLL_S_MAX - SWISSROLL_S_MIN) * torch.rand(1_600_000, generator=_gen(5), dtype=torch.float64)
    c = swissroll_curve(s)
    sq = ((points[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    dens = torch.exp(-0.5 * sq / SWISSROLL_NOISE**2) / (2 * math.pi * SWISSROLL_NOISE**2)
    mc = dens.mean(1)
    stderr = dens.std(1) / math.sqrt(s.numel())
    assert (exact[:5] > 1e-3).all()
    assert torch.all((exact - mc).abs() < 5 * stderr + 1e-12)


def test_swissroll_density_grid_converged():
    y = torch.cat([swissroll_sample(2000, _gen(2)), torch.cartesian_prod(*(2 * [torch.linspace(-15, 15, 41, dtype=torch.float64)]))])
    base = swissroll_log_density(y)
    fine = swissroll_log_density(y, n_grid=2 * 4096)
    relevant = base > -200  # the documented convergence region
    assert relevant.float().mean() > 0.9
    assert float((base - fine)[relevant].abs().max()) < 1e-6
    assert torch.isfinite(base).all()


def test_swissroll_density_bad_input():
    with pytest.raises(DataError):
        swissroll_log_density(torch.zeros(5, 3))
    with pytest.raises(DataError):
        swissroll_log_density(torch.zeros(5, 2), n_grid=2)


# ---------------------------------------------------------------- mixtures


def _random_spd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)


def test_single_component_matches_scipy():
    gen = _gen(7)
    d = 3
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    cov = _random_spd(d, gen)
    gm = GaussianMixture(torch.ones(1), mean[None], cov[None])
    x = torch.randn(50, d, generator=gen, dtype=torch.float64) * 2
    expected = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(gm.log_prob(x).numpy(), expected, rtol=0, atol=1e-10)


def test_hand_computed_mixture():
    f64 = dict(dtype=torch.float64)
    gm = GaussianMixture(torch.tensor([0.3, 0.7], **f64), torch.tensor([[0.0], [2.0]], **f64), torch.tensor([[[1.0]], [[0.25]]], **f64))
    for x in [-1.0, 0.0, 0.7, 2.0, 5.0]:
        p = 0.3 * math.exp(-0.5 * x**2) / math.sqrt(2 * math.pi) + 0.7 * math.exp(-0.5 * (x - 2) ** 2 / 0.25) / math.sqrt(
            2 * math.pi * 0.25
        )
        assert float(gm.log_prob(torch.tensor([[x]], **f64))) == pytest.approx(math.log(p), abs=1e-12)

    gen = _gen(8)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mus = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    covs = torch.stack([_random_spd(2, gen) for _ in range(3)])
    gm = GaussianMixture(w, mus, covs)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 3
    comp = np.stack([stats.multivariate_normal(mus[k].numpy(), covs[k].numpy()).pdf(x.numpy()) for k in range(3)], 1)
    np.testing.assert_allclose(gm.log_prob(x).numpy(), np.log(comp @ w.numpy()), rtol=0, atol=1e-10)


def test_gaussian_1d():
    g = gaussian_1d(1.5, 0.5)
    x = torch.linspace(-2, 4, 13, dtype=torch.float64)[:, None]
    np.testing.assert_allclose(g.log_prob(x).numpy(), stats.norm(1.5, 0.5).logpdf(x[:, 0].numpy()), atol=1e-12)
    np.testing.assert_allclose(g.score(x).numpy(), (-(x - 1.5) / 0.25).numpy(), atol=1e-12)
    with pytest.raises(DataError):
        gaussian_1d(0.0, 0.0)


def _check_moments(gm, n, seed):
    x = gm.sample(n, _gen(seed))
    assert x.shape == (n, gm.dim) and x.dtype == torch.float64
    m, cov = gm.mean(), gm.covariance()
    # Mean: stderr sqrt(var / n). Covariance entries: stderr of the mean of the
    # centred products, estimated from the sample itself.
    assert torch.all((x.mean(0) - m).abs() < 5 * torch.sqrt(torch.diagonal(cov) / n))
    xc = x - m
    prods = xc[:, :, None] * xc[:, None, :]
    tol = 5 * prods.std(0) / math.sqrt(n)
    assert torch.all((prods.mean(0) - cov).abs() < tol)


def test_mixture_sample_moments():
    _check_moments(gaussian_mixture_2d_default(), 100000, 11)
    gen = _gen(12)
    mus = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 2
    covs = torch.stack([_random_spd(3, gen) for _ in range(3)])
    _check_moments(GaussianMixture(torch.tensor([0.1, 0.6, 0.3]), mus, covs), 100000, 13)


def test_default_ring():
    gm = gaussian_mixture_2d_default()
    assert gm.n_components == 8 and gm.dim == 2
    np.testing.assert_allclose(gm.means.norm(dim=1).numpy(), 2.0)
    np.testing.assert_allclose(gm.weights.sum().item(), 1.0)


def test_score_matches_autograd_and_finite_differences():
    gen = _gen(14)
    mus = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    covs = torch.stack([_random_spd(3, gen) * 0.3 for _ in range(4)])
    gm = GaussianMixture(torch.tensor([0.1, 0.2, 0.3, 0.4]), mus, covs)
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64) * 1.5
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(gm.log_prob(xr).sum(), xr)
    score = gm.score(x)
    np.testing.assert_allclose(score.numpy(), auto.numpy(), rtol=1e-9, atol=1e-10)
    eps = 1e-5
    fd = torch.stack(
        [(gm.log_prob(x + eps * e) - gm.log_prob(x - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=torch.float64)], 1
    )
    np.testing.assert_allclose(score.numpy(), fd.numpy(), rtol=1e-6, atol=1e-6)


def test_mixture_validation():
    eye = torch.eye(2, dtype=torch.float64)[None]
    with pytest.raises(DataError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5]), torch.zeros(1, 2), eye)
    with pytest.raises(DataError, match="positive definite"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(DataError, match="symmetric"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(DataError, match="shape"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(2, 2), eye)
    with pytest.raises(DataError, match="shape"):
        GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.eye(3)[None])
    with pytest.raises(DataError, match="non-negative"):
        GaussianMixture(torch.tensor([1.5, -0.5]), torch.zeros(2, 2), eye.expand(2, 2, 2))
    gm = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), eye)
    with pytest.raises(DataError):
        gm.log_prob(torch.zeros(4, 3))
