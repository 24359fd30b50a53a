"""Benchmarks: train with a fixed budget from a shipped config, evaluate on held-out data,
and return a JSON record with the figures, the training seconds, the device and the commit.

``--smoke`` runs a tiny version of the same path (for CI): same code, same record,
budgets cut to seconds. Its figures mean nothing.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from .atomic import atomic_write
from .evaluation import evaluate_run, iw_record
from .parzen import parzen
from .report import figures as draw
from .report import held_out_figure, markdown, write_json
from .sampling.ancestral import sample, time_grid
from .errors import ConfigError
from .run_folder import CHECKPOINT, load_run, refuse_trained
from .train import fit

BENCHMARKS = {
    "swissroll": "swissroll",
    "swissroll-paper": "paper/swissroll",
    "heartbeat": "heartbeat",
    "heartbeat-paper": "paper/heartbeat",
    "binary-mnist": "binary-mnist",
    "iw-mixture": "iw-mixture",
    "iw-swissroll": "iw-swissroll",
    "mnist": "mnist",
    "mnist-cond": "mnist-cond",  # its own evaluation: bench_conditional
    "deadleaves": "deadleaves",
    "small-data": "vectors",  # the defaults of `thermodiff train --data FILE`, on small_data_config's arrays
}

# Benchmark `small-data`: the first 1,000 MNIST training images and the first 1,000 test
# images, area-averaged to 14 x 14, 8-bit levels dequantised once, given as 196-vectors
# through the array path with the defaults for a user's own data.
SMALL_DATA = {"root": "../shared/data/mnist", "n": 1000, "factor": 2, "smoke_n": 200}

SMOKE = {
    "train": {"steps": 30, "max_seconds": 0.0, "log_every": 10, "checkpoint_every": 1000},
    "data": {"n_train": 2000, "n_test": 500},
    "eval": {"n_t": 8, "samples": 100},
}
# Smoke versions of benchmarks with long chains or big data also shrink those.
SMOKE_EXTRA = {
    "heartbeat": {"process": {"T": 50}},
    "heartbeat-paper": {"process": {"T": 50}},
    "iw-mixture": {"eval": {"iw_M": 10, "iw_examples": 20}},
    "iw-swissroll": {"eval": {"iw_M": 10, "iw_examples": 20}},
    "deadleaves": {"model": {"base_channels": 8, "conv_layers": 1, "dense_layers": 1},
                   "data": {"n_train": 64, "n_test": 16, "size": 16}},
    "mnist": {"model": {"base_channels": 8, "channel_mults": (1,)},
              "data": {"n_train": 256, "n_test": 64}, "eval": {"samples": 16, "sample_steps": 5}},
    "mnist-cond": {"model": {"base_channels": 8, "channel_mults": (1,)},
                   "data": {"n_train": 256, "n_test": 64}, "eval": {"samples": 16, "sample_steps": 5}},
    "binary-mnist": {"process": {"T": 20}, "model": {"base_channels": 8, "channel_mults": (1,)},
                     "data": {"n_train": 256, "n_test": 64}},
}


def bench_config(name: str, smoke: bool = False) -> config_mod.Config:
    """The config behind a benchmark, or its smoke version."""
    cfg = config_mod.load(config_mod.config_path(BENCHMARKS[name]))
    if smoke:
        cfg = config_mod.replace(cfg, **SMOKE)
        cfg = config_mod.replace(cfg, **SMOKE_EXTRA.get(name, {}))
    return cfg


def small_data_config(cfg: config_mod.Config, out: Path, smoke: bool = False) -> config_mod.Config:
    """Write the `small-data` benchmark's arrays (``images.small_mnist_vectors``) to
    out/data/ and point cfg's array paths at them. A folder holding a trained run is
    refused before anything is written. Shapes: none."""
    from .data.arrays import save_array
    from .data.images import small_mnist_vectors

    if (out / CHECKPOINT).exists():
        raise ConfigError(refuse_trained(out))
    n = SMALL_DATA["smoke_n"] if smoke else SMALL_DATA["n"]
    train, test = small_mnist_vectors(data_mod.resolve_root(SMALL_DATA["root"]), n, SMALL_DATA["factor"])
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    save_array(folder / "train.npy", train)
    save_array(folder / "test.npy", test)
    return config_mod.replace(cfg, name="small-data",
                              data={"path": str(folder / "train.npy"), "test_path": str(folder / "test.npy")})


def sample_support(model, log_density, eval_cfg, progress: bool = False) -> dict:
    """Draw eval.samples samples and report the share that the data set's distribution can
    produce (finite exact log-density): for heartbeat, the share that are exactly one of
    the 5 true sequences.

    Shapes: log_density maps (N, *D) -> (N,); returns a dict of numbers.
    """
    steps = eval_cfg.sample_steps or None
    gen = torch.Generator().manual_seed(eval_cfg.seed)
    with torch.no_grad():
        x = sample(model, eval_cfg.samples, gen, steps=steps, progress=progress)
    valid = torch.isfinite(log_density(model.scaler.inverse(x)))
    return {"valid_fraction": float(valid.to(torch.float64).mean()), "n_samples": eval_cfg.samples,
            "sampling_steps": len(time_grid(model, steps))}


SAMPLE_CHUNK = 500  # images sampled at once for the Parzen window
QUALITY_SAMPLES = 2000  # samples (and training images, for the floor) in a Frechet distance and KID


def cache_dir() -> Path:
    """Where the library's feature classifiers are cached: $THERMODIFF_CACHE, else
    $XDG_CACHE_HOME/thermodiff (~/.cache/thermodiff). Their file names hold a hash
    of the training images, the labels and the seed, so no data set loads another's."""
    if os.environ.get("THERMODIFF_CACHE"):
        return Path(os.environ["THERMODIFF_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "thermodiff"


def levels(model, x: torch.Tensor) -> torch.Tensor:
    """Samples in model units as 8-bit levels 0..255 (floored, clipped), as the
    classifier reads images. Shapes: (N, *D) -> (N, *D) float64."""
    return model.scaler.inverse(x).floor().clamp(0, 255)


def feature_classifier(dataset, cache: Path, seed: int = 0, epochs: int = 3, progress: bool = False):
    """The sample-quality classifier of a labelled image data set (``quality``), trained
    once on its training images and cached. Returns (net, record)."""
    from .quality import load_or_train

    return load_or_train(dataset.train, dataset.train_labels, dataset.test.floor(), dataset.test_labels,
                         len(dataset.class_names), cache, seed=seed, epochs=epochs, progress=progress)


def floor_images(dataset, n: int, seed: int) -> torch.Tensor:
    """n training images drawn at random (seeded): the floor of a sample-quality measure
    against the test set. Shapes: -> (n, C, H, W) levels."""
    pick = torch.randperm(dataset.train.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return dataset.train[pick]


def image_samples_parzen(model, dataset, eval_cfg, progress: bool = False, solver: str = "ancestral",
                         quality_net=None) -> dict:
    """For 8-bit images: eval.samples samples (eval.sample_steps hops, or grid times of
    an ODE solver) scored by the Parzen window of the paper's Table 2 on [0, 1] pixels
    (level / 255): the window chosen on the last 1,000 training images, the held-out
    images scored. quality_net: a feature classifier (``quality``): the first
    QUALITY_SAMPLES samples' Frechet distance and KID against the held-out images
    are added (``fd_samples``, ``kid_samples``), with the floor (as many training
    images: ``fd_floor``, ``kid_floor``).

    Shapes: the dataset's images (N, C, H, W) as levels 0..255.
    """
    from .model import count_calls

    steps = eval_cfg.sample_steps or None
    gen = torch.Generator().manual_seed(eval_cfg.seed)
    # In chunks: one batch of 10,000 images runs 2.5x slower per image on a CPU than
    # chunks of 500, whose activations stay in cache.
    with count_calls(model) as calls:
        x = sample(model, eval_cfg.samples, gen, steps=steps, progress=progress, chunk=SAMPLE_CHUNK,
                   solver=solver).cpu()
    pixels = model.scaler.inverse(x).floor().clamp(0, 255) / 255
    validation = dataset.train[-min(1000, len(dataset.train) // 4 or 1):] / 255
    test = dataset.test.floor() / 255  # the held-out levels, without their dequantisation
    record = parzen(pixels, validation, test)
    record.pop("parzen_validation")
    record.update(n_samples=eval_cfg.samples, nfe=calls.per_example(eval_cfg.samples))
    if quality_net is not None:
        from .quality import sample_quality

        m = min(QUALITY_SAMPLES, len(pixels))
        test = dataset.test.floor()
        q = sample_quality(quality_net, pixels[:m] * 255, test, seed=eval_cfg.seed)
        floor = sample_quality(quality_net, floor_images(dataset, m, eval_cfg.seed), test, seed=eval_cfg.seed)
        record.update(fd_samples=q["frechet_distance"], kid_samples=q["kid"], kid_samples_stderr=q["kid_stderr"],
                      fd_floor=floor["frechet_distance"], kid_floor=floor["kid"], quality_samples=m)
    if solver == "ancestral":
        record["sampling_steps"] = len(time_grid(model, steps))
    return record


def git_commit() -> str:
    """The commit of the working tree the benchmark ran from, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def run_benchmark(name: str, cfg: config_mod.Config, out: Path, progress: bool = True, figures: bool = True,
                  fresh: bool = False) -> dict:
    """Train (from scratch when fresh: a folder holding a trained run is refused, never
    deleted), evaluate, draw figures, write out/eval.json and
    out/report.md. Returns the record."""
    out = Path(out)
    if fresh and (out / CHECKPOINT).exists():
        # A trained run is never deleted, a previous benchmark of the same name included
        # (its budget may be wall-clock seconds, which no rerun reproduces). A folder
        # without a checkpoint holds no trained state: training takes it over (its
        # config and metrics are replaced; other files in it are left alone).
        raise ConfigError(refuse_trained(out))
    dataset = data_mod.load(cfg.data)
    t0 = time.perf_counter()
    fit(cfg, dataset, out, progress=progress, fresh=fresh)  # fresh: checked again under the run's lock
    wall = time.perf_counter() - t0
    cfg, model, meta = load_run(out, use_ema=cfg.eval.use_ema)  # the config as trained (AUTO values chosen)
    record = {"benchmark": name}
    record.update(evaluate_run(model, dataset.test, cfg.eval, dataset.log_density, progress=progress,
                               sampler=meta["time_sampler"], train=dataset.train_continuous(cfg.train.seed)))
    if cfg.eval.iw_M:
        record.update(iw_record(model, dataset.test, cfg.eval, cfg.eval.iw_M, dataset.log_density, progress))
    if data_mod.is_binary(dataset.train) and dataset.log_density is not None and cfg.eval.samples > 0:
        record.update(sample_support(model, dataset.log_density, cfg.eval, progress))
    if dataset.dequantize:
        # Training throughput: the speed figure for images.
        record["images_per_second"] = meta["trained_steps"] * cfg.train.batch_size / max(meta["trained_seconds"], 1e-9)
        if cfg.eval.samples > 0:
            net = None
            if dataset.labelled and len(dataset.class_names) > 1:  # a sample-quality measure needs labels
                net, classifier = feature_classifier(dataset, cache_dir(), seed=cfg.eval.seed,
                                                     epochs=1 if cfg.train.steps <= SMOKE["train"]["steps"] else 3,
                                                     progress=progress)
                record.update(classifier)
            record.update(image_samples_parzen(model, dataset, cfg.eval, progress, quality_net=net))
    if meta.get("best_step") is not None:
        record.update(best_step=meta["best_step"], best_val_bits=meta["best_val_bits"])
    record.update(
        train_seconds=meta["trained_seconds"],
        train_wall_seconds=wall,
        train_steps=meta["trained_steps"],
        checkpoint=meta["checkpoint"],
        device=device_name(),
        commit=git_commit(),
        config=config_mod.to_dict(cfg),
    )
    names = []
    if figures:
        names = [p.name for p in draw(model, dataset.train, record, out, steps=cfg.eval.sample_steps or None)]
        curve = held_out_figure(out, out, record.get("gaussian_bits"))
        names = ([curve.name] if curve is not None else []) + names
    write_json(out / "eval.json", record)
    with atomic_write(out / "report.md") as f:
        f.write(markdown(record, f"thermodiff {name}", names))
    return record
