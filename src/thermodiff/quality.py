"""Sample quality without a download: features of a classifier the library trains.

A small convolutional classifier (``FeatureNet``) is trained, seeded, on a labelled
image data set's training images and cached on disk (``load_or_train``). Its
penultimate layer gives features; between the features of generated samples and of
the test set:
- the Frechet distance (Heusel et al. 2017): the closed-form distance between the two
  Gaussians fitted to the features, |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2));
- the kernel distance KID (Binkowski et al. 2018): the unbiased estimate of the squared
  MMD with the cubic kernel k(a, b) = (a.b / F + 1)^3, averaged over random subsets,
  with its standard error (KID has no bias with sample size; the Frechet distance has);
- for class-conditional samples, the share the classifier assigns to the class asked for.
The floor of both distances is the training images against the test set.

These figures are comparable only within thermodiff (the same data set, classifier
seed and sample size), never to published FIDs, which use an Inception network trained
on ImageNet.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import ConfigError, DataError

# Part of every cache file's name: a change of the architecture or of the training
# recipe must not load an older net.
RECIPE_VERSION = 1


class FeatureNet(nn.Module):
    """A small CNN: three 3x3 convolution blocks (ReLU, 2x2 max-pooling after the first
    two), adaptive average pooling to 4 x 4 (any image size of at least 8 pixels), a
    dense layer of `features` ReLU units (the features) and a linear readout of logits.
    Images are 8-bit levels, clamped to [0, 255] and scaled to [-0.5, 0.5] inside.

    Shapes: x (N, C, H, W) levels -> features (N, features), logits (N, num_classes).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 32, features: int = 128):
        super().__init__()
        self.settings = dict(channels=channels, num_classes=num_classes, width=width, features=features)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * w * 16, features), nn.ReLU(),
        )
        self.readout = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: (N, C, H, W) -> (N, features)."""
        return self.body(x.to(torch.float32).clamp(0, 255) / 255 - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: (N, C, H, W) -> (N, num_classes)."""
        return self.readout(self.features(x))


def _check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"{what}: expected images (N, C, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[2:]) < 8:
        raise DataError(f"{what}: images of {images.shape[2]} x {images.shape[3]} pixels; the feature classifier "
                        "needs at least 8 x 8")
    if not torch.isfinite(images).all():
        raise DataError(f"{what}: images hold NaN or inf")
    return images


def _check_labels(labels, n: int, num_classes: int | None, what: str) -> torch.Tensor:
    """Labels as int64 (N,), one per image (and in 0..num_classes-1 where given):
    a label out of range would otherwise be an IndexError deep inside cross_entropy,
    and a wrong count would broadcast silently in a comparison."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers, got {labels.dtype}")
    labels = labels.to(torch.long)
    if labels.shape != (n,):
        raise DataError(f"{what}: labels of shape {tuple(labels.shape)} for {n} images")
    if num_classes is not None and n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"{what}: labels must lie in 0..{num_classes - 1}, "
                        f"got {int(labels.min())}..{int(labels.max())}")
    return labels


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int = 0, epochs: int = 3,
                     batch_size: int = 128, lr: float = 2e-3, progress: bool = False) -> FeatureNet:
    """Train a FeatureNet on labelled images with Adam, deterministically in the seed
    (initial weights and the order of examples). Returns it in eval mode.

    Shapes: images (N, C, H, W) levels, labels (N,) int64 in 0..num_classes-1.
    """
    images = _check_images(images, "classifier training images")
    if num_classes < 1 or epochs < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(f"the feature classifier needs num_classes, epochs and batch_size >= 1 and lr > 0, got "
                          f"{num_classes}, {epochs}, {batch_size} and {lr}")
    labels = _check_labels(labels, images.shape[0], num_classes, "classifier training images")
    with torch.random.fork_rng(devices=[]):  # the caller's global stream is left as it was
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = images.shape[0]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="feature classifier", unit="step", leave=False)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):  # batches, not examples
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return net.eval()


@torch.no_grad()
def _batched(net: FeatureNet, fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """fn over batches of images on the net's device, the result on the CPU."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = next(net.parameters()).device
    return torch.cat([fn(images[i : i + batch_size].to(device)).cpu() for i in range(0, images.shape[0], batch_size)])


