"""Noise schedules: beta / abar tables for discrete time, log-SNR curves for continuous time.

All schedule arithmetic is float64: abar_t = prod(1 - beta_s) loses the small betas of
the first steps in float32, and the bound's first terms depend on exactly those.

The common currency between the two kinds of time is ``abar`` (the signal fraction
alpha_t^2 of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)), or equivalently the
negative log signal-to-noise ratio gamma = log((1 - abar) / abar) (VDM's gamma).

- ``DiscreteSchedule``: steps t = 1..T with betas beta_1..beta_T; ``abar()`` has T + 1
  entries with abar_0 = 1 (x_0 is the data itself).
- ``ContinuousSchedule``: gamma(t) on t in [0, 1], increasing; the first latent is at
  t = 0 with gamma_min, the last at t = 1 with gamma_max (T -> infinity).

One time convention for both: the network sees t in [0, 1] (step i of a discrete
schedule is t = i / T), and every schedule answers ``abar(t)``, ``log_snr(t)``
(lambda = log(abar / (1 - abar)) = -gamma), its inverse ``t_of_log_snr``,
``dlog_snr_dt`` and the chain's time grid ``grid(steps)``. A discrete schedule is
extended between its steps by interpolating lambda linearly in t, so that an ODE
solver can ask for any time; at the steps themselves the table is used exactly.
The conversions between a step index and network time live here and nowhere else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import ConfigError
from .variance_gradient import active_weights, weigh

DISCRETE_KINDS = ("binomial", "linear", "cosine", "learned")
CONTINUOUS_KINDS = ("linear-logsnr", "cosine", "learned")

# Betas are kept strictly inside (0, 1): logit(beta) must stay finite for the paper's
# kernel (eq. 64), and beta_T = 1 (binomial schedule) would make log(1 - beta) infinite.
BETA_MIN = 1e-8
BETA_MAX = 1.0 - 1e-5


def binomial_betas(T: int) -> torch.Tensor:
    """The paper's fixed schedule beta_t = 1 / (T - t + 1): erase 1/T of the signal per step.

    Its abar_t = 1 - t / T is linear in t. beta_T = 1 is clipped to BETA_MAX so that
    every kernel stays a proper Gaussian.

    Shapes: returns (T,) float64, entry t - 1 is beta_t.
    """
    t = torch.arange(1, T + 1, dtype=torch.float64)
    return (1.0 / (T - t + 1)).clamp(BETA_MIN, BETA_MAX)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule, with the endpoints given for T = 1000 and rescaled by 1000 / T
    so that other T describe the same continuous process (improved DDPM's convention).

    Shapes: returns (T,) float64.
    """
    scale = 1000.0 / T
    return torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64).clamp(
        BETA_MIN, BETA_MAX
    )


def cosine_abar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM's cosine signal fraction abar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t+s)/(1+s)).

    Shapes: t (N,) in [0, 1] -> (N,) float64.
    """
    t = t.to(torch.float64)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return f / f0


def cosine_betas(T: int, s: float = 0.008, beta_max: float = 0.999) -> torch.Tensor:
    """Discrete cosine schedule: beta_t = 1 - abar(t/T) / abar((t-1)/T), capped at 0.999.

    Shapes: returns (T,) float64.
    """
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    abar = cosine_abar(grid, s)
    return (1 - abar[1:] / abar[:-1]).clamp(BETA_MIN, beta_max)


def betas_to_abar(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s), with abar_0 = 1 prepended.

    Computed as exp(cumsum(log1p(-beta))) for accuracy over thousands of steps.

    Shapes: betas (T,) -> (T + 1,).
    """
    log_abar = torch.cumsum(torch.log1p(-betas), dim=0)
    return torch.cat([betas.new_ones(1), torch.exp(log_abar)])


def abar_to_gamma(abar: torch.Tensor) -> torch.Tensor:
    """gamma = log((1 - abar) / abar), the negative log signal-to-noise ratio.

    Shapes: any -> same.
    """
    return torch.log1p(-abar) - torch.log(abar)


