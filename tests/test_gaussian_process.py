"""The Gaussian process's formulas against exact answers: Bayes' rule by quadrature,
KL by Monte Carlo, moments by sampling, entropies by integration."""

import math

import torch

from thermodiff.processes import gaussian as g


def test_q_sample_moments():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[0.7, -1.3]]).expand(200_000, 2).contiguous()
    abar = torch.full((200_000,), 0.36, dtype=torch.float64)
    xt = g.q_sample(x0, abar, torch.randn(x0.shape, generator=gen))
    mean, var = g.q_mean_var(x0[:1], abar[:1])
    # standard error of the mean is sqrt(var / N) ~ 0.0018
    assert torch.allclose(xt.mean(0), mean[0], atol=0.01)
    assert torch.allclose(xt.var(0).double(), var.expand(2), atol=0.01)


def _grid_posterior(xt, x0, abar_s, abar_t):
    """q(x_s | x_t, x_0) proportional to q(x_t | x_s) q(x_s | x_0), on a fine grid (1-D)."""
    a_ts = abar_t / abar_s
    grid = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    logp = -0.5 * (xt - math.sqrt(a_ts) * grid) ** 2 / (1 - a_ts)
    logp = logp - 0.5 * (grid - math.sqrt(abar_s) * x0) ** 2 / (1 - abar_s)
    w = torch.softmax(logp, 0)
    mean = (w * grid).sum()
    var = (w * (grid - mean) ** 2).sum()
    return mean, var


def test_posterior_matches_bayes_rule():
    for abar_s, abar_t, xt, x0 in [(0.9, 0.8, 0.3, -1.2), (0.5, 0.1, -2.0, 0.4), (0.999, 0.99, 1.5, 1.4)]:
        mean, var = g.posterior(
            torch.tensor([[xt]], dtype=torch.float64),
            torch.tensor([[x0]], dtype=torch.float64),
            torch.tensor([abar_s], dtype=torch.float64),
            torch.tensor([abar_t], dtype=torch.float64),
        )
        m_ref, v_ref = _grid_posterior(xt, x0, abar_s, abar_t)
        assert abs(float(mean) - float(m_ref)) < 1e-6
        assert abs(float(var) - float(v_ref)) / float(v_ref) < 1e-4


def test_posterior_of_data_is_the_data():
    x0 = torch.randn(3, 4, dtype=torch.float64)
    xt = torch.randn(3, 4, dtype=torch.float64)
    mean, var = g.posterior(xt, x0, torch.ones(3, dtype=torch.float64), torch.full((3,), 0.7, dtype=torch.float64))
    assert torch.allclose(mean, x0) and torch.all(var == 0)


def test_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    mq, vq = torch.tensor([[0.3, -0.5, 1.0]]), torch.tensor([[0.5, 1.5, 0.2]])
    mp, vp = torch.tensor([[0.0, 0.2, 0.8]]), torch.tensor([[1.0, 0.7, 0.3]])
    kl = g.kl_normal(mq, vq, mp, vp)
    n = 400_000
    x = mq + vq.sqrt() * torch.randn(n, 3, generator=gen)
    mc = (g.log_normal(x, mq.expand(n, 3), vq.expand(n, 3)) - g.log_normal(x, mp.expand(n, 3), vp.expand(n, 3))).double()
    se = mc.std() / math.sqrt(n)
    assert abs(float(kl) - float(mc.mean())) < 4 * float(se) + 1e-4


def test_log_normal_and_entropy():
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    ref = torch.distributions.Normal(torch.tensor([0.1, 0.2]), torch.tensor([2.0, 0.5]).sqrt()).log_prob(x).sum()
    got = g.log_normal(x, torch.tensor([[0.1, 0.2]], dtype=torch.float64), torch.tensor([[2.0, 0.5]], dtype=torch.float64))
    assert torch.allclose(got, ref.double().reshape(1))
    h = g.entropy_normal(torch.tensor([0.3], dtype=torch.float64), 5)
    ref_h = torch.distributions.Normal(0.0, math.sqrt(0.3)).entropy() * 5
    assert abs(float(h) - float(ref_h)) < 1e-6


def test_prior_kl_is_zero_for_pure_noise_and_matches_formula():
    x0 = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(g.prior_kl(x0, torch.zeros(4, dtype=torch.float64)), torch.zeros(4, dtype=torch.float64))
    abar = torch.full((4,), 0.2, dtype=torch.float64)
    ref = 0.5 * (0.2 * (x0**2).sum(1) + 3 * (0.8 - 1 - math.log(0.8)))
    assert torch.allclose(g.prior_kl(x0, abar), ref)


def test_forward_decoder_nll_matches_monte_carlo():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.tensor([[0.8, -0.3]], dtype=torch.float64)
    abar1 = torch.tensor([0.95], dtype=torch.float64)
    beta = 0.05
    n = 400_000
    x1 = g.q_sample(x0.expand(n, 2), abar1.expand(n), torch.randn(n, 2, generator=gen, dtype=torch.float64))
    mc = -g.log_normal(x0.expand(n, 2), math.sqrt(1 - beta) * x1, torch.full((n,), beta, dtype=torch.float64))
    assert abs(float(g.forward_decoder_nll(x0, abar1)) - float(mc.mean())) < 4 * float(mc.std()) / math.sqrt(n)


def test_paper_entropy_form_equals_per_example_form_in_expectation():
    """Paper eq. 14's edge terms equal E[-prior KL - decoder NLL] on unit-second-moment data."""
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(1000, 3, generator=gen, dtype=torch.float64)
    x0 = x0 / (x0**2).mean().sqrt()  # second moment exactly 1 per dimension
    abar1, abarT = torch.tensor(0.999, dtype=torch.float64), torch.tensor(0.02, dtype=torch.float64)
    per_example = -g.prior_kl(x0, abarT.expand(1000)) - g.forward_decoder_nll(x0, abar1.expand(1000))
    paper = g.paper_entropy_terms(abar1, abarT, 3)
    assert abs(float(per_example.mean()) - float(paper)) < 1e-9
