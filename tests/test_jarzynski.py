"""The importance-weighted (Jarzynski) estimate and the entropy bounds against exact answers.

- Unit-variance Gaussian data with the exact reverse kernels: the model's joint equals
  q's, so every trajectory weight equals p(x_0) exactly (zero variance).
- A linear-Gaussian chain that is not exact: its marginal p_theta(x_0) is a Gaussian
  whose variance follows from the kernels by a recursion, and E w = p_theta(x_0).
- Binary data by enumeration: E w = p_theta(x_0) from the reverse chain's matrices.
- A Gaussian mixture with the exact score: K <= IW(M) <= exact on average, rising in M.
- Eq. 24's bounds: fixed-small and fixed-large kernels sit on them, and the exact
  reverse entropy of a binary distribution (by enumeration) lies between them.
"""

import math

import pytest
import torch
from torch import nn

from conftest import PROBS, STATES, bern_table, exact_model, model_likelihood, oracle_model, state_transition
from thermodiff.data.toy import GaussianMixture
from thermodiff.entropy import entropy_bounds
from thermodiff.jarzynski import iw_estimates, log_mean_exp, log_weights, m_ladder, summarize_iw
from thermodiff.likelihood import bound_terms
from thermodiff.units import LN2
from thermodiff.oracle import mixture_model
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule


def _log_normal_1d(x, var):
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + x**2 / var)


