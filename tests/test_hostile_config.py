"""Hostile input to the command line and the config: every mistake is one line on
stderr with exit status 2, no traceback, and nothing is left half-written (no new run
folder, an existing one unchanged, no output file).

Items of the hostile-input issue: 7 (--steps), 8 (config ranges), 14 (sampling and
evaluation counts), 15 (float flags), 16 (-n), 21 (--data verbatim), 22 (strict JSON),
23 (a Gaussian observation on binary data), 24 (the run's name).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import _one_line_error
from thermodiff import config
from thermodiff.errors import ConfigError

TINY = ["--steps", 3, "--set", "model.width=8", "--set", "model.depth=1", "--set", "train.batch_size=16",
        "--set", "eval.n_t=2", "--set", "process.T=8"]


def _snapshot(folder: Path) -> dict:
    """Every file under a folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-arrays")
    rng = np.random.default_rng(0)
    np.save(d / "g.npy", rng.normal(size=(64, 2)))
    np.save(d / "one.npy", rng.normal(size=(1, 2)))
    np.save(d / "bits.npy", (rng.random((64, 4)) < 0.5).astype(np.float64))
    np.save(d / "y.npy", np.array([0.5, -0.5]))
    np.save(d / "y4.npy", np.array([0.5, 0.1, 0.9, 0.2]))
    return d


def _train(*args) -> None:
    from thermodiff.cli import main

    assert main(["--quiet", "train", *map(str, args), *map(str, TINY)]) == 0


