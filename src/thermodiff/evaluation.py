"""The evaluation record of a trained model on held-out data.

``evaluate_run`` gives K and its named terms in bits (``likelihood.summarize``) and,
where the data set's exact log-density is known, the exact log-likelihood beside it
with the paired gap (exact minus K, per example, over the same points). A lower bound
above the exact value by more than its noise is a bug, and the record says so in a
``warning`` field. ``iw_record`` adds the importance-weighted (Jarzynski) estimate
(``jarzynski.summarize_iw``), paired with the exact value in the same way.

These are the records that ``thermodiff evaluate``, ``report`` and ``bench`` write;
the field names are those of the README's "Command line" section.
"""

from __future__ import annotations

import math

import torch

from .baselines import gaussian_fields
from .errors import ConfigError
from .jarzynski import evaluate_iw, summarize_iw
from .likelihood import evaluate, summarize
from .model import DiffusionModel
from .sampling.ancestral import time_grid
from .units import LN2

# The gap (exact minus K) may be negative by noise alone; below -GAP_SIGMAS standard
# errors the bound sits above the exact log-likelihood, which a correct bound cannot.
GAP_SIGMAS = 3
BOUND_ABOVE_EXACT = "K exceeds the exact log-likelihood by more than 3 standard errors"


def exact_scaled(model: DiffusionModel, y: torch.Tensor, log_density) -> torch.Tensor:
    """The exact log-likelihood per example on the model's scaled data: the data set's
    log-density (nats, data units) minus the log-Jacobian of the scaling.

    Shapes: y (N, *D) data units -> (N,) float64, nats on scaled data.
    """
    return log_density(y.to(torch.float64)) - model.scaler.log_det(model.n_dims)


def evaluate_run(model: DiffusionModel, y: torch.Tensor, eval_cfg, log_density=None, progress: bool = False,
                 sampler=None, train: torch.Tensor | None = None, ode: bool = False,
                 labels: torch.Tensor | None = None) -> dict:
    """The evaluation record of a model on held-out data y (data's own units), in bits.

    eval_cfg: an ``EvalConfig`` (n_t times per example, batch_size, max_examples,
    seed). With the data set's exact log-density (nats, data units) the record adds
    ``exact_bits`` / ``exact_bits_scaled`` (mean exact log-likelihood), ``gap_bits``
    (exact minus K, the bound's looseness) and ``gap_stderr_bits``, the standard
    error of the gap paired over the same points, and ``warning`` when the gap is
    below -3 of its standard errors. sampler: the run's time sampler (``load_run``'s
    meta["time_sampler"]; None: stratified uniform times). train: the training data
    (data units; integer levels dequantised once): for continuous data the record
    then adds the full-covariance Gaussian baseline (``baselines.gaussian_fields``:
    ``gaussian_bits``, ``K_minus_gaussian_bits`` and its paired standard error, a
    ``gaussian_warning`` where K is below it). ode: add the ODE model's exact
    log-likelihood on the first eval.ode_examples examples (``ode_record``), paired with
    K over the same examples. labels: a class-conditional model's labels of y: K is
    then the bound on log p(x | y), and ``conditional_record`` adds the bound on log p(x)
    (the null class, the same draws) beside it; without labels a conditional model's
    K is log p(x)'s.

    Shapes: y (N, *D), train (N', *D), labels (N,) int64; returns a dict of floats and lists.
    """
    model.check_data(y, "held-out data")
    if eval_cfg.max_examples and y.shape[0] > eval_cfg.max_examples:
        y = y[: eval_cfg.max_examples]
        labels = labels[: eval_cfg.max_examples] if labels is not None else None
    if labels is not None:
        check_labels(model, labels, y.shape[0], "held-out labels")
    terms = evaluate(model, y, n_t=eval_cfg.n_t, batch_size=eval_cfg.batch_size, seed=eval_cfg.seed,
                     progress=progress, sampler=sampler, labels=labels)
    record = summarize(model, terms, y)
    if model.num_classes:
        record["labels"] = "true" if labels is not None else "null"
        if labels is not None:
            record.update(conditional_record(model, y, terms, eval_cfg, progress, sampler))
    if train is not None and "rescaling" in model.process.supports:  # continuous data: a density to compare
        k_bits = (-terms.nll + model.scaler.log_det(model.n_dims)) / LN2
        record.update(gaussian_fields(train, y, k_bits))
    if log_density is not None:
        log_det = model.scaler.log_det(model.n_dims)
        exact = exact_scaled(model, y, log_density)  # nats, scaled units
        gap = (exact + terms.nll) / LN2  # exact - K, per example, bits
        n = gap.shape[0]
        record["exact_bits"] = float(exact.mean() / LN2 + log_det / LN2)
        record["exact_bits_scaled"] = float(exact.mean() / LN2)
        record["gap_bits"] = float(gap.mean())
        record["gap_stderr_bits"] = float(gap.std() / math.sqrt(n))
        if record["gap_bits"] < -GAP_SIGMAS * record["gap_stderr_bits"]:
            record["warning"] = BOUND_ABOVE_EXACT
    if ode:
        record.update(ode_record(model, y, eval_cfg, log_density, progress, k_nats=-terms.nll))
    return record


