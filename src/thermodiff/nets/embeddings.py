"""Embeddings of diffusion time and of low-dimensional inputs.

Nothing here knows about diffusion schedules: time is a plain scalar in [0, 1] and
``x`` is whatever the caller feeds the network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from thermodiff.errors import ConfigError

__all__ = ["SinusoidalEmbedding", "FourierFeatures", "ClassEmbedding", "time_to_index"]


def time_to_index(t: Tensor, num_steps: int) -> Tensor:
    """Map time ``t`` in [0, 1] to a discrete step index ``i = round(t * T)`` in 1..T.

    Step ``i`` of ``T`` is fed to a network as ``t = i / T``; this inverts that
    exactly. ``t = 0`` (and anything below ``1 / (2T)``) is clamped to step 1.

    Shapes: t (B,) -> (B,) int64
    """
    # float64 so that t * T cannot land a rounding error on the .5 boundary even
    # when t arrived as float32 i / T (its error is ~i * 2^-24, far below 0.5).
    idx = torch.round(t.to(torch.float64) * num_steps).to(torch.long)
    return idx.clamp(1, num_steps)


def per_step_readout(h: Tensor, t: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A separate linear readout for each discrete step (the paper's temporal readout):
    example b uses weight[i_b - 1], bias[i_b - 1] with i_b = time_to_index(t_b, T).

    One gather and one batched matrix product for the whole batch, no loop over steps.

    Shapes: h (B, H), t (B,), weight (T, H, O), bias (T, O) -> (B, O)
    """
    rows = time_to_index(t, weight.shape[0]) - 1
    return torch.bmm(h[:, None, :], weight[rows])[:, 0, :] + bias[rows]


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of a scalar per example.

    The scalar is multiplied by ``scale`` first: time lives in [0, 1], and without
    the stretch every frequency below 1 would see almost the same phase for all t.

    Shapes: t (B,) -> (B, dim)
    """

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1000.0):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"sinusoidal embedding dim must be >= 1, got {dim}")
        if max_period <= 1:
            raise ConfigError(f"max_period must be > 1, got {max_period}")
        self.dim = int(dim)
        self.max_period = float(max_period)
        self.scale = float(scale)

    def forward(self, t: Tensor) -> Tensor:
        """Shapes: t (B,) -> (B, dim)"""
        half = self.dim // 2
        # Frequencies are built in t's dtype on every call (cheap) rather than kept
        # in a float32 buffer, so a float64 model gets float64-accurate phases.
        k = torch.arange(half, dtype=t.dtype, device=t.device)
        freqs = torch.exp(-math.log(self.max_period) * k / max(half, 1))
        args = (t * self.scale)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if self.dim % 2:
            # Odd dims get a zero column so the output width is exactly `dim`.
            emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}, scale={self.scale}"


class FourierFeatures(nn.Module):
    """Per-coordinate Fourier features, concatenated with the input (VDM-style).

    For every coordinate ``x_d`` and every exponent ``k`` in
    ``min_exponent .. min_exponent + n_frequencies - 1`` this emits
    ``sin(2^k * pi * x_d)`` and ``cos(2^k * pi * x_d)``. High frequencies let a
    plain MLP resolve structure much finer than the data's unit scale (e.g. a thin
    manifold of width ~0.03 needs 2^k * pi of order 1 / 0.03, i.e. k ~ 3..5).

    Output layout: ``[x, sin features, cos features]`` with the feature blocks
    ordered (coordinate, frequency).

    Shapes: x (B, in_dim) -> (B, in_dim * (1 + 2 * n_frequencies))
    """

    def __init__(self, in_dim: int, n_frequencies: int, min_exponent: int = 0):
        super().__init__()
        if in_dim < 1:
            raise ConfigError(f"FourierFeatures in_dim must be >= 1, got {in_dim}")
        if n_frequencies < 0:
            raise ConfigError(f"n_frequencies must be >= 0, got {n_frequencies}")
        self.in_dim = int(in_dim)
        self.n_frequencies = int(n_frequencies)
        self.min_exponent = int(min_exponent)

    @property
    def max_exponent(self) -> int:
        """Largest exponent used (inclusive); ``min_exponent - 1`` when there are none."""
        return self.min_exponent + self.n_frequencies - 1

    @property
    def out_dim(self) -> int:
        """Width of the output: the input plus a sin and a cos per coordinate and frequency."""
        return self.in_dim * (1 + 2 * self.n_frequencies)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x (B, in_dim) -> (B, in_dim * (1 + 2 * n_frequencies))"""
        if self.n_frequencies == 0:
            return x
        exps = torch.arange(
            self.min_exponent, self.max_exponent + 1, dtype=x.dtype, device=x.device
        )
        freqs = torch.exp2(exps) * math.pi
        # (B, D, K) -> (B, D*K), coordinate-major.
        args = (x[:, :, None] * freqs[None, None, :]).flatten(1)
        return torch.cat([x, torch.sin(args), torch.cos(args)], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, n_frequencies={self.n_frequencies}, "
            f"exponents={self.min_exponent}..{self.max_exponent}"
        )


class ClassEmbedding(nn.Module):
    """A learned vector per class, and one more for the null class (index
    ``num_classes``, "no label"), added to a network's time embedding (classifier-free
    guidance: one network learns p(x | y) and, through the null class, p(x)).

    Zero-initialised, so an untrained conditional network is exactly the unconditional
    one; the table still gets its full gradient (the sum it is added to). y = None
    means the null class for every row.

    Shapes: y (B,) int64 in 0..num_classes, or None; like (B, dim) -> (B, dim) in
    like's dtype.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"ClassEmbedding: num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, y: Tensor | None, like: Tensor) -> Tensor:
        """Shapes: y (B,) or None, like (B, dim) -> (B, dim)"""
        if y is None:
            y = torch.full((like.shape[0],), self.num_classes, dtype=torch.long, device=like.device)
        return self.table(y.to(device=like.device, dtype=torch.long)).to(like.dtype)  # (B, dim)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+ null)"


def class_embedding(num_classes: int, dim: int) -> ClassEmbedding | None:
    """The class embedding of a network with ``num_classes`` classes; None for an
    unconditional one (num_classes = 0). Shapes: none."""
    if num_classes == 0:
        return None
    return ClassEmbedding(num_classes, dim)


def add_class(h: Tensor, embed: ClassEmbedding | None, y: Tensor | None) -> Tensor:
    """h plus the class embedding of y (a conditional network), or h itself (an
    unconditional one, which refuses labels).

    Shapes: h (B, dim, *S) (a feature map: the same vector at every position), y (B,)
    or None -> h's shape.
    """
    if embed is None:
        if y is not None:
            raise ConfigError("this network was built without classes (model.num_classes = 0): it takes no labels")
        return h
    e = embed(y, h)
    return h + e.reshape(e.shape + (1,) * (h.dim() - 2))
