"""The probability-flow ODE of a Gaussian model, in the coordinates where it is simplest.

Every Gaussian diffusion model defines, besides its stochastic chain, a deterministic
map between data and noise whose marginals are those of the forward process (Song et
al. 2021): dx/dt = f(t) x - 1/2 g(t)^2 score(x, t). With x_t = alpha x_0 + sigma eps,
abar = alpha^2 = sigmoid(lambda) (lambda the log-SNR), it reads

    dx / dlambda = 1/2 sigma^2 x - 1/2 sigma eps_hat(x, t),

and in the scaled coordinates of EDM (Karras et al. 2022), y = x / alpha and
s = sigma / alpha = exp(-lambda / 2) (the noise-to-signal ratio), simply

    dy / ds = eps_hat(alpha y, t),   alpha = 1 / sqrt(1 + s^2).

The data sit at s = 0 (y = x_0), the model's last latent at s_T = s(t = 1). DDIM's
deterministic step is Euler's method in (y, s), which is why it works with few steps.

The network is trained on times t_first <= t <= 1 (the first latent of the chain: t = 0
in continuous time, step 1 at t = 1 / T in discrete time). Below s_first = s(t_first),
between the first latent and the data, the flow evaluates the network at t_first: the
flow of the chain's last hop, as DDIM's last step (a delta at x0_hat) does with one
Euler step. For continuous-time models s_first is about 1e-3 and this tail moves a
density by a part in a million; for a discrete chain it is the hop of beta_1.

Discrete schedules enter through their continuous extension (``schedules``: lambda
linear in t between the steps, exact at the steps): the network sees non-integer
times between its training steps.

Everything here is float64 outside the network; the network runs in its own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..model import DiffusionModel

# The time grids of the fixed-step solvers, from t = 1 down to the first latent.
GRIDS = ("uniform-t", "log-snr", "edm")
EDM_RHO = 7.0  # EDM's spacing exponent (Karras et al. 2022, eq. 5)


def check_model(model: DiffusionModel) -> None:
    """Refuse, in one line, a model without a probability-flow ODE: binary data (the
    binomial process has no score) or the paper's kernel (no eps or x0 prediction)."""
    if "ode" not in model.process.supports:
        raise ConfigError("the probability-flow ODE is defined for Gaussian diffusion (continuous data); "
                          f"this model uses the {model.process.name} process")
    if not model.param.predicts_eps:
        raise ConfigError("the probability-flow ODE needs a model that predicts eps, x0 or v; "
                          "the paper's kernel predicts a perturbation of the forward kernel")


Predict = Callable[..., object]  # (x_t, t, cond, abar_t) -> parametrization.Prediction


class Flow:
    """The probability-flow ODE of one model, answering what solvers ask: the noise and
    data predictions at (y, t), the coordinates of any time, and time grids.

    predict: the prediction function (default ``model.predict``; a guided one for
    classifier-free guidance has the same signature). cond: passed through to it.
    (``model.count_calls`` counts its network evaluations.)

    Shapes: y (B, *D) float64 in EDM's coordinates; t scalar float64 network time.
    """

    def __init__(self, model: DiffusionModel, predict: Predict | None = None, cond=None):
        check_model(model)
        model.eval()
        self.model = model
        self.predict_fn = predict or model.predict
        self.cond = cond
        sched = model.schedule
        self.t_first = float(sched.t_first)
        with torch.no_grad():
            ends = torch.tensor([self.t_first, 1.0], dtype=torch.float64)
            lam = sched.log_snr(ends).detach().to(torch.float64)
        self.lam_first, self.lam_last = float(lam[0]), float(lam[1])
        self.s_first, self.s_last = math.exp(-0.5 * self.lam_first), math.exp(-0.5 * self.lam_last)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- coordinates ----------------------------------------------------------------

    def log_snr(self, t: float) -> float:
        """lambda at network time t (the schedule's, exact at a discrete step)."""
        with torch.no_grad():
            return float(self.model.schedule.log_snr(torch.tensor([t], dtype=torch.float64)))

    def t_of_log_snr(self, lam: float) -> float:
        """Network time of a log-SNR, clamped to the network's range [t_first, 1]."""
        if lam >= self.lam_first:
            return self.t_first
        if lam <= self.lam_last:
            return 1.0
        with torch.no_grad():
            t = float(self.model.schedule.t_of_log_snr(torch.tensor([lam], dtype=torch.float64)))
        return min(1.0, max(self.t_first, t))

    def t_of_s(self, s: float) -> float:
        """Network time of a noise-to-signal ratio s; t_first below s_first (the tail)."""
        if s <= self.s_first:
            return self.t_first
        return self.t_of_log_snr(-2.0 * math.log(s))

    def s_of_t(self, t: float) -> float:
        return math.exp(-0.5 * self.log_snr(t))

    def to_y(self, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        """The model's x_t in EDM's coordinates at time t. Shapes: (B, *D) -> (B, *D) float64."""
        return x.to(torch.float64) * math.sqrt(1 + self.s_of_t(t) ** 2)

    def to_x(self, y: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        """EDM's y back to the model's x_t at time t. Shapes: (B, *D) -> (B, *D) float64."""
        return y / math.sqrt(1 + self.s_of_t(t) ** 2)

    # -- the network ----------------------------------------------------------------

    def predict(self, y: torch.Tensor, t: float):
        """(x0_hat, eps_hat) at y and network time t, the network seeing x = alpha(t) y.

        Shapes: y (B, *D) float64 -> ((B, *D), (B, *D)) float64.
        """
        s = self.s_of_t(t)
        alpha = 1.0 / math.sqrt(1.0 + s * s)
        b = y.shape[0]
        tt = torch.full((b,), t, dtype=torch.float64, device=y.device)
        abar = torch.full((b,), alpha * alpha, dtype=torch.float64, device=y.device)
        pred = self.predict_fn(alpha * y, tt, self.cond, abar)
        # x0_hat = (x - sigma eps) / alpha = y - s eps: the same in both coordinates. The
        # prediction's own x0, which is exact where the network gives it (x0, v).
        return pred.x0.to(torch.float64), pred.eps.to(torch.float64)


def time_grid(flow: Flow, steps: int, kind: str = "edm") -> list[float]:
    """``steps`` network times from t = 1 down to the first latent t_first, spaced
    uniformly in t, in log-SNR, or by EDM's rho = 7 rule in s = sigma / alpha
    (s_i^(1/rho) uniform: short steps near the data, where the flow bends most).
    A fixed-step solver goes from each to the next, then from t_first to the data.

    Shapes: returns a list of ``steps`` floats, decreasing.
    """
    if steps < 1:
        raise ConfigError(f"a fixed-step solver needs at least 1 step, got {steps}")
    if kind not in GRIDS:
        raise ConfigError(f"unknown time grid {kind!r}; choose one of {', '.join(GRIDS)}")
    if steps == 1:
        return [1.0]
    frac = [i / (steps - 1) for i in range(steps)]
    if kind == "uniform-t":
        ts = [1.0 + f * (flow.t_first - 1.0) for f in frac]
    elif kind == "log-snr":
        ts = [flow.t_of_log_snr(flow.lam_last + f * (flow.lam_first - flow.lam_last)) for f in frac]
    else:
        hi, lo = flow.s_last ** (1 / EDM_RHO), flow.s_first ** (1 / EDM_RHO)
        ts = [flow.t_of_s((hi + f * (lo - hi)) ** EDM_RHO) for f in frac]
    ts[0], ts[-1] = 1.0, flow.t_first  # the ends exactly (no round trip through lambda)
    return ts