@pytest.mark.parametrize("schedule,decoder", [("linear", "learned"), ("cosine", "paper"), ("binomial", "learned")])
def test_exact_reverse_kernels_give_zero_variance_weights(schedule, decoder):
    """N(0, 1) data: q(x_t) = N(0, 1) for every t, the reversal of each step is
    N(sqrt(alpha_t) x_t, beta_t) (fixed-large with the exact x0), and pi = q(x_T)."""
    model = oracle_model(DiscreteSchedule(schedule, 25, beta_1=0.01), 1.0, "x0", "fixed-large", D=1, decoder=decoder)
    x0 = torch.tensor([[0.0], [1.3], [-2.7]], dtype=torch.float64)
    with torch.no_grad():
        logw = log_weights(model, x0, 64, torch.Generator().manual_seed(0))
    exact = _log_normal_1d(x0[:, 0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(logw, exact[:, None].expand_as(logw), atol=1e-9, rtol=0)
    assert float(logw.std(1).max()) < 1e-9


def _linear_chain_variance(schedule, s2):
    """Variance of p_theta(x_0) for the x0-oracle of N(0, s2) data with fixed-large
    kernels, from the schedule alone: each kernel is N(c_t x_t, beta_t), so
    V_{t-1} = c_t^2 V_t + beta_t from V_T = 1."""
    abar = schedule.abar()
    T = schedule.T
    v = torch.tensor(1.0, dtype=torch.float64)
    for t in range(T, 0, -1):
        a_t, a_s = abar[t], abar[t - 1]
        beta = 1 - a_t / a_s
        x0_coef = a_t.sqrt() * s2 / (a_t * s2 + 1 - a_t)  # E[x0 | x_t] = x0_coef x_t
        # posterior mean: sqrt(a_s) beta / (1 - a_t) x0 + sqrt(a_t / a_s) (1 - a_s) / (1 - a_t) x_t
        c = a_s.sqrt() * beta / (1 - a_t) * x0_coef + (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t)
        v = c**2 * v + beta
    return v


def test_mean_weight_is_the_models_marginal_in_closed_form():
    sched = DiscreteSchedule("linear", 10, beta_1=0.01)
    model = oracle_model(sched, 0.5, "x0", "fixed-large", D=1, decoder="learned")
    v = _linear_chain_variance(sched, 0.5)
    x0 = torch.tensor([[0.0], [0.7], [-1.5]], dtype=torch.float64)
    m = 20_000
    with torch.no_grad():
        logw = log_weights(model, x0, m, torch.Generator().manual_seed(0))
        k = -bound_terms(model, x0.repeat(2000, 1), 100, torch.Generator().manual_seed(1)).nll.reshape(2000, 3)
    log_p = _log_normal_1d(x0[:, 0], v)
    w = logw.exp()
    assert torch.all((w.mean(1) - log_p.exp()).abs() < 5 * w.std(1) / math.sqrt(m)), (w.mean(1), log_p.exp())
    # M = 1 is K's estimator: the trajectory mean agrees with the analytic-KL K.
    se = (logw.var(1) / m + k.var(0) / 2000).sqrt()
    assert torch.all((logw.mean(1) - k.mean(0)).abs() < 5 * se)
    # The estimate rises with M and stays below log p_theta (up to its noise).
    ests = torch.stack([iw_estimates(logw, mm) for mm in (1, 10, 100, 1000)])
    assert torch.all(ests[1:] > ests[:-1])
    assert torch.all(ests[-1] < log_p + 0.01) and torch.all(ests[-1] > log_p - 0.02)


def test_binomial_mean_weight_is_the_models_marginal_by_enumeration():
    # The exact-x0 kernel with T = 4 is the best factorised kernel, not the true reverse
    # step, so the weights vary; their mean is the chain's p_theta(x0).
    model = exact_model(STATES, PROBS, 4)
    p_theta = model_likelihood(model)
    x0 = STATES[[0, 3, 6]]
    m = 20_000
    with torch.no_grad():
        logw = log_weights(model, x0, m, torch.Generator().manual_seed(0))
    w = logw.exp()
    expect = p_theta[[0, 3, 6]]
    assert float(logw.std(1).min()) > 0.05
    assert torch.all((w.mean(1) - expect).abs() < 5 * w.std(1) / math.sqrt(m)), (w.mean(1), expect)
    assert torch.all((iw_estimates(logw, 1000) - expect.log()).abs() < 0.01)


def _mixture():
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.5], [0.8, -0.2]]),
                           torch.stack([0.05 * torch.eye(2), 0.2 * torch.eye(2)]))


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_iw_lies_between_k_and_the_exact_likelihood_on_a_mixture(time):
    """The exact score with the posterior's (too small) variance: K is loose by about a
    nat; IW(M) rises towards the exact log-likelihood and never passes it on average."""
    mix = _mixture()
    sched = DiscreteSchedule("cosine", 50) if time == "discrete" else ContinuousSchedule("linear-logsnr")
    model = mixture_model(mix, sched)
    x0 = mix.sample(300, torch.Generator().manual_seed(0))
    exact = mix.log_prob(x0)
    with torch.no_grad():
        logw = log_weights(model, x0, 100, torch.Generator().manual_seed(1), steps=None if time == "discrete" else 50)
    n = x0.shape[0]
    gaps = [exact - iw_estimates(logw, m) for m in (1, 10, 100)]
    means = [float(g.mean()) for g in gaps]
    ses = [float(g.std()) / math.sqrt(n) for g in gaps]
    assert means[0] > 0.5  # K's looseness with the fixed-small variance
    assert means[0] > means[1] > means[2] > -3 * ses[2], (means, ses)
    assert means[2] < means[0] / 3


