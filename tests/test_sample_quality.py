"""The sample-quality measure (``quality``) against closed forms: the Frechet distance
of Gaussians, the unbiased KID, and the library-trained feature classifier with its
cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from thermodiff.errors import DataError
from thermodiff.quality import (
    FeatureNet,
    frechet_distance,
    frechet_gaussians,
    kernel_distance,
    load_or_train,
    predict_classes,
    sample_quality,
    train_classifier,
)


def _spd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_of_gaussians_is_the_closed_form():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    a, b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    # diagonal covariances: the square root is elementwise
    want = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_gaussians(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(want, rel=1e-12)
    # full covariances: against scipy's matrix square root
    c1, c2 = _spd(5, 0), _spd(5, 1)
    m1, m2 = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    root = linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    want = float(((m1 - m2) ** 2).sum() + torch.trace(c1 + c2)) - 2 * float(np.trace(root))
    assert frechet_gaussians(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)
    assert frechet_gaussians(m1, c1, m2, c2) == pytest.approx(frechet_gaussians(m2, c2, m1, c1), rel=1e-9)
    assert abs(frechet_gaussians(m1, c1, m1, c1)) < 1e-10


def test_frechet_distance_of_samples():
    gen = torch.Generator().manual_seed(0)
    d, n = 4, 20_000
    c = _spd(d, 2)
    chol = torch.linalg.cholesky(c)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) @ chol.T
    y = torch.randn(n, d, generator=gen, dtype=torch.float64) @ chol.T
    # same Gaussian: only the estimator's bias, of order tr(C) d / n
    assert frechet_distance(x, y) < 10 * float(torch.trace(c)) * d / n
    shift = torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=torch.float64)
    z = (torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5) + shift
    want = frechet_gaussians(torch.zeros(d), c, shift, 2.25 * torch.eye(d, dtype=torch.float64))
    assert frechet_distance(x, z) == pytest.approx(want, rel=0.03)


def _mmd2_loops(a, b):
    d = a.shape[1]

    def k(u, v):
        return (float(u @ v) / d + 1) ** 3

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_and_has_no_bias():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(7, 3, generator=gen, dtype=torch.float64)
    value, _ = kernel_distance(a, b, subsets=1, subset_size=7)  # one subset of every row: the statistic itself
    assert value == pytest.approx(_mmd2_loops(a, b), rel=1e-10)
    x = torch.randn(3000, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(3000, 8, generator=gen, dtype=torch.float64)
    mean, se = kernel_distance(x, y, subsets=50, subset_size=300)
    assert abs(mean) < 3 * se + 1e-4  # unbiased: zero for one distribution
    far, far_se = kernel_distance(x, y * 1.3 + 0.3, subsets=50, subset_size=300)
    assert far > 10 * far_se
    with pytest.raises(DataError):
        kernel_distance(x[:1], y)
    with pytest.raises(DataError):
        kernel_distance(x, y[:, :3])


def _squares(n, seed, size=12):
    """Images of three classes: a bright square top-left, top-right or bottom-centre, in noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, size, size, generator=gen) * 60
    corners = [(1, 1), (1, size - 5), (size - 5, size // 2 - 2)]
    for k, (r, c) in enumerate(corners):
        x[y == k, :, r : r + 4, c : c + 4] += 180
    return x.to(torch.float64), y


def test_the_classifier_trains_is_seeded_and_cached(tmp_path):
    x, y = _squares(300, 0)
    xt, yt = _squares(150, 1)
    net = train_classifier(x, y, 3, seed=0, epochs=3, batch_size=32)
    assert float((predict_classes(net, xt) == yt).double().mean()) > 0.95
    again = train_classifier(x, y, 3, seed=0, epochs=3, batch_size=32)
    for p, q in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)
    first, rec = load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)
    assert not rec["classifier_cached"] and rec["classifier_test_accuracy"] > 0.9
    second, rec2 = load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)
    assert rec2["classifier_cached"] and rec2["classifier_path"] == rec["classifier_path"]
    assert torch.equal(first.features(xt), second.features(xt))
    _, other = load_or_train(x, y, xt, yt, 3, tmp_path, seed=1, epochs=10)  # another seed: another file
    assert other["classifier_path"] != rec["classifier_path"]
    # a corrupted cache file is trained again, not a crash
    with open(rec["classifier_path"], "wb") as f:
        f.write(b"not a safetensors file")
    _, rec3 = load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)
    assert not rec3["classifier_cached"]
    assert load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)[1]["classifier_cached"]


def test_sample_quality_and_the_share_classified_as_asked():
    x, y = _squares(300, 0)
    xt, yt = _squares(300, 1)
    net = train_classifier(x, y, 3, seed=0, epochs=3, batch_size=32)
    good = sample_quality(net, xt, x, asked=yt, subsets=20, subset_size=100)
    assert good["classified_as_asked"] > 0.95 and good["n_samples"] == 300
    wrong = sample_quality(net, xt, x, asked=(yt + 1) % 3, subsets=20, subset_size=100)
    assert wrong["classified_as_asked"] < 0.1
    blurred = sample_quality(net, xt * 0 + xt.mean(), x, subsets=20, subset_size=100)
    assert blurred["frechet_distance"] > 5 * good["frechet_distance"] and blurred["kid"] > good["kid"]
    with pytest.raises(DataError):
        sample_quality(net, xt[:, :, :8, :8], x)
    with pytest.raises(DataError):
        sample_quality(net, xt, x, asked=yt[:10])


def test_feature_net_takes_any_channels_and_size():
    net = FeatureNet(3, 10)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.features(torch.zeros(2, 3, 9, 13)).shape == (2, 128)
    with torch.no_grad():
        assert math.isfinite(float(net(torch.full((1, 3, 8, 8), 1e6)).sum()))  # clamped to 8-bit levels
