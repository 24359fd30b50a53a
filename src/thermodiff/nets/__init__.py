"""Networks mapping ``(x, t)`` to an output vector.

Every network here has ``forward(x (B, D), t (B,)) -> (B, out_dim)`` with ``t`` in
[0, 1]; none of them reads a diffusion schedule or rescales data.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from thermodiff.errors import ConfigError
from thermodiff.nets.embeddings import FourierFeatures, SinusoidalEmbedding, per_step_readout, time_to_index
from thermodiff.nets.mlp import ResidualMLP
from thermodiff.nets.multiscale import MultiScaleConvNet
from thermodiff.nets.rbf import RBFNet
from thermodiff.nets.sigmoid_mlp import SigmoidMLP
from thermodiff.nets.unet import UNet

__all__ = [
    "FourierFeatures",
    "SinusoidalEmbedding",
    "ResidualMLP",
    "MultiScaleConvNet",
    "RBFNet",
    "SigmoidMLP",
    "UNet",
    "NETS",
    "build_net",
    "net_options",
    "time_to_index",
    "per_step_readout",
]


def _mlp(in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    # The MLP is continuous in t, so num_steps is not needed.
    return ResidualMLP(in_dim, out_dim, **options)


def _rbf(in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    return RBFNet(in_dim, out_dim, num_steps, **options)


def _sigmoid_mlp(in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    return SigmoidMLP(in_dim, out_dim, num_steps, **options)


def _unet(in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    # image_shape comes from the data's shape (the model builder passes it), not
    # from the user; without it the flat input cannot be read as an image.
    if "image_shape" not in options:
        raise ConfigError("net 'unet' needs the option image_shape = (C, H, W)")
    return UNet(in_dim, out_dim, num_steps, **options)


def _multiscale(in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    # As for the U-Net: the image shape comes from the data, not from the user.
    if "image_shape" not in options:
        raise ConfigError("net 'multiscale' needs the option image_shape = (C, H, W)")
    return MultiScaleConvNet(in_dim, out_dim, num_steps, **options)


# name -> (builder, class whose keyword arguments after the fixed ones are options)
NETS: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "mlp": (_mlp, ResidualMLP),
    "rbf": (_rbf, RBFNet),
    "sigmoid_mlp": (_sigmoid_mlp, SigmoidMLP),
    "unet": (_unet, UNet),
    "multiscale": (_multiscale, MultiScaleConvNet),
}

_FIXED = {"self", "in_dim", "out_dim", "num_steps"}


def net_options(name: str) -> tuple[str, ...]:
    """The option names ``build_net`` accepts for network ``name``.

    Shapes: none (configuration only)
    """
    if name not in NETS:
        raise ConfigError(f"unknown net {name!r} (known: {', '.join(sorted(NETS))})")
    params = inspect.signature(NETS[name][1].__init__).parameters
    return tuple(p for p in params if p not in _FIXED)


def build_net(name: str, in_dim: int, out_dim: int, num_steps: int, **options: Any) -> nn.Module:
    """Build a network by name: ``"mlp"`` (ResidualMLP), ``"rbf"`` (RBFNet),
    ``"sigmoid_mlp"`` (SigmoidMLP), ``"unet"`` (UNet) or ``"multiscale"``
    (MultiScaleConvNet); the last two need ``image_shape``.

    Options are the network's keyword arguments (see ``net_options``); an unknown
    name or option raises ``ConfigError``.

    Shapes: the built net maps x (B, in_dim), t (B,) -> (B, out_dim)
    """
    known = net_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for net {name!r} (known: {', '.join(known)})"
        )
    builder, _ = NETS[name]
    try:
        return builder(in_dim, out_dim, num_steps, **options)
    except TypeError as exc:  # e.g. a string where a number was expected
        raise ConfigError(f"bad option value for net {name!r}: {exc}") from None
