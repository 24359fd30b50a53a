"""The binomial process end to end: a user's binary array through train / evaluate /
sample, the heartbeat data, a short training run against the exact log-likelihood, and
one-line errors for non-binary data."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import CONTRACT_KEYS
from thermodiff import config, data
from thermodiff.data.toy import heartbeat_log_density, heartbeat_patterns, heartbeat_sample

TINY = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=64",
        "--set", "eval.n_t=8", "--set", "process.T=20", "--set", "train.log_every=5"]


def test_heartbeat_data():
    pats = heartbeat_patterns()
    assert pats.shape == (5, 20) and (pats.sum(1) == 4).all()
    assert (pats.sum(0) == 1).all()  # each bin belongs to exactly one phase
    x = heartbeat_sample(5000, torch.Generator().manual_seed(0))
    phase = x[:, :5].argmax(1)
    counts = torch.bincount(phase, minlength=5).double() / 5000
    assert (counts - 0.2).abs().max() < 0.03
    lp = heartbeat_log_density(x)
    assert torch.allclose(lp, torch.full_like(lp, -math.log(5)))
    bad = x[:2].clone()
    bad[0, 0] = 1 - bad[0, 0]
    assert heartbeat_log_density(bad)[0] == -math.inf
    ds = data.load(config.DataConfig(name="heartbeat", n_train=10, n_test=7))
    assert ds.train.shape == (10, 20) and ds.test.shape == (7, 20)


@pytest.fixture(scope="module")
def binary_arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("binary")
    x = heartbeat_sample(600, torch.Generator().manual_seed(1)).numpy()
    np.save(d / "beats.npy", x[:500])
    np.save(d / "beats_test.npy", x[500:])
    np.savetxt(d / "beats.csv", x[:50], delimiter=",", fmt="%d")
    y = x[:50].copy()
    y[3, 7] = 0.5
    np.save(d / "not_binary.npy", y)
    return d


@pytest.fixture(scope="module")
def binary_run(binary_arrays, tmp_path_factory, run):
    out = tmp_path_factory.mktemp("runs") / "beats"
    r = run("train", "--data", binary_arrays / "beats.npy", "--process", "binomial", "--out", out,
            "--steps", 20, *TINY)
    assert r.returncode == 0, r.stderr
    return out


def test_binary_train_evaluate_sample(binary_run, binary_arrays, tmp_path, run):
    cfg = config.load(binary_run / "config.toml")
    assert cfg.process.kind == "binomial" and cfg.model.parametrization == "x0"
    r = run("evaluate", binary_run, "--data", binary_arrays / "beats_test.npy", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "e.json").read_text())
    for key in CONTRACT_KEYS:
        assert key in rec
    assert rec["K_bits"] == rec["K_bits_scaled"]  # binary data are never rescaled
    # Independent Bernoullis at the training data's rate of ones (0.2): -14.439 bits.
    assert abs(rec["L_null_bits"] - (4 * math.log2(0.2) + 16 * math.log2(0.8))) < 0.1
    assert len(rec["terms_bits"]) == 8  # eval.n_t strata of the steps 2..T
    assert rec["K_bits"] < 0
    r = run("sample", binary_run, "-n", 7, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (7, 20) and set(np.unique(s)) <= {0.0, 1.0}


def test_csv_binary_data_trains(binary_arrays, tmp_path, run):
    r = run("train", "--data", binary_arrays / "beats.csv", "--process", "binomial", "--out", tmp_path / "c",
            "--steps", 2, *TINY)
    assert r.returncode == 0, r.stderr


def test_non_binary_data_is_one_line_exit_2(binary_arrays, binary_run, tmp_path, cli):
    out = tmp_path / "nb"
    r = cli("train", "--data", binary_arrays / "not_binary.npy", "--process", "binomial", "--out", out, "--steps", 2, *TINY)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "binary" in r.stderr and "0.5" in r.stderr
    assert not out.exists()  # nothing written
    r = cli("evaluate", binary_run, "--data", binary_arrays / "not_binary.npy")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "binary" in r.stderr


def test_binomial_config_errors(binary_arrays, tmp_path, cli):
    for bad, words in (("process.time=continuous", "discrete"), ("model.parametrization=eps", "binomial"),
                       ("train.objective=simple", "bound"), ("process.schedule=learned", "schedule")):
        r = cli("train", "--data", binary_arrays / "beats.npy", "--process", "binomial", "--out", tmp_path / "e",
                "--steps", 2, *TINY, "--set", bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert r.stderr.count("\n") == 1 and words in r.stderr, (bad, r.stderr)


def test_short_heartbeat_training_is_below_exact_and_above_null(tmp_path):
    """A minute-scale run on heartbeat: K beats the null model by far and stays below
    the exact log-likelihood log2(1/5)."""
    from thermodiff.bench import bench_config
    from thermodiff.evaluation import evaluate_run
    from thermodiff.train import fit

    cfg = bench_config("heartbeat")
    cfg = config.replace(cfg, process={"T": 100}, model={"width": 64, "depth": 2},
                         data={"n_train": 5000, "n_test": 500},
                         train={"steps": 300, "max_seconds": 0.0, "batch_size": 256, "log_every": 100,
                                "checkpoint_every": 1000},
                         eval={"n_t": 99})
    ds = data.load(cfg.data)
    model = fit(cfg, ds, tmp_path / "hb", progress=False)
    rec = evaluate_run(model, ds.test, cfg.eval, ds.log_density)
    assert rec["K_minus_L_null_bits"] > 8  # null: -14.44 bits; exact: -2.32
    assert rec["gap_bits"] > -3 * rec["gap_stderr_bits"], rec
    assert "warning" not in rec


MNIST_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.mark.parametrize("name", ["heartbeat", "heartbeat-paper", "binary-mnist"])
def test_binary_bench_smoke(name, tmp_path, run):
    if name == "binary-mnist" and not MNIST_DIR.is_dir():
        pytest.skip(f"MNIST IDX files not found in {MNIST_DIR}")
    out = tmp_path / "out.json"
    r = run("bench", name, "--smoke", "--json", out, "--out", tmp_path / name, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == name
    keys = ["K_bits", "K_minus_L_null_bits", "bits_per_dim", "stderr_bits", "train_seconds", "device", "commit"]
    if name != "binary-mnist":
        keys += ["valid_fraction", "exact_bits_scaled", "gap_bits"]
        assert 0 <= rec["valid_fraction"] <= 1
        assert rec["gap_bits"] > -3 * rec["gap_stderr_bits"]
    for key in keys:
        assert key in rec, key
