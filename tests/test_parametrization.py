"""Each conversion in one place, and each round trip exact."""

import torch

from thermodiff import parametrization as P
from thermodiff.processes.gaussian import posterior, q_sample


def _setup():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 3, 2, generator=gen, dtype=torch.float64)
    abar = torch.rand(6, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    return x0, eps, abar, q_sample(x0, abar, eps)


def test_round_trips_between_eps_x0_v_and_score():
    x0, eps, abar, xt = _setup()
    assert torch.allclose(P.eps_to_x0(eps, xt, abar), x0)
    assert torch.allclose(P.x0_to_eps(x0, xt, abar), eps)
    v = P.to_v(x0, eps, abar)
    assert torch.allclose(P.v_to_x0(v, xt, abar), x0)
    assert torch.allclose(P.v_to_eps(v, xt, abar), eps)
    assert torch.allclose(P.score_to_eps(P.eps_to_score(eps, abar), abar), eps)
    for kind, pred in [("eps", eps), ("x0", x0), ("v", v)]:
        x0_hat, eps_hat = P.x0_and_eps(kind, pred, xt, abar)
        assert torch.allclose(x0_hat, x0) and torch.allclose(eps_hat, eps)
        assert torch.allclose(P.target(kind, x0, eps, abar), pred)


def test_reverse_kernel_with_true_x0_is_the_posterior():
    x0, eps, abar_t, xt = _setup()
    abar_s = (abar_t + 0.01).clamp_max(0.999)
    for variance in ("fixed-small", "fixed-large"):
        out = x0.unsqueeze(1)
        mean, var, x0_hat = P.reverse_kernel("x0", variance, out, xt, abar_s, abar_t)
        m_ref, v_ref = posterior(xt, x0, abar_s, abar_t)
        assert torch.allclose(mean, m_ref)
        ref = v_ref if variance == "fixed-small" else 1 - abar_t / abar_s
        assert torch.allclose(var, ref)


def test_learned_range_spans_small_to_large():
    x0, eps, abar_t, xt = _setup()
    abar_s = (abar_t + 0.01).clamp_max(0.999)
    small = posterior(xt, x0, abar_s, abar_t)[1]
    large = 1 - abar_t / abar_s
    for end, ref in ((-1.0, small), (1.0, large)):
        out = torch.stack([x0, torch.full_like(x0, end)], 1)
        _, var, _ = P.reverse_kernel("x0", "learned-range", out, xt, abar_s, abar_t)
        assert torch.allclose(var, ref[:, None, None].expand_as(var))


def test_paper_kernel_at_zero_output_is_near_the_forward_kernel():
    xt = torch.randn(4, 2, dtype=torch.float64)
    beta = torch.full((4,), 0.01, dtype=torch.float64)
    mean, var = P.paper_kernel(torch.zeros_like(xt), torch.zeros_like(xt), xt, beta)
    assert torch.allclose(var, torch.full_like(xt, 0.01))
    assert torch.allclose(mean, 0.99 * xt)


def test_output_channels():
    assert P.output_channels("eps", "fixed-small") == 1
    assert P.output_channels("v", "learned-range") == 2
    assert P.output_channels("paper", "fixed-small") == 2
