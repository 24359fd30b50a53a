"""The bound K against exact answers on Gaussian data, where the optimal reverse
process is known in closed form.

Data x_0 ~ N(0, s^2) per dimension: q(x_t) = N(0, v_t), v_t = abar_t s^2 + 1 - abar_t,
E[x_0 | x_t] = sqrt(abar_t) s^2 x_t / v_t and E[eps | x_t] = sqrt(1 - abar_t) x_t / v_t.
For s = 1 the forward process is stationary: its reversal is N(sqrt(alpha_t) x_t, beta_t),
the prior N(0, I) is exact and so is the paper's fixed last step. A model with these
kernels has the same joint as q, so K(x_0) = log p(x_0) for every x_0.
"""

import math

import pytest
import torch

# oracle_model(schedule, s2, kind, variance, D, decoder): the exact x0 or eps model for
# N(0, s2 I) data, shared with test_sampling and test_jarzynski through conftest.
from conftest import oracle_model
from thermodiff.likelihood import bound_terms
from thermodiff.processes.gaussian import sum_dims
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule


def exact_log_p(x0, s2):
    return -0.5 * sum_dims(math.log(2 * math.pi * s2) + x0**2 / s2)


def mean_bound(model, x0, reps, n_t, seed=0):
    """K per point, averaged over `reps` independent Monte Carlo estimates, and its stderr."""
    gen = torch.Generator().manual_seed(seed)
    xs = x0.repeat(reps, 1)
    with torch.no_grad():
        k = -bound_terms(model, xs, n_t, gen).nll.reshape(reps, -1)
    return k.mean(0), k.std(0) / math.sqrt(reps)


@pytest.mark.parametrize("schedule", ["binomial", "linear", "cosine"])
def test_discrete_bound_is_exact_with_the_exact_reverse_kernels(schedule):
    sched = DiscreteSchedule(schedule, 20, beta_1=0.01)
    model = oracle_model(sched, 1.0, "x0", "fixed-large")
    x0 = torch.tensor([[0.0, 0.0], [1.0, -0.5], [2.5, 1.5]], dtype=torch.float64)
    k, se = mean_bound(model, x0, 3000, n_t=64)
    exact = exact_log_p(x0, 1.0)
    assert torch.all((k - exact).abs() < 4 * se + 1e-3), (k, exact, se)


def test_continuous_bound_is_exact_with_the_exact_score():
    sched = ContinuousSchedule("linear-logsnr", gamma_min=-10.0, gamma_max=12.0)
    model = oracle_model(sched, 1.0, "eps", "fixed-small")
    x0 = torch.tensor([[0.0, 0.0], [1.0, -0.5], [2.5, 1.5]], dtype=torch.float64)
    k, se = mean_bound(model, x0, 3000, n_t=32)
    exact = exact_log_p(x0, 1.0)
    # gamma_max = 12 leaves a prior mismatch of order exp(-12) per point.
    assert torch.all((k - exact).abs() < 4 * se + 1e-3), (k, exact, se)


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_bound_never_exceeds_exact_log_likelihood(time):
    """On non-unit Gaussian data the oracle's bound is loose but must stay below log p.

    In discrete time the fixed-small variance is too small for the first steps of narrow
    data (the true reverse variance is near beta_t, the posterior's near beta_t / 2), so
    even the exact mean leaves a gap of about a nat at T = 50.
    """
    s2 = 0.05  # narrow data, as after scaling a thin manifold
    if time == "discrete":
        model = oracle_model(DiscreteSchedule("cosine", 50), s2, "x0", "fixed-small", decoder="learned")
    else:
        model = oracle_model(ContinuousSchedule("linear-logsnr"), s2, "eps", "fixed-small", decoder="learned")
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(400, 2, generator=gen, dtype=torch.float64) * math.sqrt(s2)
    k, se = mean_bound(model, x0, 50, n_t=64)
    gap = exact_log_p(x0, s2) - k
    assert float(gap.mean()) > -3 * float(se.mean()) / math.sqrt(400)
    if time == "continuous":
        # T -> infinity removes the discretisation gap: with the exact score only the
        # endpoints' mismatch remains, which is tiny for gamma in [-13.3, 5].
        assert float(gap.mean()) < 0.05


def test_discrete_terms_sum_and_shapes():
    sched = DiscreteSchedule("linear", 10)
    model = oracle_model(sched, 1.0, "x0", "fixed-large", D=3)
    x0 = torch.randn(7, 3, dtype=torch.float64)
    terms = bound_terms(model, x0, 64, torch.Generator().manual_seed(0))
    assert terms.per_t.shape == (7, 9)
    assert torch.allclose(terms.per_t.sum(1), terms.diffusion)
    assert torch.allclose(terms.t, torch.arange(2, 11, dtype=torch.float64) / 10)
    # stratified estimator when T - 1 > n_t: same mean, fewer columns
    terms4 = bound_terms(model, x0, 4, torch.Generator().manual_seed(0))
    assert terms4.per_t.shape == (7, 4)


def test_stratified_discrete_estimator_is_unbiased():
    sched = DiscreteSchedule("cosine", 40)
    model = oracle_model(sched, 0.2, "x0", "fixed-small")
    x0 = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    full, se_full = mean_bound(model, x0, 4000, n_t=64)
    strat, se_strat = mean_bound(model, x0, 4000, n_t=5, seed=1)
    assert abs(float(full - strat)) < 4 * math.hypot(float(se_full), float(se_strat))


def test_importance_proposal_in_evaluation_keeps_the_estimate():
    """Evaluating with a learned time proposal changes the variance, not the mean."""
    from thermodiff.time_sampler import TimeSampler

    model = oracle_model(ContinuousSchedule("linear-logsnr"), 0.05, "eps", "fixed-small")
    x0 = torch.tensor([[0.1, -0.2]], dtype=torch.float64).repeat(2000, 1)
    skewed = TimeSampler(20, importance=True, warmup=1)
    skewed.second_moment = torch.linspace(0.01, 4.0, 20, dtype=torch.float64) ** 2
    skewed.counts += 5
    with torch.no_grad():
        a = bound_terms(model, x0, 8, torch.Generator().manual_seed(0)).nll
        b = bound_terms(model, x0, 8, torch.Generator().manual_seed(1), sampler=skewed)
    se = math.hypot(float(a.std()), float(b.nll.std())) / math.sqrt(2000)
    assert abs(float(a.mean() - b.nll.mean())) < 4 * se
    assert b.per_t.shape == (2000, 20) and torch.allclose(b.per_t.sum(1), b.diffusion)


def test_evaluation_flags_a_bound_above_the_exact_value():
    from thermodiff.config import EvalConfig
    from thermodiff.evaluation import evaluate_run

    model = oracle_model(ContinuousSchedule("linear-logsnr", gamma_min=-10.0, gamma_max=12.0), 1.0, "eps", "fixed-small").float()
    y = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    honest = evaluate_run(model, y, EvalConfig(n_t=16), lambda v: exact_log_p(v, 1.0))
    assert "warning" not in honest and abs(honest["gap_bits"]) < 4 * honest["gap_stderr_bits"] + 1e-3
    wrong = evaluate_run(model, y, EvalConfig(n_t=16), lambda v: exact_log_p(v, 1.0) - 1.0)
    assert "warning" in wrong
