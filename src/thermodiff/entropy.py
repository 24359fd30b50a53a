"""Bounds on the entropy of each reverse step (paper section 2.6, eq. 24), beside the
entropy of the model's kernels.

For any data and any forward process, each step's true reverse conditional entropy
is bracketed by quantities of the forward process alone:

    H_q(X_t|X_{t-1}) + H_q(X_{t-1}|X_0) - H_q(X_t|X_0)  <=  H_q(X_{t-1}|X_t)  <=  H_q(X_t|X_{t-1})

For the Gaussian process the lower end is the entropy of the posterior
q(x_{t-1}|x_t, x_0) (``fixed-small``) and the upper end that of the forward kernel
(``fixed-large``). A learned kernel whose average entropy E_{x_t} H(p(x_{t-1}|x_t))
falls outside the bracket is flagged: the true reverse step cannot be that broad or
that narrow. The same holds for every hop s < t of a respaced or continuous-time grid.
The decoder step (x_1 -> x_0) has no finite lower bound for continuous data and is left out.
"""

from __future__ import annotations

import torch

from .model import DiffusionModel
from .units import LN2

# Entropies within this many nats per dimension of a bound count as on it: the
# fixed-small and fixed-large kernels sit exactly on the bounds, up to rounding.
TOLERANCE = 1e-6


@torch.no_grad()
def entropy_bounds(model: DiffusionModel, y: torch.Tensor, steps: int | None = None, seed: int = 0,
                   batch_size: int = 65_536) -> dict:
    """Per hop of the chain: eq. 24's lower and upper bounds and the model kernel's
    mean entropy over x_t ~ q(x_t | x_0), x_0 from y, in bits per dimension.

    Returns t (time of x_t per hop), lower, upper, model (lists over hops) and flagged
    (the t where the model's entropy lies outside [lower, upper]). All hops are
    evaluated together, batch_size network rows at a time.

    Shapes: y (N, *D) data units (a few hundred examples suffice) -> dict of lists.
    """
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x0 = model.scaler(y).to(dev).to(torch.float64)
    b, d = x0.shape[0], model.n_dims
    grid = model.time_grid(steps).to(dev)
    abar = model.schedule.abar(grid)
    t, abar_s, abar_t = grid[1:], abar[:-1], abar[1:]  # hops s < t, (H,)
    h = len(t)
    forward = model.process.forward
    # Forward entropies do not depend on the conditioning value: evaluate at 0.
    zero = torch.zeros((h,) + model.data_shape, dtype=torch.float64, device=dev)
    one = torch.ones(h, dtype=torch.float64, device=dev)
    upper = forward(zero, abar_s, abar_t).entropy()
    lower = upper + forward(zero, one, abar_s).entropy() - forward(zero, one, abar_t).entropy()
    # The model's kernel at x_t ~ q(x_t | x_0) for every (hop, example): rows hop-major.
    rows = torch.arange(h * b, device=dev)
    hop, ex = rows // b, rows % b
    h_model = torch.empty(h * b, dtype=torch.float64, device=dev)
    for start in range(0, h * b, batch_size):
        sl = slice(start, start + batch_size)
        k, i = hop[sl], ex[sl]
        x_t = forward(x0[i], torch.ones_like(abar_t[k]), abar_t[k]).sample(gen).to(torch.float64)
        h_model[sl] = model.reverse(x_t, t[k], abar_s[k], abar_t[k]).entropy()
    scale = d * LN2
    out = {"t": t.tolist(), "lower": (lower / scale).tolist(), "upper": (upper / scale).tolist(),
           "model": (h_model.reshape(h, b).mean(1) / scale).tolist()}
    tol = TOLERANCE / LN2
    out["flagged"] = [tt for tt, lo, hi, m in zip(out["t"], out["lower"], out["upper"], out["model"])
                      if m < lo - tol or m > hi + tol]
    return out
