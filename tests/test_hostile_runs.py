"""A run folder under hostile conditions: a second process on it, kills and Ctrl-C at
bad moments, a demo or benchmark pointed at a trained run, a failed start, damaged or
symlinked metrics, a full disk. Each case: one line on stderr, exit status 2, nothing
lost or half-written, and a rerun that finishes draw for draw."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import _one_line_error
from thermodiff import checkpoint, run_folder
from thermodiff import train as train_mod

TINY = ["--set", "model.width=8", "--set", "model.depth=1", "--set", "train.batch_size=16",
        "--set", "train.max_seconds=0", "--set", "train.threads=1", "--set", "train.log_every=1",
        "--set", "train.lr_schedule=constant"]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npy"
    np.save(path, rng.normal(size=(200, 2)))
    return path


def train(cli, data, out, steps, *extra):
    return cli("train", "--data", data, "--out", out, "--steps", steps, *TINY, *extra)


def files(out):
    """The run's files, byte for byte."""
    return {name: (out / name).read_bytes() for name in (run_folder.CHECKPOINT, run_folder.CONFIG, run_folder.METRICS)}


def steps_logged(out):
    """The steps of the training lines of metrics.jsonl (not the held-out checks)."""
    records = map(json.loads, (out / run_folder.METRICS).read_text().splitlines())
    return [r["step"] for r in records if "loss" in r]


def tensors(out):
    """The checkpoint's values by flat name, and its metadata."""
    states, meta = checkpoint.load(out / run_folder.CHECKPOINT)
    flat = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v)
            else:
                flat[prefix + k] = v
    walk("", states)
    return flat, meta


