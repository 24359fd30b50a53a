"""The prediction contract, the kernels, the process objects and the time convention,
each against exact answers."""

import itertools
import math

import pytest
import torch
from torch import nn

from thermodiff.errors import ConfigError
from thermodiff.kernels import Bernoulli, Normal
from thermodiff.model import DiffusionModel, ModelSpec
from thermodiff.processes import get as get_process
from thermodiff.sampling.ancestral import sample
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule

S2 = 0.7  # data ~ N(0, S2 I)


class ExactNative(nn.Module):
    """The exact eps, x0 or v of N(0, S2 I) data, whichever the parametrisation predicts."""

    def __init__(self, model_ref, kind):
        super().__init__()
        self.ref, self.kind = [model_ref], kind
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t):
        abar = self.ref[0].abar_at(t.to(torch.float64))[:, None]
        c = abar * S2 + 1 - abar
        x0 = abar.sqrt() * S2 * x / c
        eps = (1 - abar).sqrt() * x / c
        return {"x0": x0, "eps": eps, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[self.kind]


def exact_model(kind, schedule=None):
    model = DiffusionModel(nn.Identity(), schedule or DiscreteSchedule("cosine", 50), ModelSpec(kind), (3,))
    model.net = ExactNative(model, kind)
    return model.double()


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_every_parametrisation_predicts_the_exact_x0_eps_v_and_score(kind):
    """Whatever the network predicts natively, the Prediction carries the same exact x0,
    eps, v and score of Gaussian data: score = -x_t / (abar S2 + 1 - abar)."""
    model = exact_model(kind)
    x = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.randint(1, 51, (64,), generator=torch.Generator().manual_seed(1)).to(torch.float64) / 50
    pred = model.predict(x, t)
    abar = model.schedule.abar(t)[:, None]
    c = abar * S2 + 1 - abar
    eps = (1 - abar).sqrt() * x / c
    x0 = abar.sqrt() * S2 * x / c
    assert torch.allclose(pred.x0, x0, atol=1e-12) and torch.allclose(pred.eps, eps, atol=1e-12)
    assert torch.allclose(pred.v, abar.sqrt() * eps - (1 - abar).sqrt() * x0, atol=1e-12)
    assert torch.allclose(pred.score, -x / c, atol=1e-10)
    assert torch.equal(pred.native, model(x, t)[:, 0])


def test_the_reverse_kernel_is_the_posterior_at_the_predicted_x0():
    """p(x_s | x_t) of an x0 model is q(x_s | x_t, x0_hat), and the bound's KL is zero
    where the prediction is the true x_0."""
    model = exact_model("x0")
    x_t = torch.randn(8, 3, dtype=torch.float64)
    t = torch.full((8,), 0.5, dtype=torch.float64)
    abar_t, abar_s = model.schedule.abar(t), model.schedule.abar_before(t)
    p = model.reverse(x_t, t, abar_s, abar_t)
    q = model.process.posterior(x_t, model.predict(x_t, t).x0, abar_s, abar_t)
    assert torch.allclose(p.mean, q.mean) and torch.allclose(torch.as_tensor(p.var), torch.as_tensor(q.var))
    assert torch.allclose(q.kl(p), torch.zeros(8, dtype=torch.float64), atol=1e-12)


class TimeBlindLinear(nn.Linear):
    def forward(self, x, t):
        return super().forward(x)


def test_the_paper_kernel_has_no_x0_and_says_so():
    model = DiffusionModel(TimeBlindLinear(3, 6), DiscreteSchedule("learned", 10), ModelSpec("paper"), (3,))
    pred = model.predict(torch.zeros(2, 3), torch.full((2,), 0.5, dtype=torch.float64))
    assert pred.x0 is None and pred.extra is not None
    with pytest.raises(ConfigError, match="neither x0 nor eps"):
        pred.score


def test_the_conditioning_input_reaches_the_network():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, t, cond=None):
            seen.append(cond)
            return self.lin(x)

    model = DiffusionModel(Net(), DiscreteSchedule("linear", 10), ModelSpec("eps"), (3,))
    labels = torch.tensor([1, 2])
    model.predict(torch.zeros(2, 3), torch.full((2,), 0.5), cond=labels)
    model.predict(torch.zeros(2, 3), torch.full((2,), 0.5))
    assert seen[0] is labels and seen[1] is None


# ----------------------------------------------------------------------------- kernels


def test_bernoulli_kernel_log_prob_entropy_and_kl_by_enumeration():
    """Over all 2^3 states: probabilities sum to 1, H = -sum p log p, KL = sum p log(p / q)."""
    gen = torch.Generator().manual_seed(0)
    a = Bernoulli(logits=torch.randn(2, 3, generator=gen, dtype=torch.float64) * 2)
    b = Bernoulli(logits=torch.randn(2, 3, generator=gen, dtype=torch.float64) * 2)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    for row in range(2):
        la = torch.stack([a.take(torch.tensor([row])).log_prob(s[None])[0] for s in states])
        lb = torch.stack([b.take(torch.tensor([row])).log_prob(s[None])[0] for s in states])
        assert torch.exp(la).sum() == pytest.approx(1.0, abs=1e-12)
        assert float(a.entropy()[row]) == pytest.approx(float(-(la.exp() * la).sum()), abs=1e-12)
        assert float(a.kl(b)[row]) == pytest.approx(float((la.exp() * (la - lb)).sum()), abs=1e-12)