def check_labels(model: DiffusionModel, labels: torch.Tensor, n: int, what: str) -> None:
    """Refuse labels that cannot go with n examples of this model, in one line: an
    unconditional model, a count that is not n, a class outside 0..num_classes - 1.
    Shapes: labels (N,) int64."""
    from .errors import DataError

    if not model.num_classes:
        raise ConfigError("this model is unconditional (model.num_classes = 0): it takes no labels")
    if labels.shape != (n,):
        raise DataError(f"{what}: {labels.shape[0] if labels.dim() else 0} labels for {n} examples")
    bad = ((labels < 0) | (labels >= model.num_classes)).nonzero()
    if len(bad):
        raise DataError(f"{what}: label {int(bad[0]) + 1} is {int(labels[bad[0]])}, out of range for "
                        f"{model.num_classes} classes")


def conditional_record(model: DiffusionModel, y: torch.Tensor, terms, eval_cfg, progress: bool = False,
                       sampler=None) -> dict:
    """A conditional model's bound on log p(x) (the null class) beside the bound on
    log p(x | y) already in `terms`, from the same draws (seed and batches), in bits:
    ``K_bits_unconditional``, ``bits_per_dim_unconditional``,
    ``stderr_bits_unconditional``, and the paired difference K(x | y) - K(x) per example,
    ``label_gain_bits`` with ``label_gain_stderr_bits`` (for exact bounds it is
    log p(y | x) - log p(y): at most log2 of the number of classes, on average).

    Shapes: y (N, *D); terms of log p(x | y) with (N,) fields; returns a dict of floats.
    """
    null = evaluate(model, y, n_t=eval_cfg.n_t, batch_size=eval_cfg.batch_size, seed=eval_cfg.seed,
                    progress=progress, sampler=sampler, labels=None)
    k = summarize(model, null, y)
    gain = (null.nll - terms.nll) / LN2
    return {"K_bits_unconditional": k["K_bits"], "bits_per_dim_unconditional": k["bits_per_dim"],
            "stderr_bits_unconditional": k["stderr_bits"], "label_gain_bits": float(gain.mean()),
            "label_gain_stderr_bits": _stderr(gain)}


ODE_ABOVE_EXACT = ("the ODE model's log-likelihood exceeds the exact log-likelihood by more than 3 standard "
                   "errors (no model's expected log-likelihood can: Gibbs' inequality)")


