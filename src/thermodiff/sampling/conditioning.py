"""Multiplying a trained model by a second distribution r(x) (paper section 2.5):
sampling from p~(x_0) proportional to p(x_0) r(x_0) without retraining.

A *condition* is r, given in the data's own units (``conditions``): ``Known`` (a delta
on some coordinates: inpainting), ``GaussianObservation`` (y = A x + noise of known
sigma: denoising, inpainting with noise, downsampling), ``Box`` (a soft box
constraint), ``ClassifierGuidance`` (log r = a classifier's log-probability of a
class), ``Smooth`` (any differentiable log r) and ``BitProbabilities`` (independent
r(x_i = 1) = d_i for binary data).

``Conditioning(condition, method)`` turns a condition into a stepper that the
ancestral sampler runs in place of its plain step (``sample(..., condition=...)``),
for both processes and any chain (all steps, respaced, continuous time). Methods:

- ``guidance``: eq. 61, the kernel's mean shifted by scale * Sigma grad log r(mu);
  for binary data the flip rate c d / (c d + (1 - c)(1 - d)) with d = r(x_i = 1).
- ``product``: the reverse kernel times r in closed form each step: a Gaussian
  observation (precision-weighted mean), or bit probabilities (the flip rate above).
- ``clamp``: known coordinates set to their clean values at every step (the
  paper's inpainting, r constant in t).
- ``replace``: known coordinates replaced by forward-noised clean values at each step,
  with ``resample`` - 1 extra round trips (re-noise one hop, step again) per hop
  (RePaint), so the unknown coordinates can adapt to the known ones.
- ``start``: plain denoising (A = I): the chain starts from the noisy observation at
  the time whose noise matches it and runs unconditioned; with an exact model this
  samples p(x_0 | y) exactly (the paper's Figure 3).
- ``smc``: sequential Monte Carlo with ``particles`` per sample (``smc.SMC``),
  asymptotically exact, unlike the others.

The pieces: each condition says which methods it takes and carries its own log r,
closed-form product, SMC twist and proposal (``conditions``); the kernel transforms,
step transforms and starts are in ``transforms``; SMC, which changes the row count and
carries weights, is its own sampler (``smc``). Condition x method is resolved once: the
condition's ``methods`` when the stepper is made, the table ``_TABLE`` (method -> how
to build its run) when the chain starts, from then on only objects run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..model import DiffusionModel
from .ancestral import Plain, sample
from .conditions import (BitProbabilities, Box, ClassifierGuidance, Condition, GaussianObservation, Known, Smooth,
                         as_condition)
from .smc import SMC
from .transforms import Chain, Clamp, FromObservation, Replace, Sample, repeat_rows

__all__ = ["METHODS", "Conditioning", "sample_conditioned", "default_method", "Known", "GaussianObservation",
           "Smooth", "Box", "ClassifierGuidance", "BitProbabilities", "Condition"]


# ----------------------------------------------------------------------------- the methods
# Each builds one chain's run (a stepper) from the condition, once the model and the
# number of samples are known: (r, model, n, device, the Conditioning) -> stepper. The
# checks against the model run here, before the chain, in the order each needs.


def _guidance(r: Condition, model, n, device, c: Conditioning):
    return Chain(c.kernel, Sample(r.guidance(model, c.scale)))


def _product(r: Condition, model, n, device, c: Conditioning):
    return Chain(c.kernel, Sample(r.product(model)))


def _known(r: Known, model, n, device):
    """The known values (model units) and mask, one row per sample. Shapes: -> (n, *D) twice."""
    return tuple(repeat_rows(v, n).to(device) for v in r.scaled(model))


def _clamp(r: Known, model, n, device, c: Conditioning):
    return Chain(c.kernel, Clamp(*_known(r, model, n, device)))


def _replace(r: Known, model, n, device, c: Conditioning):
    return Chain(c.kernel, Replace(*_known(r, model, n, device), c.resample))


def _start(r: GaussianObservation, model, n, device, c: Conditioning):
    # A noisy observation is a latent only of the Gaussian forward process. The
    # condition's own check first: on binary data it names the real problem (a Gaussian
    # observation conditions continuous data), not the default method.
    r.check(model)
    if "noisy-latents" not in model.process.supports:
        raise ConfigError("method start is for the Gaussian process")
    y, sigma, gain = r.scaled(model)
    if gain is not None:  # a scale per dimension: the noise differs by dimension in model units
        raise ConfigError("method start needs the same noise in every dimension of the model's units; this model "
                          "scales each dimension on its own (data.scaling = 'per-dim'): use method product")
    return Chain(c.kernel, Sample(), FromObservation(y, sigma))


def _smc(r: Condition, model, n, device, c: Conditioning):
    r = r.for_smc(model)
    r.check(model)
    return SMC(r, c.kernel, c.particles, r.twist(model, c.steer), r.proposal(model))


@dataclass(frozen=True)
class _Method:
    """One row of the table: how to build the run, the message for a condition that
    does not take the method, and whether it needs a stochastic kernel (eq. 61 and the
    product scale with the kernel's variance, SMC weights by its density)."""

    build: Callable
    needs: str
    stochastic: bool


_TABLE = {
    "guidance": _Method(_guidance, "method guidance needs a differentiable log r", True),
    "product": _Method(_product, "method product needs a Gaussian observation or bit probabilities", True),
    "clamp": _Method(_clamp, "method clamp needs known coordinates (--known and --mask)", False),
    "replace": _Method(_replace, "method replace needs known coordinates (--known and --mask)", False),
    "start": _Method(_start, "method start denoises a full observation: it needs a Gaussian observation "
                             "with A = I", False),
    "smc": _Method(_smc, "method smc needs a log r to weight its particles by", True),
}
METHODS = tuple(_TABLE)


# ----------------------------------------------------------------------------- the stepper


class Conditioning(Plain):
    """The sampler's step for p(x_0) r(x_0); see the module docstring for the methods.

    scale multiplies the guidance term (eq. 61); resample is RePaint's number of
    round trips per hop; particles is the SMC population per sample; steer makes SMC
    weight particles during the chain by r at the model's x_0 prediction (for an r
    that is rare under the model: fewer particles wasted, but a bias at few particles;
    Gaussian observations and bit probabilities always use their closed-form twist);
    eta runs the chain with DDIM kernels (``ancestral.Plain``).

    Shapes: as ``ancestral.Plain``; with smc the chain carries n x particles rows and
    finish returns n.
    """

    def __init__(self, condition, method: str | None = None, scale: float = 1.0, resample: int = 1,
                 particles: int = 16, steer: bool = False, eta: float | None = None):
        super().__init__(eta)
        r = as_condition(condition)
        method = method or r.default
        if method not in METHODS:
            raise ConfigError(f"unknown conditioning method {method!r}; choose one of {', '.join(METHODS)}")
        how = _TABLE[method]
        if method not in r.methods:
            raise ConfigError(r.refusal(method) or how.needs)
        if eta == 0 and how.stochastic:
            raise ConfigError(f"method {method} needs a stochastic kernel: use eta > 0 (or none)")
        if resample < 1 or particles < 1:
            raise ConfigError("resample and particles must be at least 1")
        self.condition, self.method, self.scale = condition, method, float(scale)
        self.resample, self.particles, self.steer = int(resample), int(particles), bool(steer)
        self.dead_samples = 0  # smc: samples whose particles all ended with r = 0
        self._r, self._how = r, how

    def start(self, model, n, grid, generator):
        """Check the condition against the model, build the method's run, start it.
        Shapes: -> x (n, *D), or (n * particles, *D) with smc, and the grid."""
        # The run is built per chain (a chunked sample starts several): it holds the
        # known values of n samples, or SMC's weights.
        self._run = self._how.build(self._r, model, n, grid.device, self)
        return self._run.start(model, n, grid, generator)

    def step(self, model, x, t, abar_s, abar_t, generator):
        """One conditioned hop. Shapes: x (B, *D), t, abar_s, abar_t (B,) -> (B, *D)."""
        return self._run.step(model, x, t, abar_s, abar_t, generator)

    def finish(self, x, generator):
        """The samples (with smc, one particle each). Shapes: (B, *D) -> (n, *D)."""
        x = self._run.finish(x, generator)
        self.dead_samples += self._run.dead_samples  # summed over the chunks of a chunked sample
        return x


def sample_conditioned(model: DiffusionModel, condition, n: int, generator: torch.Generator,
                       method: str | None = None, steps: int | None = None, progress: bool = False,
                       solver: str = "ancestral", **options) -> torch.Tensor:
    """n samples of p(x_0) r(x_0) in the data's own units; known coordinates equal the
    given values exactly (not through the scaling's rounding). options: scale, resample,
    particles, steer, eta (see ``Conditioning``).

    solver: ``ancestral`` (the chain), or an ODE solver (``ddim``, ``heun``, ``dpm++``;
    ``steps`` grid times, default 20) for the methods that change the score,
    ``guidance`` and ``product`` (``ode_conditioning``).

    Shapes: returns (n, *D) float64.
    """
    if solver != "ancestral":
        from ..ode.flow import Flow
        from ..ode.sample import sample_ode
        from .ode_conditioning import conditioned_predict

        unknown = set(options) - {"scale"}
        if unknown:
            raise ConfigError(f"the ODE solvers take the option scale only, not {', '.join(sorted(unknown))}")
        flow = Flow(model, predict=conditioned_predict(model, condition, method, options.get("scale", 1.0)))
        x = sample_ode(model, n, generator, solver, 20 if steps is None else steps, progress=progress, flow=flow)
        return as_condition(condition).pin(model, model.scaler.inverse(x))
    stepper = Conditioning(condition, method, **options)
    x = sample(model, n, generator, steps=steps, progress=progress, condition=stepper)
    if stepper.dead_samples:
        warnings.warn(f"{stepper.dead_samples} of {n} samples had no particle with r > 0 and do not satisfy r; "
                      "use more particles", RuntimeWarning, stacklevel=2)
    return as_condition(condition).pin(model, model.scaler.inverse(x))


def default_method(condition) -> str:
    """clamp for known coordinates (the paper's choice), start for a plain Gaussian
    observation (A = I), product for other Gaussian observations and for bit
    probabilities, guidance otherwise: each condition's ``default``.

    Shapes: none (a condition -> a method name).
    """
    return as_condition(condition).default
