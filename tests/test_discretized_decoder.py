"""The discretised Gaussian decoder (improved DDPM's) as a density on dequantised 8-bit
levels: its masses over the 256 bins sum to one, its log-density is the log of a
difference of normal CDFs plus the bin's log-width, its draws land in each bin as often
as its mass says, and a model with it bounds the 8-bit images' log-probability."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from thermodiff.kernels import DiscretizedNormal, Normal

SHIFT, SCALE = torch.tensor(128.0, dtype=torch.float64), torch.tensor(127.5, dtype=torch.float64)


def _kernel(mean, sd):
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1, 1)
    var = torch.full((mean.shape[0],), sd**2, dtype=torch.float64)
    return DiscretizedNormal(Normal(mean, var), SHIFT, SCALE)


def test_masses_over_all_levels_sum_to_one_and_match_the_normal_cdf():
    k = _kernel([0.03, -0.99, 1.2], 0.05)
    levels = torch.arange(256, dtype=torch.float64)
    for row, (mu, sd) in enumerate([(0.03, 0.05), (-0.99, 0.05), (1.2, 0.05)]):
        x = ((levels + 0.5 - SHIFT) / SCALE).reshape(256, 1)  # a point inside each bin
        sub = DiscretizedNormal(Normal(torch.full((256, 1), mu, dtype=torch.float64),
                                       torch.full((256,), sd**2, dtype=torch.float64)), SHIFT, SCALE)
        log_density = sub.log_prob(x)
        mass = torch.exp(log_density - math.log(127.5))  # density times the bin's width 1 / 127.5
        assert float(mass.sum()) == pytest.approx(1.0, abs=1e-12)
        lo = (levels - SHIFT) / SCALE
        hi = (levels + 1 - SHIFT) / SCALE
        want = norm.cdf(hi.numpy(), mu, sd) - norm.cdf(lo.numpy(), mu, sd)
        want[0], want[-1] = norm.cdf(hi[0].item(), mu, sd), norm.sf(lo[-1].item(), mu, sd)
        keep = want > 1e-12
        torch.testing.assert_close(mass[keep], torch.as_tensor(want[keep]), rtol=1e-8, atol=1e-14)
    assert torch.isfinite(k.log_prob(torch.full((3, 1), -0.5, dtype=torch.float64))).all()  # far tails stay finite


def test_draws_land_in_each_bin_as_often_as_its_mass():
    n = 200_000
    k = DiscretizedNormal(Normal(torch.full((n, 1), 0.01, dtype=torch.float64), torch.full((n,), 0.02**2,
                                 dtype=torch.float64)), SHIFT, SCALE)
    x = k.sample(torch.Generator().manual_seed(0))
    y = x * SCALE + SHIFT
    bins = torch.floor(y).long().flatten()
    counts = torch.bincount(bins, minlength=256).double() / n
    one = (torch.arange(256, dtype=torch.float64) + 0.5 - SHIFT) / SCALE
    probe = DiscretizedNormal(Normal(torch.full((256, 1), 0.01, dtype=torch.float64),
                                     torch.full((256,), 0.02**2, dtype=torch.float64)), SHIFT, SCALE)
    mass = torch.exp(probe.log_prob(one.reshape(256, 1)) - math.log(127.5))
    assert float((counts - mass).abs().max()) < 4 * math.sqrt(0.25 / n)
    frac = y - torch.floor(y)
    assert 0.48 < float(frac.mean()) < 0.52  # uniform within its bin


def test_a_model_with_it_bounds_the_log_probability_of_8_bit_images(tmp_path, cli):
    """Levels drawn from a known distribution (each pixel independent, three levels):
    K of a model trained briefly with the discretised decoder stays below the exact
    log-probability of the levels (bits per image, the data's own units), and its
    decoder term is a probability mass."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.2])
    values = np.array([40, 128, 200], dtype=np.uint8)
    x = values[rng.choice(3, size=(600, 4, 4), p=p)]
    np.save(tmp_path / "x.npy", x)
    r = cli("train", "--data", tmp_path / "x.npy", "--out", tmp_path / "run", "--steps", 60,
            "--set", "model.decoder=discretized", "--set", "train.validate_every=0", "--set", "model.base_channels=8",
            "--set", "eval.n_t=16")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", tmp_path / "run", "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "e.json").read_text())
    exact_bits = 16 * float((p * np.log2(p)).sum())  # log2 P of an image, per image, averaged
    assert rec["K_bits"] < exact_bits + 3 * rec["stderr_bits"], (rec["K_bits"], exact_bits)
    # In the data's units the decoder's term is -log2 of a probability mass: never below 0
    # (a density on bins narrower than one level could be).
    assert rec["reconstruction_bits"] + 16 * math.log2(rec["scale"]) >= 0


def test_it_is_refused_for_data_that_are_not_levels(tmp_path, cli):
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(50, 3)))
    r = cli("train", "--data", tmp_path / "v.npy", "--out", tmp_path / "run", "--set", "model.decoder=discretized")
    assert r.returncode == 2 and "these data are not levels" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
