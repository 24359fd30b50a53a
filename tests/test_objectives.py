"""Time samplers keep the estimate unbiased; each objective runs and is finite."""

import math

import pytest
import torch

from thermodiff import config
from thermodiff.model import build_model
from thermodiff.objectives import loss_per_example, make_time_sampler
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
