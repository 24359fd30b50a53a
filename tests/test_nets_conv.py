"""Tests for the image U-Net and the per-step sigmoid MLP: shapes, init, gradients,
time and batch behaviour, option checking, the factory, and a tiny fit."""

from __future__ import annotations

import pytest
import torch

from conftest import _inputs, assert_float64_agrees, fit_fixed_target
from thermodiff.errors import ConfigError
from thermodiff.nets import SigmoidMLP, UNet, build_net, net_options

# Narrow nets keep the file fast on a shared 2-core machine.
SMALL = dict(base_channels=8, channel_mults=(1, 2), time_dim=16, groups=4)


def _unet(shape=(1, 8, 8), out_channels=1, **kw) -> UNet:
    torch.manual_seed(0)
    c, h, w = shape
    return UNet(c * h * w, out_channels * h * w, 10, image_shape=shape, **{**SMALL, **kw})


def _randomise_output(net: UNet) -> None:
    """Undo the zero init of the output conv so the output depends on everything."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        w = net.out_conv.weight
        w.copy_(0.1 * torch.randn(w.shape, generator=g, dtype=w.dtype))


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# -- UNet ---------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("hw", [(8, 8), (28, 28), (12, 16)])
@pytest.mark.parametrize("out_channels", [1, 2])
def test_unet_shapes_and_zero_output_at_init(c, hw, out_channels):
    shape = (c, *hw)
    net = _unet(shape, out_channels * c)
    assert net.out_channels == out_channels * c
    x, t = _inputs(3, c * hw[0] * hw[1])
    out = net(x, t)
    assert out.shape == (3, out_channels * c * hw[0] * hw[1])
    assert out.dtype == torch.float32
    assert torch.all(out == 0)


@pytest.mark.parametrize(
    "shape,mults",
    [
        ((1, 7, 5), (1, 2, 2)),
        ((3, 9, 13), (1, 1, 2)),
        ((1, 1, 1), (1, 2)),
        ((1, 5, 10), (1, 2, 2, 2)),
    ],
)
def test_unet_odd_and_tiny_sizes(shape, mults):
    # Halving rounds up (7 -> 4 -> 2); the up path must land back on every skip size.
    net = _unet(shape, 2, channel_mults=mults, attention_levels=(len(mults) - 1,))
    _randomise_output(net)
    c, h, w = shape
    out = net(*_inputs(2, c * h * w))
    assert out.shape == (2, 2 * h * w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("attention_levels", [(), (1,), (0, 1)])
def test_unet_gradients_reach_every_parameter(attention_levels):
    net = _unet((1, 8, 8), 2, attention_levels=attention_levels)
    x, t = _inputs(4, 64)
    # At zero init only the output conv is trained at first; that lets training start.
    net(x, t).sum().backward()
    assert net.out_conv.weight.grad.abs().sum() > 0

    net.zero_grad(set_to_none=True)
    _randomise_output(net)
    net(x, t).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_unet_attention_on_and_off():
    off = _unet((1, 8, 8))
    on = _unet((1, 8, 8), attention_levels=(1,))
    assert not any(n.endswith("qkv") for n, _ in off.named_modules())
    # Level 1: one block down, two up, plus the middle block.
    assert sum(1 for n, _ in on.named_modules() if n.endswith("qkv")) == 4
    assert _n_params(on) > _n_params(off)
    _randomise_output(on)
    _randomise_output(off)
    x, t = _inputs(2, 64)
    assert torch.isfinite(on(x, t)).all()


def test_unet_depends_on_time():
    net = _unet((1, 8, 8), attention_levels=(1,))
    _randomise_output(net)
    x, _ = _inputs(1, 64)
    x = x.expand(3, -1)
    out = net(x, torch.tensor([0.1, 0.5, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert (out[1] - out[2]).abs().max() > 1e-4
    # And the same (x, t) gives the same output.
    torch.testing.assert_close(net(x[:1], torch.tensor([0.5]))[0], out[1])


def test_unet_examples_are_independent_in_a_batch():
    net = _unet((3, 8, 12), 2, attention_levels=(0, 1), dropout=0.1)
    _randomise_output(net)
    net.eval()  # dropout off; GroupNorm and attention are per example anyway
    x, t = _inputs(4, 3 * 8 * 12)
    with torch.no_grad():
        batch = net(x, t)
        alone = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)


def test_unet_dropout_only_in_training():
    net = _unet((1, 8, 8), dropout=0.5)
    _randomise_output(net)
    x, t = _inputs(2, 64)
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(x, t), net(x, t))
        net.eval()
        assert torch.equal(net(x, t), net(x, t))


def test_unet_group_norm_falls_back_to_a_divisor():
    # 12 channels with groups = 8: 8 does not divide 12, so 6 groups are used.
    net = _unet((1, 8, 8), base_channels=12, groups=8, channel_mults=[1, 3])
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    counts = {m.num_channels: m.num_groups for m in norms}
    assert counts[12] == 6
    assert all(ch % g == 0 and g <= 8 for ch, g in counts.items())
    # A width smaller than groups uses one group per channel (3, and 6 where the
    # up path concatenates a skip).
    tiny = _unet((1, 8, 8), base_channels=3, groups=8, channel_mults=(1,))
    norms = [m for m in tiny.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_groups == m.num_channels for m in norms)
    assert tiny(*_inputs(2, 64)).shape == (2, 64)


def test_unet_float64():
    net = _unet((1, 8, 8), attention_levels=(1,))
    _randomise_output(net)
    assert_float64_agrees(net, 64)


@pytest.mark.parametrize(
    "kw",
    [
        dict(in_dim=65),  # not C*H*W
        dict(out_dim=100),  # not a multiple of H*W
        dict(image_shape=(8, 8)),
        dict(image_shape=(1, 0, 8)),
        dict(image_shape="1x8x8"),
        dict(base_channels=0),
        dict(channel_mults=()),
        dict(channel_mults=(1, 0)),
        dict(channel_mults=2),
        dict(num_res_blocks=0),
        dict(attention_levels=(2,)),
        dict(attention_levels=(-1,)),
        dict(groups=0),
        dict(dropout=1.0),
        dict(dropout="0.1"),
        dict(time_dim=1.5),
    ],
)
def test_unet_bad_options(kw):
    args = dict(in_dim=64, out_dim=64, num_steps=10, image_shape=(1, 8, 8), **SMALL)
    args.update(kw)
    with pytest.raises(ConfigError) as info:
        UNet(**args)
    assert "\n" not in str(info.value)


def test_build_unet():
    opts = {**SMALL, "channel_mults": [1, 2]}  # a list, as read from TOML
    net = build_net("unet", 3 * 8 * 8, 6 * 8 * 8, 10, image_shape=(3, 8, 8), **opts)
    assert isinstance(net, UNet) and net.out_channels == 6 and net.channel_mults == (1, 2)
    assert net(*_inputs(2, 3 * 8 * 8)).shape == (2, 6 * 8 * 8)
    names = net_options("unet")
    assert {"image_shape", "attention_levels", "dropout"} <= set(names)
    for bad in (dict(), dict(image_shape=(1, 8, 8), widht=8)):
        with pytest.raises(ConfigError):
            build_net("unet", 64, 64, 10, **bad)


def test_unet_overfits_a_fixed_target():
    net = _unet((1, 8, 8), base_channels=8, channel_mults=(1, 2), groups=4)
    first, final = fit_fixed_target(net, 64, lr=3e-3, steps=100)
    assert final < first / 10, (first, final)


# -- SigmoidMLP -----------------------------------------------------------------------

T = 10


def _sig(**kw) -> SigmoidMLP:
    torch.manual_seed(0)
    return SigmoidMLP(6, 6, T, **kw)


@pytest.mark.parametrize("b", [1, 7])
@pytest.mark.parametrize("depth", [1, 3])
def test_sigmoid_mlp_shapes_and_zero_output_at_init(b, depth):
    net = _sig(hidden=9, depth=depth)
    x = torch.randint(0, 2, (b, 6)).float()  # binary data, as the model is meant for
    t = torch.randint(1, T + 1, (b,)).float() / T
    out = net(x, t)
    assert out.shape == (b, 6)
    assert torch.all(out == 0)
    assert net.readout_weight.shape == (T, 9, 6)
    assert net.readout_bias.shape == (T, 6)
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in net.modules()) == depth


def test_sigmoid_mlp_parameter_count():
    net = SigmoidMLP(20, 20, 2000)
    hidden = (20 * 50 + 50) + 2 * (50 * 50 + 50)
    assert _n_params(net) == 2000 * (50 * 20 + 20) + hidden


def test_sigmoid_mlp_readout_is_per_step():
    net = _sig()
    x = torch.randint(0, 2, (16, 6), generator=torch.Generator().manual_seed(1)).float()
    t3 = torch.full((16,), 3 / T)
    t7 = torch.full((16,), 7 / T)
    before7 = net(x, t7).detach()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        (net(x, t3) - 2.0).square().mean().backward()  # train step 3 only
        opt.step()
    assert (net(x, t3) - 0.0).abs().min() > 0.1
    assert torch.equal(net(x, t7), before7)

    # With every readout random, a loss at step 3 reaches only readout row 3.
    with torch.no_grad():
        net.readout_weight.normal_()
        net.readout_bias.normal_()
    net.zero_grad(set_to_none=True)
    net(x, t3).square().sum().backward()
    rows = net.readout_weight.grad.abs().sum(dim=(1, 2)) > 0
    assert rows.tolist() == [i == 2 for i in range(T)]
    for name, p in net.named_parameters():
        assert p.grad is not None, name


def test_build_sigmoid_mlp():
    net = build_net("sigmoid_mlp", 5, 5, 40, hidden=7, depth=2)
    assert isinstance(net, SigmoidMLP) and net.hidden == 7 and net.depth == 2
    assert set(net_options("sigmoid_mlp")) == {"hidden", "depth", "num_classes"}
    x = torch.rand(3, 5)
    assert net(x, torch.tensor([0.0, 0.5, 1.0])).shape == (3, 5)
    for bad in (dict(hidden=0), dict(depth=0), dict(width=8), dict(hidden="50")):
        with pytest.raises(ConfigError) as info:
            build_net("sigmoid_mlp", 5, 5, 40, **bad)
        assert "\n" not in str(info.value)
