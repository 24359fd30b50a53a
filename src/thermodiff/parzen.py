"""The Parzen-window log-likelihood of held-out data under a model's samples: the
protocol of the paper's Table 2 (after Breuleux et al. 2011 and the GAN paper).

A Gaussian kernel of width sigma is centred on each of the model's samples, so the
estimate is the log-density of a mixture of n equally weighted isotropic Gaussians:

    log p(x) = logsumexp_i(-|x - s_i|^2 / (2 sigma^2)) - log n - D/2 log(2 pi sigma^2)

sigma is chosen to maximise the mean log-likelihood of a validation split, then the
test split is scored. Images are compared on [0, 1]-scaled pixels. The estimate is
a crude, strongly biased stand-in for a likelihood (it is what that literature
reported); the bound K is the honest figure.
"""

from __future__ import annotations

import math

import torch

from .units import LN2


def parzen_log_likelihood(x: torch.Tensor, samples: torch.Tensor, sigma: float, batch: int = 256) -> torch.Tensor:
    """log p(x) under the Parzen window on the samples, nats, batched over x.

    Shapes: x (N, *D), samples (n, *D) -> (N,) float64.
    """
    return parzen_log_likelihoods(x, samples, [sigma], batch)[:, 0]


def parzen_log_likelihoods(x: torch.Tensor, samples: torch.Tensor, sigmas, batch: int = 256) -> torch.Tensor:
    """log p(x) under the Parzen window of each width in sigmas, nats, batched over x.

    |x - s|^2 = |x|^2 + |s|^2 - 2 x.s, so each batch is one matrix product, shared by
    every width (for images the product is most of the work).

    Shapes: x (N, *D), samples (n, *D), sigmas (S,) -> (N, S) float64.
    """
    s = samples.reshape(samples.shape[0], -1).to(torch.float64)
    s_sq = (s**2).sum(1)
    n, d = s.shape
    sigmas = [float(v) for v in sigmas]
    consts = [-math.log(n) - 0.5 * d * math.log(2 * math.pi * sig**2) for sig in sigmas]
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].reshape(-1, d).to(torch.float64)
        sq = ((xb**2).sum(1, keepdim=True) + s_sq[None] - 2 * xb @ s.T).clamp_min(0)
        out.append(torch.stack([torch.logsumexp(-sq / (2 * sig**2), 1) + c for sig, c in zip(sigmas, consts)], 1))
    return torch.cat(out)


def parzen(samples: torch.Tensor, validation: torch.Tensor, test: torch.Tensor,
           sigmas: torch.Tensor | None = None) -> dict:
    """Choose sigma on the validation split (grid, then the best point refined on a finer
    grid around it) and score the test split.

    Returns parzen_bits (mean test log-likelihood, bits per example), its standard
    error parzen_stderr_bits, parzen_sigma, and the validation curve.

    Shapes: samples (n, *D), validation (V, *D), test (N, *D), same units (e.g. [0, 1] pixels).
    """
    grid = torch.logspace(-2, 0, 21, dtype=torch.float64) if sigmas is None else sigmas.to(torch.float64)

    def scores(sigs):
        """(sigma, mean validation log-likelihood) for each width, one pass over the data."""
        lls = parzen_log_likelihoods(validation, samples, sigs)
        # Each width's column as one contiguous vector: the same sum as a single width's.
        return [(float(s), float(lls[:, j].contiguous().mean())) for j, s in enumerate(sigs)]

    curve = scores(grid)
    best = max(range(len(curve)), key=lambda i: curve[i][1])
    lo = curve[max(best - 1, 0)][0]
    hi = curve[min(best + 1, len(curve) - 1)][0]
    fine = scores(torch.linspace(lo, hi, 11, dtype=torch.float64))
    sigma = max(curve + fine, key=lambda p: p[1])[0]
    ll = parzen_log_likelihood(test, samples, sigma) / LN2
    return {"parzen_bits": float(ll.mean()), "parzen_stderr_bits": float(ll.std() / math.sqrt(len(ll))),
            "parzen_sigma": sigma, "parzen_validation": [{"sigma": s, "mean_nats": v} for s, v in curve]}