@pytest.fixture(scope="module")
def gauss_run(arrays, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-runs") / "g"
    _train("--data", arrays / "g.npy", "--out", out)
    return out


@pytest.fixture(scope="module")
def bits_run(arrays, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-runs") / "b"
    _train("--data", arrays / "bits.npy", "--process", "binomial", "--out", out)
    return out


# -- item 8: one validation of every numeric config value, at load --------------------

BAD_SETS = [
    ("train.batch_size=0", ">= 1"),
    ("train.batch_size=-4", ">= 1"),
    ("train.checkpoint_every=0", ">= 1"),
    ("train.log_every=0", ">= 1"),
    ("train.lr=-1e-3", "> 0"),
    ("train.lr=nan", "finite"),
    ("train.t_bins=0", ">= 1"),
    ("data.seed=-1", "[0, 2**63)"),
    ("train.seed=18446744073709551616", "[0, 2**63)"),
    ("train.ema_decay=2", "[0, 1)"),
    ("train.grad_clip=-1", ">= 0"),
    ("train.warmup_steps=-10", ">= 0"),
    ("train.max_seconds=-1", ">= 0"),
    ("train.threads=-2", ">= 0"),
    ("process.T=0", ">= 1"),
    ("process.T=-5", ">= 1"),
    ("eval.n_t=0", ">= 1"),  # item 14: accepted at training, crashed evaluation
    ("train.lr=inf", "finite"),
    ("model.channel_mults=[1, 0]", ">= 1"),
    ("process.gamma_min=9", "gamma_min must be below gamma_max"),
]


@pytest.mark.parametrize("item,needle", BAD_SETS, ids=[s for s, _ in BAD_SETS])
def test_bad_config_value_is_one_line_and_creates_nothing(cli, arrays, tmp_path, item, needle):
    out = tmp_path / "run"
    r = cli("train", "--data", arrays / "g.npy", "--out", out, *TINY, "--set", item)
    _one_line_error(r, needle)
    assert item.split("=")[0] in r.stderr
    assert not out.exists()


def test_bad_value_in_a_toml_file_names_key_and_range(cli, tmp_path):
    (tmp_path / "c.toml").write_text('[data]\nname = "swissroll"\n[train]\nbatch_size = 0\n')
    r = cli("train", tmp_path / "c.toml", "--out", tmp_path / "run")
    _one_line_error(r, "'train.batch_size' must be an integer >= 1, got 0")
    assert not (tmp_path / "run").exists()


def test_bad_override_leaves_an_existing_run_unchanged(cli, gauss_run, arrays):
    before = _snapshot(gauss_run)
    r = cli("train", "--data", arrays / "g.npy", "--out", gauss_run, *TINY, "--set", "train.ema_decay=1.5")
    _one_line_error(r, "[0, 1)")
    assert _snapshot(gauss_run) == before


def test_every_numeric_field_has_a_range():
    for section in dataclasses.fields(config.Config):
        if section.name == "name":
            continue
        for f in dataclasses.fields(getattr(config.Config(), section.name)):
            if f.type in ("int", "float", "tuple[int, ...]"):
                assert f"{section.name}.{f.name}" in config.RANGES, f.name


def test_ranges_apply_to_loads_overrides_and_replace():
    with pytest.raises(ConfigError, match="train.log_every"):
        config.loads("[train]\nlog_every = 0\n")
    with pytest.raises(ConfigError, match="eval.seed"):
        config.apply_overrides(config.Config(), ["eval.seed=-3"])
    with pytest.raises(ConfigError, match="train.steps"):
        config.replace(config.Config(), train={"steps": 0})
    with pytest.raises(ConfigError, match="model.dropout"):
        config.from_dict(config.Config, {"model": {"dropout": 1.0}})


def test_every_shipped_config_loads_and_keeps_its_values():
    paths = sorted(config.CONFIG_DIR.rglob("*.toml"))
    assert len(paths) >= 12 and any(p.parent.name == "paper" for p in paths)
    for p in paths:
        cfg = config.load(p)
        assert config.loads(config.dumps(cfg)) == cfg


# -- item 7: --steps -------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1])
def test_train_steps_zero_or_negative(cli, arrays, tmp_path, steps):
    out = tmp_path / "run"
    r = cli("train", "--data", arrays / "g.npy", "--out", out, *TINY, "--steps", steps)
    _one_line_error(r, "--steps must be an integer >= 1")
    assert not out.exists()


def test_demo_steps_zero(cli, tmp_path):
    r = cli("demo", "--out", tmp_path / "demo", "--steps", 0)
    _one_line_error(r, "--steps must be an integer >= 1")
    assert not (tmp_path / "demo").exists()


# -- item 24: the run's name is a plain folder name ------------------------------------


@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE", "..", "", "a/b"])
def test_name_must_be_a_plain_folder_name(cli, arrays, tmp_path, monkeypatch, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    r = cli("train", "--data", arrays / "g.npy", *TINY, "--set", f"name={name}")
    _one_line_error(r, "plain folder name")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "a", work]


# -- item 21: --data is a file name, set verbatim --------------------------------------


def test_data_file_name_with_spaces_is_kept(cli, arrays, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / " g.npy").write_bytes((arrays / "g.npy").read_bytes())
    r = cli("train", "--data", " g.npy", "--out", tmp_path / "run", *TINY)
    assert r.returncode == 0, r.stderr
    assert config.load(tmp_path / "run" / "config.toml").data.path == " g.npy"


def test_data_file_name_with_quotes_is_not_unquoted(cli, arrays, tmp_path, monkeypatch):
    # The --set parser read '"q.npy"' as the TOML string q.npy: another file (a decoy here).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.npy").write_bytes((arrays / "g.npy").read_bytes())
    r = cli("train", "--data", '"q.npy"', "--out", tmp_path / "run", *TINY)
    _one_line_error(r, '"q.npy"')
    assert not (tmp_path / "run").exists()


# -- items 14, 15, 16: the flags of sample, condition and evaluate ---------------------

SAMPLE_BAD = [
    (["--steps", -5], "--steps must be an integer >= 1"),
    (["--steps", 0], "--steps must be an integer >= 1"),  # it ran every step, silently
    (["--eta", "nan"], "--eta must be a finite number in [0, 1]"),
    (["--eta", "inf"], "--eta must be a finite number in [0, 1]"),
    (["--eta", 1.5], "--eta must be a finite number in [0, 1]"),
    (["--seed", -1], "--seed must be an integer in [0, 2**63)"),
]


@pytest.mark.parametrize("extra,needle", SAMPLE_BAD, ids=[" ".join(map(str, e)) for e, _ in SAMPLE_BAD])
def test_sample_flags(cli, gauss_run, tmp_path, extra, needle):
    out = tmp_path / "s.npy"
    r = cli("sample", gauss_run, "-n", 5, "--out", out, *extra)
    _one_line_error(r, needle)
    assert not out.exists()


def test_sample_n_beyond_the_limit_names_it(cli, gauss_run, tmp_path):
    out = tmp_path / "s.npy"
    r = cli("sample", gauss_run, "-n", 100_000_000_000, "--out", out)
    _one_line_error(r, "-n must be an integer in [1, 10000000]")
    assert not out.exists()


def test_sample_allocation_failure_is_one_line(cli, gauss_run, tmp_path, monkeypatch):
    import thermodiff.sampling.ancestral as ancestral

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(ancestral, "sample", no_memory)
    out = tmp_path / "s.npy"
    r = cli("sample", gauss_run, "-n", 9_000_000, "--out", out)
    _one_line_error(r, "not enough memory for -n 9000000 samples")
    assert not out.exists()


CONDITION_BAD = [
    (["--steps", -3], "--steps must be an integer >= 1"),
    (["--method", "guidance", "--scale", "nan"], "--scale must be a finite number >= 0"),
    (["--method", "guidance", "--scale=-inf"], "--scale must be a finite number >= 0"),
    (["--eta", "nan"], "--eta must be a finite number in [0, 1]"),
    (["--method", "smc", "--particles", 0], "--particles must be an integer >= 1"),
    (["--noise", "nan"], "--noise must be a positive finite number"),
]


@pytest.mark.parametrize("extra,needle", CONDITION_BAD, ids=[" ".join(map(str, e)) for e, _ in CONDITION_BAD])
def test_condition_flags(cli, gauss_run, arrays, tmp_path, extra, needle):
    out = tmp_path / "c.npy"
    args = ["condition", gauss_run, "--observe", arrays / "y.npy", "--noise", 0.3, "-n", 4, "--out", out, *extra]
    r = cli(*args)
    _one_line_error(r, needle)
    assert not out.exists() and not out.with_suffix(".png").exists()


@pytest.mark.parametrize("extra,needle", [(["--n-t", 0], "--n-t (eval.n_t) must be an integer >= 1"),
                                          (["--iw", 0], "--iw must be an integer M >= 1"),
                                          (["--iw", 2, "--iw-steps", -1], "--iw-steps (eval.iw_steps) must be an integer >= 0")])
def test_evaluate_flags(cli, gauss_run, tmp_path, extra, needle):
    out = tmp_path / "e.json"
    r = cli("evaluate", gauss_run, "--json", out, *extra)
    _one_line_error(r, needle)
    assert not out.exists()


# -- item 22: strict JSON ----------------------------------------------------------------


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_one_example_writes_strict_json(cli, gauss_run, arrays, tmp_path):
    out = tmp_path / "e.json"
    r = cli("evaluate", gauss_run, "--data", arrays / "one.npy", "--json", out)
    assert r.returncode == 0, r.stderr
    record = _strict(out.read_text())
    assert record["n_examples"] == 1
    assert record["stderr_bits"] is None
    assert "one example" in record["stderr_note"]
    assert math.isfinite(record["K_bits"])


def test_evaluate_one_example_iw_writes_strict_json(cli, gauss_run, arrays, tmp_path):
    out = tmp_path / "e.json"
    r = cli("evaluate", gauss_run, "--data", arrays / "one.npy", "--json", out, "--iw", 2, "--iw-steps", 4)
    assert r.returncode == 0, r.stderr
    record = _strict(out.read_text())
    assert record["iw_stderr_bits"] is None and "one example" in record["iw_stderr_note"]
    assert all(c["stderr_bits"] is None for c in record["iw_curve"])


def test_write_json_never_writes_nan(tmp_path):
    from thermodiff.report import write_json

    path = tmp_path / "r.json"
    write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2.5, "f": "x"})
    assert _strict(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5, "f": "x"}