def assert_same_run(a, b):
    """Two run folders hold the same checkpoint (every tensor bit for bit) and the same
    metrics, the wall-clock seconds aside."""
    ta, ma = tensors(a)
    tb, mb = tensors(b)
    assert ma["step"] == mb["step"] and ta.keys() == tb.keys()
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            assert torch.equal(ta[k], tb[k]), k
        else:
            assert ta[k] == tb[k], k
    la = [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in (b / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


class Killed(Exception):
    """Stands for a SIGKILL: nothing after it runs (unlike KeyboardInterrupt, it is not caught)."""


def kill_at_step(monkeypatch, k):
    """Make the k-th training step of the next runs die like a SIGKILL; returns the undo."""
    real = train_mod.train_step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)
    return lambda: monkeypatch.setattr(train_mod, "train_step", real)


# -- 1: demo and bench never delete a trained run --------------------------------------


@pytest.mark.parametrize("command", [("demo", "--steps", 1), ("bench", "swissroll", "--smoke")])
def test_demo_and_bench_refuse_a_trained_run(cli, data, tmp_path, command):
    out = tmp_path / "mine"
    assert train(cli, data, out, 3).returncode == 0
    before = files(out)
    r = cli(*command, "--out", out)
    _one_line_error(r, str(out))
    assert "--out" in r.stderr and "remove" in r.stderr
    assert files(out) == before


def test_bench_starts_afresh_in_a_folder_without_a_checkpoint(tmp_path, monkeypatch):
    """A folder with a config and metrics but no checkpoint holds no trained state: a
    benchmark takes it over (and never touches other files in it)."""
    from thermodiff import bench

    out = tmp_path / "b"
    out.mkdir()
    (out / run_folder.CONFIG).write_text("name = 'old'\n")
    (out / run_folder.METRICS).write_text('{"step": 7}\n')
    (out / "notes.txt").write_text("mine")
    seen = {}

    def fake_fit(cfg, dataset, out_, progress=True, fresh=False):
        seen["fresh"] = fresh
        raise Killed

    monkeypatch.setattr(bench, "fit", fake_fit)
    monkeypatch.setattr(bench.data_mod, "load", lambda cfg: None)
    with pytest.raises(Killed):
        bench.run_benchmark("swissroll", bench.bench_config("swissroll", smoke=True), out, progress=False, fresh=True)
    assert seen["fresh"] is True and (out / "notes.txt").read_text() == "mine"


# -- 2: a resume with a larger budget, killed before its next checkpoint -----------------


def test_killed_longer_resume_leaves_the_run_readable(cli, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(cli, data, out, 4).returncode == 0
    before = files(out)
    restore = kill_at_step(monkeypatch, 2)
    with pytest.raises(Killed):
        train(cli, data, out, 400, "--set", "train.checkpoint_every=1000")
    restore()
    assert files(out)[run_folder.CHECKPOINT] == before[run_folder.CHECKPOINT]
    cfg, _, meta = run_folder.load_run(out)
    assert meta["step"] == 4 and cfg.train.steps == 4
    r = cli("sample", out, "-n", 5, "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr


def test_config_toml_that_differs_only_in_budget_is_readable(cli, data, tmp_path):
    """A kill between the checkpoint's rename and config.toml's: the checkpoint rules."""
    out = tmp_path / "run"
    assert train(cli, data, out, 3).returncode == 0
    text = (out / run_folder.CONFIG).read_text()
    (out / run_folder.CONFIG).write_text(text.replace("steps = 3", "steps = 999"))
    cfg, _, meta = run_folder.load_run(out)
    assert cfg.train.steps == 3 and meta["step"] == 3
    # anything else still refuses
    (out / run_folder.CONFIG).write_text(text.replace("width = 8", "width = 9"))
    with pytest.raises(run_folder.CheckpointError, match="does not match"):
        run_folder.load_run(out)


# -- 3: one process at a time ----------------------------------------------------------


def test_a_second_process_on_the_folder_is_refused_and_a_dead_ones_lock_is_not(cli, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(out / run_folder.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = train(cli, data, out, 3)
        _one_line_error(r, str(out))
        assert "another" in r.stderr
        assert not (out / run_folder.CHECKPOINT).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = train(cli, data, out, 3)  # the killed holder's lock went with it
    assert r.returncode == 0, r.stderr


def test_two_real_trains_on_one_folder(data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "thermodiff", "--quiet", "train", "--data", str(data), "--out", str(out),
           "--steps", "3000", *TINY, "--set", "train.log_every=100"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / run_folder.METRICS).exists():
            time.sleep(0.02)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        _one_line_error(second, str(out))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# -- 4: stale temporary files of a killed write ------------------------------------------


def test_stale_temp_files_are_removed_on_start(cli, data, tmp_path):
    out = tmp_path / "run"
    assert train(cli, data, out, 2).returncode == 0
    stale = [out / ".checkpoint.safetensors.abc123.tmp", out / ".metrics.jsonl.x.tmp", out / ".config.toml.y.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (out / ".mine.tmp").write_text("not ours")
    assert train(cli, data, out, 4).returncode == 0
    assert not any(p.exists() for p in stale)
    assert (out / ".mine.tmp").exists()


# -- 5 and 6: a start that failed or was killed holds no trained state -------------------


def test_a_failed_start_does_not_poison_the_folder(cli, data, tmp_path):
    out = tmp_path / "run"
    r = train(cli, data, out, 5, "--set", "train.lr=1e6")
    _one_line_error(r, "try a lower train.lr")
    r = train(cli, data, out, 5)
    assert r.returncode == 0, r.stderr
    assert steps_logged(out) == [1, 2, 3, 4, 5]
    assert run_folder.load_run(out)[0].train.lr == 1e-3


def test_killed_before_the_first_checkpoint_then_rerun(cli, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    restore = kill_at_step(monkeypatch, 4)
    with pytest.raises(Killed):
        train(cli, data, out, 6)
    restore()
    assert steps_logged(out) == [1, 2, 3]
    assert train(cli, data, out, 6).returncode == 0
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
    ref = tmp_path / "ref"
    assert train(cli, data, ref, 6).returncode == 0
    assert_same_run(out, ref)


# -- 17: damaged metrics ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"[1, 2]\n", b"\xff\xfe not utf-8\n", b'"step"\n', b'{"step": "four"}\n', b"null\n"])
def test_damaged_metrics_line_is_the_cut(cli, data, tmp_path, bad):
    out = tmp_path / "run"
    assert train(cli, data, out, 4, "--set", "train.checkpoint_every=2").returncode == 0
    lines = (out / run_folder.METRICS).read_bytes().splitlines(keepends=True)
    (out / run_folder.METRICS).write_bytes(lines[0] + bad + lines[1])
    r = train(cli, data, out, 6, "--set", "train.checkpoint_every=2")
    assert r.returncode == 0, r.stderr
    assert steps_logged(out) == [1, 5, 6]


# -- 25: a symlinked metrics file ---------------------------------------------------------


def test_symlinked_metrics_is_refused_and_its_target_untouched(cli, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("precious\n")
    (out / run_folder.METRICS).symlink_to(target)
    r = train(cli, data, out, 3)
    _one_line_error(r, str(out / run_folder.METRICS))
    assert target.read_text() == "precious\n"
    dangling = tmp_path / "run2"
    dangling.mkdir()
    (dangling / run_folder.METRICS).symlink_to(tmp_path / "nowhere.txt")
    _one_line_error(train(cli, data, dangling, 3), "symbolic link")
    assert not (tmp_path / "nowhere.txt").exists()


# -- 26: Ctrl-C keeps the steps done ------------------------------------------------------


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_is_draw_for_draw(cli, data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--steps", "600", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "thermodiff", "--quiet", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / run_folder.METRICS
    deadline = time.time() + 60
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_bytes().splitlines()) >= 5):
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    _, meta = checkpoint.load(out / run_folder.CHECKPOINT)
    logged = steps_logged(out)
    assert 5 <= meta["step"] < 600 and logged == list(range(1, meta["step"] + 1))
    assert cli(*args).returncode == 0
    ref = tmp_path / "ref"
    assert cli(*[a if a != str(out) else str(ref) for a in args]).returncode == 0
    assert_same_run(out, ref)


# -- 11: a full disk ---------------------------------------------------------------------


def test_full_disk_on_checkpoint_write_keeps_the_previous_checkpoint(cli, data, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    out = tmp_path / "run"
    assert train(cli, data, out, 2).returncode == 0
    before = files(out)[run_folder.CHECKPOINT]
    for exc in (SafetensorError("No space left on device (os error 28)"), OSError(errno.ENOSPC, "No space left on device")):
        def full(*args, exc=exc, **kwargs):
            Path(args[1]).write_bytes(b"partial")
            raise exc
        monkeypatch.setattr(checkpoint, "save_file", full)
        r = train(cli, data, out, 4)
        _one_line_error(r, str(out / run_folder.CHECKPOINT))
        assert (out / run_folder.CHECKPOINT).read_bytes() == before
        assert not list(out.glob(".*.tmp"))


def test_full_disk_on_metrics_write_leaves_no_half_line(cli, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(cli, data, out, 2).returncode == 0
    real = os.write
    state = {"n": 0}

    def full(fd, buf):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == run_folder.METRICS:
            state["n"] += 1
            if state["n"] == 2:
                real(fd, bytes(buf)[:7])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf)

    monkeypatch.setattr(os, "write", full)
    r = train(cli, data, out, 5)
    monkeypatch.setattr(os, "write", real)
    _one_line_error(r, str(out / run_folder.METRICS))
    for line in (out / run_folder.METRICS).read_text().splitlines():
        json.loads(line)
    assert train(cli, data, out, 5).returncode == 0
    assert steps_logged(out) == [1, 2, 3, 4, 5]


def test_full_disk_on_config_or_metrics_rewrite_is_one_line(cli, data, tmp_path, monkeypatch):
    from contextlib import contextmanager

    @contextmanager
    def full(path, mode="w"):
        raise OSError(errno.ENOSPC, "No space left on device")
        yield

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(run_folder, "atomic_write", full)
    _one_line_error(train(cli, data, fresh, 2), str(fresh / run_folder.CONFIG))
    monkeypatch.undo()
    out = tmp_path / "run"
    assert train(cli, data, out, 2).returncode == 0
    before = files(out)
    monkeypatch.setattr(run_folder, "atomic_write", full)
    _one_line_error(train(cli, data, out, 4), str(out / run_folder.METRICS))
    assert files(out) == before


# -- more hostile folders ----------------------------------------------------------------


def test_removed_config_toml_still_guards_the_run(cli, data, tmp_path):
    """Without config.toml the checkpoint's own config decides what may continue it."""
    out = tmp_path / "run"
    assert train(cli, data, out, 2).returncode == 0
    (out / run_folder.CONFIG).unlink()
    before = (out / run_folder.CHECKPOINT).read_bytes()
    _one_line_error(train(cli, data, out, 4, "--set", "train.seed=5"), "different config")
    assert (out / run_folder.CHECKPOINT).read_bytes() == before
    assert train(cli, data, out, 4).returncode == 0
    assert steps_logged(out) == [1, 2, 3, 4] and (out / run_folder.CONFIG).exists()


def test_metrics_that_is_a_folder_is_one_line(cli, data, tmp_path):
    out = tmp_path / "run"
    (out / run_folder.METRICS).mkdir(parents=True)
    _one_line_error(train(cli, data, out, 2), str(out / run_folder.METRICS))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, mounted for the test where this machine allows it (root, Linux)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(r.stderr or r.stdout).strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_is_one_line_and_keeps_the_last_checkpoint(cli, data, small_disk):
    """Training on a small real file system until a checkpoint no longer fits beside the
    previous one: one line naming the file, the previous checkpoint intact and loadable,
    no temp file or half metrics line left, and the run resumes once there is room."""
    out = small_disk / "run"
    # The disk is then filled to leave room for half a checkpoint: the temp file of the
    # next one cannot be written beside the previous one.
    wide = ["--set", "train.checkpoint_every=2"]
    assert train(cli, data, out, 2, *wide).returncode == 0
    before = (out / run_folder.CHECKPOINT).read_bytes()
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - len(before) // 2))
    r = train(cli, data, out, 6, *wide)
    _one_line_error(r, "checkpoint")
    assert (out / run_folder.CHECKPOINT).read_bytes() == before
    states, meta = checkpoint.load(out / run_folder.CHECKPOINT)
    assert meta["step"] == 2
    assert not list(out.glob(".*.tmp"))
    assert all(line.endswith("}") for line in (out / run_folder.METRICS).read_text().splitlines())
    filler.unlink()
    assert train(cli, data, out, 6, *wide).returncode == 0
    assert checkpoint.load(out / run_folder.CHECKPOINT)[1]["step"] == 6
