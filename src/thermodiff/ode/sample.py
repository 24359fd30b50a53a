"""Samples by the probability-flow ODE: x_T from the prior, then a fixed-step solver
(``solvers``) to the data. Deterministic given x_T: the randomness is the prior draw.
"""

from __future__ import annotations

import torch

from ..model import DiffusionModel
from .flow import Flow
from .solvers import solve_fixed


@torch.no_grad()
def sample_ode(model: DiffusionModel, n: int, generator: torch.Generator, solver: str = "dpm++", steps: int = 20,
               grid: str | None = None, chunk: int | None = None, progress: bool = False,
               flow: Flow | None = None) -> torch.Tensor:
    """n samples in the model's (scaled) units by ``solver`` over ``steps`` grid times
    (``solvers.nfe`` network calls each). chunk: at most this many at a time (as the
    ancestral sampler's). flow: the ODE to solve (a guided prediction's), by default
    the model's own.

    Shapes: returns (n, *D) float32.
    """
    flow = flow or Flow(model)
    size = chunk or n
    starts = range(0, n, size)
    if progress:
        from tqdm import tqdm  # progress bars are optional: imported where shown

        starts = tqdm(starts, desc=f"sample ({solver}, {steps} steps)", unit="chunk", leave=False)
    out = []
    for start in starts:
        m = min(size, n - start)
        x_T = model.process.prior((m,) + model.data_shape, flow.device).sample(generator).to(torch.float64)
        out.append(solve_fixed(flow, flow.to_y(x_T), solver, steps, grid).to(torch.float32))
    return torch.cat(out)
