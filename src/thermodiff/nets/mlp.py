"""A time-conditioned residual MLP for vector data of any dimension."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from thermodiff.errors import ConfigError
from thermodiff.nets.options import check_int
from thermodiff.nets.embeddings import FourierFeatures, SinusoidalEmbedding, add_class, class_embedding

__all__ = ["ResidualMLP", "ACTIVATIONS", "make_activation"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see ``ACTIVATIONS``).

    Shapes: elementwise, (*) -> (*)
    """
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ConfigError(f"unknown activation {name!r} (known: {known})") from None


class _ResidualBlock(nn.Module):
    """norm -> act -> linear -> + time projection -> act -> dropout -> linear, added
    to the stream.

    Shapes: h (B, width), temb (B, width) -> (B, width)
    """

    def __init__(self, width: int, activation: str, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.act1 = make_activation(activation)
        self.lin1 = nn.Linear(width, width)
        # Each block gets its own view of time, so depth can use t differently.
        self.time_proj = nn.Linear(width, width)
        self.act2 = make_activation(activation)
        # Dropout inside the residual branch only: the identity path carries the input
        # through untouched, so a block with dropout still starts out as the identity.
        self.dropout = nn.Dropout(dropout)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        """Shapes: h (B, width), temb (B, width) -> (B, width)"""
        u = self.lin1(self.act1(self.norm(h)))
        u = u + self.time_proj(temb)
        return h + self.lin2(self.dropout(self.act2(u)))


class ResidualMLP(nn.Module):
    """Residual MLP mapping ``(x, t)`` to an output vector.

    ``x`` is optionally expanded with ``FourierFeatures`` and projected to ``width``;
    ``depth`` residual blocks each add a learned projection of a shared time
    embedding (sinusoidal of ``t`` through a small MLP), with ``dropout`` inside each
    residual branch (a regulariser for small data sets); a final
    norm -> act -> linear reads out ``out_dim`` values. With
    ``zero_init_output`` the readout starts at zero, so an untrained model outputs
    exactly zero for every input.

    The network knows nothing about diffusion: ``t`` is just a scalar in [0, 1].

    Shapes: x (B, in_dim), t (B,) -> (B, out_dim)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 256,
        depth: int = 4,
        time_dim: int = 64,
        fourier_frequencies: int = 0,
        fourier_min_exponent: int = 0,
        activation: str = "silu",
        zero_init_output: bool = True,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        for name, value, lo in (
            ("in_dim", in_dim, 1),
            ("out_dim", out_dim, 1),
            ("width", width, 1),
            ("depth", depth, 0),
            ("time_dim", time_dim, 1),
            ("fourier_frequencies", fourier_frequencies, 0),
        ):
            check_int("ResidualMLP", name, value, lo)
        make_activation(activation)  # validate the name before building anything
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"ResidualMLP: dropout must be in [0, 1), got {dropout!r}")

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.fourier = FourierFeatures(in_dim, fourier_frequencies, fourier_min_exponent)
        self.input_proj = nn.Linear(self.fourier.out_dim, width)

        self.time_embed = SinusoidalEmbedding(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, width),
            make_activation(activation),
            nn.Linear(width, width),
            make_activation(activation),
        )
        self.class_embed = class_embedding(num_classes, width)  # added to the time embedding
        self.blocks = nn.ModuleList(_ResidualBlock(width, activation, dropout) for _ in range(depth))

        self.out_norm = nn.LayerNorm(width)
        self.out_act = make_activation(activation)
        self.out_proj = nn.Linear(width, out_dim)
        if zero_init_output:
            # Zero output at init: a diffusion model then starts from the forward
            # kernel's own prediction instead of from random noise.
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels of a conditional net (num_classes > 0; None: the null class).

        Shapes: x (B, in_dim), t (B,), y (B,) int64 or None -> (B, out_dim)"""
        temb = add_class(self.time_mlp(self.time_embed(t)), self.class_embed, y)
        h = self.input_proj(self.fourier(x))
        for block in self.blocks:  # loop over layers, not examples
            h = block(h, temb)
        return self.out_proj(self.out_act(self.out_norm(h)))
