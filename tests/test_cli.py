"""The command line end to end on a user's own array, resume after SIGKILL, and
one-line errors with exit status 2 for every kind of bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import CONTRACT_KEYS, _one_line_error

TINY = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=64",
        "--set", "eval.n_t=4", "--set", "train.log_every=5"]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    np.save(d / "my.npy", x[:300])
    np.save(d / "my_test.npy", x[300:])
    return d


@pytest.fixture(scope="module")
def trained(arrays, tmp_path_factory, run):
    out = tmp_path_factory.mktemp("runs") / "my"
    r = run("train", "--data", arrays / "my.npy", "--out", out, "--steps", 20, *TINY)
    assert r.returncode == 0, r.stderr
    return out


def test_train_writes_a_run_folder(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"config.toml", "checkpoint.safetensors", "metrics.jsonl"} <= names
    records = [json.loads(s) for s in (trained / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in records if "loss" in r]
    assert [r["step"] for r in lines] == [5, 10, 15, 20]
    assert all("bound_bits" in r for r in lines)
    # The defaults for a user's data check the held-out bound, here once, at the end.
    checks = [r for r in records if "val_bits" in r]
    assert [r["step"] for r in checks] == [20] and "best.safetensors" in names


def test_evaluate_writes_the_contract_fields(trained, arrays, tmp_path, run):
    r = run("evaluate", trained, "--data", arrays / "my_test.npy", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "e.json").read_text())
    for key in CONTRACT_KEYS:
        assert key in rec
    assert rec["n_examples"] == 100
    # data units and scaled units differ by the Jacobian of the one scale constant
    assert abs(rec["K_bits"] - rec["K_bits_scaled"] + 3 * np.log2(rec["scale"])) < 1e-6
    assert abs(rec["bits_per_dim"] + rec["K_bits"] / 3) < 1e-9


def test_sample_writes_data_units(trained, tmp_path, run):
    r = run("sample", trained, "-n", 50, "--out", tmp_path / "s.npy", "--seed", 1)
    assert r.returncode == 0, r.stderr
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (50, 3) and np.isfinite(s).all()
    assert abs(s[:, 1].mean() - 10.0) < 5.0  # data units, not scaled units
    r = run("sample", trained, "-n", 20, "--out", tmp_path / "d.npy", "--steps", 10, "--eta", 0)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "d.npy").shape == (20, 3)


def test_resume_after_sigkill(arrays, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "thermodiff", "--quiet", "train", "--data", str(arrays / "my.npy"),
           "--out", str(out), "--steps", "400", *TINY, "--set", "train.checkpoint_every=10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.time() + 90
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    from thermodiff import checkpoint

    _, meta = checkpoint.load(ckpt)
    assert meta["step"] == 400
    records = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(5, 401, 5))
    assert [r["step"] for r in records if "val_bits" in r] == list(range(50, 401, 50))


def test_bad_inputs_give_one_line_errors(arrays, tmp_path, trained, cli):
    out = tmp_path / "never"
    nan = np.load(arrays / "my.npy")
    nan[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = np.load(arrays / "my.npy")
    inf[3, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "bad.toml").write_text("[train\nsteps = 1")
    (tmp_path / "unknown.toml").write_text("[train]\nstepz = 1")
    np.save(tmp_path / "wrongdim.npy", np.zeros((10, 5)))
    cases = [
        (("train", "--data", tmp_path / "missing.npy", "--out", out), "missing.npy"),
        (("train", "--data", tmp_path / "bad.npy", "--out", out), "bad.npy"),
        (("train", "--data", tmp_path / "nan.npy", "--out", out), "NaN"),
        (("train", "--data", tmp_path / "inf.npy", "--out", out), "inf"),
        (("train", "--data", tmp_path / "empty.npy", "--out", out), "empty.npy"),
        (("train", tmp_path / "bad.toml", "--out", out), "malformed TOML"),
        (("train", tmp_path / "unknown.toml", "--out", out), "train.stepz"),
        (("train", "--data", arrays / "my.npy", "--out", out, "--set", "train.lr=fast"), "train.lr"),
        (("train", "--data", arrays / "my.npy", "--out", out, "--set", "model.parametrization=paper",
          "--set", "train.objective=simple"), "paper"),
        (("train", "--data", arrays / "my.npy", "--out", out, "--set", "process.time=discrete"), "schedule"),
        (("train", "--data", arrays / "my.npy", "--out", out, "--set", "train.t_sampling=often"), "t_sampling"),
        (("train", "--data", arrays / "my.npy", "--out", tmp_path / "bad.toml"), "is a file"),
        (("evaluate", trained, "--data", tmp_path / "wrongdim.npy"), "shape"),
        (("evaluate", tmp_path / "norun"), "norun"),
    ]
    for args, needle in cases:
        _one_line_error(cli(*args), needle)
    assert not out.exists()


def test_corrupted_checkpoint_is_a_clean_error(trained, tmp_path, cli):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    data = (copy / "checkpoint.safetensors").read_bytes()
    (copy / "checkpoint.safetensors").write_bytes(data[:-100])
    _one_line_error(cli("evaluate", copy), "checkpoint")
    _one_line_error(cli("sample", copy, "-n", 3), "checkpoint")
