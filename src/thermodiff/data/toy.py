"""Toy distributions with exactly known densities.

The swiss roll is the benchmark of the diffusion-model paper; its density has no
closed form, but it is a one-dimensional integral over the curve parameter, which
quadrature evaluates to near machine precision. Gaussian mixtures have closed-form
densities and scores in any number of dimensions. The binary heartbeat data are five
equiprobable sequences.

All densities are in float64 and all log-densities are in nats.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from thermodiff.errors import DataError

__all__ = [
    "SWISSROLL_NOISE",
    "SWISSROLL_S_MIN",
    "SWISSROLL_S_MAX",
    "SWISSROLL_N_GRID",
    "swissroll_curve",
    "swissroll_sample",
    "swissroll_log_density",
    "GaussianMixture",
    "gaussian_mixture_2d_default",
    "gaussian_1d",
    "heartbeat_patterns",
    "heartbeat_sample",
    "heartbeat_log_density",
]

# Benchmark contract: s ~ U(1.5 pi, 4.5 pi), point (s cos s, s sin s) + N(0, 0.25^2 I).
SWISSROLL_NOISE = 0.25
SWISSROLL_S_MIN = 1.5 * math.pi
SWISSROLL_S_MAX = 4.5 * math.pi

# Quadrature nodes over the curve parameter for the swiss-roll density. With 4096
# nodes the node spacing along the curve is about 0.02 (the curve is ~89 long), a
# twelfth of the noise std, and the log-density is converged to < 1e-6 nats for
# every point with log-density above about -200 nats (within ~4.5 units of the
# curve, i.e. the whole roll and its surroundings). Further out the narrow integrand
# needs more nodes; pass a larger ``n_grid`` there.
SWISSROLL_N_GRID = 4096

# Gauss-Legendre nodes per panel: high enough order that panels can be wider than
# the noise std, low enough that each panel's integrand is smooth at that order.
_GL_ORDER = 8

# Bound on the float64 elements of one (points x nodes) block: 2^21 * 8 B = 16 MiB.
_BLOCK_ELEMENTS = 1 << 21

_LOG_2PI = math.log(2.0 * math.pi)


def _as_float64(x, name: str) -> torch.Tensor:
    """Convert array-likes to a float64 tensor, keeping the device of tensors."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a numeric array ({exc})") from None


def _check_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"{name}: n must be a non-negative integer, got {n!r}")
    return int(n)


def swissroll_curve(s: torch.Tensor) -> torch.Tensor:
    """Noise-free swiss-roll point ``(s cos s, s sin s)`` for curve parameters ``s``.

    Shapes: s (...) -> (..., 2). Units: raw data units (s is in radians).
    """
    s = _as_float64(s, "swissroll_curve")
    return torch.stack((s * torch.cos(s), s * torch.sin(s)), dim=-1)