# -- item 23: a Gaussian observation on binary data --------------------------------------


def test_observe_on_a_binomial_run_names_the_real_problem(cli, bits_run, arrays, tmp_path):
    out = tmp_path / "c.npy"
    r = cli("condition", bits_run, "--observe", arrays / "y4.npy", "--noise", 0.3, "-n", 4, "--out", out)
    _one_line_error(r, "a Gaussian observation conditions continuous data")
    assert "method" not in r.stderr
    assert not out.exists()


# -- the whole promise in a fresh interpreter, once ---------------------------------------


def test_hostile_steps_in_a_subprocess(run, arrays, tmp_path):
    r = run("train", "--data", arrays / "g.npy", "--out", tmp_path / "run", "--steps", -1)
    _one_line_error(r, "--steps must be an integer >= 1")
    assert not (tmp_path / "run").exists()


# -- items 9 and 10: outputs that cannot be written, names that cannot be written down ---


def test_evaluate_json_pointing_at_a_folder(cli, gauss_run, tmp_path):
    (tmp_path / "adir").mkdir()
    r = cli("evaluate", gauss_run, "--json", tmp_path / "adir")
    _one_line_error(r, "is a folder")
    assert list((tmp_path / "adir").iterdir()) == [] and list(tmp_path.iterdir()) == [tmp_path / "adir"]