def test_log_mean_exp_is_stable_and_groups_are_disjoint():
    a = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3.0)]], dtype=torch.float64)
    assert torch.allclose(log_mean_exp(a), torch.tensor([1000.0, -1000.0 + math.log(2.0)], dtype=torch.float64))
    logw = torch.tensor([[0.0, 2.0, 4.0, 6.0]], dtype=torch.float64)
    by_two = (log_mean_exp(logw[:, :2]) + log_mean_exp(logw[:, 2:])) / 2
    assert torch.allclose(iw_estimates(logw, 2), by_two)
    assert torch.allclose(iw_estimates(logw, 1), logw.mean(1))
    with pytest.raises(ValueError):
        iw_estimates(logw, 3)
    assert m_ladder(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert m_ladder(100) == [1, 2, 5, 10, 20, 50, 100] and m_ladder(30) == [1, 2, 5, 10, 30] and m_ladder(1) == [1]


def test_summary_fields_and_units():
    model = oracle_model(DiscreteSchedule("linear", 5), 1.0, "x0", "fixed-large", D=2)
    with torch.no_grad():
        model.scaler.scale.fill_(2.0)  # data units = 2 x model units: log|dx/dy| = -2 log 2
    logw = torch.randn(40, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.zeros(40, dtype=torch.float64)
    rec = summarize_iw(model, logw, torch.zeros(40, 2), 5, exact)
    assert rec["iw_M"] == 10 and rec["iw_steps"] == 5 and rec["iw_n_examples"] == 40
    assert [c["M"] for c in rec["iw_curve"]] == [1, 2, 5, 10]
    top = float(log_mean_exp(logw).mean()) / LN2
    assert rec["iw_bits_scaled"] == pytest.approx(top)
    assert rec["iw_bits"] == pytest.approx(top - 2.0)  # 2 dimensions x log2(2)
    assert rec["iw_gap_bits"] == pytest.approx(-top)
    assert rec["iw_stderr_bits"] == pytest.approx(float(log_mean_exp(logw).std()) / LN2 / math.sqrt(40))


@pytest.mark.parametrize("variance", ["fixed-small", "fixed-large"])
def test_gaussian_kernels_sit_on_the_entropy_bounds(variance):
    """Eq. 24 for the Gaussian process: the lower bound is the posterior's entropy
    (fixed-small), the upper bound the forward kernel's (fixed-large)."""
    model = oracle_model(DiscreteSchedule("cosine", 30), 0.3, "x0", variance, D=3)
    y = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ent = entropy_bounds(model, y)
    lo, hi, h = (torch.tensor(ent[k], dtype=torch.float64) for k in ("lower", "upper", "model"))
    assert len(ent["t"]) == 29 and torch.all(lo < hi)
    assert torch.allclose(h, lo if variance == "fixed-small" else hi, atol=1e-9)
    assert ent["flagged"] == []
    # Closed form of the upper bound: 1/2 log2(2 pi e beta_t) per dimension.
    beta = DiscreteSchedule("cosine", 30).betas()[1:]
    assert torch.allclose(hi, 0.5 * torch.log2(2 * math.pi * math.e * beta), atol=1e-9)


def test_binomial_entropy_bounds_bracket_the_exact_reverse_entropy():
    """For a known distribution over 2^3 states, H_q(X_{t-1} | X_t) by enumeration lies
    between the bounds; a near-deterministic kernel is flagged below them."""
    T = 6
    model = exact_model(STATES, PROBS, T)
    abar = model.schedule.abar()
    y = STATES[torch.multinomial(PROBS, 400, replacement=True, generator=torch.Generator().manual_seed(0))]
    ent = entropy_bounds(model, y)
    for k, t in enumerate(range(2, T + 1)):
        # q(x_{t-1}) from the data, then the joint with x_t.
        q_s = PROBS @ torch.stack([bern_table(q[None])[0] for q in
                                   torch.logit(STATES * abar[t - 1] + (1 - abar[t - 1]) / 2)])
        joint = q_s[:, None] * state_transition(float(abar[t] / abar[t - 1]))
        h_joint = -(joint * joint.log()).sum()
        q_t = joint.sum(0)
        h_cond = (h_joint + (q_t * q_t.log()).sum()) / (3 * LN2)  # H(X_{t-1} | X_t), bits per dim
        assert ent["lower"][k] - 1e-9 <= float(h_cond) <= ent["upper"][k] + 1e-9
    sharp = exact_model(STATES, PROBS, T)
    sharp.net = _Constant(40.0)  # P(x0 = 1 | x_t) ~ 1 everywhere: an almost deterministic kernel
    flagged = entropy_bounds(sharp, y)["flagged"]
    assert len(flagged) >= 1


class _Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t):
        return torch.full_like(x, self.value, dtype=torch.float64)
