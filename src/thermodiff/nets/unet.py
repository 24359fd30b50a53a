"""A time-conditioned U-Net for images (DDPM / improved-DDPM style).

The net keeps the flat contract of every network here: it receives images
flattened to ``(B, C*H*W)``, is told their shape, and returns its output flattened.
Small configurations (base width 8-32, two levels) train on a CPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thermodiff.errors import ConfigError
from thermodiff.nets.options import check_int
from thermodiff.nets.embeddings import SinusoidalEmbedding, add_class, class_embedding

__all__ = ["UNet"]


def _check_int(name: str, value: Any, lo: int) -> int:
    return check_int("UNet", name, value, lo)


def _int_tuple(name: str, value: Any, lo: int) -> tuple[int, ...]:
    # Configs read from TOML hand over lists; code tends to pass tuples.
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"UNet {name} must be a tuple or list of integers, got {value!r}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"UNet {name} must hold integers >= {lo}, got {value!r}")
    return tuple(value)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``.

    Shapes: (B, channels, H, W) -> (B, channels, H, W)
    """
    # Falling back to a divisor lets any base width work (e.g. 12 channels -> 6
    # groups); the up path's concatenations give widths like 3 * base as well.
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


class _ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3 -> norm, time scale-shift -> SiLU -> dropout -> conv3x3, plus skip.

    Shapes: h (B, in_ch, H, W), temb (B, temb_dim) -> (B, out_ch, H, W)
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        # One scale and one shift per channel: time modulates the normalised
        # features, which conditions more strongly than an added bias alone.
        self.time_proj = nn.Linear(temb_dim, 2 * out_ch)
        self.norm2 = _group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1x1 conv only where the width changes; otherwise the identity.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        """Shapes: h (B, in_ch, H, W), temb (B, temb_dim) -> (B, out_ch, H, W)"""
        u = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.time_proj(temb)[:, :, None, None].chunk(2, dim=1)
        # 1 + scale so that a zero projection leaves the normalised features alone.
        u = self.norm2(u) * (1 + scale) + shift
        u = self.conv2(self.dropout(F.silu(u)))
        return self.skip(h) + u


