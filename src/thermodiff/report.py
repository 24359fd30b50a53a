"""Figures and the run report.

``figures`` draws the paper's Figure 1 panels for 2-D data, samples and reverse
trajectories for binary vectors and images, and the per-t bound terms for any data;
``condition_figure`` the figure of a conditioning run; ``run_report`` the likelihood
report of a run (Markdown or HTML). The records themselves (K, the paired gap to the
exact log-likelihood, the importance-weighted estimate) come from ``evaluation``.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from . import data as data_mod
from . import plots  # matplotlib itself is imported inside plots, when a figure is drawn
from .atomic import atomic_write
from .errors import DataError
from .entropy import entropy_bounds
from .evaluation import evaluate_run, iw_record
from .model import DiffusionModel
from .sampling.ancestral import drift, sample
from .run_folder import METRICS, load_run


def _finite_or_none(value):
    """A record with every NaN and infinity (floats, also inside lists and dicts) as
    None, so that the JSON is strict (null, not NaN). Shapes: none."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, record: dict) -> None:
    """Write a record as strict JSON, atomically (temp file in the same folder, then
    rename): NaN and infinities become null (a standard error of one example is
    undefined; its record says why in a ``*_note`` field), and nothing else non-finite
    is ever written (``allow_nan=False``)."""
    path = Path(path)
    text = json.dumps(_finite_or_none(record), indent=2, allow_nan=False) + "\n"
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file name for the JSON record")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)


def figures(model: DiffusionModel, data_train: torch.Tensor, record: dict, out: str | Path, seed: int = 0, n: int = 2000,
            steps: int | None = None) -> list[Path]:
    """Figures of a run in out/: the per-t bound terms for any data; for 2-D data the
    forward and reverse trajectories and the drift field (paper Figure 1); for binary
    vectors and images, samples beside training data and a reverse trajectory from noise
    (paper Figure 2).

    steps: sampling steps for binary and image data (None: every step).

    Shapes: data_train (N, *D) in the data's own units.
    """
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
    if data_mod.is_binary(data_train) or len(model.data_shape) == 3:
        return paths + _sample_figures(model, data_train, out, seed, steps)
    if model.data_shape != (2,):
        return paths
    gen = torch.Generator().manual_seed(seed)
    n = min(n, data_train.shape[0])  # a small training set is drawn whole
    x0 = model.scaler(data_train[torch.randperm(data_train.shape[0], generator=gen)[:n]])
    with torch.no_grad():
        times = [0.0, 0.5, 1.0]
        frames = [x0.numpy()]
        for t in times[1:]:
            tt = model.schedule.snap(torch.full((n,), t, dtype=torch.float64))
            frames.append(model.process.q_sample(x0, model.abar_at(tt), torch.randn(x0.shape, generator=gen)).numpy())
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
        t_mid = float(model.schedule.snap(torch.tensor([0.5]))[0])
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


