"""The exact log-likelihood of the deterministic model: the probability-flow ODE read as
a continuous normalising flow (Chen et al. 2018; Song et al. 2021, App. D.2).

Along a solution y(s) of dy/ds = v(y, s) the density changes as
d log p_s(y(s)) / ds = -div v, so, from the data at s = 0 to the last latent,

    log p(x_0) = log p_T(y_T) + int_0^{s_T} div_y v(y(s), s) ds,
    log p_T(y_T) = log pi(alpha_T y_T) + D log alpha_T   (pi = N(0, I) on x_T = alpha_T y_T).

The divergence is exact for small data (one vector-Jacobian product per dimension, at
most ``EXACT_MAX_DIMS``), or Hutchinson's estimate E_v[v^T J v] = tr J with Rademacher
probes v, each probe held fixed along the solve (Grathwohl et al. 2018), which keeps
the estimate of the integral unbiased. The integrals ride along with y in the adaptive
solver's float64 state.

This is the likelihood of a different model from the stochastic chain's: K and the
importance-weighted estimate bound the chain's log-likelihood from below; this is the
ODE model's log-likelihood itself, up to the solver's error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import distributed
from ..errors import ConfigError
from ..model import DiffusionModel
from ..processes.gaussian import log_prior
from .flow import Flow
from .solvers import ATOL, RTOL, solve_adaptive

EXACT_MAX_DIMS = 16  # up to this many dimensions the divergence is exact: D products per call
DEFAULT_PROBES = 2  # Hutchinson probes per example above it: two give a spread over probes


def divergence(fun, y: torch.Tensor, probes: torch.Tensor | None):
    """fun(y) and its divergence sum_d d fun_d / d y_d, exactly (probes None) or by
    Hutchinson's estimate, one per probe: v^T (d fun / d y) v.

    Shapes: y (B, *D); probes (P, B, *D) or None -> fun (B, *D), div (B,) or (B, P).
    """
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        out = fun(y)
        if probes is None:
            flat = out.reshape(out.shape[0], -1)
            div = torch.zeros(out.shape[0], dtype=torch.float64, device=y.device)
            for d in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, d].sum(), y, retain_graph=True)
                div = div + g.reshape(g.shape[0], -1)[:, d].to(torch.float64)
        else:
            cols = []
            for v in probes:
                (g,) = torch.autograd.grad((out * v).sum(), y, retain_graph=True)
                cols.append((g * v).reshape(g.shape[0], -1).sum(-1).to(torch.float64))
            div = torch.stack(cols, -1)
    return out.detach(), div.detach()


def rademacher(shape, generator: torch.Generator) -> torch.Tensor:
    """Independent +-1 entries. Shapes: shape -> float64 tensor of that shape."""
    return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1


@dataclass(frozen=True)
class OdeLikelihood:
    """log p(x_0) of the ODE model per example on scaled data (nats), its spread over
    Hutchinson probes (None for the exact divergence), and the latents.

    Shapes: log_p (N,), probe_var (N,) variance of the per-example mean over probes,
    z (N, *D); nfe: mean network calls per example.
    """

    log_p: torch.Tensor
    probe_var: torch.Tensor | None
    z: torch.Tensor
    nfe: float
    probes: int  # 0: exact divergence


def log_likelihood(model: DiffusionModel, y: torch.Tensor, rtol: float = RTOL, atol: float = ATOL,
                   probes: int | None = None, seed: int = 0, batch_size: int = 256,
                   progress: bool = False) -> OdeLikelihood:
    """The ODE model's log p per example of data y (the data's own units), nats on the
    model's scaled data (add ``model.scaler.log_det`` for the data's units).

    probes: Hutchinson probes per example (None: exact divergence up to EXACT_MAX_DIMS
    dimensions, else DEFAULT_PROBES; 0: exact at any size).

    Shapes: y (N, *D) -> OdeLikelihood with (N,) fields.
    """
    model.check_data(y, "held-out data")
    d = model.n_dims
    if probes is None:
        probes = 0 if d <= EXACT_MAX_DIMS else DEFAULT_PROBES
    if probes < 0:
        raise ConfigError(f"Hutchinson probes must be at least 1 (0: the exact divergence), got {probes}")
    flow = Flow(model)
    dev = flow.device
    n_cols = max(probes, 1)
    starts = list(range(0, y.shape[0], batch_size))
    bar = None
    if progress:
        from tqdm import tqdm  # progress bars are optional: imported where shown

        bar = tqdm(total=distributed.own_chunks(len(starts)), desc="ODE likelihood", unit="batch", leave=False)

    def chunk(k: int):
        # Batch k draws its probes from stream k of the seed, whichever rank solves it.
        x0 = model.scaler(y[starts[k]: starts[k] + batch_size]).to(dev).to(torch.float64)
        b = x0.shape[0]
        v = rademacher((probes, b) + model.data_shape, distributed.stream(seed, k)).to(dev) if probes else None

        def rate(state, t, s):
            yy = state[:, :d].reshape((b,) + model.data_shape)
            eps, div = divergence(lambda u: flow.predict(u, t)[1], yy, v)
            return torch.cat([eps.reshape(b, d), div.reshape(b, n_cols)], 1)

        state = torch.cat([x0.reshape(b, d), torch.zeros(b, n_cols, dtype=torch.float64, device=dev)], 1)
        state, n = solve_adaptive(flow, state, rate, to_noise=True, rtol=rtol, atol=atol)
        y_T = state[:, :d].reshape((b,) + model.data_shape)
        alpha_T = 1.0 / math.sqrt(1.0 + flow.s_last**2)
        log_p_T = log_prior(alpha_T * y_T) + d * math.log(alpha_T)
        integral = state[:, d:]  # (b, n_cols): the divergence integral per probe
        if bar is not None:
            bar.update(1)
        return ((log_p_T[:, None] + integral).mean(1).cpu(),
                (integral.var(1) / probes).cpu() if probes > 1 else None,
                (alpha_T * y_T).cpu(), n * b)

    parts = distributed.map_chunks(chunk, len(starts))
    if bar is not None:
        bar.close()
    logs, spreads, latents, calls = zip(*parts)
    probe_var = torch.cat(spreads) if probes > 1 else None
    return OdeLikelihood(torch.cat(logs), probe_var, torch.cat(latents), float(sum(calls)) / y.shape[0], probes)
