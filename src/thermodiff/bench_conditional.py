"""Benchmark `mnist-cond`: a class-conditional U-Net on MNIST as 8-bit levels.

The model: ``configs/mnist-cond.toml``, the `mnist` benchmark's data, network, bound
and 60 CPU-minutes with a class embedding and 10% label dropout (``train``). Then,
from the one model:
- K for log p(x | y) with the true labels and for log p(x) with the null class, on
  the full test set with the `mnist` config's 4 stratified times (``evaluate_run``),
  in bits per dimension, both with standard errors;
- sample quality (``quality``): a small classifier trained by thermodiff on the
  training images (seeded, cached) gives features; the Frechet distance and KID of
  eval.samples unconditional samples and of as many guided ones (classes in
  turn) at w = 0, 1, 3 against the test set, the floor being as many training images
  against the test set; and the share of guided samples that the classifier assigns
  to the class asked for;
- the likelihood as a classifier (``classify``): p(y | x) from the bounds of every
  class with shared draws, on the first `CLASSIFY_EXAMPLES` test images with
  `CLASSIFY_N_T` times each, and its test accuracy.
Samples come from DPM-Solver++(2M) with eval.sample_steps steps (guided: two network
rows a step). ``run`` trains (or takes a run trained from the same config) and returns the
record.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from .atomic import atomic_write
from .bench import bench_config, cache_dir, device_name, feature_classifier, floor_images, git_commit, levels
from .classify import accuracy_record, classify, log_prior_of
from .evaluation import evaluate_run
from .guidance import Guided
from .errors import ConfigError
from .run_folder import CHECKPOINT, load_run, resumable
from .sampling.ancestral import sample
from .train import fit, with_classes

GUIDANCE = (0.0, 1.0, 3.0)  # guided settings: eval.samples each (a tenth per class), and as many unconditional
SOLVER = "dpm++"
CLASSIFY_EXAMPLES = 1000
CLASSIFY_N_T = 16
SMOKE = dict(classify_examples=20, classify_n_t=2, classifier_epochs=1)


def draw(model, n: int, label, w: float, seed: int, steps: int, progress: bool = False) -> torch.Tensor:
    """n samples (levels) of the null class (label None) or of one class with guidance w,
    `steps` steps of the solver. Shapes: -> (n, *D)."""
    who = model if label is None else Guided(model, label, w)
    gen = torch.Generator().manual_seed(seed)
    return levels(model, sample(who, n, gen, steps=steps, solver=SOLVER, progress=progress, chunk=500))


def sample_quality_record(model, dataset, net, n: int, seed: int, steps: int, out: Path | None = None,
                          progress: bool = False) -> dict:
    """Frechet distance, KID and the share classified as asked, for unconditional and
    guided samples, with the floor (n training images against the test set).
    Returns flat fields (``fd_*``, ``kid_*``, ``classified_as_asked_w*``)."""
    from functools import partial

    from . import plots
    from .quality import features, sample_quality

    test = dataset.test.floor()
    quality = partial(sample_quality, reference_features=features(net, test))  # the test set's features, once
    record = {"quality_samples": n, "sampler": f"{SOLVER}, {steps} steps"}
    floor = quality(net, floor_images(dataset, n, seed), test, seed=seed)
    record.update(fd_floor=floor["frechet_distance"], kid_floor=floor["kid"], kid_floor_stderr=floor["kid_stderr"])
    t0 = time.perf_counter()
    x = draw(model, n, None, 0.0, seed, steps, progress)
    q = quality(net, x, test, seed=seed)
    record.update(fd_unconditional=q["frechet_distance"], kid_unconditional=q["kid"],
                  kid_unconditional_stderr=q["kid_stderr"])
    if out is not None:
        plots.image_grid(out / "samples_unconditional.png", x[:100].numpy() / 256, "unconditional samples (null class)",
                         ncol=10)
    k = model.num_classes
    per_class = max(1, n // k)
    for w in GUIDANCE:
        parts = [draw(model, per_class, c, w, seed + 1 + c, steps, progress) for c in range(k)]  # classes in turn
        x = torch.cat(parts)
        asked = torch.arange(k).repeat_interleave(per_class)
        q = quality(net, x, test, asked=asked, seed=seed)
        tag = f"w{w:g}"
        record.update({f"fd_guided_{tag}": q["frechet_distance"], f"kid_guided_{tag}": q["kid"],
                       f"kid_guided_{tag}_stderr": q["kid_stderr"],
                       f"classified_as_asked_{tag}": q["classified_as_asked"]})
        if out is not None:
            rows = torch.cat([p[:10] for p in parts]).numpy() / 256
            plots.image_grid(out / f"samples_guided_{tag}.png", rows, f"guided samples, w = {w:g} (one row per class)",
                             ncol=10, row_labels=[str(c) for c in range(k)])
    record["sampling_seconds"] = time.perf_counter() - t0
    return record


def run(out: Path, smoke: bool = False, progress: bool = True, trained: str | None = None) -> dict:
    """Train the benchmark's model in `out` (or take the run `trained`, trained from the
    same config), evaluate it, draw its figures; write out/eval.json and return the record."""
    from .plots import confusion_matrix
    from .report import write_json

    cfg = bench_config("mnist-cond", smoke=smoke)
    dataset = data_mod.load(cfg.data)
    folder = Path(trained) if trained else Path(out)
    wall = None
    if trained is None:
        t0 = time.perf_counter()
        fit(cfg, dataset, folder, progress=progress, fresh=True)
        wall = time.perf_counter() - t0
    elif not (folder / CHECKPOINT).exists():
        raise ConfigError(f"{folder}: no trained run (no {CHECKPOINT})")
    cfg_run, model, meta = load_run(folder, use_ema=cfg.eval.use_ema)
    if not resumable(cfg_run, with_classes(cfg, dataset)):  # the budget may differ, nothing else
        raise ConfigError(f"{folder}: not trained from the {'smoke ' if smoke else ''}mnist-cond config "
                          "(its config differs beyond the budget)")
    record = {"benchmark": "mnist-cond"}
    record.update(evaluate_run(model, dataset.test, cfg_run.eval, progress=progress, sampler=meta["time_sampler"],
                               labels=dataset.test_labels, train=dataset.train_continuous(cfg_run.train.seed)))
    record["images_per_second"] = meta["trained_steps"] * cfg_run.train.batch_size / max(meta["trained_seconds"], 1e-9)
    settings = SMOKE if smoke else {}
    net, classifier = feature_classifier(dataset, cache_dir(), seed=cfg.eval.seed,
                                         epochs=settings.get("classifier_epochs", 3), progress=progress)
    record.update(classifier)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record.update(sample_quality_record(model, dataset, net, cfg.eval.samples, cfg.eval.seed, cfg.eval.sample_steps,
                                        None if smoke else out, progress))
    m, n_t = settings.get("classify_examples", CLASSIFY_EXAMPLES), settings.get("classify_n_t", CLASSIFY_N_T)
    t0 = time.perf_counter()
    post = classify(model, dataset.test[:m], log_prior_of(dataset.train_labels, model.num_classes), n_t=n_t,
                    batch_size=cfg_run.eval.batch_size, seed=cfg.eval.seed, sampler=meta["time_sampler"],
                    progress=progress)
    acc = accuracy_record(post, dataset.test_labels[:m], cfg_run.model.class_names)
    record.update(likelihood_classifier_accuracy=acc["accuracy"],
                  likelihood_classifier_accuracy_stderr=acc["accuracy_stderr"],
                  likelihood_classifier_examples=m, likelihood_classifier_n_t=n_t,
                  likelihood_classifier_confusion=acc["confusion"],
                  likelihood_classifier_seconds=time.perf_counter() - t0)
    if not smoke:
        confusion_matrix(out / "confusion.png", torch.as_tensor(acc["confusion"]).numpy(), cfg_run.model.class_names,
                         f"likelihood classifier: {acc['accuracy']:.4f} on {m} test images ({n_t} times each)")
    record.update(train_seconds=meta["trained_seconds"], train_steps=meta["trained_steps"], checkpoint=meta["checkpoint"],
                  run=str(folder), device=device_name(), commit=git_commit(), config=config_mod.to_dict(cfg_run))
    if wall is not None:
        record["train_wall_seconds"] = wall
    write_json(out / "eval.json", record)
    with atomic_write(out / "report.md") as f:
        f.write(markdown(record))
    return record


def markdown(record: dict) -> str:
    """The benchmark's figures as a short Markdown table. Shapes: none."""
    lines = ["# thermodiff mnist-cond", "", "| measure | value |", "| --- | --- |"]
    rows = [
        ("bits/dim, log p(x | y)", f"{record['bits_per_dim']:.4f} (K {record['K_bits']:.1f} ± {record['stderr_bits']:.1f} bits)"),
        ("bits/dim, log p(x) (null class)", f"{record['bits_per_dim_unconditional']:.4f} "
                                            f"(K {record['K_bits_unconditional']:.1f} ± {record['stderr_bits_unconditional']:.1f} bits)"),
        ("K(x | y) - K(x), bits", f"{record['label_gain_bits']:.2f} ± {record['label_gain_stderr_bits']:.2f}"),
        ("feature classifier's test accuracy", f"{record['classifier_test_accuracy']:.4f}"),
        ("Frechet distance / KID: training images (floor)", f"{record['fd_floor']:.3f} / {record['kid_floor']:.5f}"),
        ("unconditional samples", f"{record['fd_unconditional']:.3f} / {record['kid_unconditional']:.5f}"),
    ]
    for w in GUIDANCE:
        tag = f"w{w:g}"
        rows.append((f"guided samples, w = {w:g} (classified as asked)",
                     f"{record[f'fd_guided_{tag}']:.3f} / {record[f'kid_guided_{tag}']:.5f} "
                     f"({record[f'classified_as_asked_{tag}']:.4f})"))
    rows.append(("likelihood classifier's test accuracy",
                 f"{record['likelihood_classifier_accuracy']:.4f} ± {record['likelihood_classifier_accuracy_stderr']:.4f} "
                 f"({record['likelihood_classifier_examples']} images, {record['likelihood_classifier_n_t']} times)"))
    rows.append(("training", f"{record['train_steps']} steps, {record['train_seconds']:.0f} s, "
                             f"{record['images_per_second']:.0f} images/s"))
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"
