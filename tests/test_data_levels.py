"""8-bit images as integer levels: dequantisation of held-out and training data."""

import math

import pytest
import torch

from conftest import MNIST_ROOT
from thermodiff import config
from thermodiff.data import Dataset, _levels, load
from thermodiff.train import fit


def _cfg(**data):
    return config.replace(config.Config(), data=data)


def test_held_out_levels_are_dequantised_once_within_their_bin():
    levels = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    ds = _levels(levels, levels[:20], _cfg(n_train=30, n_test=10).data)
    assert ds.dequantize and ds.train.shape[0] == 30 and ds.test.shape[0] == 10
    assert torch.equal(ds.train, levels[:30])  # training levels stay integers: noise comes per batch
    frac = ds.test - levels[:10]
    assert torch.all((frac >= 0) & (frac < 1)) and frac.std() > 0.2  # uniform in [0, 1)
    again = _levels(levels, levels[:20], _cfg(n_train=30, n_test=10).data)
    assert torch.equal(again.test, ds.test)  # a fixed draw: evaluations agree


def test_training_sees_fresh_dequantisation_noise(tmp_path):
    """Integer data with a single level per coordinate: without noise the scaler would see
    zero variance; dequantised, the fitted shift is the bin's middle and the scale ~ 1/sqrt(12)."""
    y = torch.full((200, 2), 7.0, dtype=torch.float64)
    y[:, 1] = 3.0
    cfg = config.apply_overrides(config.load("configs/demo.toml"), ["train.steps=5", "train.max_seconds=0",
                                                                    "model.width=8", "model.depth=1", "process.time=discrete",
                                                                    "process.schedule=linear", "process.T=10"])
    model = fit(cfg, Dataset(y, y[:20] + 0.5, None, dequantize=True), tmp_path / "run", progress=False, log=lambda *a: None)
    assert torch.allclose(model.scaler.shift, torch.tensor([7.5, 3.5], dtype=torch.float64), atol=0.05)
    assert abs(float(model.scaler.scale) - 1 / math.sqrt(12)) < 0.03


@pytest.mark.skipif(not MNIST_ROOT.exists(), reason=f"real MNIST not found at {MNIST_ROOT}")
def test_real_mnist_as_levels():
    ds = load(_cfg(name="mnist", root=str(MNIST_ROOT), n_train=0, n_test=0).data)
    assert ds.train.shape == (60000, 1, 28, 28) and ds.test.shape == (10000, 1, 28, 28)
    assert ds.dequantize and float(ds.train.max()) == 255 and torch.equal(ds.train, ds.train.round())
    assert 0 <= float(ds.test.min()) and float(ds.test.max()) < 256


@pytest.mark.skipif(not MNIST_ROOT.exists(), reason=f"real MNIST not found at {MNIST_ROOT}")
def test_mnist_bench_smoke(tmp_path, run):
    import json

    r = run("bench", "mnist", "--smoke", "--out", tmp_path / "b", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    for key in ("bits_per_dim", "stderr_bits", "parzen_bits", "train_seconds", "images_per_second",
                "sampling_steps", "device", "commit", "fd_samples", "kid_samples", "fd_floor",
                "classifier_test_accuracy"):
        assert key in rec, key
    assert rec["n_samples"] == 16 and rec["sampling_steps"] == 6


@pytest.mark.skipif(not MNIST_ROOT.exists(), reason=f"real MNIST not found at {MNIST_ROOT}")
def test_mnist_cond_bench_smoke(tmp_path, run):
    import json

    r = run("bench", "mnist-cond", "--smoke", "--out", tmp_path / "b", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    for key in ("bits_per_dim", "bits_per_dim_unconditional", "label_gain_bits", "fd_unconditional", "kid_floor",
                "fd_guided_w0", "fd_guided_w3", "classified_as_asked_w1", "likelihood_classifier_accuracy",
                "classifier_test_accuracy", "train_steps", "commit"):
        assert key in rec, key
    assert rec["labels"] == "true" and rec["config"]["model"]["num_classes"] == 10
    # evaluating the trained run again (--run) gives the same bounds
    r = run("bench", "mnist-cond", "--smoke", "--run", tmp_path / "b", "--out", tmp_path / "c",
            "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "c.json").read_text())
    assert again["bits_per_dim"] == rec["bits_per_dim"] and again["train_steps"] == rec["train_steps"]


def test_cifar_imagefolder_and_deadleaves_through_the_loader(tmp_path):
    """The data sets of the images issue load through data.load: 8-bit formats as
    dequantised levels, dead leaves as continuous [0, 1) images."""
    import pickle

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    ds = load(_cfg(name="cifar10", root=str(tmp_path), n_train=0, n_test=0).data)
    assert ds.train.shape == (20, 3, 32, 32) and ds.test.shape == (4, 3, 32, 32) and ds.dequantize
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    ds = load(_cfg(name="imagefolder", root=str(folder), test_fraction=0.2, n_train=0, n_test=0).data)
    assert ds.train.shape == (8, 1, 6, 5) and ds.test.shape == (2, 1, 6, 5) and ds.dequantize
    ds = load(_cfg(name="deadleaves", n_train=3, n_test=2, size=16).data)
    assert ds.train.shape == (3, 1, 16, 16) and not ds.dequantize
    assert float(ds.train.min()) >= 0 and float(ds.train.max()) < 1
