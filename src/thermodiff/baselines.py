"""Baselines beside K: the held-out log-likelihood of a full-covariance Gaussian.

A diffusion model whose held-out bound is below that of one Gaussian fitted to the
same training data has learned less than the data's covariance: on small data sets
that is what overfitting looks like, and every evaluation record shows it
(``gaussian_bits``). The Gaussian is the maximum-likelihood fit (mean and covariance
of the training examples), in closed form, in the data's own units. Where that
covariance is singular (fewer examples than dimensions, a constant dimension) a
ridge of 1e-3 of the average variance is added, and the record says so.
"""

from __future__ import annotations

import math

import torch

from .units import LN2

RIDGE = 1e-3  # of the average variance, added only where the covariance is singular
# The fit uses the first training examples, at most 100,000 and at most 2e7 values' worth
# (but at least 4 D): the covariance costs N D^2, a minute for all of CIFAR-10.
MAX_FIT_EXAMPLES, MAX_FIT_VALUES = 100_000, 20_000_000


def fit_gaussian(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """The maximum-likelihood Gaussian of the training examples, on data divided by a
    power of two 2^k >= max |y| (exact, and safe from overflow at any scale).

    Returns (mean (D,), Cholesky factor (D, D) of the covariance, k, whether a ridge
    was added). Shapes: train (N, *D), float64 in the data's own units.
    """
    d = train[0].numel()
    y = train.reshape(train.shape[0], -1)[: min(MAX_FIT_EXAMPLES, max(4 * d, MAX_FIT_VALUES // d))].to(torch.float64)
    top = float(y.abs().max())
    exponent = math.frexp(top)[1] if top > 0 else 0
    z = torch.ldexp(y, torch.tensor(-exponent))
    mean = z.mean(0)
    r = z - mean
    cov = r.T @ r / z.shape[0]
    chol, info = torch.linalg.cholesky_ex(cov)
    ridged = bool(info != 0) or bool((chol.diagonal() <= 1e-12 * cov.diagonal().mean().sqrt()).any())
    if ridged:
        average = cov.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
        chol = torch.linalg.cholesky(cov + RIDGE * average * torch.eye(cov.shape[0], dtype=cov.dtype))
    return mean, chol, exponent, ridged


def gaussian_log_likelihood(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """log N(y; mean, cov) of each held-out example, nats in the data's own units, for
    the Gaussian fitted to `train`; and whether a ridge was added.

    Shapes: train (N, *D), test (M, *D) -> (M,) float64.
    """
    mean, chol, exponent, ridged = fit_gaussian(train)
    z = torch.ldexp(test.reshape(test.shape[0], -1).to(torch.float64), torch.tensor(-exponent))
    d = mean.shape[0]
    w = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False)  # L^-1 (z - mean), (D, M)
    log_p = -0.5 * (w**2).sum(0) - chol.diagonal().log().sum() - 0.5 * d * math.log(2 * math.pi)
    return log_p - d * exponent * math.log(2.0), ridged  # the Jacobian of y -> y / 2^k


def gaussian_fields(train: torch.Tensor, test: torch.Tensor, k_per_example: torch.Tensor) -> dict:
    """The baseline's fields of an evaluation record, in bits (data units):
    ``gaussian_bits`` (mean held-out log-likelihood of the fitted Gaussian),
    ``K_minus_gaussian_bits`` and ``K_minus_gaussian_stderr_bits`` (paired over the
    same examples), ``gaussian_note`` where a ridge was needed, and
    ``gaussian_warning`` where K is below the baseline.

    Shapes: train (N, *D), test (M, *D), k_per_example (M,) K per example in bits,
    data units.
    """
    log_p, ridged = gaussian_log_likelihood(train, test)
    g = log_p / LN2
    diff = k_per_example.to(torch.float64) - g
    n = diff.shape[0]
    record = {
        "gaussian_bits": float(g.mean()),
        "K_minus_gaussian_bits": float(diff.mean()),
        "K_minus_gaussian_stderr_bits": float(diff.std() / math.sqrt(n)) if n > 1 else float("nan"),
    }
    if ridged:
        record["gaussian_note"] = (f"the training data's covariance is singular: the baseline adds {RIDGE:g} of the "
                                   "average variance to its diagonal")
    if record["K_minus_gaussian_bits"] < 0:
        record["gaussian_warning"] = (
            f"K on the held-out data is {-record['K_minus_gaussian_bits']:.2f} +- "
            f"{record['K_minus_gaussian_stderr_bits']:.2f} bits below a full-covariance Gaussian fitted to the "
            "training data: the model has learned less than the covariance (overfitted or undertrained; "
            "see the held-out checks in metrics.jsonl)")
    return record
