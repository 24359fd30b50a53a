"""The Parzen-window estimate against the closed-form density of the same mixture."""

import math

import torch

from thermodiff.data.toy import GaussianMixture
from thermodiff.parzen import parzen, parzen_log_likelihood


def test_parzen_is_the_log_density_of_the_kernel_mixture():
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    x = torch.randn(50, 5, generator=gen, dtype=torch.float64) * 2
    sigma = 0.7
    mix = GaussianMixture(torch.full((300,), 1 / 300, dtype=torch.float64), samples,
                          (sigma**2 * torch.eye(5, dtype=torch.float64)).expand(300, 5, 5).clone())
    assert torch.allclose(parzen_log_likelihood(x, samples, sigma, batch=7), mix.log_prob(x), atol=1e-9)


def test_sigma_is_chosen_on_validation_and_tends_to_the_truth():
    """Samples from N(0, I) in 2-D: the chosen window is small but finite, and the
    test estimate is near the true mean log-density (-log(2 pi e) nats = -4.09 bits)."""
    gen = torch.Generator().manual_seed(1)
    samples, val, test = (torch.randn(n, 2, generator=gen, dtype=torch.float64) for n in (5000, 2000, 2000))
    rec = parzen(samples, val, test)
    truth = -math.log(2 * math.pi * math.e) / math.log(2)
    assert 0.05 < rec["parzen_sigma"] < 0.6
    assert abs(rec["parzen_bits"] - truth) < 0.1 and rec["parzen_stderr_bits"] < 0.05
    vals = [p["mean_nats"] for p in rec["parzen_validation"]]
    assert max(vals) > vals[0] and max(vals) > vals[-1]  # an interior optimum
