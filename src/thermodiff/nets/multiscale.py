"""The multi-scale convolutional network of Sohl-Dickstein et al. (2015), App. D.2.

Figure D.1: multi-scale convolution layers (mean-pool to several scales, convolve
at each, upsample, sum, soft-ReLU), then dense layers applied at every pixel (1x1
convolutions with tanh), then a readout of coefficients for a few Gaussian "bump"
functions of time (eqs. 62-63). Time enters only through that readout: the
convolutional trunk sees ``x`` alone, so one pass of the trunk serves every ``t``.

The paper's network also ran a dense (fully connected) branch over the whole
image beside the convolutions; it is left out here, which keeps the net small and
its parameter count independent of the image size.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thermodiff.errors import ConfigError
from thermodiff.nets.embeddings import add_class, class_embedding
from thermodiff.nets.options import check_int

__all__ = ["MultiScaleConvNet", "gaussian_bumps"]

_NAME = "MultiScaleConvNet"
_MAX_AUTO_SCALES = 4
_MIN_AUTO_SIZE = 4  # coarsest pooled side chosen automatically
_MIN_SIZE = 2  # coarsest pooled side allowed at all


def gaussian_bumps(t: Tensor, n_bumps: int) -> Tensor:
    """Normalised Gaussian bumps of time (the paper's temporal basis, eq. 63):
    ``g_j(t) = exp(-(t - tau_j)^2 / (2 w^2)) / sum_k exp(-(t - tau_k)^2 / (2 w^2))``
    with centres ``tau_j`` evenly spaced over [0, 1] and width ``w`` = their spacing.

    Each row sums to one; with a single bump it is the constant 1.

    Shapes: t (B,) -> (B, n_bumps)
    """
    tau = torch.linspace(0.0, 1.0, n_bumps, dtype=t.dtype, device=t.device)
    # Width = spacing, so neighbouring bumps overlap and the sum is smooth in t (the
    # authors' released code used half the spacing). One bump: any width gives g = 1.
    width = 1.0 / max(n_bumps - 1, 1)
    logits = -(t[:, None] - tau[None, :]).square() / (2.0 * width**2)
    # softmax is exactly the normalisation, and stays finite for t far outside [0, 1].
    return torch.softmax(logits, dim=-1)


def _image_shape(value: Any) -> tuple[int, int, int]:
    # Configs read from TOML hand over lists; code tends to pass tuples.
    ok = isinstance(value, (tuple, list)) and len(value) == 3
    if ok:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        raise ConfigError(f"{_NAME} image_shape must be (C, H, W) with integers >= 1, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def _pooled(side: int, factor: int) -> int:
    """Side length after ceil-mode mean pooling by ``factor``.

    Shapes: none (sizes only)
    """
    return -(-side // factor)


class _MultiScaleConv(nn.Module):
    """Mean-pool by 1, 2, 4, ..., convolve at each scale, upsample, sum, softplus.

    Shapes: h (B, in_ch, H, W) -> (B, out_ch, H, W)
    """

    def __init__(self, in_ch: int, out_ch: int, n_scales: int, kernel_size: int):
        super().__init__()
        # Only the full-resolution conv has a bias: after upsampling and summing,
        # per-scale biases would all add the same constant per channel.
        self.convs = nn.ModuleList(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=(s == 0))
            for s in range(n_scales)
        )

    def forward(self, h: Tensor) -> Tensor:
        """Shapes: h (B, in_ch, H, W) -> (B, out_ch, H, W)"""
        height, width = h.shape[-2:]
        out = self.convs[0](h)
        for s, conv in enumerate(self.convs[1:], start=1):
            f = 2**s
            # ceil_mode keeps the last, partial block (its mean over the pixels
            # that exist), so sides not divisible by f lose nothing.
            u = conv(F.avg_pool2d(h, f, ceil_mode=True))
            # Repeating each pooled pixel f times and cropping inverts the ceil-mode
            # blocks exactly, whatever the side length.
            u = F.interpolate(u, scale_factor=f, mode="nearest")[..., :height, :width]
            out = out + u
        return F.softplus(out)


class MultiScaleConvNet(nn.Module):
    """The paper's image network: multi-scale convolutions, per-pixel tanh layers,
    and a readout over Gaussian bumps in time.

    ``x`` is reshaped to ``image_shape = (C, H, W)``. Each of ``conv_layers``
    multi-scale layers mean-pools its input by 1, 2, 4, ... (``n_scales`` scales;
    ceil-mode pooling, so odd sides work), applies a ``kernel_size`` convolution
    ("same" padding) with its own weights at every scale, upsamples each result back
    to H x W (nearest), sums them and applies softplus. ``dense_layers`` 1x1
    convolutions with tanh follow, all ``channels`` wide. By default ``n_scales`` is
    as many as keep the coarsest image at least 4 pixels on its shorter side (at most
    4, at least 1); a given ``n_scales`` must keep it at least 2 pixels.

    The readout, a 1x1 convolution, gives every pixel ``n_bumps`` coefficients
    ``z_j`` per output channel, and the output at time ``t`` is
    ``sum_j z_j g_j(t)`` with the normalised bumps of ``gaussian_bumps``. This is
    the only place ``t`` enters, and it is continuous in ``t`` (no per-step
    table). The output has ``out_dim // (H * W)`` channels (e.g. two per data
    channel for the paper's mean and variance perturbations). The readout is
    initialised to zero, so an untrained net outputs exactly zero: the paper's
    reverse kernel then equals the forward kernel.

    The network knows nothing about diffusion and never rescales its input.

    Shapes: x (B, C*H*W), t (B,) -> (B, out_dim), out_dim = out_channels*H*W
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_steps: int,
        image_shape: Sequence[int],
        channels: int = 32,
        conv_layers: int = 2,
        dense_layers: int = 2,
        n_scales: int | None = None,
        kernel_size: int = 3,
        n_bumps: int = 16,
        num_classes: int = 0,
    ):
        super().__init__()
        # num_steps is unused: the bump readout is continuous in t. It is accepted
        # so that every network shares one constructor signature.
        check_int(_NAME, "in_dim", in_dim)
        check_int(_NAME, "out_dim", out_dim)
        shape = _image_shape(image_shape)
        c, height, width = shape
        if in_dim != c * height * width:
            raise ConfigError(
                f"{_NAME} in_dim {in_dim} does not match image_shape {shape} "
                f"({c * height * width} values)"
            )
        if out_dim % (height * width):
            raise ConfigError(
                f"{_NAME} out_dim {out_dim} is not a multiple of H*W = {height * width} "
                f"for image_shape {shape}"
            )
        check_int(_NAME, "channels", channels)
        check_int(_NAME, "conv_layers", conv_layers)
        check_int(_NAME, "dense_layers", dense_layers, 0)
        check_int(_NAME, "kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ConfigError(f"{_NAME} kernel_size must be odd (for 'same' padding), got {kernel_size}")
        check_int(_NAME, "n_bumps", n_bumps)
        side = min(height, width)
        if n_scales is None:
            n_scales = 1
            while n_scales < _MAX_AUTO_SCALES and _pooled(side, 2**n_scales) >= _MIN_AUTO_SIZE:
                n_scales += 1
        else:
            check_int(_NAME, "n_scales", n_scales)
            coarsest = _pooled(side, 2 ** (n_scales - 1))
            if n_scales > 1 and coarsest < _MIN_SIZE:
                raise ConfigError(
                    f"{_NAME} n_scales {n_scales} pools image_shape {shape} down to a "
                    f"{coarsest}-pixel side; choose fewer scales (the coarsest side needs >= {_MIN_SIZE})"
                )

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.image_shape = shape
        self.out_channels = out_dim // (height * width)
        self.n_scales = n_scales
        self.n_bumps = n_bumps

        widths = [c] + [channels] * conv_layers
        self.conv = nn.Sequential(
            *(_MultiScaleConv(i, o, n_scales, kernel_size) for i, o in zip(widths, widths[1:]))
        )
        dense: list[nn.Module] = []
        for _ in range(dense_layers):
            dense += [nn.Conv2d(channels, channels, 1), nn.Tanh()]
        self.dense = nn.Sequential(*dense)
        # No time embedding here (the readout is a sum of bumps in time): a class shifts
        # every pixel's features, a vector per class, before the dense layers.
        self.class_embed = class_embedding(num_classes, channels)
        self.readout = nn.Conv2d(channels, self.out_channels * n_bumps, 1)
        # Zero output at init: the paper's reverse kernel starts as the forward one.
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def coefficients(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The per-pixel bump coefficients ``z_j`` (independent of time).

        Shapes: x (B, C*H*W), y (B,) int64 or None -> (B, out_channels, n_bumps, H, W)
        """
        b = x.shape[0]
        h = self.dense(add_class(self.conv(x.reshape((b,) + self.image_shape)), self.class_embed, y))
        z = self.readout(h)
        return z.reshape(b, self.out_channels, self.n_bumps, *self.image_shape[1:])

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels of a conditional net (num_classes > 0; None: the null class).

        Shapes: x (B, C*H*W), t (B,), y (B,) int64 or None -> (B, out_channels*H*W)"""
        z = self.coefficients(x, y)
        g = gaussian_bumps(t.to(z.dtype), self.n_bumps)
        return torch.einsum("bojhw,bj->bohw", z, g).reshape(x.shape[0], -1)

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, out_channels={self.out_channels}, "
            f"n_scales={self.n_scales}, n_bumps={self.n_bumps}"
        )
