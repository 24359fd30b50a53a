"""The normalised radial-basis-function network of Sohl-Dickstein et al. (2015).

App. D.1.1 (Swiss roll): a single hidden layer of 16 normalised RBF units shared
across all time steps; only the readout layer is learned separately per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from thermodiff.errors import ConfigError
from thermodiff.nets.options import check_int
from thermodiff.nets.embeddings import add_class, class_embedding, per_step_readout

__all__ = ["RBFNet"]


class RBFNet(nn.Module):
    """Normalised RBF hidden layer with one linear readout per time step.

    Hidden units: ``h_k(x) = softmax_k(-||x - c_k||^2 / (2 w_k^2))`` with learnable
    centres ``c_k`` (initialised from a standard normal, matching unit-variance
    data) and widths ``w_k = exp(log_width_k)``. The readout for step
    ``i = round(t * T)`` (clamped to 1..T) is ``h @ W[i] + b[i]``; readouts start at
    zero, so an untrained model outputs zero.

    Shapes: x (B, in_dim), t (B,) -> (B, out_dim)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_steps: int,
        hidden: int = 16,
        init_width: float = 1.0,
        num_classes: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("num_steps", num_steps),
            ("hidden", hidden),
        ):
            check_int("RBFNet", name, value)
        if not init_width > 0:
            raise ConfigError(f"RBFNet init_width must be > 0, got {init_width!r}")

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_steps = num_steps
        self.hidden = hidden
        self.centres = nn.Parameter(torch.randn(hidden, in_dim))
        # Log-parametrised so widths stay positive under unconstrained updates.
        self.log_widths = nn.Parameter(torch.full((hidden,), math.log(init_width)))
        # No time embedding here (the readout is per step): a class shifts the features
        # the per-step readout reads, so its effect is learned step by step.
        self.class_embed = class_embedding(num_classes, hidden)
        # Storage row s holds step s + 1 (steps are 1..T).
        self.readout_weight = nn.Parameter(torch.zeros(num_steps, hidden, out_dim))
        self.readout_bias = nn.Parameter(torch.zeros(num_steps, out_dim))

    def hidden_activations(self, x: Tensor) -> Tensor:
        """Normalised RBF activations; each row sums to one.

        Shapes: x (B, in_dim) -> (B, hidden)
        """
        # Explicit differences rather than the ||x||^2 - 2x.c + ||c||^2 expansion,
        # which can go slightly negative through cancellation; (B, H, D) is small.
        sq_dist = (x[:, None, :] - self.centres[None, :, :]).square().sum(-1)
        logits = -sq_dist * (0.5 * torch.exp(-2.0 * self.log_widths))
        # softmax is the normalisation, and it stays finite even when x is far
        # from every centre (all raw Gaussians would underflow to zero).
        return torch.softmax(logits, dim=-1)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels of a conditional net (num_classes > 0; None: the null class).

        Shapes: x (B, in_dim), t (B,), y (B,) int64 or None -> (B, out_dim)"""
        h = add_class(self.hidden_activations(x), self.class_embed, y)
        return per_step_readout(h, t, self.readout_weight, self.readout_bias)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, "
            f"num_steps={self.num_steps}, hidden={self.hidden}"
        )
