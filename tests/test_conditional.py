"""Class-conditional models against exact answers: a Gaussian mixture whose components
are the classes, with the exact class-conditional and unconditional predictions of the
oracle (``oracle.class_mixture_model``); labels as data; conditional networks and
training with label dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from thermodiff import config as config_mod
from thermodiff.classify import classify, confusion, log_prior_of
from thermodiff.data import Dataset
from thermodiff.data.labels import index_by_names, read_labels
from thermodiff.data.toy import GaussianMixture
from thermodiff.errors import ConfigError, DataError
from thermodiff.evaluation import evaluate_run
from thermodiff.guidance import Guided
from thermodiff.nets import build_net
from thermodiff.oracle import class_mixture_model
from thermodiff.sampling.ancestral import sample
from thermodiff.schedules import ContinuousSchedule
from thermodiff.train import fit, with_classes

# gamma_max = 10: the prior matches q(x_T) to ~1e-5, so the bounds of the exact model
# are tight in expectation (continuous time) and the classes' bounds differ only by noise.
SCHEDULE = dict(kind="linear-logsnr", gamma_min=-13.3, gamma_max=10.0)


def _schedule():
    return ContinuousSchedule(SCHEDULE["kind"], SCHEDULE["gamma_min"], SCHEDULE["gamma_max"])


def _mixture_2d():
    """Two overlapping classes in 2-D, unequal weights and covariances."""
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.0], [1.0, 0.5]]),
                           torch.tensor([[[0.5, 0.1], [0.1, 0.4]], [[0.6, 0.0], [0.0, 0.3]]]))


def _components(mix):
    return [torch.distributions.MultivariateNormal(mix.means[k], mix.covariances[k]) for k in range(mix.n_components)]


def _bayes_log_posterior(mix, x):
    lp = torch.stack([c.log_prob(x) for c in _components(mix)], 1) + mix.weights.log()
    return torch.log_softmax(lp, 1)


# -- guidance: the prediction, time by time ----------------------------------------------


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_guided_prediction_is_the_score_of_the_tilted_noised_densities(w):
    # eps of guidance = -sigma grad log [p_t(x | y)^(1 + w) / p_t(x)^w], by autograd on
    # the exact noised densities; a 3-class mixture in 2-D at several times.
    mix = GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]]),
                          torch.tensor([[[0.5, 0.1], [0.1, 0.4]], [[0.6, 0.0], [0.0, 0.3]], [[0.2, 0.0], [0.0, 0.9]]]))
    model = class_mixture_model(mix, _schedule())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 1.5
    t = torch.rand(40, generator=gen, dtype=torch.float64)
    y = 1
    got = Guided(model, y, w).predict(x, t).eps
    abar = model.schedule.abar(t)
    xr = x.clone().requires_grad_(True)
    eye = torch.eye(2, dtype=torch.float64)
    logs = []
    for b in range(40):  # the reference, one example at a time
        a = abar[b]
        noised = GaussianMixture(mix.weights, a.sqrt() * mix.means, a * mix.covariances + (1 - a) * eye)
        comp = torch.distributions.MultivariateNormal(a.sqrt() * mix.means[y], a * mix.covariances[y] + (1 - a) * eye)
        logs.append((1 + w) * comp.log_prob(xr[b]) - w * noised.log_prob(xr[b : b + 1])[0])
    (grad,) = torch.autograd.grad(torch.stack(logs).sum(), xr)
    want = -(1 - abar).sqrt()[:, None] * grad
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    # x0 is guided alike (affine in eps at fixed x_t).
    pred = Guided(model, y, w).predict(x, t)
    torch.testing.assert_close(pred.x0, (x - (1 - abar).sqrt()[:, None] * pred.eps) / abar.sqrt()[:, None])


def test_guidance_zero_is_the_conditional_model_and_null_is_p_x():
    mix = _mixture_2d()
    model = class_mixture_model(mix, _schedule())
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    cond = model.predict(x, t, torch.zeros(8, dtype=torch.long)).eps
    torch.testing.assert_close(Guided(model, 0, 0.0).predict(x, t).eps, cond)
    torch.testing.assert_close(Guided(model, None, 3.0).predict(x, t).eps, model.predict(x, t).eps)
    for bad in (2, 3):  # classes 0..1; 2 is the null class's index (None asks for it), 3 none at all
        with pytest.raises(ConfigError):
            Guided(model, bad, 1.0)
    with pytest.raises(ConfigError):
        Guided(model, 0, -1.0)


def _ks_floor(sampler_draws, cdf, n):
    """KS distance of the chain's own p(x) (the null class) to the exact CDF: the chain's
    floor, plus the two-sample slack of n draws."""
    return stats.kstest(sampler_draws, cdf).statistic + 1.36 * math.sqrt(2 / n)


@pytest.mark.parametrize("solver,steps", [("ancestral", 200), ("dpm++", 40)])
def test_guidance_at_zero_draws_the_exact_class_conditional(solver, steps):
    mix = GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.0], [1.5]]), torch.tensor([[[0.3]], [[0.6]]]))
    model = class_mixture_model(mix, _schedule())
    n = 3000
    null = sample(model, n, torch.Generator().manual_seed(1), steps=steps, solver=solver)[:, 0].numpy()

    def mixture_cdf(v):
        return sum(float(mix.weights[k]) * stats.norm.cdf(v, float(mix.means[k, 0]),
                                                           math.sqrt(float(mix.covariances[k, 0, 0])))
                   for k in range(2))

    floor = _ks_floor(null, mixture_cdf, n)
    for k in range(2):
        x = sample(Guided(model, k, 0.0), n, torch.Generator().manual_seed(2 + k), steps=steps, solver=solver)
        ks = stats.kstest(x[:, 0].numpy(), stats.norm(float(mix.means[k, 0]),
                                                       math.sqrt(float(mix.covariances[k, 0, 0]))).cdf).statistic
        assert ks < floor, (k, ks, floor)
        # and not the other class, nor the mixture
        other = stats.kstest(x[:, 0].numpy(), mixture_cdf).statistic
        assert other > 3 * floor


def test_share_assigned_to_the_class_by_bayes_rises_with_guidance():
    mix = _mixture_2d()
    model = class_mixture_model(mix, _schedule())
    n = 2000
    shares = []
    for w in (0.0, 1.0, 3.0):
        x = sample(Guided(model, 0, w), n, torch.Generator().manual_seed(5), steps=100)
        shares.append(float((_bayes_log_posterior(mix, x).argmax(1) == 0).double().mean()))
    # at w = 0, the share of class 0's own draws that Bayes' rule assigns to it
    exact = _components(mix)[0].sample((200_000,), )
    expected = float((_bayes_log_posterior(mix, exact).argmax(1) == 0).double().mean())
    assert abs(shares[0] - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert shares[0] < shares[1] < shares[2]
    assert shares[2] > 0.97


# -- the likelihood as a classifier ---------------------------------------------------


def test_likelihood_classifier_recovers_the_bayes_posterior():
    mix = _mixture_2d()
    model = class_mixture_model(mix, _schedule())
    x = mix.sample(100, torch.Generator().manual_seed(1))
    post = classify(model, x, mix.weights.log(), n_t=1024, batch_size=10**6, seed=3)
    bayes = _bayes_log_posterior(mix, x)
    z = (post.log_probs - bayes) / post.log_stderr
    assert float((z.abs() > 3).double().mean()) <= 0.05
    assert abs(float(z[:, 0].mean())) < 0.5  # no bias beyond the noise
    assert float((post.probs - bayes.exp()).abs().mean()) < 0.03
    torch.testing.assert_close(post.probs.sum(1), torch.ones(100, dtype=torch.float64))
    # the draws are shared: the classes' bounds move together, so the difference is far
    # less noisy than each bound
    assert float(post.log_stderr.median()) < 0.2


def test_classes_share_their_draws():
    # Every class of an example is scored at the same times and noise: a conditional
    # network whose class embedding is still zero gives every class the same per-draw
    # bounds exactly, and Bayes' rule the prior.
    from thermodiff.classify import class_bounds
    from thermodiff.model import build_model

    cfg = config_mod.replace(config_mod.Config(), model={"width": 16, "depth": 1, "num_classes": 3})
    torch.manual_seed(0)
    model = build_model(cfg, (2,))
    with torch.no_grad():
        model.net.out_proj.weight.normal_()  # a network that predicts something
    x = torch.randn(6, 2, dtype=torch.float64)
    d = class_bounds(model, x, n_t=8, batch_size=16)  # several batches
    assert torch.equal(d[:, 0], d[:, 1]) and torch.equal(d[:, 0], d[:, 2])
    assert d[:, 0].std(1).min() > 0  # the draws differ from each other
    post = classify(model, x, torch.tensor([0.5, 0.25, 0.25]).log(), n_t=8)
    torch.testing.assert_close(post.probs, torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64).expand(6, 3))


def test_confusion_and_prior():
    c = confusion(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert c.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    lp = log_prior_of(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(lp.exp(), torch.tensor([3, 1, 0.5], dtype=torch.float64) / 4.5)


# -- conditional bounds ------------------------------------------------------------------


def test_conditional_and_unconditional_bounds_match_the_exact_log_likelihoods():
    mix = _mixture_2d()
    model = class_mixture_model(mix, _schedule())
    gen = torch.Generator().manual_seed(4)
    y = torch.multinomial(mix.weights, 2000, replacement=True, generator=gen)
    x = torch.stack([_components(mix)[int(k)].sample() for k in y]).to(torch.float64)
    cfg = config_mod.EvalConfig(n_t=16, batch_size=10**6)
    record = evaluate_run(model, x, cfg, labels=y)
    exact_cond = torch.stack([_components(mix)[int(k)].log_prob(x[i]) for i, k in enumerate(y)]) / math.log(2)
    exact = mix.log_prob(x) / math.log(2)
    assert record["labels"] == "true"
    assert abs(record["K_bits"] - float(exact_cond.mean())) < 4 * record["stderr_bits"]
    assert abs(record["K_bits_unconditional"] - float(exact.mean())) < 4 * record["stderr_bits_unconditional"]
    gain = float((exact_cond - exact).mean())  # E log2 p(y | x) - log2 p(y)
    assert abs(record["label_gain_bits"] - gain) < 4 * record["label_gain_stderr_bits"] + 0.01
    assert record["label_gain_stderr_bits"] < record["stderr_bits"]  # paired: far less noisy
    with pytest.raises(DataError):
        evaluate_run(model, x, cfg, labels=torch.full((2000,), 5))


# -- labels as data ------------------------------------------------------------------------


def test_labels_from_a_csv_of_strings_with_a_header(tmp_path):
    p = tmp_path / "y.csv"
    p.write_text("animal\ncat\ndog\ncat\neel\n")
    y, names = read_labels(p, 4)
    assert names == ("cat", "dog", "eel") and y.tolist() == [0, 1, 0, 2]
    p.write_text("cat\ndog\ncat\neel\n")  # no header: four lines for four examples
    assert read_labels(p, 4)[0].tolist() == [0, 1, 0, 2]
    q = tmp_path / "ids.npy"
    np.save(q, np.array([3, 0, 1]))
    y, names = read_labels(q, 3)
    assert names is None and y.tolist() == [3, 0, 1]
    assert index_by_names(np.array([1, 0]), ("dog", "cat"), ("cat", "dog", "eel"), "t").tolist() == [0, 1]


@pytest.mark.parametrize("text,n,words", [
    ("cat\n\ndog\n", 3, "2 labels for 3"),  # a blank line is no label
    ("cat\ndog\n", 3, "2 labels for 3"),
    ("1\n-2\n3\n", 3, "count from 0"),
    ("1\n2.5\n3\n", 3, "label 2"),
    ("a,b\nc,d\n", 2, "one column"),
])
def test_bad_labels_are_one_line_errors(tmp_path, text, n, words):
    p = tmp_path / "y.csv"
    p.write_text(text)
    with pytest.raises(DataError) as info:
        read_labels(p, n)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_class_unknown_to_the_training_labels_is_refused():
    with pytest.raises(DataError, match="'fox' is not one"):
        index_by_names(np.array([0]), ("fox",), ("cat", "dog"), "test.csv")
    with pytest.raises(DataError, match="out of range"):
        index_by_names(np.array([5]), None, ("0", "1"), "test.csv")


def test_image_folder_of_class_sub_folders(tmp_path):
    from PIL import Image

    from thermodiff.data.imagefolder import load_class_folders

    for name, value in (("zebra", 200), ("ant", 10)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), value + i, dtype=np.uint8), mode="L").save(tmp_path / name / f"{i}.png")
    images, labels, names = load_class_folders(tmp_path)
    assert names == ("ant", "zebra") and images.shape == (6, 1, 8, 8)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and images[3, 0, 0, 0] == 200
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_class_folders(tmp_path)


# -- conditional networks and training ----------------------------------------------------


@pytest.mark.parametrize("name,options", [
    ("mlp", {}), ("rbf", {}), ("sigmoid_mlp", {}),
    ("unet", {"image_shape": (1, 8, 8), "base_channels": 8, "channel_mults": (1,)}),
    ("multiscale", {"image_shape": (1, 8, 8), "channels": 4}),
])
def test_every_network_takes_a_class(name, options):
    d = 64
    torch.manual_seed(0)
    net = build_net(name, d, d, 10, num_classes=3, **options)
    x, t = torch.randn(4, d), torch.rand(4)
    y = torch.tensor([0, 1, 2, 3])  # 3: the null class
    # zero-initialised embedding: untrained, every class is the null class
    torch.testing.assert_close(net(x, t, y), net(x, t))
    with torch.no_grad():
        net.class_embed.table.weight.normal_()
        for p in net.parameters():  # the zero-initialised readouts would hide any input
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.1)
    out = net(x, t, y)
    assert not torch.allclose(out[0], net(x[:1], t[:1], torch.tensor([1]))[0])
    torch.testing.assert_close(out[3:], net(x[3:], t[3:]))  # None is the null class
    plain = build_net(name, d, d, 10, **options)
    with pytest.raises(ConfigError, match="without classes"):
        plain(x, t, y)


def _labelled(n=600, seed=0):
    mix = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
                          torch.tensor([[[0.3, 0.0], [0.0, 0.3]], [[0.3, 0.0], [0.0, 0.3]]]))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = mix.means[y] + 0.55 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return Dataset(x[: n - 100], x[n - 100:], train_labels=y[: n - 100], test_labels=y[n - 100:],
                   class_names=("left", "right"))


def _cfg(**train):
    cfg = config_mod.Config()
    return config_mod.replace(cfg, model={"width": 32, "depth": 2, "num_classes": -1},
                              train=dict({"steps": 30, "batch_size": 64, "log_every": 10, "ema_decay": 0.0}, **train))


def test_training_with_label_dropout_teaches_the_null_class(tmp_path):
    data = _labelled()
    model = fit(_cfg(label_dropout=0.3), data, tmp_path / "a", progress=False, log=lambda *a: None)
    table = model.net.class_embed.table.weight
    assert model.num_classes == 2 and bool(table[:2].abs().sum() > 0) and bool(table[2].abs().sum() > 0)
    # without dropout the null class never trains: its row stays at its zero start
    plain = fit(_cfg(label_dropout=0.0), data, tmp_path / "b", progress=False, log=lambda *a: None)
    assert bool(plain.net.class_embed.table.weight[2].abs().sum() == 0)
    saved = config_mod.load(tmp_path / "a" / "config.toml")
    assert saved.model.num_classes == 2 and saved.model.class_names == ("left", "right")


def test_classes_come_from_the_labels_or_are_refused():
    data = _labelled()
    assert with_classes(_cfg(), data).model.class_names == ("left", "right")
    cfg = config_mod.replace(_cfg(), model={"num_classes": 3})
    with pytest.raises(ConfigError, match="hold 2 classes"):
        with_classes(cfg, data)
    unlabelled = Dataset(data.train, data.test)
    with pytest.raises(ConfigError, match="needs class labels"):
        with_classes(_cfg(), unlabelled)
    assert with_classes(config_mod.Config(), unlabelled) == config_mod.Config()  # unconditional: as it is


def test_held_out_checks_of_a_conditional_model_use_the_labels():
    from thermodiff.monitor import HeldOutMonitor

    mix = _mixture_2d()
    model = class_mixture_model(mix, _schedule())
    gen = torch.Generator().manual_seed(3)
    y = torch.multinomial(mix.weights, 400, replacement=True, generator=gen)
    x = torch.stack([_components(mix)[int(k)].sample() for k in y]).to(torch.float64)
    with_labels = HeldOutMonitor(x[:200], x[200:], 200, 16, 10**6, 0, y[:200], y[200:])(model)
    without = HeldOutMonitor(x[:200], x[200:], 200, 16, 10**6, 0)(model)
    # the labels are worth E log2 p(y | x) / p(y) bits per example, about 0.6 here
    assert with_labels["val_bits"] > without["val_bits"] + 0.3


def test_binary_data_train_a_conditional_binomial_model(tmp_path):
    # two classes of 8-bit vectors: the first half on, or the second; guidance draws the class
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (800,), generator=gen)
    x = torch.zeros(800, 8, dtype=torch.float64)
    x[y == 0, :4], x[y == 1, 4:] = 1.0, 1.0
    flip = torch.rand(800, 8, generator=gen) < 0.05
    x = torch.where(flip, 1 - x, x)
    data = Dataset(x[:700], x[700:], train_labels=y[:700], test_labels=y[700:], class_names=("low", "high"))
    cfg = config_mod.load(config_mod.config_path("binary"))
    cfg = config_mod.replace(cfg, process={"T": 20}, model={"width": 64, "depth": 2, "num_classes": -1},
                             data={"validation_fraction": 0.0},
                             train={"steps": 300, "batch_size": 128, "validate_every": 0, "patience": 0,
                                    "lr": 3e-3, "log_every": 100})
    model = fit(cfg, data, tmp_path / "run", progress=False, log=lambda *a: None)
    for k in range(2):
        s = sample(Guided(model, k, 1.0), 200, torch.Generator().manual_seed(k))
        first_half = s[:, :4].mean(1) > s[:, 4:].mean(1)
        assert float(first_half.double().mean()) > 0.9 if k == 0 else float(first_half.double().mean()) < 0.1
    record = evaluate_run(model, data.test, config_mod.EvalConfig(n_t=19, batch_size=4096), labels=data.test_labels)
    assert record["label_gain_bits"] > 0.5  # one bit of class, nearly all of it told by the data
