"""Samplers against exact answers: with the exact reverse process of Gaussian data,
ancestral samples must be distributed as the data."""

import math

import pytest
import torch

from test_bound import oracle_model
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule
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
