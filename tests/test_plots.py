"""Tests for thermodiff.plots: every figure writes a PNG atomically; no matplotlib on import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from thermodiff import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)


def _cloud(n: int, scale: float = 1.0) -> np.ndarray:
    return RNG.normal(size=(n, 2)) * scale


def _assert_png(path: Path, expected: Path) -> None:
    assert Path(path) == expected
    assert expected.is_file()
    raw = expected.read_bytes()
    assert len(raw) > 1000
    assert raw[:8] == PNG_SIGNATURE
    # Nothing but the final file is left in the folder (no temporary files).
    assert sorted(p.name for p in expected.parent.iterdir()) == [expected.name]


def _grid(g: int = 9) -> np.ndarray:
    ax = np.linspace(-2, 2, g)
    return np.stack(np.meshgrid(ax, ax, indexing="xy"), axis=-1)


def test_trajectory_grid(tmp_path: Path) -> None:
    frames = [_cloud(300, s) for s in (0.5, 1.0, 1.5)]
    out = tmp_path / "traj.png"
    got = plots.trajectory_grid(out, frames, ["t = 0", "t = T/2", "t = T"], "forward",
                                data=_cloud(200, 0.5))
    _assert_png(got, out)


def test_trajectory_grid_fixed_lim_single_frame_and_nan(tmp_path: Path) -> None:
    frame = _cloud(50)
    frame[3] = np.nan
    out = tmp_path / "one.png"
    _assert_png(plots.trajectory_grid(str(out), [frame], ["only"], "single", lim=3.0), out)


def test_trajectory_grid_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="titles"):
        plots.trajectory_grid(tmp_path / "x.png", [_cloud(5)], ["a", "b"], "s")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plots.trajectory_grid(tmp_path / "x.png", [np.zeros((5, 3))], ["a"], "s")
    assert list(tmp_path.iterdir()) == []


def test_drift_field(tmp_path: Path) -> None:
    xy = _grid()
    out = tmp_path / "drift.png"
    got = plots.drift_field(out, xy, -0.1 * xy, _cloud(200, 0.5), "drift at t = T/2")
    _assert_png(got, out)


def test_drift_field_zero_drift_no_data(tmp_path: Path) -> None:
    xy = _grid(5)
    out = tmp_path / "zero.png"
    _assert_png(plots.drift_field(out, xy, np.zeros_like(xy), None, "zero"), out)
    with pytest.raises(ValueError, match="drift"):
        plots.drift_field(tmp_path / "bad.png", xy, np.zeros((4, 4, 2)), None, "bad")


def test_bound_terms_log(tmp_path: Path) -> None:
    t = np.linspace(0.0, 1.0, 40)
    out = tmp_path / "terms.png"
    got = plots.bound_terms(out, t, np.exp(-5 * t) + 1e-3, "per-t terms",
                            extra={"prior (bits)": 0.002, "reconstruction (bits)": 1.25})
    _assert_png(got, out)


def test_bound_terms_negative_falls_back_to_symlog(tmp_path: Path) -> None:
    steps = np.arange(1, 101)
    terms = np.exp(-steps / 20.0) - 0.01
    out = tmp_path / "neg.png"
    _assert_png(plots.bound_terms(out, steps, terms, "noisy terms"), out)
    out2 = tmp_path / "sub" / "lin.png"
    got = plots.bound_terms(out2, steps, terms, "linear", logy=False, ylabel="nats")
    _assert_png(got, out2)


def test_samples_vs_data(tmp_path: Path) -> None:
    out = tmp_path / "svd.png"
    _assert_png(plots.samples_vs_data(out, _cloud(400), _cloud(300), "swiss roll"), out)


def test_training_curve(tmp_path: Path) -> None:
    steps = np.arange(500)
    values = 5.0 / (1 + steps / 50.0) + RNG.normal(scale=0.2, size=500)
    values[10] = np.nan
    out = tmp_path / "curve.png"
    _assert_png(plots.training_curve(out, steps, values, "loss (bits/dim)", "training"), out)


def test_training_curve_short(tmp_path: Path) -> None:
    out = tmp_path / "short.png"
    got = plots.training_curve(out, np.arange(3), np.array([3.0, 2.0, 1.5]), "loss", "short",
                               logy=True)
    _assert_png(got, out)


def test_histogram_1d(tmp_path: Path) -> None:
    data = np.concatenate([RNG.normal(-2, 0.5, 500), RNG.normal(2, 0.5, 500)])
    out = tmp_path / "hist.png"
    _assert_png(plots.histogram_1d(out, RNG.normal(0, 2, 800)[:, None], data, "1-D"), out)


def test_histogram_1d_constant(tmp_path: Path) -> None:
    out = tmp_path / "const.png"
    _assert_png(plots.histogram_1d(out, np.ones(10), np.ones(10), "constant"), out)


def test_moving_average_skips_nan() -> None:
    v = np.array([1.0, np.nan, 3.0, 5.0])
    got = plots._moving_average(v, 3)
    np.testing.assert_allclose(got, [1.0, 2.0, 4.0, 4.0])


def test_overwrite_replaces_file_and_keeps_mode(tmp_path: Path) -> None:
    out = tmp_path / "svd.png"
    out.write_bytes(b"old")
    plots.samples_vs_data(out, _cloud(20), _cloud(20), "again")
    _assert_png(out, out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_save_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        plots.samples_vs_data(tmp_path / "x.notaformat", _cloud(5), _cloud(5), "bad")
    assert list(tmp_path.iterdir()) == []


def test_import_thermodiff_does_not_import_matplotlib() -> None:
    code = "import thermodiff, sys; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
