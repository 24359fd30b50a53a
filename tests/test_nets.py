"""Tests for thermodiff.nets: shapes, init, gradients, per-step readouts, factory."""

from __future__ import annotations

import math

import pytest
import torch

from thermodiff.errors import ConfigError
from thermodiff.nets import (
    FourierFeatures,
    RBFNet,
    ResidualMLP,
    SinusoidalEmbedding,
    build_net,
    net_options,
    time_to_index,
)

T = 10
# Small widths keep the whole file fast on a shared 2-core machine.
SMALL_MLP = dict(width=16, depth=2, time_dim=8)


def _make(kind: str, d: int, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return ResidualMLP(d, 2 * d, **{**SMALL_MLP, **kw})
    if kind == "mlp_fourier":
        return ResidualMLP(d, 2 * d, fourier_frequencies=3, **{**SMALL_MLP, **kw})
    return RBFNet(d, 2 * d, T, **kw)


def _inputs(b: int, d: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    t = torch.randint(1, T + 1, (b,), generator=g).to(dtype) / T
    return x, t


def _randomise_readout(net: torch.nn.Module) -> None:
    """Undo the zero init so gradients reach every earlier layer."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        if isinstance(net, RBFNet):
            net.readout_weight.copy_(torch.randn(net.readout_weight.shape, generator=g))
            net.readout_bias.copy_(torch.randn(net.readout_bias.shape, generator=g))
        else:
            net.out_proj.weight.copy_(torch.randn(net.out_proj.weight.shape, generator=g))


KINDS = ["mlp", "mlp_fourier", "rbf"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("b", [1, 7])
def test_shapes_and_zero_output_at_init(kind, d, b):
    net = _make(kind, d)
    x, t = _inputs(b, d)
    out = net(x, t)
    assert out.shape == (b, 2 * d)
    assert out.dtype == torch.float32
    assert torch.all(out == 0)


def test_mlp_without_zero_init_is_nonzero():
    net = _make("mlp", 2, zero_init_output=False)
    x, t = _inputs(7, 2)
    assert net(x, t).abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    net = _make(kind, 3)
    x, t = _inputs(7, 3)
    # At zero init only the readout gets gradient; that is what lets training start.
    readout = net.readout_weight if isinstance(net, RBFNet) else net.out_proj.bias
    net(x, t).sum().backward()
    assert readout.grad is not None and readout.grad.abs().sum() > 0

    net.zero_grad(set_to_none=True)
    _randomise_readout(net)
    # Every step present so every per-step readout row can be reached.
    t_all = torch.arange(1, T + 1, dtype=torch.float32) / T
    x_all = torch.randn(T, 3, generator=torch.Generator().manual_seed(3))
    net(x_all, t_all).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_time_to_index_inverts_i_over_T_exactly():
    for steps in (1, 2, 3, 7, 10, 40, 1000, 4000):
        i = torch.arange(1, steps + 1)
        for dtype in (torch.float32, torch.float64):
            t = i.to(dtype) / steps
            assert torch.equal(time_to_index(t, steps), i), (steps, dtype)
    # Out-of-range times clamp to the ends.
    assert time_to_index(torch.tensor([0.0, -0.5, 1.5]), 10).tolist() == [1, 1, 10]


def test_rbf_readout_is_per_step():
    d, steps, b = 2, 6, 60
    torch.manual_seed(0)
    net = RBFNet(d, 2 * d, steps)
    _randomise_readout(net)
    x = torch.randn(b, d)
    idx = torch.arange(b) % steps + 1  # every step several times
    t = idx.float() / steps
    before = net(x, t)
    step = 4
    with torch.no_grad():
        net.readout_weight[step - 1] += 1.0
        net.readout_bias[step - 1] -= 0.5
    after = net(x, t)
    changed = (after - before).abs().amax(dim=1) > 1e-6
    assert torch.equal(changed, idx == step)


def test_rbf_hidden_is_normalised_and_finite_far_away():
    torch.manual_seed(0)
    net = RBFNet(2, 4, T)
    x = torch.tensor([[0.0, 0.0], [1e3, -1e3]])
    h = net.hidden_activations(x)
    assert h.shape == (2, 16)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.sum(-1), torch.ones(2))


def test_rbf_parameter_shapes():
    net = RBFNet(3, 6, 25, hidden=16)
    assert net.centres.shape == (16, 3)
    assert net.log_widths.shape == (16,)
    assert net.readout_weight.shape == (25, 16, 6)
    assert net.readout_bias.shape == (25, 6)


@pytest.mark.parametrize("d,k", [(1, 0), (1, 4), (2, 3), (5, 2)])
def test_fourier_features_dim(d, k):
    ff = FourierFeatures(d, k, min_exponent=-1)
    x = torch.randn(7, d)
    out = ff(x)
    assert out.shape == (7, d * (1 + 2 * k)) == (7, ff.out_dim)
    torch.testing.assert_close(out[:, :d], x)  # the input itself comes first
    if k:
        assert ff.max_exponent == -1 + k - 1
        # First sin feature of coordinate 0 uses frequency 2^min_exponent * pi.
        torch.testing.assert_close(out[:, d], torch.sin(0.5 * math.pi * x[:, 0]))


def test_sinusoidal_embedding():
    t = torch.linspace(0, 1, 7)
    for dim in (1, 8, 9):
        emb = SinusoidalEmbedding(dim)(t)
        assert emb.shape == (7, dim)
        assert torch.isfinite(emb).all()
    # Nearby times in [0, 1] must be distinguishable.
    e = SinusoidalEmbedding(16)(torch.tensor([0.5, 0.501]))
    assert (e[0] - e[1]).abs().max() > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_no_grad_and_float64(kind):
    net = _make(kind, 2)
    _randomise_readout(net)
    x, t = _inputs(7, 2)
    with torch.no_grad():
        out32 = net(x, t)
    assert not out32.requires_grad
    net64 = net.double()
    x64, t64 = _inputs(7, 2, dtype=torch.float64)
    with torch.no_grad():
        out64 = net64(x64, t64)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)


def test_build_net():
    mlp = build_net("mlp", 2, 4, T, width=8, depth=1, fourier_frequencies=2)
    assert isinstance(mlp, ResidualMLP)
    rbf = build_net("rbf", 2, 4, T, hidden=5)
    assert isinstance(rbf, RBFNet) and rbf.hidden == 5
    assert build_net("mlp", 3, 6, T, **SMALL_MLP)(*_inputs(7, 3)).shape == (7, 6)
    assert "fourier_min_exponent" in net_options("mlp")
    assert set(net_options("rbf")) == {"hidden", "init_width", "num_classes"}


@pytest.mark.parametrize(
    "name,opts",
    [
        ("transformer", {}),
        ("mlp", {"widht": 8}),
        ("rbf", {"width": 8}),
        ("mlp", {"activation": "swishy"}),
        ("mlp", {"depth": "four"}),
        ("rbf", {"hidden": 0}),
    ],
)
def test_build_net_errors(name, opts):
    with pytest.raises(ConfigError) as info:
        build_net(name, 2, 4, T, **opts)
    assert "\n" not in str(info.value)
