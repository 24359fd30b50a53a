"""The sample-quality measure (``quality``) against exact answers: the Frechet distance
of Gaussians in closed form and its estimator's known bias, KID against an explicit
double loop and its unbiasedness, and the library-trained feature classifier: seeded,
accurate on a task it must solve, cached by what determines it, retrained over a bad
cache file."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import linalg

from thermodiff.errors import ConfigError, DataError
from thermodiff.quality import (
    FeatureNet,
    accuracy,
    features,
    frechet_distance,
    frechet_gaussians,
    kernel_distance,
    load_or_train,
    predict_classes,
    sample_quality,
    train_classifier,
)

F64 = torch.float64


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)


# --- the Frechet distance ---------------------------------------------------------------


def test_frechet_of_commuting_gaussians_is_the_elementwise_closed_form():
    """Covariances Q diag(a) Q^T and Q diag(b) Q^T commute, so (C1 C2)^(1/2) = Q diag(sqrt(ab)) Q^T
    and the distance is sum (mu1 - mu2)^2 + sum (sqrt a - sqrt b)^2; a zero variance (a
    singular covariance, whose computed eigenvalue may round below zero) is allowed."""
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0, -1.0], dtype=F64), torch.tensor([1.0, -1.0, 0.5, -1.0], dtype=F64)
    a, b = torch.tensor([1.0, 4.0, 0.0, 9.0], dtype=F64), torch.tensor([2.0, 1.0, 1.0, 9.0], dtype=F64)
    want = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_gaussians(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(want, rel=1e-12)
    q = _orthogonal(4, 0)
    c1, c2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert frechet_gaussians(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-7)
    assert frechet_gaussians(mu2, c2, mu1, c1) == pytest.approx(want, rel=1e-7)


def test_frechet_of_full_gaussians_matches_scipy_sqrtm_and_is_a_distance():
    c1, c2 = _spd(6, 1), _spd(6, 2)
    gen = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(6, generator=gen, dtype=F64), torch.randn(6, generator=gen, dtype=F64)
    root = linalg.sqrtm(c1.numpy() @ c2.numpy())
    want = float(((m1 - m2) ** 2).sum() + torch.trace(c1 + c2)) - 2 * float(np.trace(root).real)
    got = frechet_gaussians(m1, c1, m2, c2)
    assert got == pytest.approx(want, rel=1e-9)
    assert frechet_gaussians(m2, c2, m1, c1) == pytest.approx(got, rel=1e-9)
    assert abs(frechet_gaussians(m1, c1, m1, c1)) < 1e-10
    assert frechet_gaussians(m1, c1, m1 + 1, c1) == pytest.approx(6.0, rel=1e-9)  # a shift: only the means count


def test_frechet_distance_of_samples_has_its_known_bias_and_finds_the_closed_form():
    """For two independent samples of n from N(mu, s^2 I) in F dimensions, the estimate's
    expectation is s^2 (2F/n + F(F+1)/(2(n-1))) to leading order: E|xbar1 - xbar2|^2 =
    2F s^2/n, and near the identity the covariance term is |S1 - S2|_F^2 / 4, whose
    expectation from the unbiased covariances' variances (1 + [i=j]) s^4/(n-1) is
    F(F+1) s^2 / (2(n-1)). It shrinks as 1/n and is zero only in the limit."""
    gen = torch.Generator().manual_seed(0)
    d, s = 4, 2.0

    def draw(n):
        return torch.randn(n, d, generator=gen, dtype=F64) * s + 1

    def bias(n):
        return s**2 * (2 * d / n + d * (d + 1) / (2 * (n - 1)))

    repeats = torch.tensor([frechet_distance(draw(2000), draw(2000)) for _ in range(40)])
    assert float(repeats.mean()) == pytest.approx(bias(2000), rel=0.2)  # 40 repeats: ~7 % standard error
    big = frechet_distance(draw(20_000), draw(20_000))
    assert 0 < big < 4 * bias(20_000)  # 3.6e-3: the bias alone, ten times smaller than at n = 2,000
    # two known Gaussians: the estimate is the closed form up to that bias and its noise
    c = _spd(d, 4)
    chol = torch.linalg.cholesky(c)
    shift = torch.tensor([1.0, 0.0, -0.5, 0.0], dtype=F64)
    x = torch.randn(20_000, d, generator=gen, dtype=F64) @ chol.T
    z = torch.randn(20_000, d, generator=gen, dtype=F64) * 1.5 + shift
    want = frechet_gaussians(torch.zeros(d, dtype=F64), c, shift, 2.25 * torch.eye(d, dtype=F64))
    assert frechet_distance(x, z) == pytest.approx(want, rel=0.03)


def test_frechet_rejects_what_is_not_two_gaussians_or_two_feature_sets():
    eye = torch.eye(3, dtype=F64)
    for bad in [
        lambda: frechet_gaussians(torch.zeros(3), eye, torch.zeros(2), torch.eye(2)),
        lambda: frechet_gaussians(torch.zeros(3), torch.eye(2), torch.zeros(3), eye),
        lambda: frechet_gaussians(torch.full((3,), float("nan")), eye, torch.zeros(3), eye),
        lambda: frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4)),
        lambda: frechet_distance(torch.zeros(10), torch.zeros(10)),
        lambda: frechet_distance(torch.zeros(10, 3), torch.full((10, 3), float("nan"))),
        lambda: frechet_distance(torch.zeros(1, 3), torch.zeros(10, 3)),
    ]:
        with pytest.raises(DataError) as err:
            bad()
        assert "\n" not in str(err.value)


# --- the kernel distance ----------------------------------------------------------------


def _mmd2_by_loops(a: torch.Tensor, b: torch.Tensor) -> float:
    """The unbiased squared MMD, term by term: the mean of k over distinct pairs within
    each set, minus twice the mean over all pairs across, k(u, v) = (u.v / F + 1)^3."""
    d = a.shape[1]

    def k(u, v):
        return (sum(float(u[i]) * float(v[i]) for i in range(d)) / d + 1) ** 3

    m, n = len(a), len(b)
    within_a = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_a + within_b - 2 * across


def test_one_kid_subset_is_the_unbiased_mmd_of_an_explicit_double_loop():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, generator=gen, dtype=F64)
    b = torch.randn(6, 3, generator=gen, dtype=F64) * 1.5 + 0.3
    # one subset of every row: a permutation of each set, which the statistic ignores
    value, _ = kernel_distance(a, b, subsets=1, subset_size=6)
    assert value == pytest.approx(_mmd2_by_loops(a, b), rel=1e-10)
    value, _ = kernel_distance(a, b, subsets=1, subset_size=50)  # the subset is at most every row
    assert value == pytest.approx(_mmd2_by_loops(a, b), rel=1e-10)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10_000, 8, generator=gen, dtype=F64)
    y = torch.randn(10_000, 8, generator=gen, dtype=F64)
    mean, se = kernel_distance(x, y, subsets=50, subset_size=200)
    assert se > 0 and abs(mean) < 3 * se
    far, far_se = kernel_distance(x, y * 1.2 + 0.2, subsets=50, subset_size=200)
    assert far > 10 * far_se and far > 10 * abs(mean)
    assert kernel_distance(x, y, subsets=5, subset_size=100, seed=7) == kernel_distance(x, y, subsets=5,
                                                                                         subset_size=100, seed=7)
    assert kernel_distance(x, y, subsets=5, subset_size=100, seed=7) != kernel_distance(x, y, subsets=5,
                                                                                         subset_size=100, seed=8)


def test_kid_rejects_bad_feature_sets_and_settings():
    x = torch.zeros(10, 3, dtype=F64)
    for bad in [(x[:1], x), (x, x[:, :2]), (x[:, 0], x), (x, x * float("nan"))]:
        with pytest.raises(DataError) as err:
            kernel_distance(*bad)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError):
        kernel_distance(x, x, subset_size=1)
    with pytest.raises(ConfigError):
        kernel_distance(x, x, subsets=0)


# --- the feature classifier -------------------------------------------------------------


def _squares(n: int, seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 1 x size x size 8-bit images, dequantised: uniform noise in
    [0, 60) with a 4 x 4 square 180 levels brighter top-left, top-right or bottom-centre."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.rand(n, 1, size, size, generator=gen) * 60
    for k, (r, c) in enumerate([(1, 1), (1, size - 5), (size - 5, size // 2 - 2)]):
        x[y == k, :, r : r + 4, c : c + 4] += 180
    return x, y


@pytest.fixture(scope="module")
def task():
    x, y = _squares(300, 0)
    xt, yt = _squares(150, 1)
    return x, y, xt, yt, train_classifier(x, y, 3, seed=0, epochs=3, batch_size=32)


def test_the_classifier_solves_a_task_that_needs_the_image(task):
    x, y, xt, yt, net = task
    assert not net.training
    assert accuracy(net, xt, yt) == 1.0
    assert predict_classes(net, xt, batch_size=7).dtype == torch.int64
    assert torch.equal(predict_classes(net, xt, batch_size=7), predict_classes(net, xt))
    f = features(net, xt, batch_size=16)
    assert f.shape == (150, 128) and f.dtype == F64 and bool((f >= 0).all())  # ReLU units
    assert torch.allclose(f, features(net, xt), atol=1e-5)  # batching changes nothing but round-off


def test_training_is_deterministic_in_the_seed_and_leaves_the_global_stream(task):
    x, y, _, _, net = task
    state = torch.get_rng_state()
    again = train_classifier(x, y, 3, seed=0, epochs=3, batch_size=32)
    assert torch.equal(torch.get_rng_state(), state)
    other = train_classifier(x, y, 3, seed=1, epochs=3, batch_size=32)
    for key, value in net.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in net.state_dict().items())


def test_images_are_read_as_clamped_8_bit_levels(task):
    _, _, xt, _, net = task
    wild = xt.clone()
    wild[:, :, :3] = 400.0  # above the levels
    wild[:, :, -3:] = -20.0  # below
    assert torch.equal(features(net, wild), features(net, wild.clamp(0, 255)))
    assert torch.equal(features(net, xt.to(F64)), features(net, xt))  # any float dtype
    net3 = FeatureNet(3, 10)
    assert net3(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net3.features(torch.zeros(2, 3, 8, 13)).shape == (2, 128)  # any size from 8 x 8


def test_training_rejects_bad_labels_and_images(task):
    x, y, _, _, _ = task
    for bad in [
        lambda: train_classifier(x, y + 1, 3),  # a label 3 of 3 classes
        lambda: train_classifier(x, y[:-1], 3),
        lambda: train_classifier(x, y.double(), 3),
        lambda: train_classifier(x[0], y, 3),
        lambda: train_classifier(x[:, :, :7], y, 3),
        lambda: train_classifier(x * float("nan"), y, 3),
    ]:
        with pytest.raises(DataError) as err:
            bad()
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        train_classifier(x, y, 3, batch_size=0)


# --- the cache --------------------------------------------------------------------------


def test_load_or_train_caches_by_data_seed_and_recipe(task, tmp_path):
    x, y, xt, yt, _ = task
    # load_or_train trains in batches of 128: 3 steps an epoch on these 300 images
    cache = tmp_path / "a" / "cache"  # made where missing
    first, rec = load_or_train(x, y, xt, yt, 3, cache, seed=0, epochs=10)
    assert not rec["classifier_cached"] and rec["classifier_test_accuracy"] == 1.0
    assert rec["classifier_seed"] == 0 and rec["classifier_epochs"] == 10
    assert re.fullmatch(r"feature-classifier-[0-9a-f]{24}\.safetensors", rec["classifier_path"].rsplit("/", 1)[1])
    assert set(load_file(rec["classifier_path"])) == set(first.state_dict())  # safetensors, not a pickle
    second, rec2 = load_or_train(x, y, xt, yt, 3, cache, seed=0, epochs=10)
    assert rec2["classifier_cached"] and rec2["classifier_path"] == rec["classifier_path"]
    assert not second.training and torch.equal(features(first, xt), features(second, xt))
    changed = x.clone()
    changed[0, 0, 0, 0] += 1
    paths = {rec["classifier_path"]}
    for args, kw in [((x, y), dict(seed=1, epochs=10)), ((x, y), dict(seed=0, epochs=9)),
                     ((changed, y), dict(seed=0, epochs=10)), ((x, (y + 1) % 3), dict(seed=0, epochs=10))]:
        _, other = load_or_train(*args, xt, yt, 3, cache, **kw)
        assert not other["classifier_cached"]
        paths.add(other["classifier_path"])
    assert len(paths) == 5 and len(list(cache.iterdir())) == 5  # no temporary file left behind


def test_a_bad_cache_file_is_trained_again_and_replaced(task, tmp_path):
    x, y, xt, yt, _ = task
    net, rec = load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)
    path = rec["classifier_path"]
    small = FeatureNet(1, 3, width=8)  # readable, but its tensors do not fit the architecture
    nan = {k: v.clone().fill_(float("nan")) for k, v in net.state_dict().items()}
    for spoil in [lambda: open(path, "wb").write(b"not a safetensors file"),
                  lambda: open(path, "wb").close(),
                  lambda: save_file({k: v.contiguous() for k, v in small.state_dict().items()}, path),
                  lambda: save_file(nan, path)]:
        spoil()
        again, rec2 = load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)
        assert not rec2["classifier_cached"] and rec2["classifier_path"] == path
        assert torch.equal(features(again, xt), features(net, xt))  # the same seed: the same net
        assert load_or_train(x, y, xt, yt, 3, tmp_path, seed=0, epochs=10)[1]["classifier_cached"]


# --- sample quality ---------------------------------------------------------------------


def test_sample_quality_scores_the_test_images_as_the_class_asked(task):
    x, _, xt, yt, net = task
    good = sample_quality(net, xt, x, asked=yt, subsets=20, subset_size=100)
    assert good["classified_as_asked"] == 1.0 and good["n_samples"] == 150
    assert set(good) == {"frechet_distance", "kid", "kid_stderr", "n_samples", "classified_as_asked"}
    shuffled = yt[torch.randperm(150, generator=torch.Generator().manual_seed(0))]
    assert sample_quality(net, xt, x, asked=shuffled, subsets=5, subset_size=100)["classified_as_asked"] < 0.6
    assert sample_quality(net, xt, x, asked=(yt + 1) % 3, subsets=5, subset_size=100)["classified_as_asked"] == 0.0
    # every sample the same grey image: far from the test images by both distances
    grey = sample_quality(net, torch.full_like(xt, float(xt.mean())), x, subsets=20, subset_size=100)
    assert "classified_as_asked" not in grey
    assert grey["frechet_distance"] > 10 * good["frechet_distance"] and grey["kid"] > 10 * good["kid_stderr"]
    assert abs(good["kid"]) < 3 * good["kid_stderr"] + 0.01 * grey["kid"]


def test_sample_quality_rejects_mismatched_inputs(task):
    x, _, xt, yt, net = task
    for bad in [
        lambda: sample_quality(net, xt[:, :, :10], x),  # another image size
        lambda: sample_quality(net, xt.expand(-1, 3, -1, -1), x),  # another channel count
        lambda: sample_quality(net, xt[:, 0], x),
        lambda: sample_quality(net, xt, x, asked=yt[:10]),
        lambda: sample_quality(net, xt * float("nan"), x),
    ]:
        with pytest.raises(DataError) as err:
            bad()
        assert "\n" not in str(err.value)
