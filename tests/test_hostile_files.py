"""Hostile files: a checkpoint with a tampered header, NaN weights or an embedded config
asking for a huge network; a gzip bomb posing as MNIST; data at the edges of float64;
CSV files as spreadsheets write them. Each gets one line on stderr (or one DataError /
CheckpointError), never a traceback, a silent wrong answer or memory exhaustion.

Run folders are copies of the session's ``mixture_run``, edited by rewriting the
safetensors file (its tensors and its JSON header) directly.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import _one_line_error
from thermodiff import checkpoint
from thermodiff.data.arrays import load_array
from thermodiff.data.images import read_idx
from thermodiff.errors import CheckpointError, DataError
from thermodiff.model import AffineScaler

CKPT = "checkpoint.safetensors"


def _copy(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def _tamper(run, tensors=None, header=None):
    """Rewrite RUN's checkpoint: tensors(dict) and header(dict) edit them in place."""
    path = run / CKPT
    with safe_open(str(path), framework="pt") as f:
        head = json.loads(f.metadata()["thermodiff"])
    data = load_file(str(path))
    if tensors:
        tensors(data)
    if header:
        header(head)
    save_file(data, str(path), metadata={"thermodiff": json.dumps(head)})


def _set(head, dotted, value):
    *keys, last = dotted.split(".")
    d = head
    for k in keys:
        d = d[k]
    d[last] = value


def test_untampered_run_checkpoints_pass_the_checks(mixture_run, heartbeat_run):
    for run in (mixture_run, heartbeat_run):  # Gaussian with EMA; binomial
        states, meta = checkpoint.load(run / CKPT)
        assert meta["step"] == 20 and "rng" in states


# -- 12: a tampered header is "corrupted checkpoint", naming what is wrong -------------

TAMPERED = {
    "missing-section": (None, lambda h: h["rest"].pop("model"), "missing section 'model'"),
    "missing-scaler": (lambda t: t.pop("model/scaler.shift"), None, "missing tensor 'model/scaler.shift'"),
    "step-not-integer": (None, lambda h: _set(h, "meta.step", 2.5), "'step' must be an integer"),
    "seconds-not-number": (None, lambda h: _set(h, "meta.train_seconds", "long"), "'train_seconds' must be"),
    "generator-wrong-size": (lambda t: t.__setitem__("rng/generator", torch.zeros(10, dtype=torch.uint8)), None,
                             "'rng/generator' must be the generator's state"),
    "rest-not-a-table": (None, lambda h: _set(h, "rest.optimizer", [1, 2]), "not a table"),
    "config-unknown-key": (None, lambda h: _set(h, "meta.config.model.widht", 3), "embedded config"),
    "config-wider-net": (None, lambda h: _set(h, "meta.config.model.width", 17), "its config implies"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_checkpoint_is_corrupted_one_line(cli, mixture_run, tmp_path, case):
    tensors, header, needle = TAMPERED[case]
    run = _copy(mixture_run, tmp_path)
    (run / "config.toml").unlink()  # else an edited config is refused as not matching config.toml
    _tamper(run, tensors, header)
    r = cli("evaluate", run)
    _one_line_error(r, "corrupted checkpoint")
    assert needle in r.stderr, r.stderr


@pytest.mark.parametrize("case", ["step-not-integer", "generator-wrong-size"])
def test_tampered_checkpoint_refused_on_resume(cli, mixture_run, tmp_path, case):
    tensors, header, needle = TAMPERED[case]
    run = _copy(mixture_run, tmp_path)
    if case == "step-not-integer":
        header = lambda h: _set(h, "meta.step", "twenty")  # noqa: E731  (int() would raise)
    _tamper(run, tensors, header)
    r = cli("train", run / "config.toml", "--out", run, "--steps", 25)
    _one_line_error(r, "corrupted checkpoint")
    assert needle in r.stderr, r.stderr


def test_embedded_config_cannot_ask_for_a_huge_network(cli, mixture_run, tmp_path, monkeypatch):
    """A 60 kB file whose config asks for width 10^9 (10^11 values) is refused before any
    model is built: building one here would allocate until memory ran out."""
    from thermodiff import run_folder

    real = run_folder.build_model

    def guarded(cfg, shape):
        assert cfg.model.width <= 1000, "load_run built the network the embedded config asked for"
        return real(cfg, shape)

    monkeypatch.setattr(run_folder, "build_model", guarded)
    run = _copy(mixture_run, tmp_path)
    (run / "config.toml").unlink()  # a checkpoint downloaded on its own: its config is all there is
    _tamper(run, header=lambda h: _set(h, "meta.config.model.width", 10**9))
    r = cli("evaluate", run)
    _one_line_error(r, "corrupted checkpoint")
    assert "model.width = 1000000000" in r.stderr


def test_embedded_config_cannot_ask_for_a_huge_time_sampler(cli, tmp_path, monkeypatch):
    """Continuous time: the time sampler has train.t_bins bins, allocated from the
    embedded config; 10^10 of them (160 GB) must be refused before it is built."""
    from conftest import TINY_RUN
    from thermodiff import run_folder
    from thermodiff.config import config_path

    run = tmp_path / "run"
    r = cli("train", config_path("swissroll"), "--out", run, "--steps", 2, *TINY_RUN)
    assert r.returncode == 0, r.stderr
    real = run_folder.make_time_sampler

    def guarded(model, t_sampling, n_bins):
        assert n_bins <= 10**6, "load_run built the time sampler the embedded config asked for"
        return real(model, t_sampling, n_bins)

    checkpoint.load(run / CKPT)  # the untampered continuous-time checkpoint passes the checks
    monkeypatch.setattr(run_folder, "make_time_sampler", guarded)
    (run / "config.toml").unlink()
    _tamper(run, header=lambda h: _set(h, "meta.config.train.t_bins", 10**10))
    r = cli("evaluate", run)
    _one_line_error(r, "corrupted checkpoint")
    assert "'sampler/counts'" in r.stderr


# -- 13: non-finite weights are refused at load and at save ---------------------------


def _nan_weights(t):
    for key in ("model/net.out_proj.weight", "ema/module.net.out_proj.weight"):
        t[key] = torch.full_like(t[key], float("nan"))


def test_nan_weights_refused_on_evaluate(cli, mixture_run, tmp_path):
    run = _copy(mixture_run, tmp_path)
    _tamper(run, _nan_weights)
    r = cli("evaluate", run)
    _one_line_error(r, "holds NaN or inf")
    assert "net.out_proj.weight" in r.stderr


def test_nan_weights_refused_on_resume_naming_the_tensor(cli, mixture_run, tmp_path):
    run = _copy(mixture_run, tmp_path)
    _tamper(run, _nan_weights)
    r = cli("train", run / "config.toml", "--out", run, "--steps", 25)
    _one_line_error(r, "holds NaN or inf")
    assert "net.out_proj.weight" in r.stderr and "train.lr" not in r.stderr


def test_save_refuses_non_finite_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"model": {"w": torch.ones(3)}}, {})
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"'model/w' holds NaN or inf"):
        checkpoint.save(path, {"model": {"w": torch.tensor([1.0, float("inf"), 0.0])}}, {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


# -- 18: a gzip bomb posing as an IDX file --------------------------------------------


def test_gzip_bomb_is_refused_within_its_declared_size(tmp_path):
    """Two 28x28 images (1568 bytes declared) followed by 64 MiB of zeros, compressed
    to ~64 kB: refused, and the reader never holds much more than the declared bytes."""
    header = struct.pack(">BBBB3I", 0, 0, 0x08, 3, 2, 28, 28)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    parts = [comp.compress(header + bytes(2 * 784))]
    zeros = bytes(1 << 20)
    parts += [comp.compress(zeros) for _ in range(64)]
    parts.append(comp.flush())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"".join(parts))
    del parts, zeros
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="trailing bytes") as exc:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(exc.value)
    assert peak < 8 << 20, f"reading a 64 kB file took {peak / 2**20:.0f} MiB"


