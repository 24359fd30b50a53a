"""Shape helpers shared by the process, kernel and bound code: one value per example
broadcast against data of any number of dimensions, and sums over those dimensions."""

from __future__ import annotations

import torch


def expand_as(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector to broadcast against x, in x's dtype.

    Shapes: v (B,) or (B, *D), x (B, *D) -> (B, 1, ..., 1) or (B, *D).
    """
    v = v.to(x.dtype)
    if v.dim() == x.dim():
        return v
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def sum_dims(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first.

    Shapes: x (B, *D) -> (B,).
    """
    return x.reshape(x.shape[0], -1).sum(-1)


def num_dims(x: torch.Tensor) -> int:
    """Number of data dimensions per example. Shapes: x (B, *D) -> int."""
    return x[0].numel()