def gamma_to_abar(gamma: torch.Tensor) -> torch.Tensor:
    """abar = sigmoid(-gamma).

    Shapes: any -> same.
    """
    return torch.sigmoid(-gamma)


class DiscreteSchedule(nn.Module):
    """Betas beta_1..beta_T of a discrete-time forward process.

    kind: ``binomial`` (1/(T-t+1)), ``linear`` (DDPM), ``cosine`` (improved DDPM) or
    ``learned``: beta_2..beta_T are parameters trained by gradient ascent on K with
    frozen noise (paper section 2.4.1) starting from the binomial schedule, while
    beta_1 stays fixed at ``beta_1`` so that the first step cannot overfit.
    For ``binomial`` and ``learned`` the first step is also set to ``beta_1`` (the
    paper's code uses 0.001), because 1/T is far too coarse a first step for
    continuous data. ``beta_1 = 0`` keeps 1/T, the paper's choice for binary data.
    """

    def __init__(
        self,
        kind: str,
        T: int,
        beta_1: float = 1e-3,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_s: float = 0.008,
    ):
        super().__init__()
        if kind not in DISCRETE_KINDS:
            raise ConfigError(f"unknown discrete schedule {kind!r}; choose one of {', '.join(DISCRETE_KINDS)}")
        if T < 2:
            raise ConfigError(f"a discrete schedule needs T >= 2 steps, got {T}")
        self.kind = kind
        self.T = T
        if kind == "linear":
            betas = linear_betas(T, beta_start, beta_end)
        elif kind == "cosine":
            betas = cosine_betas(T, cosine_s)
        else:
            betas = binomial_betas(T)
            if beta_1 > 0:  # 0 keeps the schedule's own first step 1/T (binary data)
                betas[0] = beta_1
        if kind == "learned":
            self.register_buffer("beta_first", betas[:1].clone())
            # Unconstrained parameters: beta = sigmoid(logit), kept inside (0, 1).
            self.beta_logits = nn.Parameter(torch.logit(betas[1:]))
        else:
            self.register_buffer("fixed_betas", betas)

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "DiscreteSchedule":
        """A fixed schedule of the given betas (another library's, e.g. a diffusers
        scheduler's), kind ``given``. Shapes: betas (T,) in (0, 1)."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ConfigError(f"a discrete schedule needs T >= 2 betas in (0, 1), got {betas.numel()} "
                              f"in [{float(betas.min()):g}, {float(betas.max()):g}]")
        schedule = cls("linear", int(betas.numel()))
        schedule.kind = "given"
        schedule.fixed_betas.copy_(betas)
        return schedule

    def betas(self) -> torch.Tensor:
        """Shapes: returns (T,) float64; entry t - 1 is beta_t."""
        if self.kind == "learned":
            rest = torch.sigmoid(self.beta_logits).clamp(BETA_MIN, BETA_MAX)
            return torch.cat([self.beta_first, rest])
        return self.fixed_betas

    continuous = False

    @property
    def n_steps(self) -> int:
        """Steps of the chain: T."""
        return self.T

    def abar(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """The table abar_0..abar_T, or abar at network times t.

        At t = i / T the table entry itself; between steps the continuous extension
        (``log_snr``).

        Shapes: t None -> (T + 1,) float64, abar_0 = 1; t (B,) -> (B,) float64.
        """
        table = betas_to_abar(self.betas())
        if t is None:
            return table
        pos = t.to(torch.float64) * self.T
        i = torch.round(pos)
        exact = table[i.long().clamp(0, self.T)]
        on_grid = (pos - i).abs() < 1e-6
        if bool(on_grid.all()):
            return exact
        return torch.where(on_grid, exact, gamma_to_abar(-self.log_snr(t)))

    def _log_snr_knots(self) -> torch.Tensor:
        """lambda at the steps 1..T, decreasing. Shapes: returns (T,) float64."""
        return -abar_to_gamma(self.abar()[1:])

    def _segment(self, t: torch.Tensor):
        """The interpolation segment of t: knot k - 1 (step k) and its position past it.
        Below t = 1 / T the first segment is extrapolated."""
        pos = t.to(torch.float64) * self.T
        k = pos.floor().clamp(1, self.T - 1)
        return k.long(), pos - k

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t), linear in t between the steps (and below step 1). Shapes: t (B,) -> (B,) float64."""
        lam = self._log_snr_knots()
        k, frac = self._segment(t)
        return lam[k - 1] + frac * (lam[k] - lam[k - 1])

    def dlog_snr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """d lambda / dt of the continuous extension. Shapes: t (B,) -> (B,) float64."""
        lam = self._log_snr_knots()
        k, _ = self._segment(t)
        return (lam[k] - lam[k - 1]) * self.T

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """The inverse of ``log_snr``. Shapes: lam (B,) -> (B,) float64."""
        knots = self._log_snr_knots()
        lam = lam.to(torch.float64)
        j = torch.searchsorted(-knots, -lam).clamp(1, self.T - 1)
        frac = (lam - knots[j - 1]) / (knots[j] - knots[j - 1])
        return (j + frac) / self.T

    def grid(self, steps: int | None = None) -> torch.Tensor:
        """Network times of the chain's latents, first to last: steps 1..T as t = i / T,
        or ``steps`` of them evenly spaced, always including 1 and T.

        Shapes: returns (n,) float64.
        """
        T = self.T
        if steps is None or steps >= T:
            return torch.arange(1, T + 1, dtype=torch.float64) / T
        idx = torch.unique(torch.round(torch.linspace(1, T, steps, dtype=torch.float64)))
        return idx / T

    @property
    def t_first(self) -> float:
        """Network time of the first latent x_1."""
        return 1.0 / self.T

    def abar_first(self) -> torch.Tensor:
        """abar_1 = 1 - beta_1. Shapes: () float64."""
        return self.abar()[1]

    def abar_last(self) -> torch.Tensor:
        """abar_T. Shapes: () float64."""
        return self.abar()[-1]

    def abar_before(self, t: torch.Tensor) -> torch.Tensor:
        """abar one step before each t (the target of that step's reverse kernel).
        Shapes: t (B,) on the grid -> (B,) float64."""
        return self.abar()[torch.round(t.to(torch.float64) * self.T).long() - 1]

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        """The nearest step's time. Shapes: t (B,) -> (B,) float64."""
        return torch.round(t.to(torch.float64) * self.T) / self.T

    def n_bins(self, t_bins: int) -> int:
        """Bins of the time sampler: one per step 2..T (t_bins is for continuous time)."""
        return self.T - 1

    def bin_times(self, bins: torch.Tensor, pos: torch.Tensor, n_bins: int):
        """Sampled bins as what the bound's diffusion term takes: step indices 2..T, and the
        factor n_bins that turns a mean over bins into their sum.

        Shapes: bins (B,) long, pos (B,) -> steps (B,) long, float.
        """
        return bins + 2, n_bins

    def uniform_times(self, b: int, generator: torch.Generator, device):
        """Times for DDPM's simple loss: steps uniform in 1..T, as network times, and
        their abar (no gradient into a learned schedule).

        Shapes: returns t (B,) float64, abar_t (B,) float64.
        """
        i = torch.randint(1, self.T + 1, (b,), generator=generator).to(device)
        return i.to(torch.float64) / self.T, self.abar().detach()[i]