def test_gzip_header_declaring_more_than_the_file_can_hold(tmp_path):
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 10**6, 28, 28) + bytes(100)))
    with pytest.raises(DataError, match="needs 784000000 bytes"):
        read_idx(path)


# -- 19: data at the edges of float64 ------------------------------------------------


@pytest.mark.parametrize("size", [1e200, 1e-200])
def test_scaler_fits_data_at_extreme_scales(size):
    y = (torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 2) * size
    s = AffineScaler((3,))
    s.fit(y)
    x = s(y).double()
    assert abs(float(x.mean())) < 1e-6 and abs(float((x**2).mean()) - 1) < 1e-6
    assert torch.allclose(s.inverse(s(y)), y, rtol=1e-5)


@pytest.mark.parametrize(
    "size, needle",
    [(1e-310, "below float64's smallest normal"), (1e306, "too close to float64's largest"), (0.0, "zero variance")],
)
def test_scaler_names_the_range_problem(size, needle):
    y = (torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 2) * size
    with pytest.raises(DataError, match=needle):
        AffineScaler((2,)).fit(y)


def test_constant_data_at_1e200_are_still_constant():
    with pytest.raises(DataError, match="zero variance"):
        AffineScaler((2,)).fit(torch.full((10, 2), 1e200, dtype=torch.float64))


def test_train_and_evaluate_data_at_1e200(cli, tmp_path):
    """Data at 1e200 train and evaluate: K in bits is the scaled bound minus D log2(scale)."""
    from conftest import TINY_RUN

    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).normal(2, 1, (400, 2)) * 1e200)
    run = tmp_path / "run"
    r = cli("train", "--data", path, "--out", run, "--steps", 5, *TINY_RUN)
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", run, "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "eval.json").read_text())
    assert np.isfinite(record["K_bits"]) and record["K_bits"] < -2 * 600  # 2 log2(1e200) = 1329


def test_train_on_tiny_values_names_the_range_in_one_line(cli, tmp_path):
    path = tmp_path / "tiny.npy"
    np.save(path, np.random.default_rng(0).normal(2, 1, (200, 2)) * 1e-310)
    r = cli("train", "--data", path, "--out", tmp_path / "run", "--steps", 2)
    _one_line_error(r, "smallest normal")


# -- 20: CSV as spreadsheets write it -------------------------------------------------


def test_one_column_csv_with_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbf1.5\r\n2.5\r\n3.5\r\n")
    assert load_array(path).ravel().tolist() == [1.5, 2.5, 3.5]


def test_csv_with_byte_order_mark_and_header(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b\n1,2\n3,4\n")
    assert load_array(path).tolist() == [[1, 2], [3, 4]]
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n")
    assert load_array(path).tolist() == [[1, 2], [3, 4]]


def test_semicolon_csv_names_line_one(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("1;2\n3;4\n")
    with pytest.raises(DataError, match=r"line 1: the values are separated by semicolons"):
        load_array(path)
    path.write_text("a;b\n1;2\n3;4\n")  # with a header the first data line is line 2
    with pytest.raises(DataError, match=r"line 2, column 1: .*semicolons"):
        load_array(path)
