"""The likelihood as a classifier: p(y | x) proportional to exp(K(x, y)) p(y).

A class-conditional model bounds log p(x | y) for every class y; Bayes' rule turns
the bounds into class probabilities. Each bound alone is a noisy Monte Carlo estimate
(its spread over draws of time and noise is hundreds of bits for an image), but the
classes are compared with the same draws: every class of an example is scored at the
same times and the same noise (``likelihood.evaluate`` with one seed draws the same
whatever the labels), so the noise common to the classes cancels in the differences
that Bayes' rule sees.

The standard error of each probability comes from the draws themselves (the delta
method): with K_c the mean of n_t per-draw estimates K_cj of class c, the covariance of
the means is S = cov_j(K_j) / n_t over the classes, and p = softmax(K + log p(y)) has
Var(p_c) = g_c' S g_c with g_c = p_c (e_c - p). It treats the n_t stratified draws as
independent, which overstates the spread of stratified estimates (conservative).
With exact predictions (a continuous-time model with the exact score, ``oracle``) the
bounds are tight in expectation and p(y | x) is the Bayes posterior within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .likelihood import evaluate
from .model import DiffusionModel


@dataclass(frozen=True)
class ClassPosterior:
    """p(y | x) for each example and class, from the model's bounds.

    log_probs: log p(y | x); stderr: the standard error of p(y | x), log_stderr that of
    log p(y | x) (NaN for one draw; the log's is the one to trust for small
    probabilities, where the linearisation of p is poor); k: the bound K(x, y) per
    class, nats on the model's scaled data.
    """

    log_probs: torch.Tensor  # (N, C) float64
    stderr: torch.Tensor  # (N, C) float64
    log_stderr: torch.Tensor  # (N, C) float64
    k: torch.Tensor  # (N, C) float64

    @property
    def probs(self) -> torch.Tensor:
        """Shapes: (N, C)."""
        return self.log_probs.exp()

    @property
    def predicted(self) -> torch.Tensor:
        """The most probable class of each example. Shapes: (N,) int64."""
        return self.log_probs.argmax(1)


def class_bounds(model: DiffusionModel, y: torch.Tensor, n_t: int = 16, batch_size: int = 4096, seed: int = 0,
                 sampler=None, progress: bool = False) -> torch.Tensor:
    """The per-draw estimates of K(x, y) for every class, the draws shared across the
    classes of an example; their mean over the last axis is K.

    Shapes: y (N, *D) data units -> (N, C, n) float64 nats on scaled data
    (n = n_t, or the T - 1 steps of a short discrete chain).
    """
    if not model.num_classes:
        raise ConfigError("this model is unconditional (model.num_classes = 0): it cannot classify; train one "
                          "with labels (model.num_classes = -1)")
    per_class = []
    for c in range(model.num_classes):  # a loop over classes; every class sees the same draws
        terms = evaluate(model, y, n_t=n_t, batch_size=batch_size, seed=seed, sampler=sampler, labels=c,
                         progress=progress)
        per_class.append(-(terms.prior + terms.reconstruction)[:, None] - terms.draws)
    return torch.stack(per_class, 1)


def posterior(draws: torch.Tensor, log_prior: torch.Tensor | None = None) -> ClassPosterior:
    """Bayes' rule over per-draw bounds (``class_bounds``), with standard errors from
    the draws (the delta method). log_prior: log p(y) (None: uniform).

    Shapes: draws (N, C, n), log_prior (C,) -> ClassPosterior over (N, C).
    """
    n, c, m = draws.shape
    k = draws.mean(2)
    prior = torch.full((c,), -math.log(c), dtype=torch.float64) if log_prior is None else log_prior.to(torch.float64)
    log_probs = torch.log_softmax(k + prior, 1)
    p = log_probs.exp()
    if m < 2:
        nan = torch.full_like(p, float("nan"))
        return ClassPosterior(log_probs, nan, nan, k)
    dev = draws - k[:, :, None]
    cov = dev @ dev.transpose(1, 2) / (m * (m - 1))  # (N, C, C): covariance of the means
    # d log p_c / d K_c' = [c = c'] - p_c', and d p_c / d K_c' = p_c ([c = c'] - p_c').
    g = torch.eye(c, dtype=torch.float64)[None] - p[:, None, :]  # (N, C, C)
    log_var = torch.einsum("nij,njk,nik->ni", g, cov, g).clamp(min=0)
    return ClassPosterior(log_probs, p * log_var.sqrt(), log_var.sqrt(), k)


def classify(model: DiffusionModel, y: torch.Tensor, log_prior: torch.Tensor | None = None, n_t: int = 16,
             batch_size: int = 4096, seed: int = 0, sampler=None, progress: bool = False) -> ClassPosterior:
    """p(y | x) for held-out examples from a class-conditional model's bounds.

    Shapes: y (N, *D) data units, log_prior (C,) -> ClassPosterior over (N, C).
    """
    model.check_data(y, "examples to classify")
    return posterior(class_bounds(model, y, n_t, batch_size, seed, sampler, progress), log_prior)


def log_prior_of(labels: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
    """log p(y) from the training labels' frequencies (None without them: uniform). A
    class without training examples gets half an example, so that it is not ruled out.

    Shapes: labels (N,) int64 -> (C,) float64.
    """
    if labels is None:
        return None
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64).clamp(min=0.5)
    return (counts / counts.sum()).log()


def confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class). Shapes: (N,), (N,) -> (C, C) int64."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def accuracy_record(post: ClassPosterior, labels: torch.Tensor, class_names) -> dict:
    """The classifier's figures against true labels: ``accuracy`` with its binomial
    ``accuracy_stderr``, ``mean_log_prob_true`` (the mean log p(true y | x), nats),
    the ``confusion`` matrix (rows: true class) and the mean standard error of the
    probabilities (``prob_stderr_mean``).

    Shapes: labels (N,) int64; returns a dict of numbers and lists.
    """
    n = labels.shape[0]
    hit = (post.predicted == labels).to(torch.float64)
    acc = float(hit.mean())
    true_lp = post.log_probs.gather(1, labels[:, None])[:, 0]
    return {
        "accuracy": acc,
        "accuracy_stderr": math.sqrt(acc * (1 - acc) / n) if n > 1 else float("nan"),
        "mean_log_prob_true": float(true_lp.mean()),
        "prob_stderr_mean": float(post.stderr.nanmean()) if torch.isfinite(post.stderr).any() else float("nan"),
        "n_examples": n,
        "class_names": list(class_names),
        "confusion": confusion(post.predicted, labels, len(class_names)).tolist(),
    }
