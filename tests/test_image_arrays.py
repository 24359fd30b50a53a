"""Arrays of images are images: uint8 arrays shaped (N, H, W), (N, C, H, W) or (N, H, W, C)
are 8-bit levels (dequantised, a U-Net by default, bits per 8-bit pixel), float arrays of
those shapes continuous images, and data.kind says otherwise where asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thermodiff import config as config_mod
from thermodiff import data as data_mod
from thermodiff.data.arrays import interpret


def _levels(n=40, h=6, w=5, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, c, h, w)
    return rng.integers(0, 256, size=shape).astype(np.uint8)


def _data_cfg(path, **kw):
    return config_mod.replace(config_mod.Config(), data=dict(name="array", path=str(path), **kw)).data


def test_the_layouts_of_images():
    x = _levels(c=3)
    nchw, kind = interpret(x, "auto", "x")
    assert kind == "levels" and nchw.shape == (40, 3, 6, 5) and np.array_equal(nchw, x)
    nhwc, _ = interpret(np.moveaxis(x, 1, 3).copy(), "auto", "x")  # channels last, moved first
    assert np.array_equal(nhwc, x)
    gray, _ = interpret(x[:, 0], "auto", "x")
    assert gray.shape == (40, 1, 6, 5) and np.array_equal(gray[:, 0], x[:, 0])
    assert interpret(x.astype(np.float32) / 255, "auto", "x")[1] == "images"
    assert interpret(x.reshape(40, -1), "auto", "x")[1] == "vectors"  # (N, D): vectors
    flat, kind = interpret(x, "vectors", "x")
    assert kind == "vectors" and flat.shape == (40, 90)
    assert interpret(np.zeros((4, 7, 7, 7)), "auto", "x")[1] == "vectors"  # 7 channels either way: not images


def test_8_bit_arrays_are_dequantised_levels(tmp_path):
    x = _levels(n=50)
    np.save(tmp_path / "x.npy", x)
    ds = data_mod.load(_data_cfg(tmp_path / "x.npy", test_fraction=0.2))
    assert ds.kind == "levels" and ds.dequantize and ds.shape == (1, 6, 5)
    assert ds.train.shape[0] == 40 and (ds.train == ds.train.round()).all()  # training batches get fresh noise
    frac = ds.test - ds.test.floor()
    assert (frac > 0).all() and (frac < 1).all() and ds.test.max() < 256  # one fixed draw for the held-out set
    floats = data_mod.load(_data_cfg(tmp_path / "x.npy", test_fraction=0.2, kind="images"))
    assert floats.kind == "images" and not floats.dequantize and (floats.test == floats.test.round()).all()


@pytest.mark.parametrize("bad, message", [
    (np.full((5, 4, 4), 300.0), "needs integers from 0 to 255"),
    (np.full((5, 4, 4), 1.5), "needs integers from 0 to 255"),
])
def test_levels_that_are_not_8_bit_are_refused(tmp_path, cli, bad, message):
    np.save(tmp_path / "x.npy", bad)
    r = cli("train", "--data", tmp_path / "x.npy", "--set", "data.kind=levels", "--out", tmp_path / "run")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_an_unknown_kind_and_a_shape_that_is_not_images_are_one_line_errors(tmp_path, cli):
    np.save(tmp_path / "x.npy", _levels())
    r = cli("train", "--data", tmp_path / "x.npy", "--set", "data.kind=pixels", "--out", tmp_path / "run")
    assert r.returncode == 2 and "unknown data.kind 'pixels'" in r.stderr, r.stderr
    np.save(tmp_path / "v.npy", np.zeros((10, 3)))
    r = cli("train", "--data", tmp_path / "v.npy", "--set", "data.kind=images", "--out", tmp_path / "run")
    assert r.returncode == 2 and "is not images" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_train_on_an_image_array_uses_a_unet_and_evaluates_in_bits_per_8_bit_pixel(tmp_path, cli):
    x = _levels(n=60, h=8, w=8)
    np.save(tmp_path / "train.npy", x[:50])
    np.save(tmp_path / "test.npy", x[50:])
    out = tmp_path / "run"
    r = cli("train", "--data", tmp_path / "train.npy", "--test", tmp_path / "test.npy", "--out", out, "--steps", 4,
            "--set", "train.validate_every=0")
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(out / "config.toml")
    assert cfg.model.net == "unet" and cfg.data.kind == "auto"
    # The held-out file given to evaluate is dequantised as the run's own held-out set is:
    # the same images give the same K, draw for draw.
    r1 = cli("evaluate", out, "--json", tmp_path / "own.json")
    r2 = cli("evaluate", out, "--data", tmp_path / "test.npy", "--json", tmp_path / "file.json")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    own, given = (json.loads((tmp_path / f).read_text()) for f in ("own.json", "file.json"))
    assert own["n_dims"] == 64 and own["bits_per_dim"] == pytest.approx(-own["K_bits"] / 64)
    assert given["K_bits"] == own["K_bits"] and given["n_examples"] == 10
    # Read as vectors on request: flattened, and the vectors' MLP.
    r = cli("train", "--data", tmp_path / "train.npy", "--out", tmp_path / "vec", "--steps", 2,
            "--set", "data.kind=vectors", "--set", "train.validate_every=0")
    assert r.returncode == 0, r.stderr
    vec = config_mod.load(tmp_path / "vec" / "config.toml")
    assert vec.model.net == "mlp" and data_mod.load(vec.data).shape == (64,)


def test_a_validation_file_of_images_is_read_like_the_training_file(tmp_path):
    x = _levels(n=30)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "v.npy", np.moveaxis(_levels(n=8, c=1, seed=1), 1, 3).copy())  # channels last
    ds = data_mod.load(_data_cfg(tmp_path / "x.npy", validation_path=str(tmp_path / "v.npy")))
    assert ds.validation.shape == (8, 1, 6, 5) and not torch.equal(ds.validation, ds.validation.round())
