"""Solvers of the probability-flow ODE (``flow``): three fixed-step ones, written out
here after their papers, and an adaptive Runge-Kutta method from scipy.

Fixed steps, from t = 1 (the prior's latent) to the data, over a ``flow.time_grid`` of
N network times t_0 = 1 > ... > t_{N-1} = t_first and a last step to s = 0:

- ``ddim``: DDIM with eta = 0 (Song et al. 2021a), which is Euler's method in EDM's
  coordinates, y <- y + (s' - s) eps_hat. N network calls.
- ``heun``: EDM's Algorithm 1 without churn (Karras et al. 2022): an Euler step, then
  the trapezoidal correction with the slope at its end; the last step, to s = 0, is
  Euler's. 2N - 1 network calls.
- ``dpm++``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep, in the half
  log-SNR l = log(alpha / sigma) = -log s, with the data prediction: the exact
  solution of the ODE's linear part and a second-order (linear in l) extrapolation of
  x0_hat from the last two steps; the first step and the last (to s = 0, h infinite)
  are first order. N network calls.

Adaptive: ``solve_ivp`` with scipy's Dormand-Prince RK45 and tolerances, used by the
encoder, the decoder and the likelihood. Its state is the whole batch flattened (and,
for the likelihood, the divergence integrals): one step size for the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .flow import Flow, time_grid

SOLVERS = ("ddim", "heun", "dpm++")
# The grid each solver takes when none is given: EDM's for the Euler and Heun steps
# (EDM's own choice, measured there for both), log-SNR for DPM-Solver++ (its paper's
# choice for its multistep method).
DEFAULT_GRIDS = {"ddim": "edm", "heun": "edm", "dpm++": "log-snr"}
# Adaptive solver tolerances: relative and absolute, on y (and the log-density).
RTOL = 1e-5
ATOL = 1e-5
# The most right-hand-side calls of one adaptive solve: trained models need hundreds; a
# field the solver cannot follow (latents far outside the prior, a non-finite network)
# would otherwise shrink the step without end.
MAX_CALLS = 20_000


def nfe(solver: str, steps: int) -> int:
    """Network calls of a fixed-step solve with ``steps`` grid times (see the module)."""
    return 2 * steps - 1 if solver == "heun" else steps


def steps_for_nfe(solver: str, calls: int) -> int:
    """The most grid times whose solve makes at most ``calls`` network calls (at least 1)."""
    return max(1, (calls + 1) // 2 if solver == "heun" else calls)


def decode_points(flow: Flow, steps: int, grid: str | None, solver: str) -> list[tuple[float, float]]:
    """The points (network time, s) of a fixed-step solve from t = 1 to the data: the
    grid's times, then the data at s = 0 (which has no time of its own).

    Shapes: returns steps + 1 pairs.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown ODE solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    ts = time_grid(flow, steps, grid or DEFAULT_GRIDS[solver])
    return [(t, flow.s_of_t(t)) for t in ts] + [(flow.t_first, 0.0)]


def solve_fixed(flow: Flow, y: torch.Tensor, solver: str, steps: int, grid: str | None = None,
                to_noise: bool = False) -> torch.Tensor:
    """A fixed-step solve over ``steps`` grid times of the solver's grid
    (``DEFAULT_GRIDS`` when None): from the last latent to the data, or with to_noise
    the same points the other way (DDIM inversion; ddim and heun only: DPM-Solver++'s
    step starts from s > 0). The data point is evaluated with the field of t_first.

    Shapes: y (B, *D) float64 in EDM's coordinates -> (B, *D) float64.
    """
    points = decode_points(flow, steps, grid, solver)
    if to_noise:
        if solver == "dpm++":
            raise ConfigError("dpm++ solves from the noise to the data only; encode with ddim, heun or the "
                              "adaptive solver")
        points = points[::-1]
    return _STEPPERS[solver](flow, y, points)


def _ddim(flow, y, points):
    for (t, s), (_, s_next) in zip(points, points[1:]):
        _, eps = flow.predict(y, t)
        y = y + (s_next - s) * eps  # Euler in (y, s) = DDIM's x_s = alpha_s x0_hat + sigma_s eps_hat
    return y


def _heun(flow, y, points):
    for (t, s), (t_next, s_next) in zip(points, points[1:]):
        _, d = flow.predict(y, t)  # EDM Alg. 1 line 7: the slope at the start
        y_euler = y + (s_next - s) * d  # line 8: the Euler step
        if s_next == 0.0:  # line 9: the step to the data stays Euler's
            y = y_euler
        else:
            _, d_end = flow.predict(y_euler, t_next)  # line 10: the slope at its end
            y = y + (s_next - s) * 0.5 * (d + d_end)  # line 11: the trapezoidal rule
    return y


