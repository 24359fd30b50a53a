"""Held-out monitoring: the validation split, the checks in metrics.jsonl, the best
weights beside the last ones, early stopping; the full-covariance Gaussian baseline
against its closed form; a scale per dimension, with its Jacobian in the data's units."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from conftest import _one_line_error
from thermodiff import config as config_mod
from thermodiff import data as data_mod
from thermodiff import checkpoint, run_folder, train
from thermodiff.baselines import gaussian_fields, gaussian_log_likelihood
from thermodiff.checkpoint import load as load_checkpoint
from thermodiff.errors import CheckpointError, ConfigError, DataError
from thermodiff.evaluation import evaluate_run
from thermodiff.model import AffineScaler, build_model

TINY = {"model": {"width": 32, "depth": 1, "time_dim": 16},
        "train": {"batch_size": 64, "log_every": 5, "checkpoint_every": 1000, "validate_every": 10,
                  "validate_examples": 64, "validate_n_t": 4},
        "data": {"name": "mixture", "n_train": 200, "n_test": 100, "validation_fraction": 0.25},
        "eval": {"n_t": 4}}


def _cfg(**sections):
    cfg = config_mod.replace(config_mod.Config(), **TINY)
    return config_mod.replace(cfg, **sections)


def _checks(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_bits" in r]


# -- the validation split ---------------------------------------------------------------

def test_validation_split_holds_out_a_share_of_the_training_data(tmp_path):
    cfg = _cfg().data
    ds = data_mod.load(cfg)
    assert ds.train.shape[0] == 150 and ds.validation.shape[0] == 50
    whole = data_mod.load(config_mod.replace(_cfg(), data={"validation_fraction": 0.0}).data)
    assert whole.validation is None and whole.train.shape[0] == 200
    # A partition of the same 200 examples, the same one every time.
    rows = {tuple(r.tolist()) for r in whole.train}
    assert {tuple(r.tolist()) for r in ds.train} | {tuple(r.tolist()) for r in ds.validation} == rows
    assert torch.equal(data_mod.load(cfg).validation, ds.validation)
    # A validation file instead: its shape must be the training data's.
    np.save(tmp_path / "v.npy", np.zeros((5, 3)))
    with pytest.raises(DataError, match="validation data have shape"):
        data_mod.load(config_mod.replace(_cfg(), data={"validation_path": str(tmp_path / "v.npy")}).data)
    np.save(tmp_path / "v.npy", np.ones((5, 2)))
    ds = data_mod.load(config_mod.replace(_cfg(), data={"validation_path": str(tmp_path / "v.npy")}).data)
    assert ds.validation.shape == (5, 2) and ds.train.shape[0] == 200
    with pytest.raises(DataError, match="leaves an empty part"):
        data_mod.load(config_mod.replace(_cfg(), data={"n_train": 1}).data)


def test_validation_levels_are_dequantised_once():
    ds = data_mod.with_validation(data_mod.Dataset(torch.arange(40.0).reshape(20, 2), torch.zeros(3, 2) + 0.5,
                                                   dequantize=True), _cfg().data)
    v = ds.validation
    assert v.shape[0] == 5 and not torch.equal(v, v.floor()) and ((v - v.floor()) < 1).all()
    assert torch.equal(ds.train, ds.train.floor())  # the training set is dequantised per batch


# -- checks, the best weights, early stopping ----------------------------------------------

def test_checks_are_logged_and_the_best_weights_kept(tmp_path):
    cfg = _cfg(train={"steps": 40})
    out = tmp_path / "run"
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    checks = _checks(out)
    assert [c["step"] for c in checks] == [10, 20, 30, 40]
    assert all(math.isfinite(c["val_bits"]) and math.isfinite(c["train_eval_bits"]) for c in checks)
    best = max(checks, key=lambda c: c["val_bits"])
    _, meta = load_checkpoint(out / run_folder.CHECKPOINT)
    assert meta["best_step"] == best["step"] and meta["best_val_bits"] == best["val_bits"]
    assert checks[-1]["best_step"] == best["step"]
    # The best weights: those of the best file (or of the checkpoint, where it is the best).
    _, model, meta = run_folder.load_run(out)
    assert meta["step"] == best["step"] and meta["trained_steps"] == 40
    assert meta["checkpoint"].startswith(f"best held-out check, step {best['step']} of 40")
    source = out / (run_folder.CHECKPOINT if best["step"] == 40 else run_folder.BEST)
    states, _ = load_checkpoint(source, weights_only=True)
    ema = {k[len("module."):]: v for k, v in states["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in model.state_dict())
    _, last, meta = run_folder.load_run(out, which="last")
    assert meta["step"] == 40 and meta["checkpoint"] == "last checkpoint, step 40"
    # The report's figure of the checks, with the baseline as a line.
    from thermodiff.report import held_out_checks, held_out_figure

    assert held_out_checks(out) == checks
    assert held_out_figure(out, tmp_path / "fig", -3.0).stat().st_size > 1000
    assert held_out_figure(tmp_path / "fig", tmp_path / "fig") is None  # no checks there


class _Scripted:
    """A monitor that returns the given held-out K, one value per check."""

    def __init__(self, values):
        self.values = list(values)
        self.validation = torch.zeros(1, 2)

    def __call__(self, model):
        v = self.values.pop(0)
        return {"val_bits": v, "val_stderr_bits": 0.0, "train_eval_bits": v}


def _scripted(monkeypatch, values):
    monkeypatch.setattr(train, "_monitor", lambda cfg, data, log: _Scripted(values))


def test_patience_stops_training_and_a_rerun_stays_stopped(tmp_path, monkeypatch):
    cfg = _cfg(train={"steps": 200, "patience": 2})
    out, logged = tmp_path / "run", []
    _scripted(monkeypatch, [-10.0, -5.0, -6.0, -7.0, -1.0])  # best at check 2, then two worse
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=logged.append)
    _, meta = load_checkpoint(out / run_folder.CHECKPOINT)
    assert meta["step"] == 40 and meta["best_step"] == 20 and meta["checks_since_best"] == 2
    assert any("stopped early at step 40" in line for line in logged)
    assert any("best held-out check: step 20 of 40" in line for line in logged)
    assert [c["step"] for c in _checks(out)] == [10, 20, 30, 40]
    _scripted(monkeypatch, [])  # a rerun makes no check: it is done
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    assert load_checkpoint(out / run_folder.CHECKPOINT)[1]["step"] == 40


def test_a_kill_between_the_best_checkpoint_and_its_file_is_healed(tmp_path, monkeypatch, cli):
    cfg = _cfg(train={"steps": 20})
    out = tmp_path / "run"
    _scripted(monkeypatch, [-10.0, -5.0])  # the last check is the best
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    (out / run_folder.BEST).unlink()  # as if killed after the checkpoint, before the best file
    assert run_folder.load_run(out)[2]["step"] == 20  # the checkpoint is itself the best
    _scripted(monkeypatch, [-20.0, -30.0])
    longer = config_mod.replace(cfg, train={"steps": 40})
    train.fit(longer, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    assert load_checkpoint(out / run_folder.BEST, weights_only=True)[1]["step"] == 20
    assert run_folder.load_run(out)[2]["step"] == 20
    # A best file from elsewhere is refused in one line; the last weights still load.
    states, meta = load_checkpoint(out / run_folder.BEST, weights_only=True)
    checkpoint.save(out / run_folder.BEST, states, dict(meta, step=30))
    with pytest.raises(CheckpointError, match="holds step 30"):
        run_folder.load_run(out)
    _one_line_error(cli("evaluate", out), "holds step 30")
    (out / run_folder.BEST).rename(tmp_path / "moved")
    _one_line_error(cli("evaluate", out), "not found, though the checkpoint's best is step 20")
    (tmp_path / "moved").rename(out / run_folder.BEST)
    r = cli("evaluate", out, "--checkpoint", "last")
    assert r.returncode == 0 and "weights: last checkpoint, step 40" in r.stdout


def test_a_folder_taken_over_drops_a_best_file_left_beside_no_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.BEST).write_bytes(b"another run's")
    cfg = _cfg(train={"steps": 10, "validate_every": 0})
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    assert not (out / run_folder.BEST).exists()
    meta = run_folder.load_run(out)[2]
    assert meta["checkpoint"] == "last checkpoint, step 10 (the run has no held-out checks)"


def test_hostile_best_fields_in_a_checkpoint_are_one_line(tmp_path, cli):
    cfg = _cfg(train={"steps": 10})
    out = tmp_path / "run"
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=lambda *a: None)
    states, meta = load_checkpoint(out / run_folder.CHECKPOINT)
    for bad, needle in (({"best_step": 99}, "best_step"), ({"best_step": "x"}, "best_step"),
                        ({"best_val_bits": None}, "best_val_bits"), ({"checks_since_best": -1}, "checks_since_best")):
        checkpoint.save(out / run_folder.CHECKPOINT, states, dict(meta, **bad))
        _one_line_error(cli("evaluate", out), needle)


# -- the Gaussian baseline -----------------------------------------------------------------

def _correlated(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [-0.5, 0.2, 0.1]], dtype=torch.float64)
    return scale * (torch.randn(n, 3, generator=g, dtype=torch.float64) @ a.T + torch.tensor([1.0, -2.0, 0.5]))


def test_gaussian_baseline_is_the_maximum_likelihood_fit_in_closed_form():
    train_y, test_y = _correlated(500, 0), _correlated(200, 1)
    mean = train_y.mean(0).numpy()
    cov = np.cov(train_y.numpy().T, bias=True)
    exact = multivariate_normal(mean, cov).logpdf(test_y.numpy())
    log_p, ridged = gaussian_log_likelihood(train_y, test_y)
    assert not ridged
    np.testing.assert_allclose(log_p.numpy(), exact, rtol=1e-10, atol=1e-10)
    # At any scale: log p(c y) = log p(y) - D log c.
    for c in (1e-150, 1e150):
        scaled, _ = gaussian_log_likelihood(c * train_y, c * test_y)
        np.testing.assert_allclose(scaled.numpy(), exact - 3 * math.log(c), rtol=1e-9)


def test_gaussian_fields_pair_k_with_the_baseline_and_warn_below_it():
    train_y, test_y = _correlated(500, 0), _correlated(200, 1)
    g = gaussian_log_likelihood(train_y, test_y)[0] / math.log(2)
    above = gaussian_fields(train_y, test_y, g + 1.0)
    assert above["K_minus_gaussian_bits"] == pytest.approx(1.0) and above["K_minus_gaussian_stderr_bits"] < 1e-9
    assert "gaussian_warning" not in above and "gaussian_note" not in above
    below = gaussian_fields(train_y, test_y, g - 2.0)
    assert "2.00 +- 0.00 bits below a full-covariance Gaussian" in below["gaussian_warning"]
    constant = torch.cat([train_y, torch.zeros(500, 1, dtype=torch.float64)], 1)
    fields = gaussian_fields(constant, torch.cat([test_y, torch.zeros(200, 1, dtype=torch.float64)], 1), g)
    assert "singular" in fields["gaussian_note"] and math.isfinite(fields["gaussian_bits"])


def test_evaluate_warns_when_k_is_below_the_gaussian(tmp_path, cli):
    np.save(tmp_path / "train.npy", _correlated(400, 0).numpy())
    np.save(tmp_path / "test.npy", _correlated(100, 1).numpy())
    out = tmp_path / "run"
    r = cli("train", "--data", tmp_path / "train.npy", "--test", tmp_path / "test.npy", "--out", out,
            "--steps", "3", "--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=32")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", out, "--n-t", "4", "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["K_bits"] < record["gaussian_bits"]
    assert "warning: K on the held-out data is" in r.stderr and "gaussian_bits" in r.stdout


# -- a scale per dimension -------------------------------------------------------------------

def test_per_dimension_scaling_gives_every_dimension_unit_variance_and_its_jacobian():
    y = _correlated(1000, 0) * torch.tensor([1.0, 1e3, 1e-3])
    scaler = AffineScaler((3,), per_dim=True)
    scaler.fit(y)
    x = scaler(y).double()
    torch.testing.assert_close(x.var(0, unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=0)
    assert scaler.log_det(3) == pytest.approx(-float(torch.log(y.std(0, unbiased=False)).sum()), rel=1e-9)
    assert (((scaler.inverse(scaler(y)) - y) / scaler.scale).abs() < 1e-6).all()  # float32 model units
    with pytest.raises(DataError, match="constant in dimension 1"):
        AffineScaler((2,), per_dim=True).fit(torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]))


def test_per_dimension_k_is_a_bound_in_the_data_units(tmp_path):
    """An exact model in model units behind a scale per dimension: K in the data's units
    sits at or below the exact log-likelihood of the data-unit density (Jacobian included)."""
    from thermodiff.data.toy import GaussianMixture
    from thermodiff.oracle import mixture_model
    from thermodiff.schedules import ContinuousSchedule

    mix = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), 0.5 * torch.eye(2)[None])
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr"))
    model.scaler = AffineScaler((2,), per_dim=True).double()
    s, shift = torch.tensor([3.0, 0.01], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    model.scaler.scale.copy_(s)
    model.scaler.shift.copy_(shift)
    data_mix = GaussianMixture(torch.tensor([1.0]), shift[None], (torch.diag(s) @ (0.5 * torch.eye(2, dtype=torch.float64)) @ torch.diag(s))[None])
    # Few points and times: the oracle evaluates each distinct time on its own.
    y = data_mix.sample(400, torch.Generator().manual_seed(0))
    record = evaluate_run(model, y, config_mod.EvalConfig(n_t=8), data_mix.log_prob, train=y)
    assert record["gap_bits"] > -3 * record["gap_stderr_bits"]
    # The same model on the same points in model units (identity scaling): the same gap,
    # the bound's own looseness; the scale moved only the Jacobian.
    plain = evaluate_run(mixture_model(mix, ContinuousSchedule("linear-logsnr")), (y - shift) / s,
                         config_mod.EvalConfig(n_t=8), mix.log_prob)
    assert record["gap_bits"] == pytest.approx(plain["gap_bits"], abs=1e-3)
    assert -3 * plain["gap_stderr_bits"] < plain["gap_bits"] < 0.3  # the exact model: a tight bound
    assert record["K_bits"] == pytest.approx(record["K_bits_scaled"] - float(torch.log2(s).sum()))
    # The data are one Gaussian, fitted on these very points: the baseline is the exact
    # log-likelihood to within the fit's in-sample gain (about D / (2 N) nats).
    assert abs(record["K_minus_gaussian_bits"] + record["gap_bits"]) < 0.02


def test_per_dimension_scaling_trains_evaluates_and_conditions(tmp_path, cli):
    np.save(tmp_path / "train.npy", (_correlated(300, 0) * torch.tensor([1.0, 100.0, 0.01])).numpy())
    np.save(tmp_path / "obs.npy", np.array([1.0, -200.0, 0.005]))
    out = tmp_path / "run"
    r = cli("train", "--data", tmp_path / "train.npy", "--out", out, "--steps", "5", "--set", "data.scaling=per-dim",
            "--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=32")
    assert r.returncode == 0, r.stderr
    cfg, model, _ = run_folder.load_run(out)
    assert cfg.data.scaling == "per-dim" and model.scaler.scale.shape == (3,)
    assert cli("evaluate", out, "--n-t", "4").returncode == 0
    r = cli("condition", out, "--observe", tmp_path / "obs.npy", "--noise", "0.5", "-n", "4", "--steps", "5",
            "--out", tmp_path / "c.npy", "--method", "product")
    assert r.returncode == 0, r.stderr
    _one_line_error(cli("condition", out, "--observe", tmp_path / "obs.npy", "--noise", "0.5", "-n", "4",
                        "--steps", "5", "--out", tmp_path / "c.npy", "--method", "start"), "per-dim")
    with pytest.raises(ConfigError, match="data.scaling"):
        build_model(config_mod.replace(config_mod.Config(), data={"scaling": "nope"}), (2,))


@pytest.mark.parametrize("form", ["identity", "gain", "matrix"])
def test_an_observation_seen_through_a_scale_per_dimension_keeps_its_likelihood(form):
    """log r of an observation y = A x_data + N(0, sigma^2), computed in model units
    through a scale per dimension, is the data-unit log-likelihood (up to the same
    constant), for the identity, a gain and a matrix."""
    from thermodiff.data.toy import GaussianMixture
    from thermodiff.oracle import mixture_model
    from thermodiff.sampling.conditions import GaussianObservation
    from thermodiff.schedules import ContinuousSchedule

    mix = GaussianMixture(torch.tensor([1.0]), torch.zeros(1, 2), torch.eye(2)[None])
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr"))
    model.scaler = AffineScaler((2,), per_dim=True).double()
    s, shift = torch.tensor([3.0, 0.01], dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    model.scaler.scale.copy_(s)
    model.scaler.shift.copy_(shift)
    a = {"identity": None, "gain": torch.tensor([0.5, 2.0], dtype=torch.float64),
         "matrix": torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]], dtype=torch.float64)}[form]
    y = torch.tensor([0.7, -0.4, 0.2], dtype=torch.float64)[: 3 if form == "matrix" else 2]
    r = GaussianObservation(y, 0.3, a)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_data = model.scaler.inverse(x)
    pred = x_data if a is None else (x_data @ a.T if form == "matrix" else a * x_data)
    expected = -0.5 * ((y - pred) ** 2).sum(-1) / 0.3**2
    torch.testing.assert_close(r.log_r(model, x), expected)


def test_checks_on_the_test_set_say_so(tmp_path):
    cfg = _cfg(train={"steps": 10}, data={"validation_fraction": 0.0})
    out, logged = tmp_path / "run", []
    train.fit(cfg, data_mod.load(cfg.data), out, progress=False, log=logged.append)
    assert any("held-out test set" in line for line in logged)
    assert run_folder.load_run(out)[2]["checkpoint"].endswith("chosen on the held-out test set")


# -- defaults by the data's size ------------------------------------------------------------

def test_auto_values_are_chosen_from_the_training_set_and_recorded():
    from thermodiff import defaults

    assert defaults.steps_for(1260, 64, 512) == 4922  # passes rule
    assert defaults.steps_for(900, 196, 512) == 11760  # steps per dimension
    assert defaults.steps_for(300, 8, 512) == 4000 and defaults.steps_for(450_000, 2, 512) == 20_000
    assert [defaults.dropout_for(n) for n in (500, 19_999, 20_000, 199_999, 200_000)] == [0.3, 0.3, 0.1, 0.1, 0.0]
    assert defaults.width_for(600) == 64 and defaults.width_for(80_640) == 256
    vectors = config_mod.load(config_mod.config_path("vectors"))
    assert set(defaults.unresolved(vectors)) == set(config_mod.AUTO_KEYS)
    cfg, chosen = defaults.for_data(vectors, 1260, 64)
    assert (cfg.train.steps, cfg.train.validate_every, cfg.model.dropout, cfg.model.width) == (4922, 123, 0.3, 256)
    assert defaults.unresolved(cfg) == [] and "train.steps = 4922" in chosen
    explicit = config_mod.replace(vectors, train={"steps": 100}, model={"width": 32})
    cfg, _ = defaults.for_data(explicit, 1260, 64)
    assert (cfg.train.steps, cfg.train.validate_every, cfg.model.width) == (100, 50, 32)  # what is given stays
    with pytest.raises(ConfigError, match="chosen from the training data when training starts"):
        build_model(vectors, (64,))
    with pytest.raises(ConfigError, match=r"'train.steps' must be an integer >= 1, or -1 \(from the data's size\)"):
        config_mod.replace(vectors, train={"steps": -2})