def condition_figure(model: DiffusionModel, path: str | Path, samples: torch.Tensor, shown: torch.Tensor,
                     mask: torch.Tensor | None, data_train: torch.Tensor, title: str,
                     original: torch.Tensor | None = None, log_density=None) -> Path | None:
    """The figure of a conditioning run (the paper's Figures 3 and 5): for images, rows
    of the originals (if given), the corrupted inputs (unknown pixels mid-gray) and the
    samples; for binary vectors, samples beside the known bits (unknown gray); for 2-D
    points, the samples over the training data with the known coordinate or the
    observation marked. None for other data.

    shown: the known values or the observation, one example or one per sample, data
    units; mask: 1 where known or observed (None: everything observed); log_density:
    the data set's exact log-density, for the exact conditional of 2-D points given
    one coordinate (normalised on a grid).

    Shapes: samples (n, *D); shown, mask (1 or n, *D); data_train (N, *D).
    """
    shape = model.data_shape
    shown = shown.reshape((-1,) + shape).to(torch.float64)
    mask = torch.ones_like(shown) if mask is None else mask.reshape((-1,) + shape).to(torch.float64)
    lo, hi = float(data_train.min()), float(data_train.max())
    mid = torch.full_like(shown, (lo + hi) / 2)
    corrupted = torch.where(mask.bool(), shown, mid)
    if len(shape) == 3:
        unit = lambda a: ((a.to(torch.float64) - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()  # noqa: E731
        m = min(len(samples), 8)
        rows = ([original[:m]] if original is not None else []) + [corrupted.expand((len(samples),) + shape)[:m], samples[:m]]
        labels = (["original"] if original is not None else []) + [
            "observed" if mask.all() else "known (gray: unknown)", "samples"]
        return plots.image_grid(path, np.concatenate([unit(r) for r in rows]), title, ncol=m, row_labels=labels)
    if data_mod.is_binary(data_train):
        flat = lambda a: a.reshape(len(a), -1).numpy()  # noqa: E731
        return plots.binary_rows(path, flat(samples[:24]), flat(corrupted[:24]), title,
                                 labels=("conditioned samples", "known bits (gray: unknown)"))
    if shape == (2,):
        row = corrupted[0]
        if mask.all():
            return plots.conditioned_points(path, samples.numpy(), data_train[:5000].numpy(), title,
                                            observed=row.numpy())
        known = torch.where(mask[0].bool(), row, torch.full_like(row, float("nan")))
        exact = None
        if log_density is not None and int(mask[0].sum()) == 1:
            free = int((~mask[0].bool()).nonzero()[0])
            lim = float(data_train.abs().max()) * 1.2
            grid = torch.linspace(-lim, lim, 2001, dtype=torch.float64)
            pts = row.expand(len(grid), 2).clone()
            pts[:, free] = grid
            log_p = log_density(pts)
            dens = torch.exp(log_p - log_p.max())
            exact = (grid.numpy(), (dens / (dens.sum() * (grid[1] - grid[0]))).numpy())
        return plots.conditioned_points(path, samples.numpy(), data_train[:5000].numpy(), title,
                                        known=known.numpy(), exact=exact)
    return None


def interpolation_figure(model: DiffusionModel, path: str | Path, paths: torch.Tensor, examples: torch.Tensor,
                         data_train: torch.Tensor | None) -> Path | None:
    """The figure of ``thermodiff interpolate``: for images, one row per pair (its two
    ends are the decoded examples); for 2-D points, the paths over the training data.
    None for other data.

    Shapes: paths (P, k, *D) data units; examples (N, *D); data_train (M, *D) or None.
    """
    shape = model.data_shape
    k = paths.shape[1]
    title = f"Interpolation through the ODE latents (slerp), {len(paths)} pairs, {k} points"
    if len(shape) == 3:
        ref = data_train if data_train is not None else examples
        lo, hi = float(ref.min()), float(ref.max())
        images = ((paths.reshape((-1,) + shape) - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
        return plots.image_grid(path, images, title, ncol=k,
                                row_labels=[f"pair {i + 1}" for i in range(len(paths))])
    if shape == (2,):
        background = data_train[:5000] if data_train is not None else examples
        return plots.interpolation_paths(path, paths.numpy(), background.numpy(), title)
    return None


def held_out_checks(run: Path) -> list[dict]:
    """The held-out checks a run logged (metrics.jsonl lines with "val_bits"), in step
    order; none where it did not monitor. Shapes: none."""
    path = Path(run) / METRICS
    checks = []
    if not path.is_file():
        return checks
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            break  # a cut line ends what can be read, as on resume
        if isinstance(r, dict) and isinstance(r.get("val_bits"), (int, float)) and isinstance(r.get("step"), int):
            checks.append(r)
    return checks


def held_out_figure(run: Path, out: Path, gaussian_bits: float | None = None) -> Path | None:
    """held_out.png in out: the run's held-out checks over training (``plots.held_out_curve``);
    None where the run made none. Shapes: none."""
    checks = held_out_checks(run)
    if not checks:
        return None
    return plots.held_out_curve(
        out / "held_out.png", np.array([c["step"] for c in checks]), np.array([c["val_bits"] for c in checks]),
        np.array([c.get("train_eval_bits", np.nan) for c in checks]), checks[-1].get("best_step"),
        "Held-out checks during training: K on validation and training examples", gaussian_bits,
    )


def run_report(run: str | Path, out: str | Path | None = None, m: int = 100, html: bool = False,
               progress: bool = False, eval_overrides: dict | None = None, entropy_examples: int = 256,
               which: str = "best", ode: bool | None = None) -> Path:
    """The likelihood report of a trained run: K and its terms, K - L_null, the
    importance-weighted estimate against M, the entropy bounds of each reverse step,
    the exact log-likelihood where the data set's density is known, and the run's
    figures. Writes report.md (or report.html), report.json and PNGs to out
    (default RUN/report) and returns the report's path. eval_overrides: eval config
    keys to change for this report (e.g. iw_examples). which: the weights, "best"
    (the best held-out check, where the run monitored one) or "last". ode: add the ODE
    model's exact log-likelihood beside K and IW(M) (None: where the model has an ODE
    and the data at most ``ode.likelihood.EXACT_MAX_DIMS`` dimensions, where it is cheap).

    Shapes: none (a run folder -> files).
    """
    cfg, model, meta = load_run(run, which=which)
    cfg = config_mod.replace(cfg, eval=eval_overrides or {})
    out = Path(out) if out else Path(run) / "report"
    dataset = data_mod.load(cfg.data)
    if ode is None:
        from .ode.likelihood import EXACT_MAX_DIMS

        ode = "ode" in model.process.supports and model.param.predicts_eps and model.n_dims <= EXACT_MAX_DIMS
    record = evaluate_run(model, dataset.test, cfg.eval, dataset.log_density, progress=progress,
                          sampler=meta["time_sampler"], train=dataset.train_continuous(cfg.train.seed), ode=ode)
    record.update(iw_record(model, dataset.test, cfg.eval, m, dataset.log_density, progress))
    ent = entropy_bounds(model, dataset.test[:entropy_examples], cfg.eval.iw_steps or None, cfg.eval.seed)
    record["entropy_bounds"] = ent
    record.update(train_steps=meta["step"], train_seconds=meta["train_seconds"], checkpoint=meta["checkpoint"])
    names = [p.name for p in figures(model, dataset.train, record, out, steps=cfg.eval.sample_steps or None)]
    curve = record["iw_curve"]
    names.append(plots.iw_curve(
        out / "iw_curve.png", [c["M"] for c in curve], [c["bits_scaled"] for c in curve],
        [c["stderr_bits"] for c in curve],
        f"Importance-weighted estimate, {record['iw_n_examples']} examples, {record['iw_steps']} hops",
        exact_bits=record.get("iw_exact_bits_scaled"),
    ).name)
    flagged = np.isin(np.asarray(ent["t"]), np.asarray(ent["flagged"]))
    names.append(plots.entropy_bounds(
        out / "entropy_bounds.png", ent["t"], ent["lower"], ent["upper"], ent["model"],
        "Entropy of each reverse step (paper eq. 24)", flagged=flagged,
    ).name)
    curve = held_out_figure(Path(run), out, record.get("gaussian_bits"))
    if curve is not None:
        names.insert(0, curve.name)
    write_json(out / "report.json", record)
    title = f"thermodiff report: {cfg.name}"
    path = out / ("report.html" if html else "report.md")
    with atomic_write(path) as f:
        f.write((to_html if html else markdown)(record, title, names))
    return path


# Rows of the report's main table: label, record key.
_ROWS = [
    ("K, bits per example (data units)", "K_bits"),
    ("K, bits per example (scaled data, paper convention)", "K_bits_scaled"),
    ("exact log-likelihood, bits (scaled data)", "exact_bits_scaled"),
    ("gap exact - K, bits", "gap_bits"),
    ("standard error of the gap, bits", "gap_stderr_bits"),
    ("full-covariance Gaussian fitted to the training data, held-out bits (data units)", "gaussian_bits"),
    ("K - Gaussian, bits", "K_minus_gaussian_bits"),
    ("its standard error (paired), bits", "K_minus_gaussian_stderr_bits"),
    ("L_null, bits", "L_null_bits"),
    ("K - L_null, bits", "K_minus_L_null_bits"),
    ("bits per dimension (-K / D, data units)", "bits_per_dim"),
    ("standard error of K, bits", "stderr_bits"),
    ("prior term, bits", "prior_bits"),
    ("reconstruction term, bits", "reconstruction_bits"),
    ("diffusion term, bits", "diffusion_bits"),
    ("held-out examples", "n_examples"),
    ("importance-weighted estimate, bits (data units)", "iw_bits"),
    ("importance-weighted estimate, bits (scaled data)", "iw_bits_scaled"),
    ("its standard error, bits", "iw_stderr_bits"),
    ("exact log-likelihood on the same examples, bits (scaled data)", "iw_exact_bits_scaled"),
    ("its gap to the exact log-likelihood, bits", "iw_gap_bits"),
    ("trajectories per example M", "iw_M"),
    ("hops per trajectory", "iw_steps"),
    ("examples for the importance-weighted estimate", "iw_n_examples"),
    ("ODE model's exact log-likelihood, bits (data units)", "ode_bits"),
    ("ODE model's exact log-likelihood, bits (scaled data)", "ode_bits_scaled"),
    ("its standard error, bits", "ode_stderr_bits"),
    ("ODE bits per dimension (data units)", "ode_bits_per_dim"),
    ("ODE minus K on the same examples, bits", "ode_minus_K_bits"),
    ("exact minus ODE, bits", "ode_gap_bits"),
    ("network calls per example (ODE)", "ode_nfe"),
    ("examples for the ODE likelihood", "ode_n_examples"),
    ("weights", "checkpoint"),
    ("training steps", "train_steps"),
    ("training seconds", "train_seconds"),
]


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _tables(record: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (caption, header, rows)."""
    tables = [("", ["quantity", "value"], [[label, _cell(record[key])] for label, key in _ROWS if key in record])]
    if "iw_curve" in record:
        exact = "gap_bits" in record["iw_curve"][0]
        header = ["M", "estimate, bits (scaled)", "standard error"] + (["gap to exact", "its standard error"] if exact else [])
        rows = [[str(c["M"]), _cell(c["bits_scaled"]), _cell(c["stderr_bits"])]
                + ([_cell(c["gap_bits"]), _cell(c["gap_stderr_bits"])] if exact else []) for c in record["iw_curve"]]
        tables.append(("Importance-weighted estimate against M (M = 1 is K's estimator for the same chain; "
                       "the larger M are averaged over disjoint groups of the same trajectories)", header, rows))
    if "ode_bits_scaled" in record:
        tables.append(_side_by_side(record))
    return tables


def _side_by_side(record: dict) -> tuple[str, list[str], list[list[str]]]:
    """K, IW(M) and the ODE figure in one table (bits per example, scaled data)."""
    exact = "exact_bits_scaled" in record
    header = ["estimate", "what it is", "bits (scaled data)", "standard error", "examples"] + (
        ["exact minus it", "its standard error"] if exact else [])
    rows = [["K", "lower bound on the stochastic chain's log-likelihood", _cell(record["K_bits_scaled"]),
             _cell(record["stderr_bits"]), str(record["n_examples"])]
            + ([_cell(record["gap_bits"]), _cell(record["gap_stderr_bits"])] if exact else [])]
    if "iw_bits_scaled" in record:
        rows.append([f"IW({record['iw_M']})", "a tighter lower bound on the same log-likelihood",
                     _cell(record["iw_bits_scaled"]), _cell(record["iw_stderr_bits"]), str(record["iw_n_examples"])]
                    + ([_cell(record["iw_gap_bits"]), _cell(record.get("iw_gap_stderr_bits", float("nan")))]
                       if exact and "iw_gap_bits" in record else (["", ""] if exact else [])))
    rows.append([f"ODE ({record['ode_nfe']:.0f} calls)", "the deterministic model's exact log-likelihood "
                 "(up to solver error)", _cell(record["ode_bits_scaled"]), _cell(record["ode_stderr_bits"]),
                 str(record["ode_n_examples"])]
                + ([_cell(record["ode_gap_bits"]), _cell(record["ode_gap_stderr_bits"])] if exact else []))
    return ("K, the importance-weighted estimate and the probability-flow ODE side by side (K and IW bound "
            "the stochastic model; the ODE figure belongs to a different, deterministic model)", header, rows)


def _warning_lines(record: dict) -> list[str]:
    """The record's warnings and notes, one sentence each. Shapes: none."""
    return [f"{'Warning' if 'warning' in k else 'Note'}: {record[k]}."
            for k in ("warning", "gaussian_warning", "ode_warning", "gaussian_note") if k in record]


def _entropy_line(record: dict) -> str | None:
    ent = record.get("entropy_bounds")
    if not ent:
        return None
    n, bad = len(ent["t"]), len(ent["flagged"])
    where = f": t = {', '.join(f'{t:.4g}' for t in ent['flagged'][:10])}{' ...' if bad > 10 else ''}" if bad else ""
    return f"Reverse steps whose kernel entropy lies outside the eq. 24 bounds: {bad} of {n}{where}."


def markdown(record: dict, title: str, figure_names: list[str]) -> str:
    """A Markdown report of an evaluation record, with its figures. Shapes: dict -> str."""
    lines = [f"# {title}", ""]
    for w in _warning_lines(record):
        lines += [f"**{w}**", ""]
    for caption, header, rows in _tables(record):
        if caption:
            lines += [caption, ""]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    line = _entropy_line(record)
    if line:
        lines += [line, ""]
    lines += [f"![{name}]({name})" for name in figure_names]
    return "\n".join(lines) + "\n"


def to_html(record: dict, title: str, figure_names: list[str]) -> str:
    """The same report as an HTML page (figures linked beside it). Shapes: dict -> str."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "td,th{border:1px solid #ccc;padding:2px 8px}table{border-collapse:collapse;margin:1em 0}</style>",
             f"</head><body><h1>{escape(title)}</h1>"]
    parts += [f"<p><strong>{escape(w)}</strong></p>" for w in _warning_lines(record)]
    for caption, header, rows in _tables(record):
        if caption:
            parts.append(f"<p>{escape(caption)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    line = _entropy_line(record)
    if line:
        parts.append(f"<p>{escape(line)}</p>")
    parts += [f"<p><img src='{escape(name)}' alt='{escape(name)}'></p>" for name in figure_names]
    return "\n".join(parts) + "\n</body></html>\n"
