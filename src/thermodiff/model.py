"""The trained object: a network, a schedule, a parametrisation and the data's affine map.

``DiffusionModel`` is the one callable every sampler, loss and likelihood takes:
``model(x_t, t)`` returns the network output for noisy data x_t at times t, shaped
(B, C, *D) with C output channels per data dimension. Everything else about the
reverse process (kernel means, variances, x0 predictions) is derived from it by
``parametrization.reverse_kernel`` in one place.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError, DataError
from .schedules import ContinuousSchedule, DiscreteSchedule


class AffineScaler(nn.Module):
    """The fixed map from the data's own units y to the model's units x = (y - shift) / scale.

    One scale for the whole data set (paper, Table 1 caption: "scaled by a constant
    to give them variance 1"), a shift per dimension. Densities convert as
    log p_y(y) = log p_x(x) - D log(scale): the Jacobian of the map.
    """

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("shift", torch.zeros(data_shape, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))

    @torch.no_grad()
    def fit(self, y: torch.Tensor) -> None:
        """Centre, then scale so that the variance per dimension averaged over dimensions is 1.

        Shapes: y (N, *D).
        """
        y = y.to(torch.float64)
        self.shift.copy_(y.mean(0))
        var = ((y - self.shift) ** 2).mean()
        if not torch.isfinite(var) or var <= 0:
            raise DataError("the training data have zero variance: every example is the same")
        self.scale.copy_(var.sqrt())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Shapes: y (B, *D) -> (B, *D) float32."""
        return ((y.to(torch.float64) - self.shift) / self.scale).to(torch.float32)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: x (B, *D) -> (B, *D) float64, in the data's own units."""
        return x.to(torch.float64) * self.scale + self.shift

    def log_det(self, n_dims: int) -> float:
        """log |dx/dy| = -D log(scale), nats: add it to log p_x to get log p_y."""
        return -n_dims * float(torch.log(self.scale))


@dataclass(frozen=True)
class ModelSpec:
    """The choices that fix how network outputs become reverse kernels."""

    parametrization: str = "eps"
    variance: str = "fixed-small"
    decoder: str = "paper"  # paper: last step fixed to the forward kernel; learned


PROCESSES = ("gaussian", "binomial")


class DiffusionModel(nn.Module):
    """Network + schedule + parametrisation + data scaling, for one forward process.

    process: ``gaussian`` (continuous data, scaled by the fitted affine map) or
    ``binomial`` (binary data, never scaled; the model keeps the training data's mean
    rate of ones for the null model L_null).
    Time: for a discrete schedule of T steps, step i is fed to the network as t = i / T;
    for a continuous schedule t is in [0, 1] and the first latent sits at t = 0.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: DiscreteSchedule | ContinuousSchedule,
        spec: ModelSpec,
        data_shape: tuple[int, ...],
        channels: int,
        process: str = "gaussian",
    ):
        super().__init__()
        # Autocast dtype for the network (training only; see train.precision). None: off.
        self.net_dtype: torch.dtype | None = None
        if process not in PROCESSES:
            raise ConfigError(f"unknown process kind {process!r}; choose one of {', '.join(PROCESSES)}")
        self.process = process
        self.net = net
        self.schedule = schedule
        self.spec = spec
        self.data_shape = tuple(data_shape)
        self.channels = channels
        self.scaler = AffineScaler(self.data_shape)
        if process == "binomial":
            if self.continuous:
                raise ConfigError("the binomial process is discrete: set process.time = 'discrete'")
            # The null model's rate of ones (paper: L_null of the heartbeat data at p = 0.2).
            self.register_buffer("null_rate", torch.full((), 0.5, dtype=torch.float64))
        elif self.continuous and (spec.parametrization == "paper" or spec.variance != "fixed-small"):
            raise ConfigError(
                "continuous time needs parametrization eps, x0 or v with variance fixed-small "
                "(as T -> infinity every other variance converges to it)"
            )
        if spec.decoder not in ("paper", "learned"):
            raise ConfigError(f"unknown decoder {spec.decoder!r}; choose paper or learned")

    @property
    def binomial(self) -> bool:
        return self.process == "binomial"

    def check_data(self, y: torch.Tensor, what: str) -> torch.Tensor:
        """Reject data this model cannot score: NaN or inf, a wrong example shape, and for
        the binomial process any value but 0 and 1 (one-line DataError naming ``what``).

        Shapes: y (N, *D) -> the same tensor.
        """
        from .data import check_finite
        from .processes.binomial import check_binary

        check_finite(y, what)
        if tuple(y.shape[1:]) != self.data_shape:
            raise DataError(f"{what}: examples have shape {tuple(y.shape[1:])}, the model was trained on {self.data_shape}")
        if self.binomial:
            check_binary(y, what)
        return y

    @torch.no_grad()
    def fit_data(self, y: torch.Tensor) -> None:
        """Fit what the model takes from its training data: the affine map (Gaussian), or
        the null model's rate of ones (binomial; binary data are never rescaled).

        Shapes: y (N, *D) in the data's own units.
        """
        if self.binomial:
            rate = y.to(torch.float64).mean().clamp(1e-6, 1 - 1e-6)  # keep L_null finite
            self.null_rate.copy_(rate)
        else:
            self.scaler.fit(y)

    @property
    def continuous(self) -> bool:
        return isinstance(self.schedule, ContinuousSchedule)

    @property
    def n_dims(self) -> int:
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output for noisy data at times t.

        Shapes: x_t (B, *D), t (B,) in [0, 1] -> (B, C, *D).
        """
        b = x_t.shape[0]
        # Mixed precision for the network alone: convolutions and matmuls run in
        # net_dtype, while the schedule, the KL terms and the bound stay in float32/64.
        precision = nullcontext() if self.net_dtype is None else torch.autocast(x_t.device.type, dtype=self.net_dtype)
        with precision:
            out = self.net(x_t.reshape(b, -1), t.to(x_t.dtype))
        if self.net_dtype is not None:
            out = out.to(x_t.dtype)  # back from the autocast dtype
        return out.reshape((b, self.channels) + self.data_shape)

    # -- the schedule as seen by the bound and the samplers -------------------------

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """Signal fraction at network times t; for discrete time t must be i / T.

        Shapes: t (B,) -> (B,) float64.
        """
        if self.continuous:
            return self.schedule.abar(t)
        T = self.schedule.T
        i = torch.round(t.to(torch.float64) * T).long()
        return self.schedule.abar()[i]

    def abar_first(self) -> torch.Tensor:
        """abar of the first latent (x_1, or z at t = 0): 1 - beta_1. Shapes: () float64."""
        if self.continuous:
            return self.schedule.abar(torch.zeros(1, dtype=torch.float64))[0]
        return self.schedule.abar()[1]

    def abar_last(self) -> torch.Tensor:
        """abar of the last latent x_T. Shapes: () float64."""
        if self.continuous:
            return self.schedule.abar(torch.ones(1, dtype=torch.float64))[0]
        return self.schedule.abar()[-1]


def build_schedule(cfg) -> DiscreteSchedule | ContinuousSchedule:
    """The schedule a ProcessConfig describes."""
    if cfg.kind not in PROCESSES:
        raise ConfigError(f"unknown process kind {cfg.kind!r}; choose one of {', '.join(PROCESSES)}")
    if cfg.kind == "binomial" and cfg.time != "discrete":
        raise ConfigError("the binomial process is discrete: set process.time = 'discrete'")
    if cfg.kind == "binomial" and cfg.schedule == "learned":
        # Paper 2.4.1: frozen-noise gradient ascent on beta needs a reparametrised x_t;
        # binary states have none, so the binomial process uses a fixed schedule.
        raise ConfigError("the binomial process cannot learn its schedule (x_t is discrete); choose binomial, linear or cosine")
    if cfg.time == "discrete":
        return DiscreteSchedule(cfg.schedule, cfg.T, cfg.beta_1, cfg.beta_start, cfg.beta_end, cfg.cosine_s)
    if cfg.time == "continuous":
        return ContinuousSchedule(cfg.schedule, cfg.gamma_min, cfg.gamma_max, cfg.learn_endpoints)
    raise ConfigError(f"unknown process.time {cfg.time!r}; choose discrete or continuous")


def build_model(cfg, data_shape: tuple[int, ...]) -> DiffusionModel:
    """A fresh DiffusionModel for a Config and a data shape (scaler not yet fitted)."""
    from . import parametrization
    from .nets import build_net

    m = cfg.model
    channels = parametrization.output_channels(m.parametrization, m.variance, cfg.process.kind)
    schedule = build_schedule(cfg.process)
    n = 1
    for s in data_shape:
        n *= s
    if m.net == "mlp":
        options = dict(
            width=m.width,
            depth=m.depth,
            time_dim=m.time_dim,
            fourier_frequencies=m.fourier_frequencies,
            fourier_min_exponent=m.fourier_min_exponent,
            activation=m.activation,
        )
    elif m.net == "rbf":
        if cfg.process.time != "discrete":
            raise ConfigError("model.net = 'rbf' has a readout per time step and needs process.time = 'discrete'")
        options = dict(hidden=m.rbf_hidden)
    elif m.net == "sigmoid_mlp":
        if cfg.process.time != "discrete":
            raise ConfigError("model.net = 'sigmoid_mlp' has a readout per time step and needs process.time = 'discrete'")
        options = dict(hidden=m.width, depth=m.depth)
    elif m.net in ("unet", "multiscale") and len(data_shape) != 3:
        raise ConfigError(f"model.net = {m.net!r} needs image data shaped (C, H, W), got examples of shape {tuple(data_shape)}")
    elif m.net == "unet":
        options = dict(
            image_shape=tuple(data_shape),
            base_channels=m.base_channels,
            channel_mults=tuple(m.channel_mults),
            num_res_blocks=m.num_res_blocks,
            attention_levels=tuple(m.attention_levels),
            time_dim=m.time_dim,
            dropout=m.dropout,
        )
    elif m.net == "multiscale":
        options = dict(
            image_shape=tuple(data_shape),
            channels=m.base_channels,
            conv_layers=m.conv_layers,
            dense_layers=m.dense_layers,
            n_bumps=m.n_bumps,
        )
    else:
        options = {}
    net = build_net(m.net, n, channels * n, cfg.process.T, **options)
    spec = ModelSpec(m.parametrization, m.variance, m.decoder)
    return DiffusionModel(net, schedule, spec, data_shape, channels, cfg.process.kind)
