"""The trained object: a network, a schedule, a parametrisation, a forward process and
the data's affine map.

``DiffusionModel`` is the one object every sampler, loss and likelihood takes. Its
``forward(x_t, t, cond)`` is the one place the network is called (the raw output,
shaped (B, C, *D)); ``predict`` turns that output into a typed
``parametrization.Prediction`` and ``reverse`` into the reverse kernel p(x_s | x_t).
Nothing else interprets the network's output. What depends on the forward process
is asked of ``model.process`` (``processes``), what depends on time of
``model.schedule`` (``schedules``), and what depends on the parametrisation of
``model.param``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import parametrization, processes
from .data import check_finite
from .config import AUTO, AUTO_KEYS
from .errors import ConfigError, DataError
from .kernels import DiscretizedNormal, Kernel
from .nets import build_net
from .parametrization import Prediction
from .schedules import ContinuousSchedule, DiscreteSchedule


SCALINGS = ("global", "per-dim")
# The decoder p(x_0 | x_1): the forward process's fixed last step (the paper's), the
# reverse kernel's first step as a density (learned), or that Gaussian's mass on each
# 8-bit level's bin (discretized, improved DDPM's; for dequantised levels).
DECODERS = ("paper", "learned", "discretized")


class AffineScaler(nn.Module):
    """The fixed map from the data's own units y to the model's units x = (y - shift) / scale.

    A shift per dimension and, with ``per_dim`` False (data.scaling = "global"), one
    scale for the whole data set (paper, Table 1 caption: "scaled by a constant to give
    them variance 1"); with ``per_dim`` (data.scaling = "per-dim") a scale per
    dimension, so that every dimension has variance 1, a narrow one as much as a wide
    one. Densities convert as log p_y(y) = log p_x(x) - sum_d log(scale_d): the
    Jacobian of the map (``log_det``).
    """

    def __init__(self, data_shape: tuple[int, ...], per_dim: bool = False):
        super().__init__()
        self.register_buffer("shift", torch.zeros(data_shape, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(data_shape if per_dim else (), dtype=torch.float64))

    @property
    def per_dim(self) -> bool:
        return self.scale.dim() > 0

    @torch.no_grad()
    def fit(self, y: torch.Tensor) -> None:
        """Centre, then scale so that the variance per dimension averaged over dimensions
        is 1 (global), or the variance of every dimension is 1 (per-dim).

        Shapes: y (N, *D).
        """
        y = y.to(torch.float64)
        # Scale-safe: the spread is computed on y / 2^k with 2^k >= max|y| (values in
        # [-1, 1]), so squaring neither overflows (data near 1e200) nor underflows (near
        # 1e-200) to a false zero; dividing by a power of two is exact, so ordinary data
        # get the same shift and scale to the bit as without it.
        top = y.abs().max()
        if not torch.isfinite(top):
            raise DataError("the training data hold NaN or inf")
        if top == 0:
            raise DataError("the training data have zero variance: every example is the same")
        big = torch.ldexp(torch.ones((), dtype=torch.float64), torch.frexp(top).exponent.clamp(max=1023))
        z = y / big
        z_shift = z.mean(0)
        z_var = ((z - z_shift) ** 2).mean(0) if self.per_dim else ((z - z_shift) ** 2).mean()
        if not (z_var > 0).any():
            raise DataError("the training data have zero variance: every example is the same")
        if not (z_var > 0).all():
            first = tuple(int(i) for i in (z_var <= 0).nonzero()[0])
            raise DataError(f"the training data are constant in dimension {first[0] if len(first) == 1 else first}: "
                            "data.scaling = 'per-dim' cannot scale it to variance 1; use data.scaling = 'global'")
        scale = z_var.sqrt() * big
        info = torch.finfo(torch.float64)
        if not (scale >= info.tiny).all():
            raise DataError(
                f"the training data's spread ({float(scale.min()):.3g}) is below float64's smallest normal number "
                f"({info.tiny:.3g}): rescale the data"
            )
        if not (scale <= info.max / 1e6).all():
            raise DataError(
                f"the training data's spread ({float(scale.max()):.3g}) is too close to float64's largest value "
                f"({info.max:.3g}) to sample from: rescale the data"
            )
        self.shift.copy_(z_shift * big)
        self.scale.copy_(scale)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Shapes: y (B, *D) -> (B, *D) float32."""
        return ((y.to(torch.float64) - self.shift) / self.scale).to(torch.float32)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: x (B, *D) -> (B, *D) float64, in the data's own units."""
        return x.to(torch.float64) * self.scale + self.shift

    def log_det(self, n_dims: int) -> float:
        """log |dx/dy| = -sum_d log(scale_d) (-D log(scale) for one scale), nats: add it
        to log p_x to get log p_y. Shapes: none."""
        if self.per_dim:
            return -float(torch.log(self.scale).sum())
        return -n_dims * float(torch.log(self.scale))

    def geometric_scale(self) -> float:
        """The one scale with the same Jacobian: exp(mean_d log scale_d). Shapes: none."""
        return float(torch.exp(torch.log(self.scale).mean()))


@dataclass(frozen=True)
class ModelSpec:
    """The choices that fix how network outputs become reverse kernels."""

    parametrization: str = "eps"
    variance: str = "fixed-small"
    decoder: str = "paper"  # paper: last step fixed to the forward kernel; learned; discretized (8-bit levels)


class DiffusionModel(nn.Module):
    """Network + schedule + parametrisation + data scaling, for one forward process.

    process: ``gaussian`` (continuous data, scaled by the fitted affine map) or
    ``binomial`` (binary data, never scaled; the model keeps the training data's mean
    rate of ones for the null model L_null), or a process object.
    Time: the network sees t in [0, 1]; step i of a discrete schedule is t = i / T, and
    in continuous time the first latent sits at t = 0 (``schedules``).
    cond: class labels (B,) int64 in 0..num_classes, the last being the null class
    ("no label"), for a class-conditional model (num_classes > 0), passed through to
    the network; None calls the network as net(x, t), which a conditional network
    reads as the null class (p(x)). scaling: the data map's scale, ``global`` (one,
    the paper's) or ``per-dim`` (``AffineScaler``).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: DiscreteSchedule | ContinuousSchedule,
        spec: ModelSpec,
        data_shape: tuple[int, ...],
        channels: int | None = None,
        process="gaussian",
        scaling: str = "global",
        num_classes: int = 0,
    ):
        super().__init__()
        self.num_classes = int(num_classes)
        self.process = processes.get(process) if isinstance(process, str) else process
        self.param = parametrization.resolve(spec.parametrization, spec.variance, self.process.name)
        self.process.check_schedule(schedule.continuous, schedule.kind)
        if schedule.continuous and not self.param.continuous_time:
            raise ConfigError(
                "continuous time needs parametrization eps, x0 or v with variance fixed-small "
                "(as T -> infinity every other variance converges to it)"
            )
        if spec.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {spec.decoder!r}; choose {', '.join(DECODERS)}")
        self.net = net
        self.schedule = schedule
        self.spec = spec
        self.data_shape = tuple(data_shape)
        self.channels = self.param.channels if channels is None else channels
        if scaling not in SCALINGS:
            raise ConfigError(f"unknown data.scaling {scaling!r}; choose global or per-dim")
        self.scaler = AffineScaler(self.data_shape, per_dim=scaling == "per-dim")
        self.process.register_buffers(self)

    @property
    def null_class(self) -> int:
        """The label index of "no label" (p(x)) in a conditional model. Shapes: none."""
        return self.num_classes

    @property
    def net_dtype(self) -> torch.dtype | None:
        """The dtype the network computes in now: the autocast dtype where the caller turned
        autocast on for the parameters' device (train.precision), None otherwise."""
        device = next(self.parameters()).device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

    def check_data(self, y: torch.Tensor, what: str) -> torch.Tensor:
        """Reject data this model cannot score: NaN or inf, a wrong example shape, and what
        the process refuses (binary data for the binomial process), one-line DataError
        naming ``what``.

        Shapes: y (N, *D) -> the same tensor.
        """
        check_finite(y, what)
        if tuple(y.shape[1:]) != self.data_shape:
            raise DataError(f"{what}: examples have shape {tuple(y.shape[1:])}, the model was trained on {self.data_shape}")
        return self.process.check_data(y, what)

    @torch.no_grad()
    def fit_data(self, y: torch.Tensor) -> None:
        """Fit what the model takes from its training data (the process decides: the affine
        map for the Gaussian process, the null model's rate of ones for the binomial one).

        Shapes: y (N, *D) in the data's own units.
        """
        self.process.fit_data(self, y)

    def null_log_likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """L_null per example (the process's null model on scaled data), nats.

        Shapes: y (N, *D) data units -> (N,) float64.
        """
        return self.process.null_log_likelihood(self, self.scaler(y))

    @property
    def n_dims(self) -> int:
        n = 1
        for s in self.data_shape:
            n *= s
        return n

    # -- the network, and what its output means -------------------------------------

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """The network output for noisy data at times t: the one place the network is called.

        Under the caller's autocast (training on CUDA in bf16) the network computes in
        reduced precision and its output comes back in x_t's dtype; the schedule, the
        kernels and the bound never see bf16.

        Shapes: x_t (B, *D), t (B,) in [0, 1] -> (B, C, *D).
        """
        b = x_t.shape[0]
        x, tt = x_t.reshape(b, -1), t.to(x_t.dtype)
        out = self.net(x, tt) if cond is None else self.net(x, tt, cond)
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.to(x_t.dtype)
        return out.reshape((b, self.channels) + self.data_shape)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, abar_t: torch.Tensor | None = None,
                detach_mean: bool = False) -> Prediction:
        """The network's prediction at (x_t, t): x0, eps (and v, score) where defined.

        x_t may be float64 (a chain kept in double precision): the network sees it in its
        own dtype, the prediction is built from the given values. abar_t: the signal
        fraction at t where the caller holds it (with its gradient, for a learned
        schedule); else the schedule's. detach_mean stops the gradient through the mean
        channel (the hybrid objective trains only the variance on the bound).

        Shapes: x_t (B, *D), t (B,), abar_t (B,) float64 -> Prediction over (B, *D).
        """
        out = self(x_t.to(next(self.parameters()).dtype), t, cond)
        if detach_mean:
            out = torch.cat([out[:, :1].detach(), out[:, 1:]], dim=1)
        return self.param.predict(out, x_t, self.schedule.abar(t) if abar_t is None else abar_t)

    def reverse(self, x_t: torch.Tensor, t: torch.Tensor, abar_s: torch.Tensor, abar_t: torch.Tensor, cond=None,
                detach_mean: bool = False) -> Kernel:
        """The model's p(x_s | x_t) for s < t; the decoder p(x_0 | x_1) when abar_s = 1.

        A ``paper`` decoder is the process's fixed last step (App. B.2); otherwise the
        kernel comes from the prediction through the parametrisation.

        Shapes: x_t (B, *D), t (B,) network times, abar_s, abar_t (B,) float64 -> Kernel.
        """
        if self.spec.decoder == "paper" and bool((abar_s >= 1).all()):
            return self.process.fixed_decoder(x_t, abar_t)
        pred = self.predict(x_t, t, cond, abar_t, detach_mean)
        kernel = self.param.reverse(pred, x_t, abar_s, abar_t)
        if self.spec.decoder == "discretized" and bool((abar_s >= 1).all()):
            # 8-bit levels: the first step's Gaussian, its mass on each level's bin.
            return DiscretizedNormal(kernel, self.scaler.shift, self.scaler.scale, x0=kernel.x0)
        return kernel

    def time_grid(self, steps: int | None = None) -> torch.Tensor:
        """Network times of the chain's latents, first to last (``schedule.grid``); a
        kernel defined per step (the paper's) refuses a respaced chain.

        Shapes: returns (n,) float64.
        """
        T = self.schedule.n_steps
        if self.param.per_step and steps is not None and T is not None and steps < T:
            raise ConfigError("the paper's kernel is defined per step: sample with all T steps")
        return self.schedule.grid(steps)

    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """Signal fraction at network times t (``schedule.abar``). Shapes: t (B,) -> (B,) float64."""
        return self.schedule.abar(t)