class _Attention(nn.Module):
    """Single-head self-attention over the H*W positions, added to the input.

    Shapes: h (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        """Shapes: h (B, C, H, W) -> (B, C, H, W)"""
        b, c, height, width = h.shape
        qkv = self.qkv(self.norm(h)).reshape(b, 3, c, height * width)
        # (B, C, N) -> (B, N, C): positions are the sequence, channels the features.
        q, k, v = (z.transpose(1, 2) for z in qkv.unbind(dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, N, C), softmax over keys
        out = out.transpose(1, 2).reshape(b, c, height, width)
        return h + self.proj(out)


class _Level(nn.Module):
    """Residual blocks (each optionally followed by attention) and an optional resampling conv.

    Shapes: applied block by block by ``UNet.forward``
    """

    def __init__(self, blocks: list[_ResBlock], attns: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList(attns)
        self.resample = resample


class UNet(nn.Module):
    """U-Net mapping flattened images and times to flattened output images.

    The input ``x`` is reshaped to ``image_shape = (C, H, W)``. Level ``i`` of
    ``channel_mults`` works at ``base_channels * channel_mults[i]`` channels and at
    resolution ``ceil(H / 2^i) x ceil(W / 2^i)`` (stride-2 3x3 convs with padding 1
    downsample, so odd sizes work: 28 -> 14 -> 7 -> 4). Each level has
    ``num_res_blocks`` residual blocks on the way down and one more on the way up,
    where the up path concatenates the matching skip and upsamples (nearest, to the
    skip's exact size, then a 3x3 conv). Self-attention follows every residual
    block of the levels in ``attention_levels`` (0 = full resolution) and, when any
    level has it, the middle block (res -> attention -> res).

    Time ``t`` in [0, 1] enters through a sinusoidal embedding (``t`` stretched by
    1000) and a two-layer MLP of width ``4 * base_channels``; every residual block
    turns it into a per-channel scale and shift. With ``num_classes`` > 0 a class
    embedding (``ClassEmbedding``, with a null class) is added to the time embedding. The output is
    ``out_dim // (H * W)`` channels from a zero-initialised 3x3 conv, so an
    untrained net outputs exactly zero. GroupNorm uses ``min(groups, channels)``
    groups, lowered to a divisor of the channel count when needed.

    The network knows nothing about diffusion and never rescales its input.

    Shapes: x (B, C*H*W), t (B,) -> (B, out_dim), out_dim = out_channels*H*W
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_steps: int,
        image_shape: Sequence[int],
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        time_dim: int = 128,
        groups: int = 8,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        # num_steps is unused: the net is continuous in t. It is accepted so that every
        # per-step and continuous network shares one constructor signature.
        _check_int("in_dim", in_dim, 1)
        _check_int("out_dim", out_dim, 1)
        shape = _int_tuple("image_shape", image_shape, 1)
        if len(shape) != 3:
            raise ConfigError(f"UNet image_shape must be (C, H, W), got {tuple(shape)!r}")
        c, height, width = shape
        if in_dim != c * height * width:
            raise ConfigError(
                f"UNet in_dim {in_dim} does not match image_shape {shape} "
                f"({c * height * width} values)"
            )
        if out_dim % (height * width):
            raise ConfigError(
                f"UNet out_dim {out_dim} is not a multiple of H*W = {height * width} "
                f"for image_shape {shape}"
            )
        _check_int("base_channels", base_channels, 1)
        mults = _int_tuple("channel_mults", channel_mults, 1)
        if not mults:
            raise ConfigError("UNet channel_mults must name at least one level, got ()")
        _check_int("num_res_blocks", num_res_blocks, 1)
        attn = _int_tuple("attention_levels", attention_levels, 0)
        bad = [a for a in attn if a >= len(mults)]
        if bad:
            raise ConfigError(
                f"UNet attention_levels {attn} name levels beyond the last (0..{len(mults) - 1})"
            )
        _check_int("time_dim", time_dim, 1)
        _check_int("groups", groups, 1)
        is_number = isinstance(dropout, (int, float)) and not isinstance(dropout, bool)
        if not is_number or not 0 <= dropout < 1:
            raise ConfigError(f"UNet dropout must be a number in [0, 1), got {dropout!r}")

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.image_shape = shape
        self.out_channels = out_dim // (height * width)
        self.channel_mults = mults
        self.attention_levels = attn

        temb_dim = 4 * base_channels
        self.time_embed = SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, temb_dim),
            nn.SiLU(),
            nn.Linear(temb_dim, temb_dim),
        )
        self.class_embed = class_embedding(num_classes, temb_dim)

        def res(i: int, o: int) -> _ResBlock:
            return _ResBlock(i, o, temb_dim, groups, float(dropout))

        def attention(level: int, ch: int) -> nn.Module:
            return _Attention(ch, groups) if level in attn else nn.Identity()

        ch = base_channels * mults[0]
        self.input_conv = nn.Conv2d(c, ch, 3, padding=1)

        # Down path; record the width of every tensor pushed on the skip stack so
        # the up path knows what each concatenation adds.
        skip_channels = [ch]
        down: list[_Level] = []
        for level, mult in enumerate(mults):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, base_channels * mult))
                ch = base_channels * mult
                attns.append(attention(level, ch))
                skip_channels.append(ch)
            resample = None
            if level < len(mults) - 1:
                resample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                skip_channels.append(ch)
            down.append(_Level(blocks, attns, resample))
        self.down = nn.ModuleList(down)

        self.mid_block1 = res(ch, ch)
        self.mid_attn = _Attention(ch, groups) if attn else nn.Identity()
        self.mid_block2 = res(ch, ch)

        # Up path: one block more per level than on the way down, so that every
        # skip (including the input conv's and each downsample's) is consumed.
        up: list[_Level] = []
        for level in reversed(range(len(mults))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(res(ch + skip_channels.pop(), base_channels * mults[level]))
                ch = base_channels * mults[level]
                attns.append(attention(level, ch))
            resample = nn.Conv2d(ch, ch, 3, padding=1) if level > 0 else None
            up.append(_Level(blocks, attns, resample))
        self.up = nn.ModuleList(up)

        self.out_norm = _group_norm(ch, groups)
        self.out_conv = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        # Zero output at init: a diffusion model then starts from the forward
        # kernel's own prediction instead of from random noise.
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        # Channels-last (NHWC) weights and activations: oneDNN's CPU convolutions run
        # about 1.15x faster in training and 1.5x in inference on them at these
        # widths. Checkpoints store contiguous copies.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels of a conditional net (num_classes > 0; None: the null class).

        Shapes: x (B, C*H*W), t (B,), y (B,) int64 or None -> (B, out_channels*H*W)"""
        b = x.shape[0]
        h = x.reshape((b,) + self.image_shape).contiguous(memory_format=torch.channels_last)
        # SiLU applied once here rather than at the head of every block's projection.
        temb = F.silu(add_class(self.time_mlp(self.time_embed(t)), self.class_embed, y))

        h = self.input_conv(h)
        skips = [h]
        for level in self.down:  # loops over layers, never over examples
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, temb))
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        for level in self.up:
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), temb))
            if level.resample is not None:
                # Upsample to the next skip's exact size: halving rounded up, so
                # doubling overshoots odd sizes (4 -> 8, but the skip is 7).
                h = F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest")
                h = level.resample(h)

        h = self.out_conv(F.silu(self.out_norm(h)))
        return h.reshape(b, -1)

    def extra_repr(self) -> str:
        return (
            f"image_shape={self.image_shape}, out_channels={self.out_channels}, "
            f"channel_mults={self.channel_mults}, attention_levels={self.attention_levels}"
        )
