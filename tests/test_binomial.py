"""The binomial process against exact answers by enumeration over all 2^D states.

For small D every distribution over binary vectors is a table, so the forward
marginals, the posterior, the KL between factorised Bernoullis, the best factorised
reverse kernel and the bound K itself can be computed by direct sums and compared
with the closed forms the library uses.
"""

import math

import pytest
import torch

# The enumeration kit (D = 3 bits, all 2^D states, a table PROBS over them, the exact
# x0 model) is shared with test_jarzynski and test_conditioning through conftest.
from conftest import D, PROBS, STATES, bern_table, exact_model, model_likelihood, state_transition, step_matrix
from thermodiff.likelihood import bound_terms
from thermodiff.parametrization import binomial_reverse_logits
from thermodiff.processes import binomial
from thermodiff.schedules import DiscreteSchedule


def test_marginal_equals_composed_steps():
    T = 7
    sched = DiscreteSchedule("binomial", T, beta_1=0.0)
    betas, abar = sched.betas(), sched.abar()
    m = torch.eye(2, dtype=torch.float64)
    for t in range(1, T + 1):
        m = m @ step_matrix(1 - float(betas[t - 1]))
        closed = torch.sigmoid(binomial.q_logits(torch.tensor([[0.0], [1.0]]), abar[t].expand(2)))
        assert torch.allclose(m[:, 1], closed[:, 0], atol=1e-12)
    assert torch.allclose(abar, 1 - torch.arange(T + 1, dtype=torch.float64) / T, atol=1e-5)


@pytest.mark.parametrize("s,t", [(0, 1), (0, 4), (2, 3), (1, 5), (3, 6)])
def test_posterior_against_enumeration(s, t):
    abar = DiscreteSchedule("binomial", 6, beta_1=0.0).abar()
    a_s, a_t = abar[s], abar[t]
    for x0 in STATES:
        prior_s = bern_table(binomial.q_logits(x0[None], a_s[None]))[0]  # q(x_s | x0) over states
        joint = prior_s[:, None] * state_transition(float(a_t / a_s))  # (x_s, x_t)
        for j, x_t in enumerate(STATES):
            exact = joint[:, j] / joint[:, j].sum()
            logits = binomial.posterior_logits(x_t[None], x0[None], a_s[None], a_t[None])
            assert torch.allclose(bern_table(logits)[0], exact, atol=1e-12)


def test_kl_and_entropy_against_direct_sums():
    gen = torch.Generator().manual_seed(0)
    lq = torch.randn(5, D, generator=gen, dtype=torch.float64) * 3
    lp = torch.randn(5, D, generator=gen, dtype=torch.float64) * 3
    pq, pp = bern_table(lq), bern_table(lp)
    direct = (pq * (pq.log() - pp.log())).sum(-1)
    assert torch.allclose(binomial.kl_bernoulli(lq, lp), direct, atol=1e-12)
    assert torch.allclose(binomial.entropy_bernoulli(lq), -(pq * pq.log()).sum(-1), atol=1e-12)
    # A delta q (the posterior at s = 0) has KL = -log p(state).
    x = STATES[[1, 6]]
    delta = torch.where(x == 1, math.inf, -math.inf)
    assert torch.allclose(binomial.kl_bernoulli(delta, lp[:2]), -binomial.log_bernoulli(x, lp[:2]))
    assert torch.isfinite(binomial.kl_bernoulli(delta, delta)).all() and (binomial.kl_bernoulli(delta, delta) == 0).all()


def test_edge_terms_and_null():
    a1, aT = torch.tensor([0.9]), torch.tensor([0.05])
    x0 = STATES[[5]]
    q1 = bern_table(binomial.q_logits(x0, a1))[0]
    # H_q(X_1 | X_0) by direct sum; the paper's fixed decoder's NLL by enumeration over x_1.
    assert torch.allclose(binomial.entropy_q_t_given_0(a1, D), -(q1 * q1.log()).sum())
    nll = 0.0
    for j, x1 in enumerate(STATES):
        nll -= q1[j] * binomial.log_bernoulli(x0, binomial.forward_logits(x1[None], torch.ones(1), a1))[0]
    assert torch.allclose(binomial.forward_decoder_nll(x0, a1), nll.reshape(1))
    qT = bern_table(binomial.q_logits(x0, aT))[0]
    assert torch.allclose(binomial.prior_kl(x0, aT), (qT * (qT * 2**D).log()).sum().reshape(1))
    edges = binomial.paper_entropy_terms(a1, aT, D)
    assert torch.allclose(edges, -binomial.prior_kl(x0, aT) - binomial.forward_decoder_nll(x0, a1))
    assert torch.allclose(binomial.log_null(torch.tensor([[1.0, 0, 0, 0, 0]]), 0.2), torch.tensor([math.log(0.2) + 4 * math.log(0.8)], dtype=torch.float64))
    assert torch.allclose(binomial.log_prior(x0), torch.tensor([-D * math.log(2)], dtype=torch.float64))