class _MonotoneNet(nn.Module):
    """A monotone increasing map [0, 1] -> R (VDM's learned schedule): a linear term
    plus a sigmoid layer, with weights kept positive by softplus."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(hidden, dtype=torch.float64) * 0.5)
        self.b2 = nn.Parameter(torch.randn(hidden, dtype=torch.float64) * 0.5)
        self.w3 = nn.Parameter(torch.full((hidden,), -3.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        pos = nn.functional.softplus
        h = torch.sigmoid(t[:, None] * pos(self.w2) * 8.0 - 4.0 + self.b2)
        return pos(self.w1 + 0.5413) * t + (h * pos(self.w3)).sum(-1) / self.w3.numel()


class ContinuousSchedule(nn.Module):
    """gamma(t) = -log SNR(t) on t in [0, 1], increasing, in the continuous-time limit.

    kind: ``linear-logsnr`` (VDM's fixed schedule, gamma linear in t), ``cosine``
    (improved DDPM's cosine written in gamma, truncated to [gamma_min, gamma_max]),
    or ``learned`` (a monotone network between learnable endpoints, VDM). With
    ``learn_endpoints`` the endpoints gamma_min, gamma_max are trained on the bound:
    in continuous time they are the only part of the schedule the bound depends on.
    """

    def __init__(
        self,
        kind: str,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        learn_endpoints: bool = False,
    ):
        super().__init__()
        if kind not in CONTINUOUS_KINDS:
            raise ConfigError(f"unknown continuous schedule {kind!r}; choose one of {', '.join(CONTINUOUS_KINDS)}")
        if not gamma_min < gamma_max:
            raise ConfigError(f"need gamma_min < gamma_max, got {gamma_min} and {gamma_max}")
        self.kind = kind
        ends = torch.tensor([gamma_min, gamma_max], dtype=torch.float64)
        if learn_endpoints or kind == "learned":
            self.endpoints = nn.Parameter(ends)
        else:
            self.register_buffer("endpoints", ends)
        self.shape_net = _MonotoneNet() if kind == "learned" else None

    @property
    def gamma_min(self) -> torch.Tensor:
        return self.endpoints[0]

    @property
    def gamma_max(self) -> torch.Tensor:
        return self.endpoints[1]

    def _unit_shape(self, t: torch.Tensor, net_params: dict | None = None) -> torch.Tensor:
        """An increasing map with shape(0) = 0, shape(1) = 1.

        net_params: parameters by name for the learned shape network in place of its own
        (``torch.func.functional_call``; the same values detached hold it fixed).
        """
        if self.kind == "linear-logsnr":
            return t
        if self.kind == "cosine":
            # gamma_cos(t) = 2 log tan(pi t / 2) spans the whole real line; rescale the
            # part of it between the endpoints onto [0, 1].
            g0, g1 = self.gamma_min.detach(), self.gamma_max.detach()
            u0 = 2 / math.pi * torch.atan(torch.exp(g0 / 2))
            u1 = 2 / math.pi * torch.atan(torch.exp(g1 / 2))
            g = 2 * torch.log(torch.tan(math.pi / 2 * (u0 + (u1 - u0) * t)))
            return (g - g0) / (g1 - g0)
        if net_params is None:
            net = self.shape_net
        else:

            def net(x: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(self.shape_net, net_params, (x,))

        ends = net(torch.stack([t.new_zeros(()), t.new_ones(())]))
        return (net(t) - ends[0]) / (ends[1] - ends[0])

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        """Shapes: t (B,) in [0, 1] -> (B,) float64."""
        t = t.to(torch.float64)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * self._unit_shape(t)

    def gamma_and_derivative(self, t: torch.Tensor, create_graph: bool = False):
        """gamma(t) and d gamma / dt, the weight of the continuous-time diffusion loss.

        The derivative comes from autograd so that every schedule kind gets it exactly.
        A learned schedule in a training forward (``variance_gradient.weighted_by_loss``)
        returns the same values, but the gradient into its shape network is, per example,
        multiplied by that example's loss: VDM's variance gradient for the interior.

        Shapes: t (B,) -> ((B,), (B,)) float64.
        """
        weights = active_weights() if create_graph and self.shape_net is not None else None
        if weights is None:
            with torch.enable_grad():
                t = t.detach().to(torch.float64).requires_grad_(True)
                g = self.gamma(t)
                (dg,) = torch.autograd.grad(g.sum(), t, create_graph=True)
            if not create_graph:
                dg = dg.detach()
            return g, dg

        def gamma_and_dg(lo, hi, net_params=None):
            # gamma() written out, so that the endpoints or the network can be held fixed
            with torch.enable_grad():
                s = t.detach().to(torch.float64).requires_grad_(True)
                g = lo + (hi - lo) * self._unit_shape(s, net_params)
                (dg,) = torch.autograd.grad(g.sum(), s, create_graph=True)
            return g, dg

        # The same values twice: once with the network held fixed (the gradient into the
        # endpoints, unweighted) and once with the endpoints held fixed (the gradient into
        # the network, weighted per example). An example's gamma(t_b) and gamma'(t_b)
        # carry all of its dependence on the network, the normalisation by shape(0) and
        # shape(1) included, so weighting there is exact.
        held = {name: p.detach() for name, p in self.shape_net.named_parameters()}
        g, dg = gamma_and_dg(self.gamma_min, self.gamma_max, held)
        g_net, dg_net = gamma_and_dg(self.gamma_min.detach(), self.gamma_max.detach())
        return weigh(g, g_net, weights), weigh(dg, dg_net, weights)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """Shapes: t (B,) -> (B,) float64."""
        return gamma_to_abar(self.gamma(t))

    # -- the time convention shared with DiscreteSchedule (see the module docstring)

    continuous = True
    n_steps = None

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = -gamma(t). Shapes: t (B,) -> (B,) float64."""
        return -self.gamma(t)

    def dlog_snr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """d lambda / dt. Shapes: t (B,) -> (B,) float64."""
        return -self.gamma_and_derivative(t)[1]

    @torch.no_grad()
    def t_of_log_snr(self, lam: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """The inverse of ``log_snr``, by bisection on [0, 1] (gamma is increasing for every
        kind, the learned one included); 60 halvings reach float64 resolution.

        Shapes: lam (B,) -> (B,) float64.
        """
        target = -lam.to(torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = self.gamma(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (lo + hi) / 2

    def grid(self, steps: int | None = None) -> torch.Tensor:
        """``steps`` + 1 network times evenly spaced in [0, 1] (default 1000 hops).

        Shapes: returns (n,) float64.
        """
        return torch.linspace(0, 1, (steps or 1000) + 1, dtype=torch.float64)

    t_first = 0.0

    def abar_first(self) -> torch.Tensor:
        """abar at t = 0. Shapes: () float64."""
        return self.abar(torch.zeros(1, dtype=torch.float64))[0]

    def abar_last(self) -> torch.Tensor:
        """abar at t = 1. Shapes: () float64."""
        return self.abar(torch.ones(1, dtype=torch.float64))[0]

    def abar_before(self, t: torch.Tensor) -> torch.Tensor:
        """abar a hundredth of the time axis before each t (a reverse hop's target).
        Shapes: t (B,) -> (B,) float64."""
        return self.abar((t.to(torch.float64) - 1e-2).clamp_min(0))

    def snap(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous time has no steps. Shapes: t (B,) -> (B,) float64."""
        return t.to(torch.float64)

    def n_bins(self, t_bins: int) -> int:
        """Bins of the time sampler: t_bins equal-width bins of [0, 1]."""
        return t_bins

    def bin_times(self, bins: torch.Tensor, pos: torch.Tensor, n_bins: int):
        """Sampled bins and positions as times in [0, 1]; the diffusion integral needs no
        further factor. Shapes: bins (B,) long, pos (B,) -> t (B,) float64, float."""
        return (bins + pos) / n_bins, 1.0

    def uniform_times(self, b: int, generator: torch.Generator, device):
        """Times for DDPM's simple loss: t ~ U[0, 1) and abar(t) (no gradient into a learned
        schedule). Shapes: returns t (B,) float64, abar_t (B,) float64."""
        t = torch.rand(b, generator=generator, dtype=torch.float64).to(device)
        return t, self.abar(t).detach()
