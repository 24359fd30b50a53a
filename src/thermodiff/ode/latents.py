"""One latent per example: the probability-flow ODE as an invertible map between the
data and the model's last latent x_T (``flow``), and paths between examples through
their latents.

``encode`` carries data (the data's own units) to x_T, the prior's units (about
N(0, I) where abar_T is small); ``decode`` carries latents back. Both solve the ODE
with the adaptive solver (``solvers.solve_adaptive``, tolerances rtol, atol) or, given
``steps``, with a fixed-step solver over the same grid either way. The round trip
decode(encode(y)) = y holds to the solver's tolerance.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError
from ..model import DiffusionModel, count_calls
from .flow import Flow
from .solvers import ATOL, RTOL, SOLVERS, solve_adaptive, solve_fixed

ENCODE_BATCH = 256  # examples solved together: one step size for the batch


def _eps_rate(flow: Flow):
    def rate(y, t, s):
        return flow.predict(y, t)[1]

    return rate


def _batches(n: int, batch_size: int, progress: bool, what: str):
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm  # progress bars are optional: imported where shown

        starts = tqdm(starts, desc=what, unit="batch", leave=False)
    return starts


def _check_solver(solver: str, steps: int | None) -> None:
    if solver != "adaptive" and solver not in SOLVERS:
        raise ConfigError(f"unknown ODE solver {solver!r}; choose adaptive or one of {', '.join(SOLVERS)}")
    if solver != "adaptive" and steps is None:
        raise ConfigError(f"the {solver} solver needs steps")


@torch.no_grad()
def encode(model: DiffusionModel, y: torch.Tensor, rtol: float = RTOL, atol: float = ATOL, solver: str = "adaptive",
           steps: int | None = None, grid: str | None = None, batch_size: int = ENCODE_BATCH,
           progress: bool = False) -> tuple[torch.Tensor, float]:
    """The latent x_T of each example: the ODE from the data (t = 0) to t = 1.

    Returns the latents and the mean network calls per example.

    Shapes: y (N, *D) data units -> z (N, *D) float64 (the prior's units), float.
    """
    model.check_data(y, "data to encode")
    _check_solver(solver, steps)
    flow = Flow(model)
    dev = flow.device
    out, calls = [], 0.0
    for start in _batches(y.shape[0], batch_size, progress, "encode"):
        x0 = model.scaler(y[start: start + batch_size]).to(dev).to(torch.float64)
        if solver == "adaptive":
            y_T, n = solve_adaptive(flow, x0, _eps_rate(flow), to_noise=True, rtol=rtol, atol=atol)
        else:
            with count_calls(model) as count:
                y_T = solve_fixed(flow, x0, solver, steps, grid, to_noise=True)
            n = count.calls
        out.append(flow.to_x(y_T).cpu())
        calls += n * x0.shape[0]
    return torch.cat(out), calls / y.shape[0]


@torch.no_grad()
def decode(model: DiffusionModel, z: torch.Tensor, rtol: float = RTOL, atol: float = ATOL, solver: str = "adaptive",
           steps: int | None = None, grid: str | None = None, batch_size: int = ENCODE_BATCH,
           progress: bool = False, flow: Flow | None = None) -> tuple[torch.Tensor, float]:
    """The data of each latent x_T: the ODE from t = 1 to the data. flow: the ODE to
    solve (a guided prediction's), by default the model's own.

    Shapes: z (N, *D) the prior's units -> y (N, *D) float64 data units, float.
    """
    if tuple(z.shape[1:]) != model.data_shape:
        raise DataError(f"latents of shape {tuple(z.shape[1:])}; the model's examples have shape {model.data_shape}")
    if not bool(torch.isfinite(z).all()):
        raise DataError("the latents hold NaN or inf")
    _check_solver(solver, steps)
    flow = flow or Flow(model)
    dev = flow.device
    out, calls = [], 0.0
    for start in _batches(z.shape[0], batch_size, progress, "decode"):
        y_T = flow.to_y(z[start: start + batch_size].to(dev).to(torch.float64))
        if solver == "adaptive":
            x0, n = solve_adaptive(flow, y_T, _eps_rate(flow), to_noise=False, rtol=rtol, atol=atol)
        else:
            with count_calls(model) as count:
                x0 = solve_fixed(flow, y_T, solver, steps, grid)
            n = count.calls
        out.append(model.scaler.inverse(x0.cpu()))
        calls += n * y_T.shape[0]
    return torch.cat(out), calls / z.shape[0]


def slerp(z0: torch.Tensor, z1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between Gaussian latents (Shoemake 1985; White 2016 for
    generative models): the path keeps the norm that a N(0, I) latent has, where the
    straight line would pass through improbably short latents. Parallel latents fall
    back to the straight line.

    Shapes: z0, z1 (P, *D), w (k,) in [0, 1] -> (P, k, *D).
    """
    a, b = z0.reshape(z0.shape[0], -1).to(torch.float64), z1.reshape(z1.shape[0], -1).to(torch.float64)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]  # (P, 1)
    w = w.to(torch.float64)[None, :]  # (1, k)
    sin = torch.sin(theta)
    small = sin < 1e-8
    c0 = torch.where(small, 1 - w, torch.sin((1 - w) * theta) / torch.where(small, 1.0, sin))
    c1 = torch.where(small, w, torch.sin(w * theta) / torch.where(small, 1.0, sin))
    path = c0[..., None] * a[:, None] + c1[..., None] * b[:, None]  # (P, k, D)
    return path.reshape((z0.shape[0], w.shape[1]) + tuple(z0.shape[1:]))


def interpolate(model: DiffusionModel, y: torch.Tensor, pairs: list[tuple[int, int]], k: int, rtol: float = RTOL,
                atol: float = ATOL, progress: bool = False) -> dict:
    """Paths between pairs of examples through their latents: encode both ends, slerp
    k latents between them (ends included), decode. The record holds the paths, the
    round-trip error of the ends (decoded ends minus the examples) and the calls.

    Shapes: y (N, *D) data units -> "paths" (P, k, *D) float64 data units,
    "round_trip_rmse" float (data units), "nfe" float.
    """
    if k < 2:
        raise ConfigError(f"an interpolation needs k >= 2 points (the two ends), got {k}")
    n = y.shape[0]
    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n):
            raise ConfigError(f"pair {i},{j}: the data hold {n} examples (rows 0..{n - 1})")
    index = torch.tensor([i for p in pairs for i in p])
    ends = y[index]
    z, nfe_enc = encode(model, ends, rtol, atol, progress=progress)
    z = z.reshape((len(pairs), 2) + model.data_shape)
    w = torch.linspace(0, 1, k, dtype=torch.float64)
    latents = slerp(z[:, 0], z[:, 1], w)  # (P, k, *D)
    flat = latents.reshape((-1,) + model.data_shape)
    decoded, nfe_dec = decode(model, flat, rtol, atol, progress=progress)
    paths = decoded.reshape((len(pairs), k) + model.data_shape)
    end_error = torch.stack([paths[:, 0], paths[:, -1]], 1).reshape(ends.shape) - ends.to(torch.float64)
    return {"paths": paths, "latents": latents, "round_trip_rmse": float(end_error.pow(2).mean().sqrt()),
            "nfe_encode": nfe_enc, "nfe_decode": nfe_dec}


def round_trip(model: DiffusionModel, y: torch.Tensor, rtol: float = RTOL, atol: float = ATOL,
               progress: bool = False) -> dict:
    """decode(encode(y)) - y: its root mean square and largest absolute value over every
    value (data units), and the calls per example each way.

    Shapes: y (N, *D) data units -> dict of floats.
    """
    z, nfe_enc = encode(model, y, rtol, atol, progress=progress)
    back, nfe_dec = decode(model, z, rtol, atol, progress=progress)
    err = back - y.to(torch.float64)
    return {"round_trip_rmse": float(err.pow(2).mean().sqrt()), "round_trip_max": float(err.abs().max()),
            "nfe_encode": nfe_enc, "nfe_decode": nfe_dec, "n_examples": int(y.shape[0]),
            "latent_mean": float(z.mean()), "latent_std": float(z.std()) if z.numel() > 1 else math.nan}