def test_normal_kernel_entropy_and_kl_match_their_monte_carlo_expectations():
    gen = torch.Generator().manual_seed(0)
    a = Normal(mean=torch.tensor([[0.3, -1.0]], dtype=torch.float64), var=torch.tensor([[0.5, 2.0]], dtype=torch.float64))
    b = Normal(mean=torch.tensor([[-0.2, 0.4]], dtype=torch.float64), var=torch.tensor([1.5], dtype=torch.float64))
    n = 200_000
    big_a = Normal(mean=a.mean.expand(n, 2), var=a.var.expand(n, 2))
    big_b = Normal(mean=b.mean.expand(n, 2), var=b.var.expand(n))
    x = big_a.sample(gen)
    log_ratio = big_a.log_prob(x) - big_b.log_prob(x)
    se = float(log_ratio.std()) / math.sqrt(n)
    assert abs(float(log_ratio.mean()) - float(a.kl(b)[0])) < 4 * se
    neg_log = -big_a.log_prob(x)
    assert abs(float(neg_log.mean()) - float(a.entropy()[0])) < 4 * float(neg_log.std()) / math.sqrt(n)


# ----------------------------------------------------------------------------- processes


def test_process_objects_answer_what_features_ask():
    gauss, binom = get_process("gaussian"), get_process("binomial")
    assert "continuous-time" in gauss.supports and not binom.supports
    x0 = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    abar = torch.tensor([0.6], dtype=torch.float64)
    # q(x_t | x_0) = B(x_0 abar + (1 - abar) / 2): P(1) = 0.8 where x_0 = 1, 0.2 where 0.
    assert torch.allclose(torch.sigmoid(binom.forward(x0, one, abar).logits), torch.tensor([[0.8, 0.2, 0.8]], dtype=torch.float64))
    # Two forward hops compose: q(x_t | x_0) = N(sqrt(abar) x_0, (1 - abar) I).
    k = gauss.forward(x0, one, abar)
    assert torch.allclose(k.mean, 0.6**0.5 * x0) and torch.allclose(k.var, 1 - abar)
    with pytest.raises(ConfigError, match="binomial process is discrete"):
        DiffusionModel(TimeBlindLinear(3, 3), ContinuousSchedule("linear-logsnr"), ModelSpec("x0"), (3,), process="binomial")
    with pytest.raises(ConfigError, match="unknown process kind"):
        get_process("poisson")


# ----------------------------------------------------------------------------- time


@pytest.mark.parametrize("kind", ["binomial", "linear", "cosine", "learned"])
def test_discrete_schedule_time_convention(kind):
    """abar at t = i / T is the table entry exactly; the continuous extension lies between
    its neighbours, log_snr and t_of_log_snr invert each other, dlog_snr_dt is the slope."""
    s = DiscreteSchedule(kind, 40, beta_1=1e-3)
    table = s.abar()
    i = torch.arange(0, 41)
    assert torch.equal(s.abar(i.to(torch.float64) / 40), table[i])
    t = (torch.arange(1, 40, dtype=torch.float64) + 0.37) / 40
    between = s.abar(t)
    assert torch.all(between < table[1:40]) and torch.all(between > table[2:41])
    assert torch.allclose(s.t_of_log_snr(s.log_snr(t)), t, atol=1e-12)
    h = 1e-7
    fd = (s.log_snr(t + h) - s.log_snr(t - h)) / (2 * h)
    assert torch.allclose(s.dlog_snr_dt(t), fd, rtol=1e-5)
    grid = s.grid(7)
    assert grid[0] == 1 / 40 and grid[-1] == 1.0 and len(grid) == 7
    assert len(s.grid()) == 40


@pytest.mark.parametrize("kind", ["linear-logsnr", "cosine", "learned"])
def test_continuous_schedule_time_convention(kind):
    s = ContinuousSchedule(kind, -10.0, 6.0)
    t = torch.linspace(0, 1, 33, dtype=torch.float64)
    lam = s.log_snr(t)
    assert torch.allclose(lam, torch.log(s.abar(t) / (1 - s.abar(t))), atol=1e-9)
    assert torch.allclose(s.t_of_log_snr(lam), t, atol=1e-12)
    if kind == "linear-logsnr":
        assert torch.allclose(lam, -(-10.0 + 16.0 * t), atol=1e-12)
        assert torch.allclose(s.dlog_snr_dt(t), torch.full_like(t, -16.0))
    assert len(s.grid(10)) == 11 and s.t_first == 0.0


# ----------------------------------------------------------------------------- chunks


def test_chunked_sampling_is_reproducible_and_has_the_right_distribution():
    """Same seed and chunk: the same draws; one chunk covering n: the unchunked draws;
    and chunked samples of the exact N(0, S2 I) model have its mean and variance."""
    model = exact_model("eps", ContinuousSchedule("linear-logsnr"))
    a = sample(model, 50, torch.Generator().manual_seed(3), steps=20, chunk=16)
    b = sample(model, 50, torch.Generator().manual_seed(3), steps=20, chunk=16)
    whole = sample(model, 50, torch.Generator().manual_seed(3), steps=20)
    assert torch.equal(a, b) and a.shape == (50, 3)
    assert torch.equal(sample(model, 50, torch.Generator().manual_seed(3), steps=20, chunk=50), whole)
    x = sample(model, 1500, torch.Generator().manual_seed(4), steps=500, chunk=400)
    assert x.mean(0).abs().max() < 4 * math.sqrt(S2 / 1500)
    assert (x.var(0) / S2 - 1).abs().max() < 0.1
    with pytest.raises(ConfigError, match="chunk"):
        sample(model, 5, torch.Generator(), chunk=0)
