"""Benchmark `condition`: each conditioning method's error against the exact conditional.

Models with exact predictions (``oracle``), so the errors are the methods' own:
- continuous: a two-component 2-D Gaussian mixture (one component correlated), 200
  hops of continuous time; conditionals in closed form (``GaussianMixture.condition``
  and ``observe``); error = the largest two-sample Kolmogorov-Smirnov statistic over
  the free coordinates against as many exact draws, with its 1% critical value;
- binary: a table over the 8 states of 3 bits, T = 40; error = total variation
  between the samples' state frequencies and the exact table.
No training: the benchmark runs in minutes on a CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from . import plots  # matplotlib itself is imported inside plots, when a figure is drawn
from .data.toy import GaussianMixture
from .errors import ConfigError
from .oracle import mixture_model, table_model
from .sampling.ancestral import sample
from .sampling.conditioning import BitProbabilities, Conditioning, GaussianObservation, Known, sample_conditioned
from .schedules import ContinuousSchedule
from .run_folder import load_run

STATES = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float64)
TABLE = torch.tensor([0.30, 0.02, 0.08, 0.15, 0.05, 0.20, 0.12, 0.08], dtype=torch.float64)


def reference_mixture() -> GaussianMixture:
    """The benchmark's continuous data: weights (1/2, 1/2), means (-1, -0.5) and (1, 0.5),
    covariances 0.3 [[1, 0.8], [0.8, 1]] and 0.2 I."""
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, -0.5], [1.0, 0.5]]),
                           torch.stack([0.3 * cov, 0.2 * torch.eye(2)]))


def _ks(x: torch.Tensor, ref: torch.Tensor) -> float:
    from scipy.stats import ks_2samp  # scipy for this one statistic: imported where used

    return max(float(ks_2samp(x[:, j].numpy(), ref[:, j].numpy()).statistic) for j in range(x.shape[1]))


def _frequencies(x: torch.Tensor) -> torch.Tensor:
    idx = (x.to(torch.long) * torch.tensor([4, 2, 1])).sum(1)
    return torch.bincount(idx, minlength=8).to(torch.float64) / x.shape[0]


def run(smoke: bool = False, progress: bool = False) -> dict:
    """The error of every method on every case; returns the benchmark record.

    Shapes: none (a dict with one row per case and method)."""
    n, steps = (300, 20) if smoke else (4000, 200)
    particles = (1, 4) if smoke else (1, 8, 32, 128)
    mix = reference_mixture()
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr"))
    y, sigma = torch.tensor([0.6, 0.2]), 0.5
    y1, sigma1, gain1 = torch.tensor([0.6, 0.0]), 0.4, torch.tensor([1.0, 0.0])
    known = Known(torch.tensor([0.8, 0.0]), torch.tensor([1.0, 0.0]))
    cases = [
        ("mixture, known x1 = 0.8", known, mix.condition(torch.tensor([True, False]), torch.tensor([0.8, 0.0])), [1],
         [("clamp", {}), ("replace", {}), ("replace", {"resample": 5})]),
        ("mixture, y = x + N(0, 0.5^2)", GaussianObservation(y, sigma), mix.observe(y, sigma), [0, 1],
         [("start", {}), ("product", {}), ("guidance", {})] + [("smc", {"particles": p}) for p in particles]),
        ("mixture, y1 = x1 + N(0, 0.4^2)", GaussianObservation(y1, sigma1, gain1), mix.observe(y1, sigma1, gain1), [0, 1],
         [("product", {}), ("guidance", {})] + [("smc", {"particles": p}) for p in particles]),
    ]
    rows = []
    for name, condition, exact, dims, methods in cases:
        ref = exact.sample(n, torch.Generator().manual_seed(99))
        for method, options in methods:
            t0 = time.perf_counter()
            x = sample(model, n, torch.Generator().manual_seed(0), steps=steps, progress=progress,
                       condition=Conditioning(condition, method, **options)).to(torch.float64)[:, dims]
            rows.append({"case": name, "method": method, **options, "ks": _ks(x, ref),
                         "mean_error": float((x.mean(0) - ref.mean(0)).abs().max()),
                         "std_ratio": [float(v) for v in x.std(0) / ref.std(0)],
                         "seconds": time.perf_counter() - t0})
    base = sample(model, n, torch.Generator().manual_seed(0), steps=steps).to(torch.float64)
    rows.append({"case": "mixture, unconditional (the chain's own error)", "method": "none",
                 "ks": _ks(base, mix.sample(n, torch.Generator().manual_seed(99))), "mean_error": float("nan"),
                 "std_ratio": [], "seconds": 0.0})

    table = table_model(STATES, TABLE, 40)
    bits = 8000 if not smoke else 500
    first = torch.where(STATES[:, 0] == 1, TABLE, torch.zeros_like(TABLE))
    d = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64)
    r = (STATES * d + (1 - STATES) * (1 - d)).prod(1)
    binary = [
        ("bits, known x1 = 1", Known(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0])), first / first.sum(),
         [("clamp", {}), ("replace", {}), ("replace", {"resample": 5})]),
        ("bits, r = prod d^x (1-d)^(1-x), d = (0.9, 0.2, 0.5)", BitProbabilities(d), TABLE * r / (TABLE * r).sum(),
         [("product", {})] + [("smc", {"particles": p}) for p in particles if p > 1]),
    ]
    for name, condition, target, methods in binary:
        for method, options in methods:
            t0 = time.perf_counter()
            x = sample(table, bits, torch.Generator().manual_seed(1), condition=Conditioning(condition, method, **options))
            rows.append({"case": name, "method": method, **options,
                         "tv": float((_frequencies(x) - target).abs().sum()) / 2, "seconds": time.perf_counter() - t0})
    x = sample(table, bits, torch.Generator().manual_seed(1))
    rows.append({"case": "bits, unconditional (the chain's own error)", "method": "none",
                 "tv": float((_frequencies(x) - TABLE).abs().sum()) / 2, "seconds": 0.0})
    return {"benchmark": "condition", "samples": n, "sampling_steps": steps, "binary_samples": bits,
            "ks_critical_1pct": 1.63 * math.sqrt(2 / n), "rows": rows}


def markdown_table(record: dict) -> str:
    """The record as a Markdown table (the README's). Shapes: dict -> str."""
    lines = ["| case | method | error | mean error | std ratio |", "| --- | --- | --- | --- | --- |"]
    for r in record["rows"]:
        opts = ", ".join(f"{k} {r[k]}" for k in ("particles", "resample") if k in r)
        method = r["method"] + (f" ({opts})" if opts else "")
        err = f"KS {r['ks']:.3f}" if "ks" in r else f"TV {r['tv']:.3f}"
        mean = f"{r['mean_error']:.3f}" if isinstance(r.get("mean_error"), float) and r["mean_error"] == r["mean_error"] else ""
        ratio = ", ".join(f"{v:.2f}" for v in r.get("std_ratio", []))
        lines.append(f"| {r['case']} | {method} | {err} | {mean} | {ratio} |")
    return "\n".join(lines) + "\n"


def inpaint_images(run: str, out, n_images: int = 100, steps: int = 100, votes: int = 5,
                   method: str = "clamp", resample: int = 1, progress: bool = False) -> dict:
    """Inpaint the bottom half of the first n_images held-out images of a binary image
    run (binarised MNIST) from their top half, and score the filled-in pixels against
    the truth: the share of wrong pixels of one sample per image and of the per-pixel
    majority of `votes` samples, beside two baselines: the training set's per-pixel
    majority (mean fill) and the nearest training image by Hamming distance on the
    top half (its bottom half copied). Writes out/inpainting.png.

    Shapes: the run's data (C, H, W) binary.
    """
    cfg, model, _ = load_run(run)
    if not model.process.binary or len(model.data_shape) != 3:
        raise ConfigError(f"{run}: inpainting scores binary images (a binary-mnist run)")
    dataset = data_mod.load(cfg.data)
    truth = dataset.test[:n_images].to(torch.float64)
    c, h, w = model.data_shape
    mask = torch.zeros(model.data_shape, dtype=torch.float64)
    mask[:, : h // 2] = 1  # the top half is known
    hidden = ~mask.bool()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([
        sample_conditioned(model, Known(truth, mask), n_images, gen, method=method, steps=steps, progress=progress,
                           resample=resample)
        for _ in range(votes)
    ])  # (votes, n, C, H, W)
    seconds = time.perf_counter() - t0
    err = lambda x: float((x != truth)[:, hidden].to(torch.float64).mean())  # noqa: E731
    majority = (draws.mean(0) > 0.5).to(torch.float64)
    train = dataset.train.to(torch.float64)
    mean_fill = (train.mean(0) > 0.5).to(torch.float64).expand_as(truth)
    top = lambda x: x[:, mask.bool()].reshape(len(x), -1)  # noqa: E731
    # Nearest neighbour on the known half: Hamming distance = |a| + |b| - 2 a.b for 0/1 vectors.
    tt, tr = top(truth), top(train)
    dist = tt.sum(1, keepdim=True) + tr.sum(1)[None] - 2 * tt @ tr.T
    nearest = train[dist.argmin(1)]
    filled = lambda x: torch.where(mask.bool(), truth, x)  # noqa: E731
    record = {
        "benchmark": "inpaint-mnist", "run": str(run), "n_images": n_images, "sampling_steps": steps,
        "method": method, "resample": resample, "votes": votes,
        "error_model_sample": sum(err(d) for d in draws) / votes,
        "error_model_majority": err(majority),
        "error_mean_fill": err(filled(mean_fill)),
        "error_nearest_neighbour": err(filled(nearest)),
        "sampling_seconds": seconds,
    }
    m = min(n_images, 10)
    corrupted = torch.where(mask.bool(), truth, torch.full_like(truth, 0.5))
    rows = [truth[:m], corrupted[:m], draws[0, :m], draws[1, :m] if votes > 1 else draws[0, :m], filled(nearest)[:m]]
    path = Path(out) / "inpainting.png"
    plots.image_grid(path, np.concatenate([r.numpy() for r in rows]),
                     "rows: original, top half known, two model samples, nearest training image", ncol=m)
    record["figure"] = str(path)
    return record