def _dpm_pp_2m(flow, y, points):
    # In y = x / alpha, Lu et al.'s update (l = -log s, h = l_i - l_{i-1})
    # x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h} - 1) D reads
    # y_i = e^{-h} y_{i-1} + (1 - e^{-h}) D, with e^{-h} = s_i / s_{i-1}.
    x0_prev, h_prev = None, None
    for (t, s), (_, s_next) in zip(points, points[1:]):
        x0, _ = flow.predict(y, t)
        ratio = s_next / s  # e^{-h}; 0 for the last step (h infinite)
        if x0_prev is None or ratio == 0.0:
            d = x0  # first order: DPM-Solver++(1), which is DDIM
        else:
            r = h_prev / math.log(1 / ratio)  # Alg. 2: r_i = h_{i-1} / h_i
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev  # D_i
        y = ratio * y + (1 - ratio) * d
        if ratio > 0:
            x0_prev, h_prev = x0, math.log(1 / ratio)
    return y


_STEPPERS = {"ddim": _ddim, "heun": _heun, "dpm++": _dpm_pp_2m}


def solve_ivp(fun: Callable[[float, torch.Tensor], torch.Tensor], state: torch.Tensor, span: tuple[float, float],
              rtol: float = RTOL, atol: float = ATOL) -> tuple[torch.Tensor, int]:
    """Integrate d state / dv = fun(v, state) over v in span with scipy's Dormand-Prince
    RK45 (adaptive steps under rtol, atol), in float64. A span of zero length returns
    the state unchanged.

    Shapes: state (B, ...) float64 -> (B, ...) float64, and the number of calls of fun.
    """
    from scipy.integrate import solve_ivp as scipy_solve_ivp

    if span[0] == span[1]:
        return state, 0
    shape, device = state.shape, state.device
    calls = [0]

    def rhs(v, flat):
        calls[0] += 1
        if calls[0] > MAX_CALLS:
            raise _TooManyCalls
        z = torch.from_numpy(flat).to(device).reshape(shape)
        out = fun(v, z).reshape(-1).detach().cpu().numpy()
        if not np.isfinite(out).all():
            raise _TooManyCalls
        return out

    failure = ("check that the data or latents lie where the model was trained (latents: about N(0, I)), or "
               "loosen the tolerance")
    try:
        sol = scipy_solve_ivp(rhs, span, state.reshape(-1).detach().cpu().numpy().astype(np.float64),
                              method="RK45", rtol=rtol, atol=atol, t_eval=[span[1]])
    except _TooManyCalls:
        raise DataError(f"the adaptive ODE solver could not follow the flow (a non-finite field, or more than "
                        f"{MAX_CALLS} calls); {failure}") from None
    if not sol.success:  # a field too stiff to follow: the data or latents are far out
        raise DataError(f"the adaptive ODE solver failed ({sol.message}); {failure}")
    return torch.from_numpy(sol.y[:, -1].copy()).to(device).reshape(shape), int(sol.nfev)


class _TooManyCalls(Exception):
    """Raised inside the right-hand side to stop a solve that cannot succeed."""


# d state / ds at (state, network time t, s): the ODE's right-hand side in (y, s), or an
# augmented one (the likelihood's divergence integrals) on a per-example flat state.
Rate = Callable[[torch.Tensor, float, float], torch.Tensor]


def solve_adaptive(flow: Flow, state: torch.Tensor, rate: Rate, to_noise: bool, rtol: float = RTOL,
                   atol: float = ATOL) -> tuple[torch.Tensor, int]:
    """The whole flow between the data (s = 0) and the last latent with ``solve_ivp``,
    in two pieces: the tail s in [0, s_first] in s (the field of t_first), and the
    network's range in log-SNR lambda, from lambda_first to lambda_last, where
    d/dlambda = -s/2 d/ds: the variable in which the flow is smoothest (DPM-Solver),
    and which follows a discrete chain's extension knot to knot.

    Shapes: state (B, ...) float64 -> (B, ...) float64, and the number of rate calls.
    """
    def tail(s, z):
        return rate(z, flow.t_first, s)

    def main(lam, z):
        s = math.exp(-0.5 * lam)
        return -0.5 * s * rate(z, flow.t_of_log_snr(lam), s)

    pieces = [(tail, (0.0, flow.s_first)), (main, (flow.lam_first, flow.lam_last))]
    if not to_noise:
        pieces = [(f, (b, a)) for f, (a, b) in reversed(pieces)]
    calls = 0
    for fun, span in pieces:
        state, n = solve_ivp(fun, state, span, rtol, atol)
        calls += n
    return state, calls
