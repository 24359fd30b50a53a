"""The variance gradient of a learned continuous schedule's interior, in the one backward.

In continuous time the bound depends on the schedule only through its endpoints
gamma_min and gamma_max, so VDM trains the interior (the shape network of
``schedules.ContinuousSchedule``) to minimise the variance of the loss estimate instead:

    d/dtheta E[L^2] / 2 = E[L dL/dtheta],

the gradient of the mean loss with each example's contribution to the shape network's
gradient multiplied by that example's own loss. A training forward runs under
``weighted_by_loss()``; there the schedule routes the shape network's part of gamma(t_b)
and gamma'(t_b) through ``weigh``, and the forward stores the loss, once known, in the
``LossWeights`` the context returned. The backward of ``loss.mean()`` reads it: one
``.backward()`` trains everything, endpoints and network on the mean loss and the
interior on the variance, with no separate ``torch.autograd.grad`` (which a
DistributedDataParallel wrapper could not see). The prior and reconstruction terms read
gamma(1) and gamma(0) unweighted: the interior's gradient there is zero by construction
(shape(0) = 0 and shape(1) = 1 for any network), so only rounding passes through them.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch


class LossWeights:
    """Per-example weights of the shape network's gradient: the loss, set after the
    forward and read in the backward. Shapes: value (B,) or None until set."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def set(self, loss: torch.Tensor) -> None:
        """Shapes: loss (B,), the per-example loss of the forward."""
        self.value = loss.detach()


_ACTIVE: ContextVar[LossWeights | None] = ContextVar("thermodiff_loss_weights", default=None)


@contextmanager
def weighted_by_loss():
    """A training forward whose learned schedule takes the variance gradient: yields the
    ``LossWeights`` to set with the per-example loss before the backward."""
    weights = LossWeights()
    token = _ACTIVE.set(weights)
    try:
        yield weights
    finally:
        _ACTIVE.reset(token)


def active_weights() -> LossWeights | None:
    """The weights of the enclosing ``weighted_by_loss()``, or None outside one."""
    return _ACTIVE.get()


class _Weigh(torch.autograd.Function):
    """Forward: a copy of `value`. Backward: the gradient to `value`, and the gradient
    times the per-example weights to `shape_path` (a graph of the same values that
    reaches only the shape network's parameters)."""

    @staticmethod
    def forward(ctx, value, shape_path, weights):
        ctx.weights = weights
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        w = ctx.weights.value
        if w is None:
            raise RuntimeError("the per-example loss was not stored (LossWeights.set) before the backward pass")
        if w.shape != grad.shape:
            raise RuntimeError(f"loss weights of shape {tuple(w.shape)} for a gradient of shape {tuple(grad.shape)}")
        return grad, grad * w.to(grad.dtype), None


def weigh(value: torch.Tensor, shape_path: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """`value`, with its gradient multiplied per example by `weights` on the way into
    `shape_path` and passed unchanged into `value`'s own graph.

    Shapes: value, shape_path (B,) -> (B,), equal to value.
    """
    return _Weigh.apply(value, shape_path, weights)
