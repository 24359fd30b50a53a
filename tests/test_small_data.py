"""A few hundred points of a known density with the defaults for a user's own data
(``configs/vectors.toml``): the held-out bound is near the exact log-likelihood and
above the full-covariance Gaussian; without held-out monitoring the same data are
overfitted far below it.

The data: 300 points of a two-component Gaussian mixture in 8 dimensions (random
full covariances), 2,000 held out; its exact log-density is known in closed form.
"""

import math

import numpy as np
import pytest
import torch

from conftest import MNIST_ROOT
from thermodiff import config as config_mod
from thermodiff import data as data_mod
from thermodiff.data.toy import GaussianMixture
from thermodiff.evaluation import evaluate_run
from thermodiff.run_folder import load_run
from thermodiff.train import fit

D, N_TRAIN, N_TEST = 8, 300, 2000
# The defaults' held-out K is within this many bits of the exact log-likelihood
# (measured: 1.24 +- 0.06 bits below it, 1.5 bits above the Gaussian baseline).
MARGIN_BITS = 2.0


def _mixture() -> GaussianMixture:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    means = torch.randn(2, D, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(D, dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64), means, covs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    mix = _mixture()
    np.save(folder / "train.npy", mix.sample(N_TRAIN, torch.Generator().manual_seed(0)).numpy())
    np.save(folder / "test.npy", mix.sample(N_TEST, torch.Generator().manual_seed(1)).numpy())
    return folder


def _train(files, out, **sections):
    cfg = config_mod.load(config_mod.config_path("vectors"))
    cfg = config_mod.replace(cfg, data={"path": str(files / "train.npy"), "test_path": str(files / "test.npy")})
    cfg = config_mod.replace(cfg, **sections)
    dataset = data_mod.load(cfg.data)
    fit(cfg, dataset, out, progress=False, log=lambda *a: None)
    return dataset


def _record(out, dataset, which):
    _, model, meta = load_run(out, which=which)
    record = evaluate_run(model, dataset.test, config_mod.EvalConfig(n_t=32), _mixture().log_prob,
                          train=dataset.train_continuous(0))
    return record, meta


def test_the_defaults_come_near_the_exact_likelihood_and_beat_the_gaussian(files, tmp_path):
    dataset = _train(files, tmp_path / "run")
    record, meta = _record(tmp_path / "run", dataset, "best")
    assert meta["checkpoint"].startswith("best held-out check")
    assert record["gap_bits"] < MARGIN_BITS, record["gap_bits"]
    assert record["gap_bits"] > -3 * record["gap_stderr_bits"]  # a bound: never above the exact value
    assert record["K_minus_gaussian_bits"] > 3 * record["K_minus_gaussian_stderr_bits"], record
    assert "gaussian_warning" not in record


def test_without_monitoring_the_same_density_is_overfitted(files, tmp_path):
    """Without the defaults' regularisation (dropout 0, a 256-wide MLP) and without early
    stopping, 1,000 steps at a constant learning rate (the start of a long budget) on
    the first 100 of the points: the last weights, what training without held-out
    monitoring returns, fall far below the Gaussian baseline; the best held-out check of
    the same run (the weights monitoring keeps) is far above them."""
    np.save(tmp_path / "train.npy", np.load(files / "train.npy")[:100])
    (tmp_path / "test.npy").symlink_to(files / "test.npy")
    dataset = _train(tmp_path, tmp_path / "run", model={"dropout": 0.0, "width": 256},
                     train={"steps": 1000, "batch_size": 128, "patience": 0, "validate_every": 100,
                            "lr_schedule": "constant"})
    last, _ = _record(tmp_path / "run", dataset, "last")
    best, meta = _record(tmp_path / "run", dataset, "best")
    assert meta["step"] < 1000
    assert last["K_minus_gaussian_bits"] < -2.0, last["K_minus_gaussian_bits"]
    assert "gaussian_warning" in last
    assert best["K_bits"] > last["K_bits"] + 2.0, (best["K_bits"], last["K_bits"])


def test_downsampling_averages_blocks_to_levels():
    from thermodiff.data.images import downsample_levels

    images = np.array([[[0, 2, 255, 255], [1, 3, 255, 254], [10, 10, 0, 0], [10, 11, 0, 1]]], dtype=np.uint8)
    np.testing.assert_array_equal(downsample_levels(images, 2), [[[2, 255], [10, 0]]])  # 1.5 -> 2, 254.75 -> 255


@pytest.mark.skipif(not MNIST_ROOT.exists(), reason=f"real MNIST not found at {MNIST_ROOT}")
def test_small_data_bench_smoke(tmp_path, cli):
    import json

    out = tmp_path / "b"
    r = cli("bench", "small-data", "--smoke", "--out", out, "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    for key in ("K_bits", "gaussian_bits", "K_minus_gaussian_bits", "best_val_bits", "best_step", "checkpoint"):
        assert key in rec, key
    train = np.load(out / "data" / "train.npy")
    assert train.shape == (200, 196) and (np.floor(train) != train).all() and train.max() < 256
    assert rec["config"]["model"]["dropout"] == 0.3 and rec["config"]["data"]["validation_fraction"] == 0.1
    # The benchmark refuses its own trained folder before rewriting the data beside it.
    r = cli("bench", "small-data", "--smoke", "--out", out)
    assert r.returncode == 2 and "holds a trained run" in r.stderr
