"""`thermodiff condition` and the conditioning benchmarks end to end."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import _one_line_error

# `mixture_run` and `heartbeat_run` (tiny trained runs) and `run` are conftest fixtures.

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_inpainting_keeps_known_values_and_draws_a_figure(mixture_run, tmp_path, run):
    np.save(tmp_path / "known.npy", np.array([1.7, 0.0]))
    np.save(tmp_path / "mask.npy", np.array([1.0, 0.0]))
    for method in ("clamp", "replace"):
        out = tmp_path / f"{method}.npy"
        r = run("condition", mixture_run, "--known", tmp_path / "known.npy", "--mask", tmp_path / "mask.npy",
                "-n", 50, "--out", out, "--method", method, "--resample", 2)
        assert r.returncode == 0, r.stderr
        x = np.load(out)
        assert x.shape == (50, 2) and np.all(x[:, 0] == 1.7) and np.isfinite(x).all()
        assert out.with_suffix(".png").stat().st_size > 1000


def test_per_sample_known_values(mixture_run, tmp_path, run):
    known = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.0]])
    np.save(tmp_path / "known.npy", known)
    np.save(tmp_path / "mask.npy", np.array([1.0, 0.0]))
    r = run("condition", mixture_run, "--known", tmp_path / "known.npy", "--mask", tmp_path / "mask.npy",
            "-n", 3, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "s.npy")[:, 0], known[:, 0])


@pytest.mark.parametrize("method", ["start", "product", "guidance", "smc"])
def test_observation_methods(mixture_run, tmp_path, method, run):
    np.save(tmp_path / "y.npy", np.array([1.5, 1.0]))
    r = run("condition", mixture_run, "--observe", tmp_path / "y.npy", "--noise", 0.3, "-n", 20,
            "--out", tmp_path / "s.npy", "--method", method, "--particles", 4)
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (20, 2) and np.isfinite(x).all()


def test_binary_known_bit(heartbeat_run, tmp_path, run):
    known = np.zeros(20)
    known[3] = 1
    mask = np.zeros(20)
    mask[3] = 1
    np.save(tmp_path / "k.npy", known)
    np.save(tmp_path / "m.npy", mask)
    r = run("condition", heartbeat_run, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m.npy", "-n", 30,
            "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "s.npy")
    assert set(np.unique(x)) <= {0.0, 1.0} and np.all(x[:, 3] == 1)
    assert (tmp_path / "s.png").exists()
    r = run("condition", heartbeat_run, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m.npy", "-n", 10,
            "--out", tmp_path / "smc.npy", "--method", "smc", "--particles", 4)
    assert r.returncode == 0, r.stderr
    assert np.all(np.load(tmp_path / "smc.npy")[:, 3] == 1)


def test_bad_conditioning_input_is_one_line_and_writes_nothing(mixture_run, heartbeat_run, tmp_path, cli):
    np.save(tmp_path / "k.npy", np.array([1.0, 0.0]))
    np.save(tmp_path / "m.npy", np.array([1.0, 0.0]))
    np.save(tmp_path / "m3.npy", np.array([1.0, 0.0, 1.0]))
    np.save(tmp_path / "m2.npy", np.array([2.0, 0.0]))
    out = tmp_path / "s.npy"
    base = ("condition", mixture_run, "-n", 5, "--out", out)
    _one_line_error(cli(*base), "--known FILE with --mask FILE")
    _one_line_error(cli(*base, "--known", tmp_path / "k.npy"), "needs --mask")
    _one_line_error(cli(*base, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m3.npy"), "shape")
    _one_line_error(cli(*base, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m2.npy"), "only 0")
    _one_line_error(cli(*base, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m.npy", "--method", "smc"),
                    "SMC cannot weight")
    _one_line_error(cli(*base, "--known", tmp_path / "k.npy", "--mask", tmp_path / "m.npy", "--method", "magic"),
                    "unknown conditioning method")
    _one_line_error(cli(*base, "--observe", tmp_path / "k.npy"), "--noise")
    _one_line_error(cli(*base, "--observe", tmp_path / "k.npy", "--noise", 0), "positive")
    _one_line_error(cli(*base, "--observe", tmp_path / "k.npy", "--noise", 0.1, "--method", "clamp"),
                    "needs known coordinates")
    _one_line_error(cli(*base, "--known", tmp_path / "missing.npy", "--mask", tmp_path / "m.npy"), "not found")
    assert not out.exists()
    bits = np.zeros(20)
    bits[0] = 0.5
    np.save(tmp_path / "b.npy", bits)
    np.save(tmp_path / "bm.npy", np.ones(20))
    _one_line_error(cli("condition", heartbeat_run, "--known", tmp_path / "b.npy", "--mask", tmp_path / "bm.npy",
                        "-n", 2, "--out", out), "binary")
    assert not out.exists()


def test_condition_bench_smoke(tmp_path, run):
    r = run("bench", "condition", "--smoke", "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "c.json").read_text())
    methods = {row["method"] for row in rec["rows"]}
    assert {"clamp", "replace", "start", "product", "guidance", "smc", "none"} <= methods
    assert all(("ks" in row) != ("tv" in row) for row in rec["rows"])


@pytest.mark.skipif(not MNIST.exists(), reason=f"real MNIST not found at {MNIST}")
def test_inpaint_mnist_bench_smoke(tmp_path, run):
    r = run("bench", "binary-mnist", "--smoke", "--out", tmp_path / "bm")
    assert r.returncode == 0, r.stderr
    r = run("bench", "inpaint-mnist", "--smoke", "--run", tmp_path / "bm", "--json", tmp_path / "i.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "i.json").read_text())
    for key in ("error_model_sample", "error_model_majority", "error_mean_fill", "error_nearest_neighbour"):
        assert 0 <= rec[key] <= 1
    assert (tmp_path / "bm" / "inpainting.png").exists()
    _one_line_error(run("bench", "inpaint-mnist"), "needs --run")