def enumerated_bound(model, probs):
    """-K(x0) for every state x0 by exact sums over x_t (D = 3): no Monte Carlo."""
    sched = model.schedule
    abar = sched.abar()
    T = sched.T
    nll = torch.zeros(len(STATES), dtype=torch.float64)
    for k, x0 in enumerate(STATES):
        for t in range(1, T + 1):
            qt = bern_table(binomial.q_logits(x0[None], abar[t][None]))[0]  # q(x_t | x0)
            tt = torch.full((len(STATES),), t / T, dtype=torch.float64)
            out = model(STATES, tt)
            lp, _ = binomial_reverse_logits("x0", out, STATES, abar[t - 1].expand(8), abar[t].expand(8))
            lq = binomial.posterior_logits(STATES, x0.expand(8, D), abar[t - 1].expand(8), abar[t].expand(8))
            nll[k] += (qt * binomial.kl_bernoulli(lq, lp)).sum()
        nll[k] += binomial.prior_kl(x0[None], abar[T][None])[0]
    return nll


def test_best_factorised_kernel_is_exact_marginal():
    """The x0 parametrisation with the exact P(x0_i | x_t) gives q(x_{t-1, i} = 1 | x_t)."""
    model = exact_model(STATES, PROBS, T=5)
    abar = model.schedule.abar()
    s, t = 2, 3
    # Joint over (x0, x_s, x_t) by enumeration.
    q_s = bern_table(binomial.q_logits(STATES, abar[s].expand(8)))  # (x0, x_s)
    joint = PROBS[:, None, None] * q_s[:, :, None] * state_transition(float(abar[t] / abar[s]))[None]
    p_s_t = joint.sum(0)  # (x_s, x_t)
    for j, x_t in enumerate(STATES):
        cond = p_s_t[:, j] / p_s_t[:, j].sum()
        exact_bit = (cond[:, None] * STATES).sum(0)  # q(x_{s,i} = 1 | x_t)
        out = model(x_t[None], torch.tensor([t / 5.0], dtype=torch.float64))
        lp, _ = binomial_reverse_logits("x0", out, x_t[None], abar[s][None], abar[t][None])
        assert torch.allclose(torch.sigmoid(lp[0]), exact_bit, atol=1e-12)


@pytest.mark.parametrize("T", [2, 6, 20])
def test_bound_below_exact_log_likelihood_by_enumeration(T):
    model = exact_model(STATES, PROBS, T)
    k = -enumerated_bound(model, PROBS)
    log_model = model_likelihood(model).log()
    # K(x0) <= log p_theta(x0) for every x0 (the ELBO), and on the data's distribution the
    # model's expected log-likelihood is at most the data's (Gibbs): so E K <= E log p.
    assert (k <= log_model + 1e-10).all(), (k, log_model)
    assert float((PROBS * log_model).sum()) <= float((PROBS * PROBS.log()).sum()) + 1e-12
    assert float((PROBS * k).sum()) < float((PROBS * PROBS.log()).sum())


def test_bound_gap_shrinks_with_T_and_monte_carlo_matches_enumeration():
    gaps = []
    for T in (2, 6, 20, 60):
        nll = enumerated_bound(exact_model(STATES, PROBS, T), PROBS)
        gaps.append(float((PROBS * (nll + PROBS.log())).sum()))
    assert all(g > 0 for g in gaps) and gaps == sorted(gaps, reverse=True), gaps
    assert gaps[-1] < 0.05 * gaps[0]
    # The library's Monte Carlo estimator of -K agrees with the exact sums.
    model = exact_model(STATES, PROBS, 20)
    exact = enumerated_bound(model, PROBS)
    x0 = STATES.repeat(400, 1)
    with torch.no_grad():
        mc = bound_terms(model, x0, n_t=19, generator=torch.Generator().manual_seed(0)).nll.reshape(400, 8)
    err = mc.std(0) / 20
    assert ((mc.mean(0) - exact).abs() < 4 * err + 1e-9).all(), (mc.mean(0), exact, err)


def test_heartbeat_oracle_bound_below_exact():
    from thermodiff.data.toy import heartbeat_patterns

    pats = heartbeat_patterns()
    model = exact_model(pats, torch.full((5,), 0.2, dtype=torch.float64), T=20)
    x0 = pats.repeat(400, 1)
    with torch.no_grad():
        k = -bound_terms(model, x0, n_t=19, generator=torch.Generator().manual_seed(1)).nll
    gap = math.log(0.2) - k  # nats
    assert float(gap.mean()) > 3 * float(gap.std() / math.sqrt(len(gap)))  # strictly below log p
    assert float(gap.mean()) < 0.5


def test_ancestral_samples_follow_the_data_distribution():
    from thermodiff.sampling.ancestral import sample

    model = exact_model(STATES, PROBS, T=40)
    x = sample(model, 6000, torch.Generator().manual_seed(3))
    counts = (x[:, None, :] == STATES[None].to(x.dtype)).all(-1).sum(0).to(torch.float64)
    freq = counts / counts.sum()
    # Chi-square-sized tolerance; the factorised kernels at T = 40 are nearly exact.
    assert (freq - PROBS).abs().max() < 0.03, freq
    assert ((x == 0) | (x == 1)).all()


def test_check_binary_names_the_row():
    from thermodiff.errors import DataError

    binomial.check_binary(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), "ok")
    with pytest.raises(DataError, match=r"row 1 holds 0.5"):
        binomial.check_binary(torch.tensor([[0.0, 1.0], [0.5, 1.0]]), "data.npy")
