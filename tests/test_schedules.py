"""Schedules against their closed forms."""

import math

import pytest
import torch

from thermodiff.errors import ConfigError
from thermodiff.schedules import (
    ContinuousSchedule,
    DiscreteSchedule,
    abar_to_gamma,
    betas_to_abar,
    binomial_betas,
    cosine_abar,
    gamma_to_abar,
)


def test_binomial_schedule_erases_one_over_T_per_step():
    T = 40
    abar = betas_to_abar(binomial_betas(T))
    t = torch.arange(T + 1, dtype=torch.float64)
    # abar_t = 1 - t / T, except beta_T = 1 clipped just below 1.
    assert torch.allclose(abar[:-1], 1 - t[:-1] / T, atol=1e-12)
    assert abar[-1] < 1e-5


def test_cosine_schedule_matches_formula():
    sched = DiscreteSchedule("cosine", 100)
    abar = sched.abar()
    ref = cosine_abar(torch.arange(101, dtype=torch.float64) / 100)
    assert torch.allclose(abar[:90], ref[:90], rtol=1e-10)


def test_linear_schedule_endpoints_for_T_1000():
    b = DiscreteSchedule("linear", 1000).betas()
    assert math.isclose(float(b[0]), 1e-4) and math.isclose(float(b[-1]), 0.02)


def test_learned_schedule_keeps_beta_1_and_gets_gradients():
    sched = DiscreteSchedule("learned", 10, beta_1=1e-3)
    assert float(sched.betas()[0].detach()) == pytest.approx(1e-3)
    sched.abar()[-1].backward()
    assert sched.beta_logits.grad is not None and torch.all(sched.beta_logits.grad != 0)
    assert all(p is sched.beta_logits for p in sched.parameters())


def test_gamma_abar_round_trip():
    abar = torch.tensor([1e-6, 0.3, 0.999999], dtype=torch.float64)
    assert torch.allclose(gamma_to_abar(abar_to_gamma(abar)), abar, rtol=1e-9)


@pytest.mark.parametrize("kind", ["linear-logsnr", "cosine", "learned"])
def test_continuous_schedule_endpoints_monotone_and_derivative(kind):
    sched = ContinuousSchedule(kind, gamma_min=-10.0, gamma_max=6.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    g = sched.gamma(t).detach()
    assert abs(float(g[0]) + 10) < 1e-6 and abs(float(g[-1]) - 6) < 1e-6
    assert torch.all(g[1:] > g[:-1])
    tm = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    _, dg = sched.gamma_and_derivative(tm)
    h = 1e-6
    fd = (sched.gamma(tm + h) - sched.gamma(tm - h)).detach() / (2 * h)
    assert torch.allclose(dg, fd, rtol=1e-5, atol=1e-6)


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError):
        DiscreteSchedule("quadratic", 10)
    with pytest.raises(ConfigError):
        ContinuousSchedule("binomial")
    with pytest.raises(ConfigError):
        ContinuousSchedule("linear-logsnr", gamma_min=3.0, gamma_max=1.0)
