"""Evaluation records, figures and the Markdown run report.

``evaluate_run`` turns a trained model and held-out data into the JSON record of
DESIGN section 4 (plus the exact log-likelihood and the paired gap where the data
set's density is known); ``figures`` draws the paper's Figure 1 panels for 2-D data
and the per-t bound terms for any data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .likelihood import LN2, evaluate, summarize
from .model import DiffusionModel


def write_json(path: str | Path, record: dict) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(record, f, indent=2)
        f.write("\n")


def evaluate_run(model: DiffusionModel, y: torch.Tensor, eval_cfg, log_density=None, progress: bool = False,
                 sampler=None) -> dict:
    """The evaluation record of a model on held-out data y (data's own units).

    With the data set's exact log-density (nats, data units) the record adds
    ``exact_bits`` / ``exact_bits_scaled`` (mean exact log-likelihood), ``gap_bits``
    (exact minus K, the bound's looseness) and ``gap_stderr_bits``, the standard
    error of the gap paired over the same points. sampler: the run's time sampler.

    Shapes: y (N, *D).
    """
    model.check_data(y, "held-out data")
    if eval_cfg.max_examples and y.shape[0] > eval_cfg.max_examples:
        y = y[: eval_cfg.max_examples]
    terms = evaluate(model, y, n_t=eval_cfg.n_t, batch_size=eval_cfg.batch_size, seed=eval_cfg.seed,
                     progress=progress, sampler=sampler)
    record = summarize(model, terms, y)
    if log_density is not None:
        log_det = model.scaler.log_det(model.n_dims)
        exact_scaled = log_density(y.to(torch.float64)) - log_det  # nats, scaled units
        gap = (exact_scaled + terms.nll) / LN2  # exact - K, per example, bits
        n = gap.shape[0]
        record["exact_bits"] = float(exact_scaled.mean() / LN2 + log_det / LN2)
        record["exact_bits_scaled"] = float(exact_scaled.mean() / LN2)
        record["gap_bits"] = float(gap.mean())
        record["gap_stderr_bits"] = float(gap.std() / math.sqrt(n))
        if record["gap_bits"] < -3 * record["gap_stderr_bits"]:
            # A lower bound above the exact log-likelihood beyond its noise is a bug.
            record["warning"] = "K exceeds the exact log-likelihood by more than 3 standard errors"
    return record


def figures(model: DiffusionModel, data_train: torch.Tensor, record: dict, out: str | Path, seed: int = 0, n: int = 2000,
            steps: int | None = None) -> list[Path]:
    """Figures of a run in out/: the per-t bound terms for any data; for 2-D data the
    forward and reverse trajectories and the drift field (paper Figure 1); for binary
    vectors and images, samples beside training data and a reverse trajectory from noise
    (paper Figure 2).

    steps: sampling steps for binary and image data (None: every step).

    Shapes: data_train (N, *D) in the data's own units.
    """
    from . import plots
    from .processes.gaussian import q_sample
    from .sampling.ancestral import drift, sample

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    extra = {k: record[k] for k in ("prior_bits", "reconstruction_bits", "diffusion_bits", "K_bits_scaled") if k in record}
    paths.append(
        plots.bound_terms(
            out / "bound_terms.png",
            np.asarray(record["terms_t"]),
            np.asarray(record["terms_bits"]),
            title="Contributions to -K per time (bits, scaled data)",
            extra=extra,
        )
    )
    if model.binomial or len(model.data_shape) == 3:
        return paths + _sample_figures(model, data_train, out, seed, steps)
    if model.data_shape != (2,):
        return paths
    gen = torch.Generator().manual_seed(seed)
    x0 = model.scaler(data_train[torch.randperm(data_train.shape[0], generator=gen)[:n]])
    with torch.no_grad():
        times = [0.0, 0.5, 1.0]
        frames = [x0.numpy()]
        for t in times[1:]:
            tt = torch.full((n,), t, dtype=torch.float64)
            if not model.continuous:
                tt = torch.round(tt * model.schedule.T) / model.schedule.T
            frames.append(q_sample(x0, model.abar_at(tt), torch.randn(x0.shape, generator=gen)).numpy())
        paths.append(
            plots.trajectory_grid(
                out / "forward_trajectory.png", frames, [f"t = {t:g}" for t in times],
                "Forward trajectory q(x_t | x_0)", lim=3.0,
            )
        )
        xs, snaps = sample(model, n, gen, keep=5)
        picks = [snaps[0], snaps[len(snaps) // 2], snaps[-1]]
        paths.append(
            plots.trajectory_grid(
                out / "reverse_trajectory.png", [s.numpy() for _, s in picks],
                [f"t = {t:.2g}" for t, _ in picks], "Reverse trajectory p(x_{t-1} | x_t) from noise",
                data=x0.numpy(), lim=3.0,
            )
        )
        g = torch.linspace(-2.5, 2.5, 25)
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1)
        t_mid = 0.5 if model.continuous else round(0.5 * model.schedule.T) / model.schedule.T
        d = drift(model, grid.reshape(-1, 2), t_mid).reshape(25, 25, 2)
        paths.append(
            plots.drift_field(out / "drift.png", grid.numpy(), d.numpy(), x0.numpy(), f"Learned drift f_mu(x, t) - x at t = {t_mid:g}")
        )
        paths.append(
            plots.samples_vs_data(out / "samples.png", xs.numpy(), x0.numpy(), "Samples (left) beside training data (right), scaled units")
        )
    return paths


def _sample_figures(model: DiffusionModel, data_train: torch.Tensor, out: Path, seed: int, steps: int | None = None) -> list[Path]:
    """Samples beside training data and one reverse trajectory, for binary vectors and images.

    Shapes: data_train (N, *D) in the data's own units.
    """
    from . import plots
    from .sampling.ancestral import sample

    gen = torch.Generator().manual_seed(seed)
    picks = data_train[torch.randperm(data_train.shape[0], generator=gen)[:64]]
    images = len(model.data_shape) == 3
    n = 64 if images else 24
    with torch.no_grad():
        xs, snaps = sample(model, n, gen, steps=steps, keep=60 if not images else 10)
    ys = model.scaler.inverse(xs).numpy()
    paths = []
    if images:
        lo, hi = float(data_train.min()), float(data_train.max())
        unit = lambda a: (np.asarray(a, dtype=np.float64) - lo) / max(hi - lo, 1e-12)  # noqa: E731
        paths.append(plots.image_grid(out / "samples.png", unit(ys), f"{n} samples"))
        paths.append(plots.image_grid(out / "data.png", unit(picks.numpy()), "training data"))
        strip = np.stack([unit(model.scaler.inverse(s[:1]).numpy())[0] for _, s in snaps])
        paths.append(plots.image_grid(out / "reverse_trajectory.png", strip,
                                      "reverse trajectory, noise (left) to data (right)", ncol=len(strip)))
        return paths
    flat = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
    paths.append(plots.binary_rows(out / "samples.png", flat(ys), flat(picks[:n].numpy()),
                                   "Samples (left) beside training data (right)"))
    frames = np.stack([flat(s[:6].numpy()) for _, s in snaps])
    paths.append(plots.binary_trajectory(out / "reverse_trajectory.png", frames, [t for t, _ in snaps],
                                         "Reverse trajectories from noise to data"))
    return paths


def markdown(record: dict, title: str, figure_names: list[str]) -> str:
    """A short Markdown report of an evaluation record."""
    lines = [f"# {title}", "", "| quantity | value |", "| --- | --- |"]
    rows = [
        ("K, bits per example (data units)", "K_bits"),
        ("K, bits per example (scaled data, paper convention)", "K_bits_scaled"),
        ("exact log-likelihood, bits (scaled data)", "exact_bits_scaled"),
        ("gap exact - K, bits", "gap_bits"),
        ("standard error of the gap, bits", "gap_stderr_bits"),
        ("L_null, bits", "L_null_bits"),
        ("K - L_null, bits", "K_minus_L_null_bits"),
        ("bits per dimension (-K / D, data units)", "bits_per_dim"),
        ("standard error of K, bits", "stderr_bits"),
        ("prior term, bits", "prior_bits"),
        ("reconstruction term, bits", "reconstruction_bits"),
        ("diffusion term, bits", "diffusion_bits"),
        ("held-out examples", "n_examples"),
        ("training seconds", "train_seconds"),
    ]
    for label, key in rows:
        if key in record:
            v = record[key]
            lines.append(f"| {label} | {v:.4f} |" if isinstance(v, float) else f"| {label} | {v} |")
    lines += [""] + [f"![{name}]({name})" for name in figure_names]
    return "\n".join(lines) + "\n"
