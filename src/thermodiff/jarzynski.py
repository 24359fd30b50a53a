"""The importance-weighted (Jarzynski / annealed importance sampling) estimate of log p(x_0).

Paper eq. 9: p(x_0) is the average over forward trajectories x_{1:T} ~ q(. | x_0) of

    w = p(x_T) prod_t p(x_{t-1} | x_t) / q(x_t | x_{t-1}),

Jarzynski's equality. K is E log w (Jensen); log (1/M) sum_m w_m over M independent
trajectories is also a stochastic lower bound, its expectation rises with M and tends
to log p_theta(x_0) as M grows (Burda et al. 2016). M = 1 is K's estimator.

A trajectory follows the chain the sampler runs (``DiffusionModel.time_grid``):
all T steps of a discrete model, or ``steps`` hops of a grid. For a continuous-time
model the grid defines a discrete model of its own (the VDM discretisation: the
posterior of each hop with the predicted x_0, the learned decoder at t = 0), whose
likelihood this estimates; its K is at most the continuous K, approaching it as the
grid refines. The chain is kept in float64: log w is a sum of T differences of
log-densities that are each large when the kernels are narrow.

Everything here is in nats on the model's (scaled) data; ``summarize_iw`` converts.
"""

from __future__ import annotations

import math

import torch

from . import distributed
from .model import DiffusionModel
from .units import LN2


def log_weights(model: DiffusionModel, x0: torch.Tensor, m: int, generator: torch.Generator,
                steps: int | None = None, on_hop=None) -> torch.Tensor:
    """log w of m forward trajectories per example, nats (scaled data). on_hop, if
    given, is called once per hop (a progress bar's update).

    Shapes: x0 (B, *D) scaled units -> (B, m) float64.
    """
    dev = x0.device
    b = x0.shape[0]
    grid = model.time_grid(steps).to(dev)
    abar = model.schedule.abar(grid)
    x_prev = x0.to(torch.float64).repeat_interleave(m, 0)  # example-major: rows b*m
    n = b * m
    abar_prev = torch.ones(n, dtype=torch.float64, device=dev)
    logw = torch.zeros(n, dtype=torch.float64, device=dev)
    for k in range(len(grid)):
        t, abar_t = grid[k].expand(n), abar[k].expand(n)
        q = model.process.forward(x_prev, abar_prev, abar_t)
        x_t = q.sample(generator).to(torch.float64)
        logw += model.reverse(x_t, t, abar_prev, abar_t).log_prob(x_prev) - q.log_prob(x_t)
        x_prev, abar_prev = x_t, abar_t
        if on_hop:
            on_hop(1)
    logw += model.process.log_prior(x_prev).to(torch.float64)
    return logw.reshape(b, m)


def log_mean_exp(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log of the mean of exp(a) along dim, without overflow.

    Shapes: a (..., M, ...) -> a with dim removed.
    """
    return torch.logsumexp(a, dim) - math.log(a.shape[dim])


def iw_estimates(logw: torch.Tensor, m: int) -> torch.Tensor:
    """The M-trajectory estimate per example, averaged over the disjoint groups of m
    among the trajectories (an unbiased estimate of E IW(m) with less noise than one
    group).

    Shapes: logw (N, M_max) with m dividing M_max -> (N,).
    """
    n, m_max = logw.shape
    if m_max % m:
        raise ValueError(f"m = {m} does not divide the {m_max} trajectories")
    return log_mean_exp(logw.reshape(n, m_max // m, m), -1).mean(1)


@torch.no_grad()
def evaluate_iw(model: DiffusionModel, y: torch.Tensor, m: int, steps: int | None = None, batch_size: int = 65_536,
                seed: int = 0, progress: bool = False) -> torch.Tensor:
    """log w for m trajectories per held-out example, batched, on the model's device.

    batch_size counts chain rows (examples x trajectories) per network call.

    Shapes: y (N, *D) data units -> (N, m) float64 on the CPU, nats on scaled data.
    """
    model.eval()
    dev = next(model.parameters()).device
    per_batch = max(1, batch_size // m)
    starts = list(range(0, y.shape[0], per_batch))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=distributed.own_chunks(len(starts)) * len(model.time_grid(steps)),
                   desc=f"importance-weighted, M = {m}", unit="hop", leave=False)

    def chunk(k: int) -> torch.Tensor:
        # Batch k draws from stream k of the seed, whichever rank computes it.
        x0 = model.scaler(y[starts[k] : starts[k] + per_batch]).to(dev)
        return log_weights(model, x0, m, distributed.stream(seed, k), steps, bar.update if bar else None).cpu()

    parts = distributed.map_chunks(chunk, len(starts))
    if bar:
        bar.close()
    return torch.cat(parts)


def m_ladder(m_max: int) -> list[int]:
    """The M at which to report the estimate: 1, 2, 5, 10, 20, 50, ... up to M_max,
    those that divide M_max, and M_max itself. Shapes: int -> list of ints."""
    ladder, base = [], 1
    while base <= m_max:
        ladder += [v for v in (base, 2 * base, 5 * base) if v <= m_max and m_max % v == 0]
        base *= 10
    return sorted(set(ladder + [m_max]))


def summarize_iw(model: DiffusionModel, logw: torch.Tensor, y: torch.Tensor, steps: int, exact_scaled=None) -> dict:
    """The importance-weighted fields of an evaluation record, in bits.

    iw_bits (data's own units, Jacobian of the scaling included), iw_bits_scaled,
    iw_stderr_bits (standard error over examples), iw_M, iw_steps (hops of the chain),
    iw_n_examples (the standard errors are NaN for one example, with an
    ``iw_stderr_note`` saying why), and iw_curve: the estimate at each M of ``m_ladder`` from the same
    trajectories (M = 1 is K's estimator for this chain). With the exact log-likelihood
    per example (nats, scaled units) each curve point carries its gap, exact minus the
    estimate, paired over the same examples, with its standard error, and
    iw_exact_bits_scaled is the exact mean over those examples.

    Shapes: logw (N, M), y (N, *D), exact_scaled (N,) or None -> dict.
    """
    n, m = logw.shape
    log_det = model.scaler.log_det(model.n_dims)

    def mean_se(v):
        v = v / LN2
        return float(v.mean()), (float(v.std() / math.sqrt(n)) if n > 1 else float("nan"))

    curve = []
    for k in m_ladder(m):
        est = iw_estimates(logw, k)
        bits, se = mean_se(est)
        point = {"M": k, "bits_scaled": bits, "stderr_bits": se}
        if exact_scaled is not None:
            point["gap_bits"], point["gap_stderr_bits"] = mean_se(exact_scaled.to(torch.float64) - est)
        curve.append(point)
    top = curve[-1]
    record = {
        "iw_bits": top["bits_scaled"] + log_det / LN2,
        "iw_bits_scaled": top["bits_scaled"],
        "iw_stderr_bits": top["stderr_bits"],
        "iw_M": m,
        "iw_steps": steps,
        "iw_n_examples": n,
        "iw_curve": curve,
    }
    if n < 2:
        record["iw_stderr_note"] = "one example: no standard errors (NaN here, null in JSON)"
    if exact_scaled is not None:
        record["iw_gap_bits"], record["iw_gap_stderr_bits"] = top["gap_bits"], top["gap_stderr_bits"]
        record["iw_exact_bits_scaled"] = mean_se(exact_scaled.to(torch.float64))[0]
    return record
