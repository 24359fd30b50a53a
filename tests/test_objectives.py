"""Time samplers keep the estimate unbiased; each objective runs and is finite; and on
Gaussian data with the exact eps model each objective's mean is its closed form."""

import math

import pytest
import torch
from torch import nn

from thermodiff import config
from thermodiff.data.toy import GaussianMixture
from thermodiff.likelihood import bound_terms
from thermodiff.model import build_model
from thermodiff.objectives import loss_per_example, make_time_sampler
from thermodiff.oracle import mixture_model
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule
from thermodiff.time_sampler import TimeSampler


def test_importance_weights_are_unbiased():
    f = torch.linspace(0.1, 5.0, 20, dtype=torch.float64) ** 2  # a term per bin
    sampler = TimeSampler(20, importance=True, warmup=1)
    gen = torch.Generator().manual_seed(0)
    bins, _, _ = sampler.sample(400, gen)
    sampler.update(bins, f[bins])
    assert sampler.probabilities()[-1] > sampler.probabilities()[0]
    bins, _, w = sampler.sample(200_000, gen)
    est = (w * f[bins]).double()
    assert abs(float(est.mean()) - float(f.mean())) < 4 * float(est.std()) / math.sqrt(200_000)
    # and the importance proposal beats uniform sampling's variance
    assert float(est.var()) < float(f.var())


def test_uniform_sampler_is_stratified():
    sampler = TimeSampler(10)
    bins, u, w = sampler.sample(100, torch.Generator().manual_seed(0))
    assert torch.all(torch.bincount(bins, minlength=10) == 10)
    assert torch.all(w == 1) and torch.all((u >= 0) & (u < 1))


