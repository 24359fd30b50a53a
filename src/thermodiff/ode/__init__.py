"""The deterministic view of a Gaussian diffusion model: the probability-flow ODE.

- ``flow``: the ODE in EDM's coordinates, its time grids, the model check;
- ``solvers``: DDIM / Euler, Heun and DPM-Solver++(2M) with fixed steps, and the
  adaptive Dormand-Prince solver (scipy) for encoding and the likelihood;
- ``latents``: ``encode`` / ``decode`` (one latent per example), ``slerp``,
  ``interpolate``, ``round_trip``;
- ``likelihood``: the ODE model's exact log-likelihood (exact divergence or
  Hutchinson's estimate);
- ``sample``: samples by a fixed-step solver from the prior.

Conditioning the ODE on r(x) lives with the conditions, in ``sampling.ode_conditioning``.
"""