class CallCount:
    """Network calls counted by ``count_calls``: calls (batched forwards) and rows (examples
    through the network, summed over calls)."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def per_example(self, n: int) -> float:
        """Network calls per example (NFE) for n examples drawn. Shapes: none."""
        return self.rows / max(n, 1)


@contextmanager
def count_calls(model: DiffusionModel):
    """Count the model's network evaluations inside the block (a forward hook on
    ``model.net``): NFE for any sampler, solver or estimator alike.

    Shapes: yields a CallCount.
    """
    count = CallCount()

    def hook(module, inputs, output):
        count.calls += 1
        count.rows += int(inputs[0].shape[0])

    handle = model.net.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def build_schedule(cfg) -> DiscreteSchedule | ContinuousSchedule:
    """The schedule a ProcessConfig describes."""
    processes.get(cfg.kind).check_schedule(cfg.time != "discrete", cfg.schedule)
    if cfg.time == "discrete":
        return DiscreteSchedule(cfg.schedule, cfg.T, cfg.beta_1, cfg.beta_start, cfg.beta_end, cfg.cosine_s)
    if cfg.time == "continuous":
        return ContinuousSchedule(cfg.schedule, cfg.gamma_min, cfg.gamma_max, cfg.learn_endpoints)
    raise ConfigError(f"unknown process.time {cfg.time!r}; choose discrete or continuous")


def build_model(cfg, data_shape: tuple[int, ...]) -> DiffusionModel:
    """A fresh DiffusionModel for a Config and a data shape (scaler not yet fitted)."""
    m = cfg.model
    from_size = [k for k in AUTO_KEYS if k.startswith("model.") and getattr(m, k.split(".")[1]) == AUTO]
    if from_size:
        raise ConfigError(f"config key {from_size[0]!r} = -1 is chosen from the training data when training starts "
                          "(defaults.for_data); give a value to build a model without training")
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
            dropout=m.dropout,
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
    if m.num_classes == AUTO:
        raise ConfigError("model.num_classes = -1 is chosen from the training labels when training starts; "
                          "give a value to build a model without training")
    if m.num_classes:
        options["num_classes"] = m.num_classes
    net = build_net(m.net, n, channels * n, cfg.process.T, **options)
    spec = ModelSpec(m.parametrization, m.variance, m.decoder)
    return DiffusionModel(net, schedule, spec, data_shape, channels, cfg.process.kind, cfg.data.scaling,
                          num_classes=m.num_classes)
