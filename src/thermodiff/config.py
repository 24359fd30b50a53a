"""Run configuration: frozen nested dataclasses <-> TOML, with dotted ``--set`` overrides.

Loading is strict: an unknown key, a value of the wrong type, a number outside its
allowed range (``RANGES``) or malformed TOML is a ``ConfigError`` naming the key (and
the range). The resolved config (defaults filled in, overrides
applied) is saved in every run folder and checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_DIR = Path(__file__).parent / "configs"


def config_path(name: str) -> Path:
    """A config shipped with thermodiff, by name (``swissroll``, ``paper/swissroll``)."""
    return CONFIG_DIR / f"{name}.toml"


@dataclass(frozen=True)
class DataConfig:
    name: str = "swissroll"  # swissroll | mixture | heartbeat | array | mnist | cifar10 | imagefolder | deadleaves
    path: str = ""  # array: the training file (.npy, .npz, .csv)
    kind: str = "auto"  # array: auto | vectors | levels (8-bit images) | images (continuous); see data/arrays.py
    root: str = ""  # mnist, cifar10, imagefolder: the folder holding the files
    binarize: str = ""  # mnist: threshold | stochastic (binary, binomial process); empty: 8-bit levels, dequantised
    test_path: str = ""  # array: held-out file; empty: hold out test_fraction of path
    labels: str = ""  # array: class labels of path's examples (.npy, or a one-column .csv of integers or strings)
    test_labels: str = ""  # array: class labels of test_path's examples
    test_fraction: float = 0.1
    validation_fraction: float = 0.0  # share of the training examples held out to monitor training; 0: none
    scaling: str = "global"  # continuous data: global (one scale, the paper's) | per-dim (each dimension to variance 1)
    validation_path: str = ""  # a validation file (.npy, .npz, .csv) instead of a share of the training data
    n_train: int = 100_000  # generated data sets: their size; files (mnist, cifar10, imagefolder): the first n, 0: all
    n_test: int = 20_000  # likewise for the held-out set
    size: int = 32  # deadleaves: image side in pixels
    seed: int = 0


@dataclass(frozen=True)
class ProcessConfig:
    kind: str = "gaussian"  # gaussian | binomial
    time: str = "continuous"  # discrete | continuous
    T: int = 1000  # discrete: number of steps; continuous: default sampling steps
    schedule: str = "linear-logsnr"  # discrete: binomial linear cosine learned; continuous: linear-logsnr cosine learned
    beta_1: float = 1e-3  # first step of the binomial and learned schedules; 0: the schedule's own 1/T
    beta_start: float = 1e-4  # linear schedule, given for T = 1000
    beta_end: float = 0.02
    cosine_s: float = 0.008
    gamma_min: float = -13.3  # continuous: -log SNR of the first latent
    gamma_max: float = 5.0  # continuous: -log SNR of the last latent
    learn_endpoints: bool = False


@dataclass(frozen=True)
class ModelConfig:
    net: str = "mlp"  # mlp | rbf | sigmoid_mlp (width x depth sigmoid units) | unet | multiscale
    parametrization: str = "eps"  # paper | eps | x0 | v
    variance: str = "fixed-small"  # fixed-small | fixed-large | learned-range
    decoder: str = "paper"  # paper (last step fixed to the forward kernel) | learned | discretized (8-bit levels)
    width: int = 256  # mlp, sigmoid_mlp; -1: from the training set's size (defaults.py)
    depth: int = 4
    time_dim: int = 64
    fourier_frequencies: int = 0
    fourier_min_exponent: int = 0
    activation: str = "silu"
    rbf_hidden: int = 16
    base_channels: int = 32  # unet; multiscale: channels of every layer
    channel_mults: tuple[int, ...] = (1, 2)  # unet: channels per level, times base_channels
    num_res_blocks: int = 1  # unet: residual blocks per level
    attention_levels: tuple[int, ...] = ()  # unet: levels (0 = full resolution) with self-attention
    dropout: float = 0.0  # mlp, unet: dropout inside each residual block; -1: from the training set's size
    conv_layers: int = 2  # multiscale: multi-scale convolution layers
    dense_layers: int = 2  # multiscale: per-pixel tanh layers
    n_bumps: int = 16  # multiscale: Gaussian bumps of the time readout (paper eq. 62-63)
    num_classes: int = 0  # class-conditional model (a learned null class besides); 0: unconditional; -1: from the labels
    class_names: tuple[str, ...] = ()  # what each class index means: chosen from the data's labels when training starts


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "bound"  # bound | simple | hybrid
    hybrid_lambda: float = 0.001
    label_dropout: float = 0.1  # conditional models: share of examples trained with the null class (learns p(x))
    t_sampling: str = "importance"  # uniform | importance
    t_bins: int = 100  # continuous time: bins of the importance sampler
    batch_size: int = 512
    steps: int = 20_000  # -1: from the training set's size (defaults.py)
    max_seconds: float = 0.0  # wall-clock budget for this run; 0: none
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # constant | cosine | linear (decay to 0 at `steps`)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0: off
    ema_decay: float = 0.999  # 0: no EMA
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads; 0: torch's default
    validate_every: int = 0  # steps between held-out bounds on the validation set (else the test set); 0: no monitoring; -1: steps / 40
    validate_examples: int = 1000  # validation examples (the first ones) in each of these bounds
    validate_n_t: int = 16  # diffusion times per example in each of these bounds
    patience: int = 0  # held-out checks without a better bound before training stops; 0: never stop early
    precision: str = "auto"  # network arithmetic in training: auto (bf16 autocast on CUDA, float32 on CPU) | float32 | bf16


@dataclass(frozen=True)
class EvalConfig:
    n_t: int = 64  # diffusion times per example
    batch_size: int = 65_536  # network evaluations per batch
    max_examples: int = 0  # 0: the whole held-out set
    samples: int = 10_000  # benchmarks: samples drawn to score (binary data with a known support)
    sample_steps: int = 0  # sampling steps for benchmark samples and figures; 0: every step
    iw_M: int = 0  # benchmarks: trajectories per example for the importance-weighted estimate; 0: none
    iw_examples: int = 1000  # held-out examples for the importance-weighted estimate (its cost is M chains each)
    iw_steps: int = 0  # hops of its chain; 0: every step (discrete), 1000 hops (continuous time)
    ode_examples: int = 1000  # held-out examples for the ODE model's likelihood (`evaluate --ode`)
    ode_rtol: float = 1e-5  # its adaptive solver's relative tolerance (and of encode / decode)
    ode_atol: float = 1e-5  # and absolute tolerance
    ode_probes: int = -1  # Hutchinson probes per example; 0: exact divergence; -1: exact up to 16 dims, else 2
    seed: int = 0
    use_ema: bool = True


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

# The allowed range of every numeric config key, checked on every load (a TOML file,
# ``--set`` overrides, ``replace``): (low, high, low_open, high_open); None: no bound.
# Every integer is also below 2**63 (torch and numpy take 64-bit integers), every float
# finite. Tuples of integers: the range of each element.
SEED = (0, 2**63, False, True)
_AT_LEAST_1 = (1, None, False, False)  # a count or a period, where 0 has no meaning
_AT_LEAST_0 = (0, None, False, False)  # 0: off, none or "all", as the field's comment says
_POSITIVE = (0, None, True, False)
_FRACTION = (0, 1, False, True)  # probabilities and decays: [0, 1)
_ANY = (None, None, False, False)
RANGES = {
    "data.test_fraction": (0, 1, True, True),
    "data.validation_fraction": _FRACTION,
    "data.n_train": _AT_LEAST_0,  # 0 keeps a file's whole split (a generated set of 0 is refused as empty data)
    "data.n_test": _AT_LEAST_0,
    "data.size": _AT_LEAST_1,
    "data.seed": SEED,
    "process.T": _AT_LEAST_1,
    "process.beta_1": _FRACTION,
    "process.beta_start": (0, 1, True, True),
    "process.beta_end": (0, 1, True, True),
    "process.cosine_s": _POSITIVE,
    "process.gamma_min": _ANY,
    "process.gamma_max": _ANY,
    "model.width": _AT_LEAST_1,
    "model.depth": _AT_LEAST_1,
    "model.time_dim": _AT_LEAST_1,
    "model.fourier_frequencies": _AT_LEAST_0,
    "model.fourier_min_exponent": (-64, 64, False, False),
    "model.rbf_hidden": _AT_LEAST_1,
    "model.base_channels": _AT_LEAST_1,
    "model.channel_mults": _AT_LEAST_1,
    "model.num_res_blocks": _AT_LEAST_1,
    "model.attention_levels": _AT_LEAST_0,
    "model.dropout": _FRACTION,
    "model.conv_layers": _AT_LEAST_1,
    "model.dense_layers": _AT_LEAST_1,
    "model.n_bumps": _AT_LEAST_1,
    "model.num_classes": (-1, None, False, False),
    "train.hybrid_lambda": _AT_LEAST_0,
    "train.label_dropout": _FRACTION,
    "train.t_bins": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.steps": _AT_LEAST_1,
    "train.max_seconds": _AT_LEAST_0,
    "train.lr": _POSITIVE,
    "train.warmup_steps": _AT_LEAST_0,
    "train.weight_decay": _AT_LEAST_0,
    "train.grad_clip": _AT_LEAST_0,
    "train.ema_decay": _FRACTION,
    "train.seed": SEED,
    "train.log_every": _AT_LEAST_1,
    "train.checkpoint_every": _AT_LEAST_1,
    "train.threads": _AT_LEAST_0,
    "train.validate_every": _AT_LEAST_0,
    "train.validate_examples": _AT_LEAST_1,
    "train.validate_n_t": _AT_LEAST_1,
    "train.patience": _AT_LEAST_0,
    "eval.n_t": _AT_LEAST_1,
    "eval.batch_size": _AT_LEAST_1,
    "eval.max_examples": _AT_LEAST_0,
    "eval.samples": _AT_LEAST_0,
    "eval.sample_steps": _AT_LEAST_0,
    "eval.iw_M": _AT_LEAST_0,
    "eval.iw_examples": _AT_LEAST_1,
    "eval.iw_steps": _AT_LEAST_0,
    "eval.ode_examples": _AT_LEAST_1,
    "eval.ode_rtol": (0, 1, True, True),
    "eval.ode_atol": (0, None, True, False),
    "eval.ode_probes": (-1, None, False, False),
    "eval.seed": SEED,
}
_INT_LIMIT = 2**63
# Keys that also take -1: chosen from the training set's size when training starts
# (``defaults.for_data``).
AUTO = -1
AUTO_KEYS = ("train.steps", "train.validate_every", "model.dropout", "model.width")


def _bound(v) -> str:
    return "2**63" if v == _INT_LIMIT else f"{v:g}" if isinstance(v, float) else str(v)


def describe_range(rng, integer: bool) -> str:
    """A range of ``RANGES`` in words: "an integer >= 1", "a finite number in [0, 1)".
    Shapes: none."""
    lo, hi, lo_open, hi_open = rng
    what = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {_bound(lo)}"
    if hi is not None:
        return f"{what} {'<' if hi_open else '<='} {_bound(hi)}"
    return what


def in_range(value, rng, integer: bool) -> bool:
    """Whether a number lies in a range of ``RANGES`` (integers also below 2**63, floats
    also finite). Shapes: none."""
    lo, hi, lo_open, hi_open = rng
    if integer and not -_INT_LIMIT <= value < _INT_LIMIT:
        return False
    if not integer and not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    if hi is not None and (value >= hi if hi_open else value > hi):
        return False
    return True


# A run's name is its folder under runs/: one plain path component.
_NAME_CHARS_REFUSED = ("/", "\\", "\0")


def is_plain_name(name: str) -> bool:
    """Whether a run name is one plain folder name: not empty, not . or .., no path
    separator or NUL, no surrounding spaces, at most 200 bytes. Shapes: none."""
    return not (not name or name in (".", "..") or any(c in name for c in _NAME_CHARS_REFUSED)
                or name != name.strip() or len(name.encode("utf-8", "surrogateescape")) > 200)


def _check_name(name: str) -> None:
    if not is_plain_name(name):
        raise ConfigError(f"config key 'name' must be a plain folder name (no '/', '\\', '..', surrounding spaces, "
                          f"at most 200 bytes; the run folder is runs/NAME), got {name!r}")


def validate(cfg: Config) -> Config:
    """Check every numeric value of a config against ``RANGES``, the name against a
    plain folder name, and gamma_min < gamma_max; raise a ``ConfigError`` naming the
    key and its allowed range. Returns cfg. Shapes: none."""
    _check_name(cfg.name)
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            key = f"{section.name}.{f.name}"
            value = getattr(sub, f.name)
            if isinstance(value, (str, bool)) or (isinstance(value, tuple) and all(isinstance(v, str) for v in value)
                                                  and key not in RANGES):
                continue
            rng = RANGES[key]
            integer = f.type != "float"
            values = value if isinstance(value, tuple) else (value,)
            if isinstance(value, tuple) and key == "model.channel_mults" and not value:
                raise ConfigError(f"config key {key!r} must be a non-empty list of integers >= 1, got []")
            for v in values:
                if key in AUTO_KEYS and v == AUTO:
                    continue
                if not in_range(v, rng, integer):
                    what = describe_range(rng, integer) + (", or -1 (from the data's size)" if key in AUTO_KEYS else "")
                    if isinstance(value, tuple):
                        what = f"a list of {what.replace('an integer', 'integers')}"
                    raise ConfigError(f"config key {key!r} must be {what}, got {list(value) if isinstance(value, tuple) else value!r}")
    p = cfg.process
    if not p.gamma_min < p.gamma_max:
        raise ConfigError(f"config keys 'process.gamma_min' ({p.gamma_min:g}) and 'process.gamma_max' "
                          f"({p.gamma_max:g}): gamma_min must be below gamma_max")
    return cfg


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check a TOML value against a field's type; ints are accepted for floats."""
    name = typ if isinstance(typ, str) else typ.__name__
    if name == "bool":
        ok = isinstance(value, bool)
    elif name == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif name == "str":
        ok = isinstance(value, str)
    elif name == "tuple[int, ...]":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
        name = "list of integers"
    elif name == "tuple[str, ...]":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
        name = "list of strings"
    else:  # pragma: no cover - only the types above are used
        raise TypeError(name)
    if not ok:
        raise ConfigError(f"config key {key!r} must be a {name}, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build a (nested) config dataclass from a dict, rejecting unknown keys.

    Missing keys take their defaults.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.')!r} must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; known keys: {', '.join(prefix + k for k in fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        typ = f.type
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = from_dict(f.default_factory, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, typ, prefix + name)
    cfg = cls(**kwargs)
    return validate(cfg) if cls is Config else cfg


def to_dict(cfg) -> dict:
    """Shapes: a config dataclass -> nested dict of TOML-able values."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v for k, v in items})


def dumps(cfg: Config) -> str:
    """The config as TOML text."""
    return tomli_w.dumps(to_dict(cfg))


def loads(text: str, source: str = "config") -> Config:
    """Parse TOML text into a Config."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: malformed TOML: {exc}") from None
    return from_dict(Config, data)


def load(path: str | Path) -> Config:
    """Read a TOML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return loads(text, str(path))


def _parse_value(text: str) -> Any:
    """A TOML literal (3, 1e-3, true, "x") or, failing that, a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply dotted overrides like ``train.lr=3e-4`` or ``model.net=rbf``.

    Shapes: overrides, a list of "section.key=value" strings.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key.strip()!r}")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"unknown config key {key.strip()!r}")
        value = _parse_value(text.strip())
        if isinstance(node[parts[-1]], str) and not isinstance(value, str):
            value = text.strip()  # a string field keeps the text as typed: name=2024
        node[parts[-1]] = value
    return from_dict(Config, data)


def replace(cfg, **sections):
    """dataclasses.replace for nested sections: replace(cfg, train={"steps": 5})."""
    changes = {}
    for name, values in sections.items():
        sub = getattr(cfg, name)
        changes[name] = dataclasses.replace(sub, **values) if isinstance(values, dict) else values
    new = dataclasses.replace(cfg, **changes)
    return validate(new) if isinstance(new, Config) else new
