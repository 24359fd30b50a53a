"""A Hugging Face diffusers model, read from a local folder, as a thermodiff model.

The folder is what ``save_pretrained`` writes: a ``DDPMPipeline``'s (``model_index.json``,
``unet/`` and ``scheduler/``) or a ``UNet2DModel``'s own (``config.json`` and its weights)
with a ``scheduler_config.json`` beside them. Nothing is fetched from the hub.

What maps onto what (diffusers' conventions, from its ``DDPMScheduler``):

- the schedule: diffusers' betas (``beta_schedule`` linear, scaled_linear,
  squaredcos_cap_v2, or ``trained_betas``) as a discrete schedule of T =
  ``num_train_timesteps`` steps; diffusers' ``alphas_cumprod[k]`` is thermodiff's
  abar at step k + 1, so the network is called with timestep k = i - 1 at step i;
- the prediction: ``prediction_type`` epsilon, sample, v_prediction as thermodiff's
  eps, x0, v; ``variance_type`` fixed_small, fixed_large, learned_range (the
  network's second half of channels, improved DDPM) as fixed-small, fixed-large,
  learned-range; ``learned`` (a variance predicted directly) has no counterpart;
- the data: diffusers models see level k of an 8-bit image as x_k = k / 127.5 - 1 in
  [-1, 1]; thermodiff's dequantised level y + u (u uniform in [0, 1)) fills the bin
  [k, k + 1), so the model's affine map is (y - 128) / 127.5, which centres every bin
  on x_k (x_k -+ 1 / 255, improved DDPM's bins), and figures in the data's own units
  (levels) include its Jacobian, -D log 127.5;
- the decoder p(x_0 | x_1): improved DDPM's discretised Gaussian, the mass of the
  model's first-step Gaussian (variance beta_1) on each level's bin
  (``kernels.DiscretizedNormal``), so that K bounds the log-probability of the 8-bit
  images themselves.

Needs the optional extra: ``pip install thermodiff[diffusers]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .model import DiffusionModel, ModelSpec
from .schedules import DiscreteSchedule

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "fixed-small", "fixed_large": "fixed-large", "learned_range": "learned-range"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Dequantised 8-bit levels in diffusers' units: (y - 128) / 127.5, level k's bin centred
# on k / 127.5 - 1.
LEVEL_SHIFT, LEVEL_SCALE = 128.0, 127.5


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError("reading a diffusers model needs the diffusers package: "
                          "pip install 'thermodiff[diffusers]'") from None
    return diffusers


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: not a diffusers model folder (no {path.name}: {what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
    return value


def locate(folder: str | Path) -> tuple[Path, dict]:
    """The UNet's folder and the scheduler's config in a diffusers folder; one-line
    CheckpointError naming what is missing. Shapes: none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: diffusers model folder not found")
    if (folder / "model_index.json").is_file():  # a pipeline: unet/ and scheduler/
        unet, scheduler = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    else:
        unet, scheduler = folder, folder / "scheduler_config.json"
    unet_config = _read_json(unet / "config.json", "the UNet's config")
    if unet_config.get("_class_name") not in (None, "UNet2DModel"):
        raise ConfigError(f"{unet}: a {unet_config.get('_class_name')}; thermodiff reads UNet2DModel only")
    return unet, _read_json(scheduler, "the scheduler's config")


def scheduler_betas(config: dict) -> torch.Tensor:
    """The betas of a DDPMScheduler / DDIMScheduler config, as diffusers computes them
    (float64 here). Shapes: returns (T,) float64."""
    name = config.get("_class_name")
    if name not in (None, "DDPMScheduler", "DDIMScheduler"):
        raise ConfigError(f"scheduler {name}: thermodiff reads DDPMScheduler and DDIMScheduler configs")
    if config.get("rescale_betas_zero_snr"):
        raise ConfigError("rescale_betas_zero_snr: a last step of zero signal-to-noise has no Gaussian prior; "
                          "thermodiff cannot represent it")
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
        if betas.numel() != T:
            raise ConfigError(f"trained_betas holds {betas.numel()} values for num_train_timesteps = {T}")
        return betas
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        # improved DDPM's cosine: beta_t = 1 - abar(t / T) / abar((t - 1) / T), capped at 0.999.
        def abar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    raise ConfigError(f"beta_schedule {kind!r} is not supported; thermodiff reads {', '.join(BETA_SCHEDULES)} "
                      "or trained_betas")


def model_spec(config: dict) -> ModelSpec:
    """prediction_type and variance_type as thermodiff's parametrisation and variance."""
    pred, var = config.get("prediction_type", "epsilon"), config.get("variance_type", "fixed_small")
    if pred not in PREDICTIONS:
        raise ConfigError(f"prediction_type {pred!r} is not supported; thermodiff reads {', '.join(PREDICTIONS)}")
    if var not in VARIANCES:
        raise ConfigError(f"variance_type {var!r} is not supported; thermodiff reads {', '.join(VARIANCES)}")
    return ModelSpec(PREDICTIONS[pred], VARIANCES[var], decoder="discretized")


class DiffusersNet(nn.Module):
    """A UNet2DModel called as thermodiff calls a network: net(x, t) with x flat and t =
    i / T at step i; diffusers sees the image and its timestep i - 1.

    Shapes: x (B, C*H*W), t (B,) -> (B, C_out, H, W).
    """

    def __init__(self, unet: nn.Module, T: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.unet = unet
        self.T = T
        self.image_shape = tuple(image_shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        steps = torch.round(t.to(torch.float64) * self.T).long() - 1
        return self.unet(x.reshape((x.shape[0],) + self.image_shape), steps.clamp(0, self.T - 1)).sample


def from_unet(unet: nn.Module, scheduler_config: dict, image_shape: tuple[int, int, int]) -> DiffusionModel:
    """A thermodiff model of a UNet (anything called as unet(sample, timestep).sample)
    and a scheduler config, over 8-bit images of `image_shape` (C, H, W).

    Shapes: the model's examples are (C, H, W) levels.
    """
    spec = model_spec(scheduler_config)
    schedule = DiscreteSchedule.from_betas(scheduler_betas(scheduler_config))
    channels = 2 if spec.variance == "learned-range" else 1
    model = DiffusionModel(DiffusersNet(unet, schedule.T, image_shape), schedule, spec, image_shape, channels=channels)
    with torch.no_grad():
        model.scaler.shift.fill_(LEVEL_SHIFT)
        model.scaler.scale.fill_(LEVEL_SCALE)
    return model


def load(folder: str | Path, device: str = "cpu") -> DiffusionModel:
    """A diffusers folder as a thermodiff DiffusionModel over 8-bit images (levels 0..255
    dequantised), in eval mode on `device`. Raises CheckpointError for a folder that is
    not a diffusers model, ConfigError for what thermodiff cannot represent.

    Shapes: the model's examples are (C, H, W) levels.
    """
    diffusers = _import_diffusers()
    unet_dir, sched = locate(folder)
    spec = model_spec(sched)  # what thermodiff cannot represent is refused before the weights load
    scheduler_betas(sched)
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{unet_dir}: cannot load the UNet2DModel ({str(exc).splitlines()[0][:160]})") from None
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(unet.config.in_channels), int(h), int(w))
    channels = 2 if spec.variance == "learned-range" else 1
    if int(unet.config.out_channels) != channels * shape[0]:
        raise ConfigError(f"the UNet has {unet.config.out_channels} output channels; {spec.variance} variance over "
                          f"{shape[0]} input channels needs {channels * shape[0]}")
    return from_unet(unet, sched, shape).to(device).eval()