@pytest.mark.parametrize(
    "sets",
    [
        ["process.time=continuous", "train.objective=bound"],
        ["process.time=continuous", "train.objective=simple", "model.parametrization=v"],
        ["process.time=discrete", "process.T=20", "process.schedule=learned", "model.net=rbf", "model.parametrization=paper"],
        ["process.time=discrete", "process.T=20", "process.schedule=cosine", "model.variance=learned-range", "train.objective=hybrid"],
        ["process.time=discrete", "process.T=20", "process.schedule=linear", "model.parametrization=x0", "model.decoder=learned", "train.t_sampling=importance"],
    ],
)
def test_objectives_run_and_give_gradients(sets):
    cfg = config.apply_overrides(config.Config(), sets + ["model.width=16", "model.depth=1"])
    model = build_model(cfg, (3,))
    sampler = make_time_sampler(model, cfg.train.t_sampling)
    x0 = torch.randn(32, 3)
    gen = torch.Generator().manual_seed(0)
    loss, info = loss_per_example(model, cfg.train.objective, x0, sampler, gen)
    assert loss.shape == (32,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    if cfg.process.schedule == "learned":
        assert model.schedule.beta_logits.grad is not None


def test_learned_continuous_schedule_interior_follows_the_loss_variance():
    """VDM: the interior of a learned continuous schedule gets d/dtheta of E[L^2] / 2,
    the endpoints and the network the gradient of the bound itself."""
    from thermodiff.train import train_step

    cfg = config.apply_overrides(config.Config(), ["process.schedule=learned", "model.width=16", "model.depth=1",
                                                   "train.batch_size=64", "train.grad_clip=0"])
    model = build_model(cfg, (2,))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sampler = make_time_sampler(model, "uniform")
    x0 = torch.randn(64, 2) * 0.1
    train_step(model, opt, x0, cfg.train, sampler, torch.Generator().manual_seed(0))
    loss, _ = loss_per_example(model, "bound", x0, sampler, torch.Generator().manual_seed(0))
    inner = list(model.schedule.shape_net.parameters())
    want_inner = torch.autograd.grad((loss.detach() * loss).mean(), inner, retain_graph=True)
    want_ends = torch.autograd.grad(loss.mean(), [model.schedule.endpoints])[0]
    for p, g in zip(inner, want_inner):
        assert torch.allclose(p.grad, g)
    assert torch.allclose(model.schedule.endpoints.grad, want_ends)


# -- Each objective's mean against its closed form on Gaussian data ------------------
#
# Data x0 ~ N(mu, Sigma) in D = 2 dimensions (correlated and off-centre) and the exact
# eps model of ``thermodiff.oracle``. With a = abar_t and C_t = a Sigma + (1 - a) I,
#   E[eps | x_t] = sqrt(1 - a) C_t^-1 (x_t - sqrt(a) mu),
#   e(a) = E|eps - E[eps | x_t]|^2 = tr(I - (1 - a) C_t^-1)      (summed over dimensions),
# and for any eps model x0 - x0_hat = -sqrt((1 - a) / a) (eps - eps_hat), so
#   E|x0 - x0_hat|^2 = (1 - a) / a * e(a).
# The deliberately wrong model eps_hat = 0 has e(a) = D exactly. Every objective's
# expectation follows from e(a) on the schedule; the tests compare the Monte Carlo
# mean over many examples with it to within 4 standard errors.

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([[0.3, 0.1], [0.1, 0.6]], dtype=torch.float64)
DIM = 2
STEPS = 20  # discrete time: the cosine schedule with T = 20
GAMMA_MIN, GAMMA_MAX = -13.3, 5.0  # continuous time: linear in log-SNR, so t ~ U(0, 1) is gamma ~ U


class _ZeroEps(nn.Module):
    """eps_hat = 0 whatever x_t: a wrong model with a known loss."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t):
        return torch.zeros_like(x)


def _schedule(time):
    if time == "discrete":
        return DiscreteSchedule("cosine", STEPS)
    return ContinuousSchedule("linear-logsnr", GAMMA_MIN, GAMMA_MAX)


def _gaussian_model(time, wrong=False, variance="fixed-small"):
    """The exact eps model for N(MU, SIGMA) (or, wrong=True, eps_hat = 0) with the learned
    decoder; float64."""
    mix = GaussianMixture(torch.ones(1), MU[None], SIGMA[None])
    model = mixture_model(mix, _schedule(time), variance=variance, decoder="learned")
    if wrong:
        model.net = _ZeroEps()
    return model


def _data(n, seed):
    return MU + torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


def _eps_error(a, wrong=False):
    """e(a) = E|eps - eps_hat(x_t)|^2 summed over dimensions. Shapes: a (n,) -> (n,) float64."""
    if wrong:
        return torch.full_like(a, float(DIM))
    c = a[:, None, None] * SIGMA + (1 - a)[:, None, None] * torch.eye(DIM, dtype=torch.float64)
    return DIM - (1 - a) * torch.linalg.inv(c).diagonal(dim1=1, dim2=2).sum(1)


def _eps_error_integral(wrong=False):
    """int e dgamma over [GAMMA_MIN, GAMMA_MAX], with a = sigmoid(-gamma). In the eigenbasis
    of Sigma (eigenvalues l) e = sum_l l / (l + exp(gamma)), whose antiderivative is
    -log(1 + l exp(-gamma)); for eps_hat = 0, e = D."""
    if wrong:
        return DIM * (GAMMA_MAX - GAMMA_MIN)
    lam = torch.linalg.eigvalsh(SIGMA)
    return float((torch.log1p(lam * math.exp(-GAMMA_MIN)) - torch.log1p(lam * math.exp(-GAMMA_MAX))).sum())


def _expected_simple(time, wrong=False):
    """E of the simple loss, mean over dimensions: e(abar_i) / D averaged over the steps
    i = 1..T (discrete), or over t ~ U(0, 1), i.e. gamma ~ U(GAMMA_MIN, GAMMA_MAX)."""
    if time == "discrete":
        abar = _schedule(time).abar()[1:]
        return float(_eps_error(abar, wrong).mean()) / DIM
    return _eps_error_integral(wrong) / (GAMMA_MAX - GAMMA_MIN) / DIM


def _expected_minus_k(time, variance="fixed-small", wrong=False):
    """E_x0[-K(x0)] in nats, exact: prior + diffusion + reconstruction with
      prior          E KL(N(sqrt(a_T) x0, (1 - a_T) I) || N(0, I))
                     = [D (1 - a_T) + a_T (tr Sigma + |mu|^2) - D - D log(1 - a_T)] / 2
      diffusion      discrete: sum_{t=2..T} E KL(N(m_q, v_q) || N(m_p, v_p)) with
                     m_q - m_p = c0 (x0 - x0_hat), c0 = sqrt(a_{t-1}) beta_t / (1 - a_t),
                     v_q = beta_t (1 - a_{t-1}) / (1 - a_t), v_p = v_q (fixed-small) or
                     beta_t (fixed-large); continuous: 1/2 int e dgamma (VDM)
      reconstruction learned decoder N(x0_hat(x_1), beta_1 I), beta_1 = 1 - a_1:
                     [D log(2 pi beta_1) + E|x0 - x0_hat(x_1)|^2 / beta_1] / 2."""
    if time == "discrete":
        abar = _schedule(time).abar()
        a_first, a_last = abar[1:2], abar[-1]
        a_t, a_s = abar[2:], abar[1:-1]
        beta = 1 - a_t / a_s
        v_q = beta * (1 - a_s) / (1 - a_t)
        v_p = v_q if variance == "fixed-small" else beta
        c0 = a_s.sqrt() * beta / (1 - a_t)
        x0_err = (1 - a_t) / a_t * _eps_error(a_t, wrong)
        kl = 0.5 * (DIM * v_q / v_p - DIM + DIM * torch.log(v_p / v_q) + c0**2 * x0_err / v_p)
        diffusion = float(kl.sum())
    else:
        # The first latent sits at t = 0 (gamma_min), the last at t = 1 (gamma_max).
        a_first = torch.sigmoid(torch.tensor([-GAMMA_MIN], dtype=torch.float64))
        a_last = torch.sigmoid(torch.tensor(-GAMMA_MAX, dtype=torch.float64))
        diffusion = 0.5 * _eps_error_integral(wrong)
    a_last = float(a_last)
    prior = 0.5 * (DIM * (1 - a_last) + a_last * float(SIGMA.trace() + MU @ MU) - DIM - DIM * math.log(1 - a_last))
    beta_1 = 1 - a_first
    recon = 0.5 * (DIM * torch.log(2 * math.pi * beta_1) + (1 - a_first) / a_first * _eps_error(a_first, wrong) / beta_1)
    return prior + diffusion + float(recon[0])


def _losses(model, objective, n, seed, hybrid_lambda=1e-3):
    """Per-example losses on n fresh examples, under no_grad. Shapes: -> (n,) float64."""
    sampler = make_time_sampler(model, "uniform")
    with torch.no_grad():
        loss, _ = loss_per_example(model, objective, _data(n, seed), sampler, torch.Generator().manual_seed(seed + 1),
                                   hybrid_lambda=hybrid_lambda)
    return loss.to(torch.float64)


def _mean_se(v):
    return float(v.mean()), float(v.std()) / math.sqrt(v.numel())


# Continuous time costs the oracle one mixture per distinct t, so fewer examples there.
N_EXAMPLES = {"discrete": 200_000, "continuous": 1500}


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_simple_loss_matches_its_closed_form_for_the_exact_and_a_wrong_model(time):
    """The simple loss's mean is E_t[tr(I - (1 - abar_t) C_t^-1)] / D for the exact eps
    model (t: a uniform step 1..T, or t ~ U(0, 1)) and exactly 1 for eps_hat = 0; each
    model's mean is within 4 standard errors of its own value and far from the other's."""
    exact, wrong = _expected_simple(time), _expected_simple(time, wrong=True)
    assert wrong == 1.0
    n = N_EXAMPLES[time]
    m_exact, se_exact = _mean_se(_losses(_gaussian_model(time), "simple", n, seed=0))
    m_wrong, se_wrong = _mean_se(_losses(_gaussian_model(time, wrong=True), "simple", n, seed=0))
    assert abs(m_exact - exact) < 4 * se_exact, (m_exact, exact, se_exact)
    assert abs(m_wrong - wrong) < 4 * se_wrong, (m_wrong, wrong, se_wrong)
    assert abs(m_exact - wrong) > 10 * se_exact and abs(m_wrong - exact) > 10 * se_wrong


@pytest.mark.parametrize("time,variance,wrong", [("discrete", "fixed-small", False), ("discrete", "fixed-large", False),
                                                 ("continuous", "fixed-small", False), ("continuous", "fixed-small", True)],
                         ids=["discrete-fixed-small", "discrete-fixed-large", "continuous", "continuous-zero-eps"])
def test_bound_objective_is_unbiased_for_minus_k(time, variance, wrong):
    """The bound objective (one sampled time per example, weighted by the time sampler)
    and the evaluation's -K (bound_terms: every step 2..T in discrete time, 4 stratified
    times in continuous time) both average to the exact E[-K] (`_expected_minus_k`), and
    to each other, within 4 standard errors. The cases have different exact values
    (3.74 and 1.98 nats for the two variances at T = 20; 1.96 for the exact model in
    continuous time, 7.85 for eps_hat = 0), so a wrong kernel or term would fail."""
    model = _gaussian_model(time, wrong=wrong, variance=variance)
    exact = _expected_minus_k(time, variance, wrong)
    # eps_hat = 0 costs nothing to evaluate: more examples there.
    n = 20_000 if wrong else N_EXAMPLES[time]
    m_obj, se_obj = _mean_se(_losses(model, "bound", n, seed=0))
    n_eval, n_t = (20_000, STEPS - 1) if time == "discrete" else (5000 if wrong else 400, 4)
    with torch.no_grad():
        nll = bound_terms(model, _data(n_eval, 10), n_t, torch.Generator().manual_seed(11)).nll
    m_eval, se_eval = _mean_se(nll)
    assert abs(m_obj - exact) < 4 * se_obj, (m_obj, exact, se_obj)
    assert abs(m_eval - exact) < 4 * se_eval, (m_eval, exact, se_eval)
    assert abs(m_obj - m_eval) < 4 * math.hypot(se_obj, se_eval), (m_obj, m_eval)


@pytest.mark.parametrize("time", ["discrete", "continuous"])
def test_hybrid_is_simple_plus_lambda_times_the_bound(time):
    """hybrid = simple + lambda * bound estimate: its mean is the simple loss's closed
    form plus lambda times the exact E[-K], within 4 standard errors. lambda = 0.3 (not
    the default 1e-3) makes each part more than 8 standard errors large, so dropping
    either would fail."""
    lam = 0.3
    simple, minus_k = _expected_simple(time), _expected_minus_k(time)
    m, se = _mean_se(_losses(_gaussian_model(time), "hybrid", N_EXAMPLES[time], seed=0, hybrid_lambda=lam))
    assert abs(m - (simple + lam * minus_k)) < 4 * se, (m, simple, minus_k, se)
    assert simple > 8 * se and abs(lam * minus_k) > 8 * se, (simple, lam * minus_k, se)
