"""Figures drawn from plain numpy arrays, saved as PNG files.

This module knows nothing about models: callers evaluate whatever they want to show
(trajectories, drifts, bound terms, training logs) and pass the numbers in. Every
function writes one file atomically (a temporary file in the same folder, then
``os.replace``), so a reader never sees a half-written image, and returns the path it
wrote as a ``pathlib.Path``.

Drawing uses matplotlib's object API (``matplotlib.figure.Figure``) on an explicit Agg
canvas: no pyplot, no global figure state, and no GUI backend, so it works on headless
machines and in worker processes. ``import thermodiff`` never imports this module
(and so never imports matplotlib); import ``thermodiff.plots`` explicitly.

The output format follows the path's suffix when matplotlib knows it (``.png``,
``.pdf``, ``.svg``, ...); a path without a suffix is written as PNG.

Point clouds are drawn in data coordinates with equal aspect, so a circle in the data
is a circle on the page; data are dimensionless, so 2-D axes are labelled ``x1`` and
``x2`` without a unit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write

__all__ = [
    "trajectory_grid",
    "drift_field",
    "bound_terms",
    "samples_vs_data",
    "training_curve",
    "histogram_1d",
    "binary_rows",
    "binary_trajectory",
    "image_grid",
    "iw_curve",
    "entropy_bounds",
    "conditioned_points",
    "class_points",
    "confusion_matrix",
]

DPI = 120
PANEL_SIZE = 3.2  # inches per square scatter panel
MODEL_COLOR = "#1f4e9c"  # samples / model outputs
DATA_COLOR = "#d95f02"  # training data
FAINT_DATA_COLOR = "0.55"  # data drawn behind another layer


# --------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Any:
    """A Figure on an Agg canvas, with constrained layout (tight_layout that also fits suptitles)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1, w_pad=0.06)  # room under suptitles
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` atomically: temp file in the same folder, then replace."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot write a figure as {path.suffix!r}: use one of "
            + ", ".join("." + k for k in sorted(supported))
        )
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        # bbox_inches="tight" is a safety net: constrained layout can leave a few
        # pixels of an x label outside the canvas when panels have equal aspect.
        fig.savefig(fh, format=fmt, dpi=DPI, facecolor="white",
                    bbox_inches="tight", pad_inches=0.08)
    return path


def _points(name: str, a: Any) -> np.ndarray:
    """``a`` as a float (N, 2) array; N may be 0."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {arr.shape}")
    return arr


def _vector(name: str, a: Any) -> np.ndarray:
    """``a`` as a float (n,) array; (n, 1) is accepted and flattened."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got {arr.shape}")
    return arr


def _finite(a: np.ndarray) -> np.ndarray:
    """Rows (or entries) of ``a`` with no NaN / inf."""
    if a.ndim == 1:
        return a[np.isfinite(a)]
    return a[np.isfinite(a).all(axis=1)]


def _auto_lim(clouds: Sequence[np.ndarray]) -> float:
    """A symmetric half-width that shows (nearly) every cloud in full.

    Uses the 99.5th percentile of |coordinate| per cloud, so a handful of far outliers
    (e.g. from a diverged sampler) does not shrink everything else to a dot.
    """
    lim = 0.0
    for c in clouds:
        c = _finite(c)
        if c.size:
            lim = max(lim, float(np.quantile(np.abs(c), 0.995)))
    return 1.12 * lim if lim > 0 else 1.0


def _marker_size(n: int) -> float:
    """Scatter marker area (pt^2) that keeps dense clouds readable."""
    if n <= 0:
        return 4.0
    return float(np.clip(3000.0 / n, 1.0, 12.0))


def _point_alpha(n: int) -> float:
    return float(np.clip(300.0 / max(n, 1) ** 0.75, 0.25, 0.8))


def _style_cloud_axes(ax: Any, lim: float, *, ylabel: bool = True) -> None:
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(r"$x_1$")
    if ylabel:
        ax.set_ylabel(r"$x_2$")
    ax.grid(True, lw=0.4, alpha=0.35)
    ax.set_axisbelow(True)


def _scatter(ax: Any, pts: np.ndarray, color: str, *, faint: bool = False, **kw: Any) -> None:
    n = len(pts)
    if n == 0:
        return
    s = _marker_size(n)
    alpha = _point_alpha(n)
    if faint:
        alpha = min(alpha, 0.35)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, c=color, alpha=alpha, linewidths=0,
               rasterized=n > 5000, **kw)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that skips NaN; NaN where the window holds no finite value."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    kernel = np.ones(window)
    num = np.convolve(v, kernel, mode="same")
    den = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den == 0] = np.nan
    return out


def _text_box(ax: Any, lines: Sequence[str]) -> None:
    """A small boxed text block placed where it hides the least data (legend 'best')."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none") for _ in lines]
    ax.legend(handles, lines, loc="best", handlelength=0, handletextpad=0,
              fontsize="small", framealpha=0.9)


# --------------------------------------------------------------------------- figures


def trajectory_grid(
    path: str | os.PathLike[str],
    frames: Sequence[np.ndarray],
    titles: Sequence[str],
    suptitle: str,
    data: np.ndarray | None = None,
    lim: float | None = None,
) -> Path:
    """One row of 2-D scatter panels, e.g. a forward or reverse diffusion trajectory.

    Like a row of Figure 1 in Sohl-Dickstein et al. (2015): the forward trajectory at
    t = 0, T/2, T, or the reverse trajectory from noise back to data. Every panel has
    the same square limits [-lim, lim]^2 and equal aspect; ``data``, when given, is
    drawn faintly behind each panel for reference. ``lim=None`` picks a limit that
    shows all frames (ignoring the most extreme 0.5% of coordinates).

    Shapes: frames: list of (N_i, 2); titles: one str per frame; data: (M, 2) or None.
    """
    pts = [_points(f"frames[{i}]", f) for i, f in enumerate(frames)]
    if not pts:
        raise ValueError("trajectory_grid needs at least one frame")
    titles = list(titles)
    if len(titles) != len(pts):
        raise ValueError(f"got {len(pts)} frames but {len(titles)} titles")
    ref = _points("data", data) if data is not None else None
    if lim is None:
        lim = _auto_lim(pts + ([ref] if ref is not None else []))
    elif not (np.isfinite(lim) and lim > 0):
        raise ValueError(f"lim must be a positive number, got {lim!r}")

    n = len(pts)
    fig = _new_figure(PANEL_SIZE * n + 0.3, PANEL_SIZE + 0.55)
    axes = fig.subplots(1, n, squeeze=False, sharex=True, sharey=True)[0]
    for i, (ax, p, title) in enumerate(zip(axes, pts, titles)):
        if ref is not None:
            _scatter(ax, ref, FAINT_DATA_COLOR, faint=True, zorder=1)
        _scatter(ax, p, MODEL_COLOR, zorder=2)
        ax.set_title(title, fontsize="medium")
        _style_cloud_axes(ax, float(lim), ylabel=i == 0)
        if i > 0:
            ax.tick_params(labelleft=False)
    fig.suptitle(suptitle)
    return _save(fig, path)


def drift_field(
    path: str | os.PathLike[str],
    grid_xy: np.ndarray,
    drift: np.ndarray,
    data: np.ndarray | None,
    title: str,
) -> Path:
    """Quiver plot of a drift field over a grid, e.g. the learned f_mu(x, t) - x.

    Like the bottom row of Figure 1 in Sohl-Dickstein et al. (2015). Arrows are drawn
    in data coordinates, uniformly scaled so that the longest ones (98th percentile)
    span about one grid cell; the key in the corner gives the length of a reference
    arrow in data units, so magnitudes can be read off. ``data``, when given, is drawn
    faintly behind the arrows.

    Shapes: grid_xy: (G, G, 2) positions; drift: (G, G, 2) displacement at each
    position; data: (M, 2) or None.
    """
    xy = np.asarray(grid_xy, dtype=np.float64)
    uv = np.asarray(drift, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise ValueError(f"grid_xy must have shape (G, G, 2), got {xy.shape}")
    if uv.shape != xy.shape:
        raise ValueError(f"drift must have the shape of grid_xy {xy.shape}, got {uv.shape}")
    ref = _points("data", data) if data is not None else None

    X, Y = xy[..., 0], xy[..., 1]
    U, V = uv[..., 0], uv[..., 1]
    mag = np.hypot(U, V)
    finite_mag = mag[np.isfinite(mag)]
    # Grid spacing: the typical distance between neighbouring grid points.
    steps = [np.hypot(*np.diff(xy, axis=a).reshape(-1, 2).T) for a in (0, 1)]
    steps = np.concatenate([s[np.isfinite(s) & (s > 0)] for s in steps])
    fin_xy = _finite(xy.reshape(-1, 2))
    if fin_xy.size == 0:
        raise ValueError("grid_xy has no finite positions")
    lo, hi = fin_xy.min(axis=0), fin_xy.max(axis=0)
    spacing = float(np.median(steps)) if steps.size else float(max(hi - lo)) or 1.0

    typical = float(np.quantile(finite_mag, 0.98)) if finite_mag.size else 0.0
    arrow_per_unit = 0.9 * spacing / typical if typical > 0 else 1.0

    fig = _new_figure(5.2, 5.0)
    ax = fig.add_subplot()
    if ref is not None:
        _scatter(ax, ref, FAINT_DATA_COLOR, faint=True, zorder=1)
    q = ax.quiver(X, Y, U, V, angles="xy", scale_units="xy", scale=1.0 / arrow_per_unit,
                  color=MODEL_COLOR, width=0.004, headwidth=3.5, headlength=4.0,
                  headaxislength=3.5, pivot="tail", zorder=2)
    if typical > 0:
        key_len = float(f"{typical:.1g}")  # a round reference length, in data units
        ax.quiverkey(q, 0.83, 1.015, key_len, f"{key_len:g} (axis units)",
                     labelpos="W", coordinates="axes", fontproperties={"size": "small"})
    else:
        ax.text(0.98, 1.01, "drift is zero everywhere", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small")
    margin = 0.75 * spacing
    ax.set_xlim(lo[0] - margin, hi[0] + margin)
    ax.set_ylim(lo[1] - margin, hi[1] + margin)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(r"$x_1$")
    ax.set_ylabel(r"$x_2$")
    ax.set_title(title, pad=18)
    return _save(fig, path)


def bound_terms(
    path: str | os.PathLike[str],
    t: np.ndarray,
    terms_bits: np.ndarray,
    title: str,
    ylabel: str = "bits",
    logy: bool = True,
    extra: Mapping[str, float | str] | None = None,
    xlabel: str | None = None,
) -> Path:
    """Per-time contributions to the negative bound, against t.

    ``t`` is either continuous time in [0, 1] or integer diffusion steps; the x label
    says which (override with ``xlabel``). With ``logy`` the y axis is logarithmic when
    every term is positive; otherwise (Monte Carlo estimates can dip below zero) it is
    symmetric-log, linear near zero, with a line at zero. ``extra`` entries, e.g.
    ``{"prior L_T": 0.01, "reconstruction": 1.3}``, are listed in a text box placed
    where it hides the least of the curve.

    Shapes: t: (n,); terms_bits: (n,) (n terms, one per t).
    """
    t = _vector("t", t)
    y = _vector("terms_bits", terms_bits)
    if t.shape != y.shape:
        raise ValueError(f"t {t.shape} and terms_bits {y.shape} must have the same shape")
    if t.size == 0:
        raise ValueError("bound_terms needs at least one term")
    y = np.where(np.isfinite(y), y, np.nan)
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    fy = y[np.isfinite(y)]

    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    marker = "o" if t.size <= 60 else None
    ax.plot(t, y, color=MODEL_COLOR, lw=1.6, marker=marker, ms=3.5)

    if logy and fy.size:
        if np.all(fy > 0):
            ax.set_yscale("log")
        else:
            nz = np.abs(fy[fy != 0])
            # Linear within the smallest quarter of magnitudes (where Monte Carlo noise
            # flips signs), logarithmic beyond.
            linthresh = (max(float(np.quantile(nz, 0.25)), float(nz.max()) * 1e-4)
                         if nz.size else 1.0)
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.axhline(0.0, color="0.3", lw=0.8, zorder=0)
    elif fy.size and fy.min() < 0 < fy.max():
        ax.axhline(0.0, color="0.3", lw=0.8, zorder=0)

    if xlabel is None:
        integer_steps = np.all(np.isfinite(t)) and np.all(t == np.round(t)) and t.max() > 1
        xlabel = "diffusion step t" if integer_steps else "time t (0 = data, 1 = noise)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", lw=0.5, alpha=0.4)
    ax.grid(True, which="minor", lw=0.3, alpha=0.2)

    if extra:
        lines = [f"{k}: {v:.4g}" if isinstance(v, (int, float, np.floating, np.integer))
                 else f"{k}: {v}" for k, v in extra.items()]
        _text_box(ax, lines)
    return _save(fig, path)


def samples_vs_data(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    data: np.ndarray,
    title: str,
) -> Path:
    """Model samples and training data side by side, with the same limits and aspect.

    Shapes: samples: (N, 2); data: (M, 2).
    """
    s = _points("samples", samples)
    d = _points("data", data)
    lim = _auto_lim([s, d])
    fig = _new_figure(2 * PANEL_SIZE + 0.4, PANEL_SIZE + 0.55)
    ax_s, ax_d = fig.subplots(1, 2, sharex=True, sharey=True)
    _scatter(ax_s, s, MODEL_COLOR)
    _scatter(ax_d, d, DATA_COLOR)
    ax_s.set_title(f"model samples (N = {len(s):,})", fontsize="medium")
    ax_d.set_title(f"data (M = {len(d):,})", fontsize="medium")
    _style_cloud_axes(ax_s, lim)
    _style_cloud_axes(ax_d, lim, ylabel=False)
    ax_d.tick_params(labelleft=False)
    fig.suptitle(title)
    return _save(fig, path)


def training_curve(
    path: str | os.PathLike[str],
    steps: np.ndarray,
    values: np.ndarray,
    ylabel: str,
    title: str,
    logy: bool = False,
    window: int | None = None,
) -> Path:
    """A loss or bound against training step: raw values faint, moving average on top.

    The moving average is centred and skips NaN / inf entries; its window defaults to
    about 1/25 of the points (at least 1, no average drawn below 10 points). ``logy``
    uses a log y axis when every finite value is positive.

    Shapes: steps: (n,); values: (n,).
    """
    x = _vector("steps", steps)
    y = _vector("values", values)
    if x.shape != y.shape:
        raise ValueError(f"steps {x.shape} and values {y.shape} must have the same shape")
    y = np.where(np.isfinite(y), y, np.nan)
    n = y.size
    if window is None:
        window = max(1, n // 25)
    elif window < 1:
        raise ValueError(f"window must be >= 1, got {window}")

    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    show_avg = n >= 10 and window > 1
    ax.plot(x, y, color=MODEL_COLOR, lw=0.9, alpha=0.35 if show_avg else 1.0,
            label="per step" if show_avg else None)
    if show_avg:
        ax.plot(x, _moving_average(y, window), color=MODEL_COLOR, lw=1.8,
                label=f"moving average ({window} points)")
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
    fy = y[np.isfinite(y)]
    if logy and fy.size and np.all(fy > 0):
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, lw=0.5, alpha=0.4)
    return _save(fig, path)


def histogram_1d(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    data: np.ndarray,
    title: str,
    bins: int | None = None,
) -> Path:
    """Normalised histograms (densities) of 1-D samples and data, overlaid on shared bins.

    The bins span both sets (ignoring the most extreme 0.25% on each side) so the two
    densities are directly comparable (each is normalised over its points inside the
    bins); data is filled, samples are an outline. ``bins`` fixes the number of bins.

    Shapes: samples: (N,) or (N, 1); data: (M,) or (M, 1).
    """
    s = _finite(_vector("samples", samples))
    d = _finite(_vector("data", data))
    both = np.concatenate([s, d])
    if both.size == 0:
        raise ValueError("histogram_1d needs at least one finite value")
    lo, hi = np.quantile(both, [0.0025, 0.9975])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    if bins is None:
        edges = np.histogram_bin_edges(both, bins="fd", range=(lo, hi))
        if not 10 <= len(edges) - 1 <= 100:
            edges = np.linspace(lo, hi, int(np.clip(len(edges) - 1, 10, 100)) + 1)
    else:
        edges = np.linspace(lo, hi, int(bins) + 1)

    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    if d.size:
        ax.hist(d, bins=edges, density=True, histtype="stepfilled", color=DATA_COLOR,
                alpha=0.35, label=f"data (M = {d.size:,})")
    if s.size:
        ax.hist(s, bins=edges, density=True, histtype="step", color=MODEL_COLOR, lw=1.8,
                label=f"model samples (N = {s.size:,})")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("x")
    ax.set_ylabel("probability density")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    ax.grid(True, lw=0.5, alpha=0.4)
    return _save(fig, path)


# --------------------------------------------------------------- binary data and images


def _matrix(name: str, a: Any) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{name}: expected a non-empty (N, D) array, got shape {m.shape}")
    return m


def binary_rows(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    data: np.ndarray,
    title: str,
    labels: tuple[str, str] = ("model samples", "training data"),
) -> Path:
    """Binary vectors as rows of black (1) and white (0) cells: samples beside data
    (values in between are gray, e.g. 0.5 for an unknown bit).

    Shapes: samples: (N, D); data: (M, D), values in [0, 1].
    """
    s, d = _matrix("samples", samples), _matrix("data", data)
    height = max(2.2, 0.12 * max(len(s), len(d)) + 1.0)
    width = max(4.0, 2 * (0.18 * s.shape[1] + 0.6))
    fig = _new_figure(width, height)
    axes = fig.subplots(1, 2)
    for ax, m, label in ((axes[0], s, f"{labels[0]} ({len(s)})"), (axes[1], d, f"{labels[1]} ({len(d)})")):
        ax.imshow(m, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("bin")
        ax.set_xticks(range(0, m.shape[1], max(1, m.shape[1] // 4)))
        ax.set_yticks([])
    fig.suptitle(title)
    return _save(fig, path)


def binary_trajectory(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    times: Sequence[float],
    title: str,
) -> Path:
    """The reverse trajectory of a few binary vectors: for each, an image with the bits
    down and diffusion time across, from noise (t = 1, left) to data (t = 0, right);
    grey levels are the batch's values (0 white, 1 black), as in the paper's Figure 2.

    Shapes: frames: (K, N, D) snapshots, times: (K,) in [0, 1], first = noise.
    """
    f = np.asarray(frames, dtype=np.float64)
    if f.ndim != 3 or len(times) != f.shape[0]:
        raise ValueError(f"frames: expected (K, N, D) with K = len(times), got {f.shape} and {len(times)} times")
    k, n, dims = f.shape
    fig = _new_figure(8.0, 0.9 + 0.8 * n * min(3.0, max(1.0, dims / 20)))
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    t = np.asarray(times, dtype=np.float64)
    for i, ax in enumerate(axes):
        ax.imshow(f[:, i, :].T, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest",
                  extent=(t[0], t[-1], dims - 0.5, -0.5))
        ax.set_yticks([])
        ax.set_ylabel(f"#{i + 1}", rotation=0, labelpad=12, fontsize="small")
    axes[-1].set_xlabel("diffusion time t (noise at 1, data at 0)")
    fig.suptitle(title)
    return _save(fig, path)


def image_grid(
    path: str | os.PathLike[str],
    images: np.ndarray,
    title: str,
    ncol: int | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """A grid of images with values in [0, 1] (1 or 3 channels), one axis-free panel each;
    row_labels, if given, name the rows on the left.

    Shapes: images: (N, C, H, W) with C in {1, 3}.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"images: expected (N, C, H, W) with C in 1 or 3, got shape {x.shape}")
    n, c, h, w = x.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    pad = 1
    canvas = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c))
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i].transpose(1, 2, 0)
    canvas = np.clip(canvas, 0, 1)
    scale = 0.045 if max(h, w) <= 32 else 0.02
    fig = _new_figure(max(2.5, canvas.shape[1] * scale), max(2.5, canvas.shape[0] * scale + 0.4))
    ax = fig.subplots()
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    if row_labels:
        ax.set_xticks([])
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(row_labels))], list(row_labels))
        ax.tick_params(left=False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    else:
        ax.set_axis_off()
    fig.suptitle(title)
    return _save(fig, path)


def iw_curve(
    path: str | os.PathLike[str],
    m: np.ndarray,
    bits: np.ndarray,
    stderr: np.ndarray,
    title: str,
    exact_bits: float | None = None,
) -> Path:
    """The importance-weighted estimate against the number of trajectories M (log axis;
    M = 1 is K's estimator), with error bars of one standard error, and the exact
    log-likelihood on the same examples as a line.

    Shapes: m, bits, stderr: (n,); exact_bits: a scalar in the same units.
    """
    m, y, se = _vector("m", m), _vector("bits", bits), _vector("stderr", stderr)
    if not (m.shape == y.shape == se.shape) or m.size == 0:
        raise ValueError("m, bits and stderr must be non-empty and of one shape")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.errorbar(m, y, yerr=np.nan_to_num(se), color=MODEL_COLOR, marker="o", ms=4, lw=1.6, capsize=3,
                label="log-mean-exp of M trajectory weights")
    if exact_bits is not None:
        ax.axhline(exact_bits, color=DATA_COLOR, lw=1.4, label="exact log-likelihood")
    if m.max() > m.min():
        ax.set_xscale("log")
    ax.set_xlabel("trajectories per example M")
    ax.set_ylabel("bits per example (scaled data)")
    ax.set_title(title)
    ax.grid(True, which="major", lw=0.5, alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def held_out_curve(
    path: str | os.PathLike[str],
    steps: np.ndarray,
    val_bits: np.ndarray,
    train_bits: np.ndarray,
    best_step: int | None,
    title: str,
    gaussian_bits: float | None = None,
) -> Path:
    """The held-out checks of a training run: K on the validation examples and on as
    many training examples against the step (their gap is overfitting), the best check
    marked, and the full-covariance Gaussian baseline as a line.

    Shapes: steps, val_bits, train_bits: (n,); best_step, gaussian_bits: scalars.
    """
    x, v, tr = _vector("steps", steps), _vector("val_bits", val_bits), _vector("train_bits", train_bits)
    if not (x.shape == v.shape == tr.shape) or x.size == 0:
        raise ValueError("steps, val_bits and train_bits must be non-empty and of one shape")
    fig = _new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(x, tr, color=FAINT_DATA_COLOR, lw=1.4, marker=".", label="training examples")
    ax.plot(x, v, color=MODEL_COLOR, lw=1.8, marker=".", label="validation examples")
    if best_step is not None and best_step in x:
        i = int(np.nonzero(x == best_step)[0][0])
        ax.plot([x[i]], [v[i]], "o", ms=9, mfc="none", mec=MODEL_COLOR, mew=1.8, label=f"best check (step {best_step})")
    if gaussian_bits is not None:
        ax.axhline(gaussian_bits, color=DATA_COLOR, lw=1.4, ls="--", label="full-covariance Gaussian (held-out)")
    # The first checks of a run are far below the rest: the axis follows the later ones,
    # and always shows the baseline.
    finite = np.concatenate([v[np.isfinite(v)], tr[np.isfinite(tr)]])
    if finite.size > 4:
        lo, hi = np.percentile(finite, 10), finite.max()
        if gaussian_bits is not None and np.isfinite(gaussian_bits):
            lo, hi = min(lo, gaussian_bits), max(hi, gaussian_bits)
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("training step")
    ax.set_ylabel("K, bits per example (data units)")
    ax.set_title(title)
    ax.grid(True, lw=0.5, alpha=0.4)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def entropy_bounds(
    path: str | os.PathLike[str],
    t: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    model: np.ndarray,
    title: str,
    flagged: np.ndarray | None = None,
) -> Path:
    """Per-step bounds on the reverse conditional entropy (shaded) and the model's kernel
    entropy; the steps the caller flags (outside the bounds) are marked with red crosses.

    Shapes: t, lower, upper, model: (n,), entropies in bits per dimension; flagged: (n,) bool.
    """
    t, lo, hi, h = (_vector(k, a) for k, a in (("t", t), ("lower", lower), ("upper", upper), ("model", model)))
    if not (t.shape == lo.shape == hi.shape == h.shape) or t.size == 0:
        raise ValueError("t, lower, upper and model must be non-empty and of one shape")
    fig = _new_figure(10.0, 4.0)
    ax, rel = fig.subplots(1, 2)
    ax.fill_between(t, lo, hi, color="0.85", label="eq. 24 bounds on H_q(X_s | X_t)")
    ax.plot(t, lo, color="0.5", lw=0.8)
    ax.plot(t, hi, color="0.5", lw=0.8)
    ax.plot(t, h, color=MODEL_COLOR, lw=1.6, label="model kernel, mean entropy")
    # Right: where the model sits within the band (0: lower bound, 1: upper bound),
    # readable where the band is too narrow to see on the left.
    width = np.where(hi - lo > 0, hi - lo, np.nan)
    rel.axhspan(0.0, 1.0, color="0.85")
    rel.plot(t, (h - lo) / width, color=MODEL_COLOR, lw=1.6)
    out = np.zeros(t.shape, dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    if out.any():
        ax.plot(t[out], h[out], "x", color="#c0392b", ms=5, label="outside the bounds")
        rel.plot(t[out], ((h - lo) / width)[out], "x", color="#c0392b", ms=5)
    for a in (ax, rel):
        a.set_xlabel("time t of x_t (0 = data, 1 = noise)")
        a.grid(True, which="major", lw=0.5, alpha=0.4)
    ax.set_ylabel("bits per dimension")
    rel.set_ylabel("(H - lower) / (upper - lower)")
    ax.legend(loc="lower right", fontsize=8)
    rel.set_title("position within the bounds")
    fig.suptitle(title)
    return _save(fig, path)


def conditioned_points(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    data: np.ndarray,
    title: str,
    known: np.ndarray | None = None,
    observed: np.ndarray | None = None,
    exact: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Conditioned samples over the training data (faint), with the known coordinates
    as lines (x1 = value: vertical, x2 = value: horizontal) or the observation as a star.
    With one coordinate known, a second panel shows the samples' histogram of the other,
    and ``exact`` (grid, density) the exact conditional density over it.

    Shapes: samples: (N, 2); data: (M, 2); known, observed: (2,), NaN where unknown;
    exact: (G,), (G,).
    """
    s, d = _points("samples", samples), _points("data", data)
    lim = _auto_lim([s, d])
    k = None if known is None else np.asarray(known, dtype=np.float64)
    free = None if k is None or np.isfinite(k).all() else int(np.flatnonzero(~np.isfinite(k))[0])
    fig = _new_figure(PANEL_SIZE * (2 if free is not None else 1) + 0.9, PANEL_SIZE + 0.55)
    ax = fig.add_subplot(1, 2 if free is not None else 1, 1)
    _scatter(ax, d, FAINT_DATA_COLOR, faint=True)
    if k is not None:
        # The known coordinate's line under the samples (which all lie on it).
        if np.isfinite(k[0]):
            ax.axvline(k[0], color=DATA_COLOR, lw=0.8, zorder=1)
        if np.isfinite(k[1]):
            ax.axhline(k[1], color=DATA_COLOR, lw=0.8, zorder=1)
    _scatter(ax, s, MODEL_COLOR, zorder=3)
    if free is not None:
        # The samples' distribution along the unknown coordinate.
        hist = fig.add_subplot(1, 2, 2)
        hist.hist(s[:, free], bins=80, range=(-lim, lim), density=True, color=MODEL_COLOR, alpha=0.8,
                  label="samples")
        if exact is not None:
            hist.plot(exact[0], exact[1], color=DATA_COLOR, lw=1.2, label="exact conditional")
            hist.legend(fontsize=8)
        hist.set_xlabel(f"$x_{free + 1}$")
        hist.set_ylabel("density")
        hist.set_title(f"$x_{free + 1}$ given $x_{2 - free}$ = {k[1 - free]:.3g}", fontsize="medium")
    if observed is not None:
        o = np.asarray(observed, dtype=np.float64)
        ax.plot([o[0]], [o[1]], marker="*", ms=14, color=DATA_COLOR, mec="black", mew=0.6, ls="none")
    _style_cloud_axes(ax, lim)
    ax.set_title(title, fontsize="medium")
    return _save(fig, path)


def interpolation_paths(
    path: str | os.PathLike[str],
    paths: np.ndarray,
    data: np.ndarray,
    title: str,
) -> Path:
    """Paths between pairs of 2-D examples through their ODE latents, over the training
    data (faint): each path a line through its decoded points, its two ends marked.

    Shapes: paths: (P, k, 2); data: (M, 2).
    """
    p = np.asarray(paths, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 2 or p.shape[1] < 2:
        raise ValueError(f"paths: expected (P, k, 2) with k >= 2, got shape {p.shape}")
    d = _points("data", data)
    lim = _auto_lim([d, p.reshape(-1, 2)])
    fig = _new_figure(PANEL_SIZE + 0.9, PANEL_SIZE + 0.55)
    ax = fig.add_subplot()
    _scatter(ax, d, FAINT_DATA_COLOR, faint=True)
    for i, line in enumerate(p):
        ax.plot(line[:, 0], line[:, 1], "-o", color=MODEL_COLOR, ms=3, lw=1.2, zorder=3,
                label="decoded interpolation" if i == 0 else None)
        ax.plot(line[[0, -1], 0], line[[0, -1], 1], "o", ms=7, mfc="none", mec=DATA_COLOR, mew=1.6, zorder=4,
                label="the two examples" if i == 0 else None)
    _style_cloud_axes(ax, lim)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize="medium")
    return _save(fig, path)


def error_vs_nfe(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    floor: float | None = None,
    reference: tuple[str, float] | None = None,
    ylabel: str = "sample error",
) -> Path:
    """Sample error against network calls per sample (log-log), one line per solver;
    the floor of the statistic (two exact sample sets) and a reference figure (the full
    ancestral chain) as horizontal lines.

    Shapes: curves: name -> (nfe (n,), error (n,)); floor, reference: scalars.
    """
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for name, (nfe, err) in curves.items():
        x, y = _vector(f"{name} nfe", nfe), _vector(f"{name} error", err)
        ax.plot(x, y, marker="o", ms=4, lw=1.6, label=name)
    if reference is not None:
        ax.axhline(reference[1], color=DATA_COLOR, lw=1.2, ls="--", label=reference[0])
    if floor is not None:
        ax.axhline(floor, color="0.5", lw=1.0, ls=":", label="floor: two exact sample sets")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network calls per sample (NFE)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="both", lw=0.5, alpha=0.4)
    ax.legend(fontsize=8)
    return _save(fig, path)


def class_points(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    title: str,
) -> Path:
    """Samples of a class-conditional model, one colour per class asked for.

    Shapes: samples: (N, 2); labels: (N,) class indices into names.
    """
    s = _points("samples", samples)
    y = np.asarray(labels)
    lim = _auto_lim([s])
    fig = _new_figure(PANEL_SIZE + 1.6, PANEL_SIZE + 0.55)
    ax = fig.subplots()
    colours = _class_colours(len(names))
    for k in np.unique(y):
        _scatter(ax, s[y == k], colours[int(k)], label=str(names[int(k)]))
    ax.legend(fontsize="small", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    _style_cloud_axes(ax, lim)
    fig.suptitle(title)
    return _save(fig, path)


def _class_colours(n: int) -> list:
    """n distinguishable colours as hex strings (tab10, then tab20's, then a continuous
    map); strings, so that a class of 3 or 4 points does not read its colour as values."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if n <= 10:
        return [to_hex(colormaps["tab10"](i)) for i in range(n)]
    if n <= 20:
        return [to_hex(colormaps["tab20"](i)) for i in range(n)]
    return [to_hex(colormaps["viridis"](i / max(n - 1, 1))) for i in range(n)]


def confusion_matrix(
    path: str | os.PathLike[str],
    counts: np.ndarray,
    names: Sequence[str],
    title: str,
) -> Path:
    """A confusion matrix: rows the true class, columns the predicted one, each row as
    shares of its examples (the counts written in the cells where they fit).

    Shapes: counts: (C, C).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] != len(names):
        raise ValueError(f"counts: expected ({len(names)}, {len(names)}), got shape {c.shape}")
    share = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(names)
    side = min(12.0, 1.5 + 0.45 * k)
    fig = _new_figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = list(range(k))
    ax.set_xticks(ticks, [str(n) for n in names], rotation=90 if max(len(str(n)) for n in names) > 3 else 0)
    ax.set_yticks(ticks, [str(n) for n in names])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if c[i, j]:
                    ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize="x-small",
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.suptitle(title)
    return _save(fig, path)