def ode_record(model: DiffusionModel, y: torch.Tensor, eval_cfg, log_density=None, progress: bool = False,
               k_nats: torch.Tensor | None = None) -> dict:
    """The ODE model's exact log-likelihood (``ode.likelihood``) on the first
    eval.ode_examples held-out examples, in bits: ``ode_bits`` (data units),
    ``ode_bits_scaled``, ``ode_stderr_bits`` (over examples; it holds the probes' noise
    too), ``ode_probe_stderr_bits`` (the part of it from Hutchinson's probes, where
    there are two or more), ``ode_nfe`` (mean network calls per example),
    ``ode_bits_per_dim`` (-ode_bits / D, on the same data as ``bits_per_dim``), and,
    paired over the same examples, ``ode_minus_K_bits`` with its standard error (given
    K per example, nats on scaled data) and, with the exact log-density,
    ``ode_gap_bits`` (exact minus ODE) with its standard error and ``ode_warning`` where
    the ODE figure is above the exact one by more than 3 of them.

    Shapes: y (N, *D) data units, k_nats (N,); returns a dict of floats.
    """
    from .ode.likelihood import log_likelihood

    model.check_data(y, "held-out data")
    n = min(y.shape[0], eval_cfg.ode_examples)
    y = y[:n]
    probes = None if eval_cfg.ode_probes < 0 else eval_cfg.ode_probes
    # One network row per example and call: at most eval.batch_size examples a solve
    # (and at most 256, where the adaptive steps shared by a batch stay fine for each).
    res = log_likelihood(model, y, rtol=eval_cfg.ode_rtol, atol=eval_cfg.ode_atol, probes=probes,
                         seed=eval_cfg.seed, batch_size=min(256, eval_cfg.batch_size), progress=progress)
    log_det = model.scaler.log_det(model.n_dims)
    ode = res.log_p / LN2  # bits, scaled data
    record = {
        "ode_bits": float(ode.mean()) + log_det / LN2,
        "ode_bits_scaled": float(ode.mean()),
        "ode_stderr_bits": _stderr(ode),
        "ode_nfe": res.nfe,
        "ode_bits_per_dim": -(float(ode.mean()) + log_det / LN2) / model.n_dims,
        "ode_n_examples": n,
        "ode_probes": res.probes,
        "ode_rtol": eval_cfg.ode_rtol,
        "ode_atol": eval_cfg.ode_atol,
    }
    if res.probe_var is not None:
        record["ode_probe_stderr_bits"] = float(res.probe_var.sum().sqrt() / n / LN2)
    if k_nats is not None:
        diff = ode - k_nats[:n] / LN2
        record["ode_minus_K_bits"] = float(diff.mean())
        record["ode_minus_K_stderr_bits"] = _stderr(diff)
    if log_density is not None:
        gap = exact_scaled(model, y, log_density) / LN2 - ode
        record["ode_gap_bits"] = float(gap.mean())
        record["ode_gap_stderr_bits"] = _stderr(gap)
        if record["ode_gap_bits"] < -GAP_SIGMAS * record["ode_gap_stderr_bits"]:
            record["ode_warning"] = ODE_ABOVE_EXACT
    return record


def _stderr(v: torch.Tensor) -> float:
    """Standard error of the mean over examples (NaN for one). Shapes: v (N,) -> float."""
    return float(v.std() / math.sqrt(v.shape[0])) if v.shape[0] > 1 else float("nan")


def iw_record(model: DiffusionModel, y: torch.Tensor, eval_cfg, m: int, log_density=None,
              progress: bool = False) -> dict:
    """The importance-weighted fields of an evaluation record (``jarzynski.summarize_iw``),
    in bits, on the first eval.iw_examples held-out examples, m trajectories each, over
    a chain of eval.iw_steps hops (0: the model's own chain). With the exact
    log-density, each point of the curve carries its gap to the exact value.

    Shapes: y (N, *D) data units; returns a dict of floats and a list of dicts.
    """
    if m < 1:
        raise ConfigError(f"the importance-weighted estimate needs M >= 1 trajectories, got {m}")
    if eval_cfg.iw_examples < 1 or eval_cfg.iw_steps < 0:
        raise ConfigError("eval.iw_examples must be at least 1 and eval.iw_steps at least 0")
    model.check_data(y, "held-out data")
    y = y[: eval_cfg.iw_examples]
    steps = eval_cfg.iw_steps or None
    hops = len(time_grid(model, steps))
    logw = evaluate_iw(model, y, m, steps, eval_cfg.batch_size, eval_cfg.seed, progress)
    exact = exact_scaled(model, y, log_density) if log_density is not None else None
    return summarize_iw(model, logw, y, hops, exact)