def test_evaluate_json_under_a_regular_file(cli, gauss_run, tmp_path):
    (tmp_path / "afile").write_text("keep")
    r = cli("evaluate", gauss_run, "--json", tmp_path / "afile" / "e.json")
    _one_line_error(r, f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "keep"


def test_report_out_pointing_at_a_file(cli, gauss_run, tmp_path):
    (tmp_path / "afile").write_text("keep")
    before = _snapshot(gauss_run)
    r = cli("report", gauss_run, "--out", tmp_path / "afile", "--iw", 2, "--iw-steps", 2, "--iw-examples", 3)
    _one_line_error(r, "is a file; give a folder")
    assert (tmp_path / "afile").read_text() == "keep" and _snapshot(gauss_run) == before


def test_write_json_refuses_a_folder(tmp_path):
    from thermodiff.errors import DataError
    from thermodiff.report import write_json

    with pytest.raises(DataError, match="is a folder"):
        write_json(tmp_path, {"a": 1.0})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--data", "--out"])
def test_a_300_character_name_is_one_line_before_anything_is_created(cli, arrays, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    args = {"--data": arrays / "g.npy", "--out": tmp_path / "run"}
    args[flag] = "x" * 300 + (".npy" if flag == "--data" else "")
    r = cli("train", "--data", args["--data"], "--out", args["--out"], *TINY)
    _one_line_error(r, "the file system's limit is 255")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--data", "--out"])
def test_a_non_utf8_name_is_one_line_and_leaves_no_run_folder(cli, arrays, tmp_path, monkeypatch, flag):
    import os

    monkeypatch.chdir(tmp_path)
    bad = os.fsdecode(b"bad\xff")
    (tmp_path / "g.npy").write_bytes((arrays / "g.npy").read_bytes())
    (tmp_path / (bad + ".npy")).write_bytes((arrays / "g.npy").read_bytes())
    args = {"--data": "g.npy", "--out": "run"}
    args[flag] = bad + (".npy" if flag == "--data" else "")
    r = cli("train", "--data", args["--data"], "--out", args["--out"], *TINY)
    _one_line_error(r, "not UTF-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.npy", bad + ".npy"])


def test_an_os_error_escaping_a_command_is_one_line_naming_the_path(cli, gauss_run, tmp_path, monkeypatch):
    import errno

    import thermodiff.data.arrays as arrays_mod

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(arrays_mod, "save_array", denied)
    out = tmp_path / "s.npy"
    r = cli("sample", gauss_run, "-n", 3, "--out", out)
    _one_line_error(r, f"{out}: Permission denied")
    assert not out.exists()


def test_a_unicode_error_escaping_a_command_is_one_line(cli, gauss_run, tmp_path, monkeypatch):
    import thermodiff.data.arrays as arrays_mod

    def undecodable(path, *a, **k):
        "bad\udcff".encode("utf-8")

    monkeypatch.setattr(arrays_mod, "save_array", undecodable)
    r = cli("sample", gauss_run, "-n", 3, "--out", tmp_path / "s.npy")
    _one_line_error(r, "not valid UTF-8")