def swissroll_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` swiss-roll points in raw units.

    u ~ U(0, 1), s = 1.5 pi (1 + 2u), y = (s cos s, s sin s) + N(0, 0.25^2 I).
    Draws ``u`` first, then the noise, both from ``generator``.

    Shapes: n -> (n, 2) float64. Units: raw data units.
    """
    n = _check_count(n, "swissroll_sample")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    s = SWISSROLL_S_MIN + (SWISSROLL_S_MAX - SWISSROLL_S_MIN) * u
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return swissroll_curve(s) + SWISSROLL_NOISE * noise


@functools.lru_cache(maxsize=8)
def _swissroll_nodes(n_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Curve points and log quadrature weights (including the 1/(3 pi) prior on s).

    The integrand is a Gaussian of width 0.25 in arc length, and the speed
    |dc/ds| = sqrt(1 + s^2) triples along the roll, so nodes uniform in s would
    waste two thirds of them at the inner end. Panels are uniform in t = s^2 / 2,
    which equals arc length up to 2.5% here, so the resolution along the curve is
    nearly uniform. Composite Gauss-Legendre (rather than trapezoid) keeps the
    truncation at the roll's two ends, where the integrand is cut off sharply,
    at high order.

    Shapes: n_grid -> c (M, 2), log_w (M,) with M = n_grid rounded up to a
    multiple of the Gauss-Legendre order.
    """
    n_panels = -(-n_grid // _GL_ORDER)
    x, w = np.polynomial.legendre.leggauss(_GL_ORDER)
    t_lo, t_hi = 0.5 * SWISSROLL_S_MIN**2, 0.5 * SWISSROLL_S_MAX**2
    edges = np.linspace(t_lo, t_hi, n_panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    t = (edges[:-1, None] + half * (x[None, :] + 1.0)).ravel()
    w_t = (half * w[None, :]).ravel()
    s = np.sqrt(2.0 * t)
    w_s = w_t / s  # ds = dt / s
    s_t = torch.from_numpy(s)
    log_w = torch.from_numpy(np.log(w_s)) - math.log(SWISSROLL_S_MAX - SWISSROLL_S_MIN)
    return swissroll_curve(s_t), log_w


def swissroll_log_density(y: torch.Tensor, n_grid: int = SWISSROLL_N_GRID) -> torch.Tensor:
    """Exact log-density of raw swiss-roll points, by quadrature over the curve.

    log p(y) = log of the integral over s in [1.5 pi, 4.5 pi] of
    (1 / (3 pi)) N(y; (s cos s, s sin s), 0.25^2 I) ds, evaluated with composite
    Gauss-Legendre quadrature of ``n_grid`` nodes in log space (logsumexp), so
    points far from the roll get finite (very negative) values instead of -inf.
    Converged to < 1e-6 nats at the default grid for points with log-density above
    about -200 nats; see ``SWISSROLL_N_GRID``.

    Shapes: y (N, 2) -> (N,) float64. Units: nats, density w.r.t. raw units.
    """
    y = _as_float64(y, "swissroll_log_density")
    if y.dim() != 2 or y.shape[1] != 2:
        raise DataError(f"swissroll_log_density: expected points of shape (N, 2), got {tuple(y.shape)}")
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < _GL_ORDER:
        raise DataError(f"swissroll_log_density: n_grid must be an integer >= {_GL_ORDER}, got {n_grid!r}")
    c, log_w = _swissroll_nodes(int(n_grid))
    c, log_w = c.to(y.device), log_w.to(y.device)
    inv_var = 1.0 / SWISSROLL_NOISE**2
    # log N(y; c, sig^2 I) = y.c/sig^2 - |c|^2/(2 sig^2) - |y|^2/(2 sig^2) - log(2 pi sig^2):
    # the |c|^2 term folds into the node weights and the |y|^2 term comes out of the
    # logsumexp, leaving one fused matmul-plus-bias per block.
    bias = log_w - 0.5 * inv_var * (c * c).sum(dim=1)
    c_t = (inv_var * c).T.contiguous()
    out = torch.empty(y.shape[0], dtype=torch.float64, device=y.device)
    rows = max(1, _BLOCK_ELEMENTS // c.shape[0])
    for i in range(0, y.shape[0], rows):
        e = torch.addmm(bias, y[i : i + rows], c_t)
        m = e.amax(dim=1, keepdim=True)
        out[i : i + rows] = e.sub_(m).exp_().sum(dim=1).log_() + m[:, 0]
    const = -math.log(2.0 * math.pi * SWISSROLL_NOISE**2)
    return out - 0.5 * inv_var * (y * y).sum(dim=1) + const


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture of full-covariance Gaussians in D dimensions.

    Arguments are converted to float64 tensors and validated: weights (K,) finite,
    non-negative, summing to 1 (within 1e-6, which float32 input meets; then renormalised exactly), means
    (K, D), covariances (K, D, D) symmetric positive definite.

    Shapes: weights (K,), means (K, D), covariances (K, D, D).
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    # Lower Cholesky factors of the covariances, computed once at construction.
    cholesky: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        w = _as_float64(self.weights, "GaussianMixture weights").cpu()
        mu = _as_float64(self.means, "GaussianMixture means").cpu()
        cov = _as_float64(self.covariances, "GaussianMixture covariances").cpu()
        if w.dim() != 1 or w.shape[0] < 1:
            raise DataError(f"GaussianMixture: weights must have shape (K,) with K >= 1, got {tuple(w.shape)}")
        k = w.shape[0]
        if mu.dim() != 2 or mu.shape[0] != k or mu.shape[1] < 1:
            raise DataError(f"GaussianMixture: means must have shape ({k}, D), got {tuple(mu.shape)}")
        d = mu.shape[1]
        if cov.shape != (k, d, d):
            raise DataError(f"GaussianMixture: covariances must have shape ({k}, {d}, {d}), got {tuple(cov.shape)}")
        for name, t in (("weights", w), ("means", mu), ("covariances", cov)):
            if not torch.isfinite(t).all():
                raise DataError(f"GaussianMixture: {name} contain NaN or inf")
        if (w < 0).any():
            raise DataError(f"GaussianMixture: weights must be non-negative, got {w.tolist()}")
        total = float(w.sum())
        if abs(total - 1.0) > 1e-6:
            raise DataError(f"GaussianMixture: weights must sum to 1, they sum to {total!r}")
        scale = cov.abs().amax(dim=(1, 2), keepdim=True)
        if ((cov - cov.transpose(1, 2)).abs() > 1e-10 * scale).any():
            raise DataError("GaussianMixture: covariances must be symmetric")
        # Symmetrise exactly so Cholesky and the closed-form moments see the same matrix.
        cov = 0.5 * (cov + cov.transpose(1, 2))
        chol, info = torch.linalg.cholesky_ex(cov)
        bad = torch.nonzero(info).flatten()
        if bad.numel():
            raise DataError(f"GaussianMixture: covariance of component {int(bad[0])} is not positive definite")
        object.__setattr__(self, "weights", w / total)
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "covariances", cov)
        object.__setattr__(self, "cholesky", chol)

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        """Data dimension D."""
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """Mixture mean sum_k w_k mu_k.

        Shapes: () -> (D,). Units: data units.
        """
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T.

        Shapes: () -> (D, D). Units: squared data units.
        """
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances)
        second = second + torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` points: a component index per point, then its Gaussian.

        Shapes: n -> (n, D) float64. Units: data units.
        """
        n = _check_count(n, "GaussianMixture.sample")
        if n == 0:
            return torch.empty(0, self.dim, dtype=torch.float64)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty_like(eps)
        # Loop over components (K is small), not over examples: one matmul each.
        for k in range(self.n_components):
            mask = idx == k
            x[mask] = self.means[k] + eps[mask] @ self.cholesky[k].T
        return x

    def _check_points(self, x, name: str) -> torch.Tensor:
        x = _as_float64(x, f"GaussianMixture.{name}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise DataError(f"GaussianMixture.{name}: expected points of shape (N, {self.dim}), got {tuple(x.shape)}")
        return x

    def _component_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component log N(x; mu_k, Sigma_k) and whitened residuals L_k^-1 (x - mu_k).

        Shapes: x (n, D) -> (n, K), (K, D, n).
        """
        chol = self.cholesky.to(x.device)
        diff = (x[None, :, :] - self.means.to(x.device)[:, None, :]).transpose(1, 2)  # (K, D, n)
        z = torch.linalg.solve_triangular(chol, diff, upper=False)
        half_logdet = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)  # (K,)
        log_n = -0.5 * (z * z).sum(dim=1).T - half_logdet - 0.5 * self.dim * _LOG_2PI
        return log_n, z

    def _rows_per_block(self) -> int:
        return max(1, _BLOCK_ELEMENTS // (self.n_components * self.dim))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density: logsumexp_k (log w_k + log N(x; mu_k, Sigma_k)).

        Shapes: x (N, D) -> (N,) float64. Units: nats.
        """
        x = self._check_points(x, "log_prob")
        log_w = torch.log(self.weights).to(x.device)
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        rows = self._rows_per_block()
        for i in range(0, x.shape[0], rows):
            log_n, _ = self._component_terms(x[i : i + rows])
            out[i : i + rows] = torch.logsumexp(log_n + log_w, dim=1)
        return out

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Exact score grad_x log p(x) = -sum_k r_k(x) Sigma_k^-1 (x - mu_k),
        with responsibilities r_k(x) = w_k N_k(x) / p(x).

        Shapes: x (N, D) -> (N, D) float64. Units: nats per data unit.
        """
        x = self._check_points(x, "score")
        log_w = torch.log(self.weights).to(x.device)
        chol = self.cholesky.to(x.device)
        out = torch.empty_like(x)
        rows = self._rows_per_block()
        for i in range(0, x.shape[0], rows):
            log_n, z = self._component_terms(x[i : i + rows])
            resp = torch.softmax(log_n + log_w, dim=1)  # (n, K)
            # Sigma^-1 (x - mu) = L^-T z.
            prec_diff = torch.linalg.solve_triangular(chol.transpose(1, 2), z, upper=True)  # (K, D, n)
            out[i : i + rows] = -torch.einsum("nk,kdn->nd", resp, prec_diff)
        return out

    def observe(self, y: torch.Tensor, sigma: float, gain: torch.Tensor | None = None) -> "GaussianMixture":
        """The posterior given one observation y = G x + N(0, sigma^2 I), G = diag(gain)
        (gain 1 everywhere when None; 0 where a coordinate is unobserved). Each component
        updates by Gaussian conjugacy and is reweighted by its evidence N(y; G mu_k,
        G Sigma_k G + sigma^2 I).

        Shapes: y (D,), gain (D,) -> mixture over D dimensions.
        """
        y = _as_float64(y, "observe y")
        g = torch.ones(self.dim, dtype=torch.float64) if gain is None else _as_float64(gain, "observe gain")
        eye = torch.eye(self.dim, dtype=torch.float64)
        prec = torch.linalg.inv(self.covariances) + torch.diag(g**2 / sigma**2)  # (K, D, D)
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        rhs = torch.linalg.solve(self.covariances, self.means[..., None])[..., 0] + g * y / sigma**2
        means = (cov @ rhs[..., None])[..., 0]
        evidence_cov = g[:, None] * self.covariances * g[None, :] + sigma**2 * eye
        log_ev = torch.stack([
            GaussianMixture(torch.ones(1), (g * self.means[k])[None], evidence_cov[k][None]).log_prob(y[None])[0]
            for k in range(self.n_components)
        ])
        return GaussianMixture(torch.softmax(torch.log(self.weights) + log_ev, 0), means, cov)

    def condition(self, known: torch.Tensor, values: torch.Tensor) -> "GaussianMixture":
        """The distribution of the other coordinates given x[known] = values exactly:
        per component the Schur complement, reweighted by N(values; mu_k[known],
        Sigma_k[known, known]).

        Shapes: known (D,) bool, values (D,) (read where known) -> mixture over the
        D - |known| other coordinates, in their original order.
        """
        known = torch.as_tensor(known, dtype=torch.bool)
        v = _as_float64(values, "condition values")[known]
        a, b = known, ~known
        s_aa = self.covariances[:, a][:, :, a]
        s_ba = self.covariances[:, b][:, :, a]
        s_bb = self.covariances[:, b][:, :, b]
        diff = (v - self.means[:, a])[..., None]  # (K, |a|, 1)
        means = self.means[:, b] + (s_ba @ torch.linalg.solve(s_aa, diff))[..., 0]
        cov = s_bb - s_ba @ torch.linalg.solve(s_aa, s_ba.transpose(1, 2))
        cov = 0.5 * (cov + cov.transpose(1, 2))
        log_ev = torch.stack([
            GaussianMixture(torch.ones(1), self.means[k, a][None], s_aa[k][None]).log_prob(v[None])[0]
            for k in range(self.n_components)
        ])
        return GaussianMixture(torch.softmax(torch.log(self.weights) + log_ev, 0), means, cov)


# A standard 2-D toy: eight isotropic Gaussians evenly spaced on a circle.
RING_N_COMPONENTS = 8
RING_RADIUS = 2.0
RING_STD = 0.1


def gaussian_mixture_2d_default() -> GaussianMixture:
    """Eight equally weighted isotropic Gaussians (std 0.1) on a circle of radius 2.

    Shapes: () -> mixture with K = 8, D = 2.
    """
    angles = torch.arange(RING_N_COMPONENTS, dtype=torch.float64) * (2.0 * math.pi / RING_N_COMPONENTS)
    means = RING_RADIUS * torch.stack((torch.cos(angles), torch.sin(angles)), dim=1)
    covs = (RING_STD**2) * torch.eye(2, dtype=torch.float64).expand(RING_N_COMPONENTS, 2, 2).clone()
    weights = torch.full((RING_N_COMPONENTS,), 1.0 / RING_N_COMPONENTS, dtype=torch.float64)
    return GaussianMixture(weights, means, covs)


def gaussian_1d(mean: float, std: float) -> GaussianMixture:
    """A one-dimensional Gaussian N(mean, std^2) as a one-component mixture.

    Shapes: () -> mixture with K = 1, D = 1.
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise DataError(f"gaussian_1d: need finite mean and std > 0, got mean={mean!r}, std={std!r}")
    return GaussianMixture(
        torch.ones(1, dtype=torch.float64),
        torch.tensor([[float(mean)]], dtype=torch.float64),
        torch.tensor([[[float(std) ** 2]]], dtype=torch.float64),
    )


# Benchmark contract (paper, section 3.1): binary sequences of length 20 with a 1 in
# every 5th bin, the first pulse uniform over the first 5 bins: 5 equiprobable sequences.
HEARTBEAT_LENGTH = 20
HEARTBEAT_PERIOD = 5


def heartbeat_patterns(length: int = HEARTBEAT_LENGTH, period: int = HEARTBEAT_PERIOD) -> torch.Tensor:
    """The `period` possible heartbeat sequences, row k with its first pulse at bin k.

    Shapes: returns (period, length) float64 of 0 / 1.
    """
    if period < 1 or length < period:
        raise DataError(f"heartbeat: need 1 <= period <= length, got period {period}, length {length}")
    bins = torch.arange(length)
    return (bins[None, :] % period == torch.arange(period)[:, None]).to(torch.float64)


def heartbeat_sample(n: int, generator: torch.Generator, length: int = HEARTBEAT_LENGTH,
                     period: int = HEARTBEAT_PERIOD) -> torch.Tensor:
    """Draw n heartbeat sequences, the phase uniform over the first `period` bins.

    Shapes: n -> (n, length) float64 of 0 / 1.
    """
    n = _check_count(n, "heartbeat_sample")
    phase = torch.randint(0, period, (n,), generator=generator)
    return heartbeat_patterns(length, period)[phase]


def heartbeat_log_density(y: torch.Tensor, length: int = HEARTBEAT_LENGTH, period: int = HEARTBEAT_PERIOD) -> torch.Tensor:
    """Exact log-probability of sequences: log(1 / period) for a heartbeat, -inf otherwise, nats.

    Shapes: y (N, length) -> (N,) float64.
    """
    y = _as_float64(y, "heartbeat_log_density")
    patterns = heartbeat_patterns(length, period).to(y.device)
    match = (y[:, None, :] == patterns[None]).all(-1).any(-1)
    return torch.where(match, -math.log(period), -math.inf).to(torch.float64)
