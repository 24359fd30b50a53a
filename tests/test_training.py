"""A short real training run: the learned bound stays below the exact log-likelihood,
and the benchmark path runs end to end in its smoke version."""

import json
import math
import subprocess
import sys

import pytest
import torch

from thermodiff import config
from thermodiff import train as train_mod
from thermodiff.errors import ConfigError
from thermodiff.data import Dataset
from thermodiff.data.toy import GaussianMixture
from thermodiff.evaluation import evaluate_run
from thermodiff.train import autocast_dtype, fit, load_run


def test_trained_bound_stays_below_exact_log_likelihood(tmp_path):
    mix = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=torch.float64),
        torch.tensor([[-2.0], [1.5]], dtype=torch.float64),
        torch.tensor([[[0.2]], [[0.5]]], dtype=torch.float64),
    )
    gen = torch.Generator().manual_seed(0)
    ds = Dataset(mix.sample(4000, gen), mix.sample(2000, gen), mix.log_prob)
    cfg = config.apply_overrides(
        config.Config(),
        ["model.width=32", "model.depth=2", "train.steps=400", "train.batch_size=256",
         "train.log_every=100", "eval.n_t=16", "train.ema_decay=0.99"],
    )
    model = fit(cfg, ds, tmp_path / "run", progress=False)
    rec = evaluate_run(model, ds.test, cfg.eval, ds.log_density)
    assert rec["gap_bits"] > -3 * rec["gap_stderr_bits"], rec
    assert rec["gap_bits"] < 1.0  # it did learn something: L_null is ~1.4 bits worse
    # the EMA weights are what load_run gives back by default
    _, loaded, meta = load_run(tmp_path / "run")
    assert meta["step"] == 400
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_bench_smoke(tmp_path):
    for name in ("swissroll", "swissroll-paper"):
        out = tmp_path / f"{name}.json"
        r = subprocess.run(
            [sys.executable, "-m", "thermodiff", "--quiet", "bench", name, "--smoke", "--json", str(out),
             "--out", str(tmp_path / name)],
            capture_output=True, text=True, timeout=300,
        )
        assert r.returncode == 0, r.stderr
        rec = json.loads(out.read_text())
        for key in ("K_bits_scaled", "exact_bits_scaled", "gap_bits", "gap_stderr_bits", "stderr_bits",
                    "train_seconds", "device", "commit"):
            assert key in rec, key
        assert math.isfinite(rec["gap_bits"]) and rec["gap_bits"] > -3 * rec["gap_stderr_bits"]


def test_ema_warmup_ramps_the_decay():
    from thermodiff.train import ema_with_warmup

    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    update = ema_with_warmup(0.999)
    update(avg, cur, torch.tensor(0))  # decay (1 + 0) / (10 + 0) = 0.1
    assert torch.allclose(avg[0], torch.full((3,), 0.9))
    avg = [torch.zeros(3)]
    update(avg, cur, torch.tensor(10**6))  # capped at the configured decay
    assert torch.allclose(avg[0], torch.full((3,), 0.001))


def test_bf16_precision_runs_the_network_in_bf16_and_only_while_training(tmp_path, monkeypatch):
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(ConfigError, match="train.precision"):
        autocast_dtype("fp8", torch.device("cpu"))

    x = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ds = Dataset(x[:384], x[384:], None)
    cfg = config.apply_overrides(config.Config(), ["model.width=16", "model.depth=1", "train.steps=5",
                                                   "train.batch_size=32", "train.precision=bf16"])
    seen = []
    real_step = train_mod.train_step

    def spy(objective, *args, **kwargs):
        handle = objective.model.net.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
        try:
            return real_step(objective, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(train_mod, "train_step", spy)
    model = fit(cfg, ds, tmp_path / "run", progress=False)
    assert seen and all(d == torch.bfloat16 for d in seen), seen
    assert model.net_dtype is None  # evaluation runs in full precision
    out = model(model.scaler(ds.test[:4]), torch.full((4,), 0.5, dtype=torch.float64))
    assert out.dtype != torch.bfloat16 and torch.isfinite(out).all()