def features(net: FeatureNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The classifier's features of images. Shapes: (N, C, H, W) -> (N, F) float64."""
    net.eval()
    return _batched(net, net.features, _check_images(images, "images"), batch_size).to(torch.float64)


def predict_classes(net: FeatureNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The classifier's most probable class. Shapes: (N, C, H, W) -> (N,) int64."""
    net.eval()
    return _batched(net, net, _check_images(images, "images"), batch_size).argmax(1)


def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """The share of images classified as labelled. Shapes: (N, C, H, W), (N,)."""
    predicted = predict_classes(net, images, batch_size)
    return float((predicted == _check_labels(labels, predicted.shape[0], None, "images")).to(torch.float64).mean())


def _cache_key(images: torch.Tensor, labels: torch.Tensor, settings: dict, seed: int, epochs: int) -> str:
    """sha256 of what determines the trained net: the images' values, the labels, the
    shape, the architecture's settings, the seed, the epochs and the recipe's version."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images.detach().cpu().to(torch.float32).numpy()).tobytes())
    h.update(np.ascontiguousarray(torch.as_tensor(labels).detach().cpu().to(torch.long).numpy()).tobytes())
    h.update(repr((tuple(images.shape), sorted(settings.items()), seed, epochs, RECIPE_VERSION)).encode())
    return h.hexdigest()[:24]


def load_or_train(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, cache_dir: str | Path, seed: int = 0, epochs: int = 3,
                  progress: bool = False) -> tuple[FeatureNet, dict]:
    """The feature classifier of a labelled data set: loaded from `cache_dir` where a
    net of the same data, labels, seed and recipe was trained before, else trained and
    written there (safetensors, atomically; a file that cannot be read, or whose
    tensors do not fit the architecture or are not finite, is trained again and
    replaced). The file's name holds a sha256 of the training images, their labels and
    shape, the architecture's settings, the seed, the epochs and RECIPE_VERSION.
    Returns the net and its record: ``classifier_test_accuracy``, ``classifier_seed``,
    ``classifier_epochs``, ``classifier_cached``, ``classifier_path``.

    Shapes: train_images (N, C, H, W), test_images (M, C, H, W) levels; labels (N,), (M,).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    _check_images(train_images, "classifier training images")
    _check_labels(train_labels, train_images.shape[0], num_classes, "classifier training images")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    candidate = FeatureNet(train_images.shape[1], num_classes)
    key = _cache_key(train_images, train_labels, candidate.settings, seed, epochs)
    path = cache / f"feature-classifier-{key}.safetensors"
    net, cached = None, False
    if path.is_file():
        try:
            tensors = load_file(str(path))
            if all(t.is_floating_point() and bool(torch.isfinite(t).all()) for t in tensors.values()):
                candidate.load_state_dict(tensors)  # strict: every tensor present, each of its shape
                net, cached = candidate.eval(), True
        except (OSError, RuntimeError, SafetensorError, ValueError):
            pass  # unreadable, of another shape or not finite: trained again, the file replaced
    if net is None:
        net = train_classifier(train_images, train_labels, num_classes, seed=seed, epochs=epochs, progress=progress)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    record = {"classifier_test_accuracy": accuracy(net, test_images, test_labels), "classifier_seed": seed,
              "classifier_epochs": epochs, "classifier_cached": cached, "classifier_path": str(path)}
    return net, record


def frechet_gaussians(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):
    |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2)), the last trace as the
    sum of the square roots of the eigenvalues of cov1^(1/2) cov2 cov1^(1/2) (symmetric,
    positive semi-definite; round-off below zero clipped).

    Shapes: mu (F,), cov (F, F) -> float.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(v, dtype=torch.float64) for v in (mu1, mu2, cov1, cov2))
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if d < 1 or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise DataError(f"Gaussians need means (F,) and covariances (F, F) of one F, got {tuple(mu1.shape)}, "
                        f"{tuple(cov1.shape)}, {tuple(mu2.shape)} and {tuple(cov2.shape)}")
    if not all(bool(torch.isfinite(v).all()) for v in (mu1, mu2, cov1, cov2)):
        raise DataError("the Gaussians' means or covariances hold NaN or inf")
    vals, vecs = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def _check_features(f1: torch.Tensor, f2: torch.Tensor) -> None:
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise DataError(f"feature sets must be (N, F) of one width, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if not (torch.isfinite(f1).all() and torch.isfinite(f2).all()):
        raise DataError("feature sets hold NaN or inf")


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The Frechet distance between two feature sets (their means and unbiased
    covariances). Shapes: (N1, F), (N2, F) -> float."""
    f1, f2 = torch.as_tensor(f1, dtype=torch.float64), torch.as_tensor(f2, dtype=torch.float64)
    _check_features(f1, f2)
    if min(f1.shape[0], f2.shape[0]) < 2:
        raise DataError("the Frechet distance needs at least 2 rows in each feature set")
    return frechet_gaussians(f1.mean(0), torch.cov(f1.T).reshape(f1.shape[1], -1), f2.mean(0),
                             torch.cov(f2.T).reshape(f2.shape[1], -1))


def _mmd2_unbiased(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The unbiased squared MMD with the cubic polynomial kernel. Shapes: (m, F), (m', F) -> ()."""
    d = a.shape[1]
    kaa, kbb, kab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    m, n = a.shape[0], b.shape[0]
    return ((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
            - 2 * kab.mean())


def kernel_distance(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: the unbiased squared MMD (cubic kernel) between random subsets of the two
    feature sets, averaged over `subsets`; returns (mean, standard error over subsets).

    Shapes: (N1, F), (N2, F) -> (float, float).
    """
    f1, f2 = torch.as_tensor(f1, dtype=torch.float64), torch.as_tensor(f2, dtype=torch.float64)
    _check_features(f1, f2)
    if subsets < 1:
        raise ConfigError(f"KID needs at least 1 subset, got {subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise DataError(f"KID needs subsets of at least 2 rows; the feature sets have {f1.shape[0]} and {f2.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([_mmd2_unbiased(f1[torch.randperm(f1.shape[0], generator=gen)[:m]],
                                         f2[torch.randperm(f2.shape[0], generator=gen)[:m]]) for _ in range(subsets)])
    se = float(values.std() / math.sqrt(subsets)) if subsets > 1 else float("nan")
    return float(values.mean()), se


def sample_quality(net: FeatureNet, samples: torch.Tensor, reference: torch.Tensor, asked: torch.Tensor | None = None,
                   subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                   reference_features: torch.Tensor | None = None) -> dict:
    """The Frechet distance and KID of samples against reference images (the test set),
    and with `asked` (the class each sample was drawn for) the share classified as asked.
    reference_features: ``features(net, reference)`` where the caller holds them (one
    reference, several sample sets: computed once).

    Shapes: samples (N, C, H, W), reference (M, C, H, W) levels; asked (N,) -> dict.
    """
    samples = _check_images(torch.as_tensor(samples), "samples")
    reference = _check_images(torch.as_tensor(reference), "reference images")
    if samples.shape[1:] != reference.shape[1:]:
        raise DataError(f"samples of shape {tuple(samples.shape[1:])}, reference images {tuple(reference.shape[1:])}")
    fs = features(net, samples)
    fr = features(net, reference) if reference_features is None else reference_features
    kid, kid_se = kernel_distance(fs, fr, subsets, subset_size, seed)
    record = {"frechet_distance": frechet_distance(fs, fr), "kid": kid, "kid_stderr": kid_se,
              "n_samples": samples.shape[0]}
    if asked is not None:
        asked = torch.as_tensor(asked, dtype=torch.long)
        if asked.shape != (samples.shape[0],):
            raise DataError(f"{asked.shape[0] if asked.dim() else 0} classes asked for {samples.shape[0]} samples")
        with torch.no_grad():  # the readout of the features already computed
            predicted = net.readout(fs.to(torch.float32)).argmax(1)
        record["classified_as_asked"] = float((predicted == asked).to(torch.float64).mean())
    return record
