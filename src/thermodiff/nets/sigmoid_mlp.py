"""The sigmoid MLP of Sohl-Dickstein et al. (2015) for binary sequences.

For the binary heartbeat data the reverse kernel's network is a multilayer
perceptron of sigmoid units shared across all time steps, with a separate linear
readout for each step. It returns logits; turning them into Bernoulli rates is the caller's job.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from thermodiff.nets.options import check_int
from thermodiff.nets.embeddings import add_class, class_embedding, per_step_readout

__all__ = ["SigmoidMLP"]


class SigmoidMLP(nn.Module):
    """``depth`` hidden layers of ``hidden`` sigmoid units, one linear readout per step.

    The hidden layers see only ``x``; time enters solely through the choice of
    readout: step ``i = round(t * T)`` (clamped to 1..T) uses ``h @ W[i] + b[i]``.
    Readouts start at zero, so an untrained model outputs logit 0 everywhere.

    Shapes: x (B, in_dim), t (B,) -> (B, out_dim) logits
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_steps: int,
        hidden: int = 50,
        depth: int = 3,
        num_classes: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("num_steps", num_steps),
            ("hidden", hidden),
            ("depth", depth),
        ):
            check_int("SigmoidMLP", name, value)

        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_steps = num_steps
        self.hidden = hidden
        self.depth = depth

        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            linear = nn.Linear(width, hidden)
            # Glorot init was derived for saturating units like the sigmoid: it keeps
            # pre-activations in the sigmoid's near-linear range at every depth.
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.Sigmoid()]
            width = hidden
        self.hidden_layers = nn.Sequential(*layers)
        # No time embedding here (the readout is per step): a class shifts the features
        # the per-step readout reads, so its effect is learned step by step.
        self.class_embed = class_embedding(num_classes, hidden)

        # Storage row s holds step s + 1 (steps are 1..T). Zero readouts give
        # logit 0, which the caller reads as "no change from the reference kernel".
        self.readout_weight = nn.Parameter(torch.zeros(num_steps, hidden, out_dim))
        self.readout_bias = nn.Parameter(torch.zeros(num_steps, out_dim))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """y: class labels of a conditional net (num_classes > 0; None: the null class).

        Shapes: x (B, in_dim), t (B,), y (B,) int64 or None -> (B, out_dim) logits"""
        h = add_class(self.hidden_layers(x), self.class_embed, y)
        return per_step_readout(h, t, self.readout_weight, self.readout_bias)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, num_steps={self.num_steps}, "
            f"hidden={self.hidden}, depth={self.depth}"
        )
