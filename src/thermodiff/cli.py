"""Command line: parses, calls the library, prints.

A user's mistake (a ThermodiffError) is one line on stderr and exit status 2; so is
an OSError or UnicodeError that escapes a command (an output that cannot be written),
named by its path. Every numeric flag is checked against its range (``check_flags``)
and every output path (``check_output``) before a command starts.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, DataError, ThermodiffError, one_line

# The rest of thermodiff (and so torch) is imported inside each command, on purpose:
# `thermodiff --help` and a mistyped command answer at once, without loading torch.


# The shipped config that `train --data FILE` starts from, per --process.
DEFAULT_CONFIGS = {"gaussian": "vectors", "binomial": "binary"}
# The defaults for `train --data FILE` where FILE holds images (data/arrays.py says when).
IMAGES_CONFIG = "images"


def _holds_images(path, kind: str) -> bool:
    """Whether the array file at `path` is read as images under data.kind = `kind`."""
    from .data.arrays import load_array, resolve_kind

    return resolve_kind(load_array(path, as_float=False), kind) in ("levels", "images")


def _resolve_config(args):
    from . import config
    from .config import config_path

    if args.config:
        cfg = config.load(args.config)
    elif args.data:
        cfg = config.load(config_path(DEFAULT_CONFIGS[args.process or "gaussian"]))
    else:
        raise ConfigError("give a CONFIG.toml or --data FILE")
    sets = list(args.set or [])
    if args.config and args.process:
        sets.insert(0, f"process.kind={args.process}")
    cfg = config.apply_overrides(cfg, sets)
    if not args.config and (args.process or "gaussian") == "gaussian" and _holds_images(args.data, cfg.data.kind):
        # Images (8-bit or continuous) train a U-Net by default, not the vectors' MLP.
        cfg = config.apply_overrides(config.load(config_path(IMAGES_CONFIG)), sets)
    # File names and numbers are set as given, not through the --set value parser (which
    # would read a file named "x.npy", quotes included, as the string x.npy).
    data, train = {}, {}
    if args.data:
        data.update(name="array", path=args.data)
    if args.test:
        data["test_path"] = args.test
    if args.validation:
        data["validation_path"] = args.validation
    if args.labels:
        data["labels"] = args.labels
    if args.test_labels:
        data["test_labels"] = args.test_labels
    if args.steps is not None:
        train["steps"] = args.steps
    if args.seed is not None:
        train["seed"] = args.seed
    cfg = config.replace(cfg, data=data, train=train)
    if args.labels and cfg.model.num_classes == 0:  # labels given: a class-conditional model
        cfg = config.replace(cfg, model={"num_classes": config.AUTO})
    if args.config:
        default_name = Path(args.config).stem
    else:
        default_name = Path(args.data).stem
    default_name = default_name.strip()
    if cfg.name == "run" and config.is_plain_name(default_name):  # else the name stays "run"
        cfg = config.replace(cfg, name=default_name)
    return cfg


# The longest name of one file or folder on common file systems (ext4, xfs, btrfs, APFS).
NAME_MAX = 255


def check_path(flag: str, path) -> None:
    """Refuse, before anything is created, a path that cannot be written down: a part
    longer than NAME_MAX bytes, or bytes that are not UTF-8 (the run's config.toml
    records its paths as UTF-8 text). Shapes: none."""
    if path is None:
        return
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{flag} {text.encode('utf-8', 'surrogateescape')!r}: the name holds bytes that are not "
                          f"UTF-8; rename it") from None
    for part in Path(text).parts:
        if len(part.encode("utf-8")) > NAME_MAX:
            raise ConfigError(f"{flag} {text}: a name of {len(part.encode('utf-8'))} bytes; the file system's "
                              f"limit is {NAME_MAX}")


def check_output(flag: str, path, folder: bool) -> None:
    """Refuse, before any work, an output that cannot be written: a name that
    ``check_path`` refuses, a file where a folder is needed (or the reverse), or a
    file standing where a parent folder would go. Shapes: none."""
    if path is None:
        return
    check_path(flag, path)
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{flag} {path}: is a {'file' if folder else 'folder'}; give a "
                          f"{'folder' if folder else 'file name'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            break


def cmd_train(args) -> int:
    from . import data as data_mod
    from .train import fit

    for flag, path in (("CONFIG", args.config), ("--data", args.data), ("--test", args.test),
                       ("--validation", args.validation), ("--labels", args.labels),
                       ("--test-labels", args.test_labels)):
        check_path(flag, path)
    check_output("--out", args.out, folder=True)
    if (args.labels or args.test_labels) and not args.data:
        raise ConfigError("--labels and --test-labels go with --data FILE (a config names them as data.labels)")
    if args.test_labels and not args.test:
        raise ConfigError("--test-labels goes with --test FILE (the held-out examples they label)")
    cfg = _resolve_config(args)
    dataset = data_mod.load(cfg.data)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    fit(cfg, dataset, out, progress=not args.quiet)
    print(f"trained: {out}")
    print(f"next: thermodiff evaluate {out} --json {out / 'eval.json'}")
    return 0


def _load_test(args, cfg, model):
    """Held-out data (--data FILE, or the run's own held-out set), its exact density
    where known, the run's training data for the Gaussian baseline (None, with a
    note, where they cannot be read), and a conditional model's held-out labels (the
    run's own, or --labels FILE beside --data; None without)."""
    dataset = _run_data(args, cfg, "no Gaussian baseline: the run's training data")
    train = dataset.train_continuous(cfg.train.seed) if dataset is not None else None
    if args.data:
        y = _data_flag(args, cfg, model)
        return y, None, train, _file_labels(args, cfg, y.shape[0])
    labels = dataset.test_labels if model.num_classes else None
    return dataset.test, dataset.log_density, train, labels


def _run_data(args, cfg, without: str):
    """The run's data set; where --data stands in for its held-out set and the run's
    data cannot be read, None and a note ("`without` cannot be read")."""
    from . import data as data_mod

    try:
        return data_mod.load(cfg.data)
    except ThermodiffError as exc:
        if not args.data:
            raise
        _note(f"thermodiff: {without} cannot be read ({exc})")
        return None


def _data_flag(args, cfg, model):
    """--data FILE read as the run's own array data are (8-bit images dequantised once,
    seeded as its held-out set is; other runs' files as stored), checked against the model."""
    from . import data as data_mod

    check_path("--data", args.data)
    kind = cfg.data.kind if cfg.data.name == "array" else ""
    y = data_mod.read_held_out(args.data, kind, dequantize_seed=cfg.data.seed + data_mod.TEST_NOISE_SEED)
    return model.check_data(y, args.data)


def _file_labels(args, cfg, n: int):
    """--labels FILE (the labels of --data's n examples) as the run's class indices;
    None without the flag. Shapes: -> (n,) int64."""
    import torch

    from .data.labels import index_by_names, read_labels

    if not getattr(args, "labels", None):
        return None
    if not cfg.model.num_classes:
        raise ConfigError("--labels: this model is unconditional (model.num_classes = 0): it takes no labels")
    check_path("--labels", args.labels)
    y, names = read_labels(args.labels, n)
    return torch.as_tensor(index_by_names(y, names, tuple(cfg.model.class_names), args.labels))


def _class_index(cfg, text: str) -> int:
    """A class named on the command line (a class name, or its index) as its index."""
    names = tuple(cfg.model.class_names)
    if not cfg.model.num_classes:
        raise ConfigError("--class: this model is unconditional (model.num_classes = 0); train one with labels")
    if text in names:
        return names.index(text)
    if text.strip().isdigit() and int(text) < len(names):
        return int(text)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise ConfigError(f"--class {text!r}: not a class of this model ({shown}), nor an index below {len(names)}")


def _eval_overrides(args) -> dict:
    """The eval config keys the command line sets."""
    keys = (("n_t", getattr(args, "n_t", None)), ("iw_steps", args.iw_steps), ("iw_examples", args.iw_examples),
            ("ode_probes", getattr(args, "ode_probes", None)), ("ode_rtol", getattr(args, "ode_rtol", None)),
            ("ode_examples", getattr(args, "ode_examples", None)))
    return {k: v for k, v in keys if v is not None}


ODE_KEYS = ("ode_bits", "ode_bits_scaled", "ode_stderr_bits", "ode_probe_stderr_bits", "ode_bits_per_dim",
            "ode_minus_K_bits", "ode_minus_K_stderr_bits", "ode_gap_bits", "ode_gap_stderr_bits", "ode_nfe",
            "ode_probes", "ode_n_examples")


def cmd_evaluate(args) -> int:
    from . import config
    from .evaluation import evaluate_run, iw_record
    from . import distributed

    check_output("--json", args.json, folder=False)
    if args.diffusers and not args.data:
        raise ConfigError("--diffusers needs --data FILE: the held-out 8-bit images (.npy/.npz, uint8)")
    cfg, model, meta = _load_model(args)
    eval_cfg = config.replace(cfg or config.Config(), eval=_eval_overrides(args)).eval
    ranks = distributed.init(model.scaler.shift.device)  # under torchrun: the examples split across ranks
    print(f"weights: {meta['checkpoint']}")
    if ranks.world > 1:
        print(f"{ranks.world} processes: the held-out batches split across them")
    if args.labels and cfg is None:
        raise ConfigError("--labels: a diffusers model is unconditional here")
    if args.labels and not args.data:
        raise ConfigError("--labels goes with --data FILE (the run's own held-out set has its labels)")
    y, log_density, train, labels = (_load_test(args, cfg, model) if cfg is not None
                                     else (_diffusers_test(args, model), None, None, None))
    started = time.perf_counter()
    record = evaluate_run(model, y, eval_cfg, log_density, progress=not args.quiet, sampler=meta["time_sampler"],
                          train=train, ode=args.ode, labels=labels)
    keys = ("K_bits", "K_bits_scaled", "exact_bits_scaled", "gap_bits", "gap_stderr_bits", "gaussian_bits",
            "K_minus_gaussian_bits", "K_minus_gaussian_stderr_bits", "gaussian_note", "L_null_bits",
            "K_minus_L_null_bits", "bits_per_dim", "stderr_bits", "labels", "K_bits_unconditional",
            "bits_per_dim_unconditional", "stderr_bits_unconditional", "label_gain_bits", "label_gain_stderr_bits",
            "n_examples")
    if args.iw is not None:
        record.update(iw_record(model, y, eval_cfg, args.iw, log_density, progress=not args.quiet))
        keys += ("iw_bits", "iw_bits_scaled", "iw_stderr_bits", "iw_gap_bits", "iw_gap_stderr_bits", "iw_M",
                 "iw_steps", "iw_n_examples")
    if args.ode:
        keys += ODE_KEYS
    for key in ("step", "train_seconds", "decoder"):
        if meta.get(key) is not None:
            record["train_steps" if key == "step" else key] = meta[key]
    record["checkpoint"] = meta["checkpoint"]
    # The evaluation's wall time on rank 0, which ends with every rank's results gathered:
    # no start-up, no data loading.
    record["eval_seconds"] = time.perf_counter() - started
    record["eval_processes"] = ranks.world
    keys += ("eval_seconds", "eval_processes")
    _print_record(record, keys)
    if ranks.main:
        _write_record(args, record)
    return 0


def _run_argument(args) -> str:
    """RUN, which a command needs unless --diffusers names the model instead."""
    if args.diffusers and args.run:
        raise ConfigError("give a RUN or --diffusers DIR, not both")
    if not args.run and not args.diffusers:
        raise ConfigError("give a RUN folder (or --diffusers DIR: a diffusers model folder)")
    return args.run


DIFFUSERS_DECODER = ("improved DDPM's discretised Gaussian: the mass of the model's first-step Gaussian "
                     "(variance beta_1) on each 8-bit level's bin")


def _load_model(args):
    """(config, model, metadata) of what a command works on: a RUN folder's weights
    (``load_run``), or with --diffusers DIR a diffusers folder's model (config None)."""
    from .run_folder import load_run

    run = _run_argument(args)
    if not args.diffusers:
        return load_run(run, which=args.checkpoint)
    from . import diffusers_model

    model = diffusers_model.load(args.diffusers)
    return None, model, {"checkpoint": f"diffusers model {args.diffusers}", "time_sampler": None,
                         "decoder": DIFFUSERS_DECODER}


def _diffusers_test(args, model):
    """--data FILE for a diffusers model: 8-bit images, dequantised once (seeded as
    thermodiff's own held-out images are)."""
    from . import config
    from . import data as data_mod

    check_path("--data", args.data)
    y = data_mod.read_held_out(args.data, "levels", config.DataConfig().seed + data_mod.TEST_NOISE_SEED)
    return model.check_data(y, args.data)


def cmd_report(args) -> int:
    from .report import run_report

    check_output("--out", args.out, folder=True)
    path = run_report(args.run, args.out, m=args.iw, html=args.html, progress=not args.quiet,
                      eval_overrides=_eval_overrides(args), which=args.checkpoint, ode=args.ode)
    print(f"report: {path}")
    return 0


def _write_record(args, record: dict) -> None:
    """The command's JSON record to --json, where given, and a line saying so."""
    if args.json:
        from .report import write_json

        write_json(args.json, record)
        print(f"wrote {args.json}")


def _print_record(record: dict, keys) -> None:
    """One aligned line per figure of an evaluation record that is present."""
    for key in ("warning", "gaussian_warning", "ode_warning"):
        if key in record:
            _note(f"thermodiff: warning: {record[key]}")
    for key in keys:
        if key in record:
            v = record[key]
            print(f"{key:>28}  {v:.5f}" if isinstance(v, float) else f"{key:>28}  {v}")


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from . import distributed
    from .data.arrays import save_array
    from .model import count_calls
    from .guidance import Guided
    from .sampling.ancestral import sample

    check_output("--out", args.out, folder=False)
    if args.solver != "ancestral" and args.eta is not None:
        raise ConfigError("--eta belongs to the ancestral chain's DDIM kernels; --solver ddim is its ODE (eta 0)")
    if args.grid is not None and args.solver == "ancestral":
        raise ConfigError("--grid sets the time grid of an ODE solver (--solver ddim, heun or dpm++)")
    if args.diffusers and not args.out:
        raise ConfigError("--diffusers needs --out FILE.npy (there is no run folder to write into)")
    if args.guidance is not None and not args.classes:
        raise ConfigError("--guidance weighs a class against the null class: give --class C")
    check_output("--figure", args.figure, folder=False)
    cfg, model, _ = _load_model(args)
    classes = _sample_classes(args, cfg)  # [None]: the model's own p(x)
    ranks = distributed.init(model.scaler.shift.device)
    if args.n < ranks.world:
        raise ConfigError(f"-n {args.n} is fewer samples than the {ranks.world} processes")
    # Under torchrun rank r draws its share from stream r of the seed; one process (and
    # rank 0) draws from the seed itself, as it always did. Classes in turn, -n each.
    n_own = distributed.shares(args.n, ranks.world)[ranks.rank]
    gen = distributed.stream(args.seed, ranks.rank)
    parts = []
    with _allocation(n_own * len(classes)), count_calls(model) as calls:
        for c in classes:
            who = model if c is None else Guided(model, c, args.guidance or 0.0)
            x = sample(who, n_own, gen, steps=args.steps, progress=not args.quiet, eta=args.eta, solver=args.solver,
                       grid=args.grid)
            parts.append(torch.cat(distributed.all_gather(x)))  # in rank order
    x = torch.cat(parts)
    n_all = args.n * len(classes)
    rows = float(distributed.all_sum(torch.tensor([float(calls.rows)], dtype=torch.float64))[0])
    out = Path(args.out) if args.out else Path(args.run) / "samples.npy"
    procs = f" by {ranks.world} processes" if ranks.world > 1 else ""
    if ranks.main:
        y = model.scaler.inverse(x).numpy()
        save_array(out, np.asarray(y))
        if classes != [None]:
            asked = np.repeat(np.asarray(classes, dtype=np.int64), args.n)
            labels_out = out.with_name(out.stem + "_classes.npy")
            save_array(labels_out, asked)
            figure = Path(args.figure) if args.figure else out.with_suffix(".png")
            _class_figure(figure, y, asked, cfg, args)
            print(f"wrote the class of each sample to {labels_out} and a figure to {figure}")
    print(f"wrote {n_all} samples to {out}{procs}")
    print(f"network calls per sample (NFE): {rows / n_all:g} ({args.solver}"
          f"{f', guidance {args.guidance:g}: two rows a call' if args.guidance else ''})")
    return 0


def _sample_classes(args, cfg) -> list:
    """The classes --class names (each, or "all"), as indices; [None] without it."""
    if not args.classes:
        return [None]
    if cfg is None:
        raise ConfigError("--class: a diffusers model is unconditional here")
    if not cfg.model.num_classes:
        raise ConfigError("--class: this model is unconditional (model.num_classes = 0); train one with labels")
    if args.classes == ["all"] and "all" not in cfg.model.class_names:  # every class, unless one is named so
        return list(range(cfg.model.num_classes))
    return [_class_index(cfg, c) for c in args.classes]


def _class_figure(path: Path, y, asked, cfg, args) -> None:
    """Samples per class in one figure: a row of images per class, or 2-D points
    coloured by class (other data: no figure). Shapes: y (N, *D) data units."""
    import numpy as np

    from . import plots

    names = [cfg.model.class_names[k] for k in np.unique(asked)]
    title = f"samples by class (guidance {args.guidance or 0:g})"
    if y.ndim == 4 and y.shape[1] in (1, 3):
        per_row = min(args.n, 10)
        rows = np.concatenate([y[asked == k][:per_row] for k in np.unique(asked)])
        # 8-bit levels as [0, 1] (level / 256); other images from their own range.
        lo, hi = (0.0, 256.0) if y.min() >= 0 and y.max() <= 256 else (float(y.min()), float(y.max()))
        plots.image_grid(path, (rows - lo) / max(hi - lo, 1e-12), title, ncol=per_row, row_labels=names)
    elif y.ndim == 2 and y.shape[1] == 2:
        plots.class_points(path, y, asked, list(cfg.model.class_names), title)
    else:
        _note(f"thermodiff: no figure: samples of shape {y.shape[1:]} (images or 2-D points have one)")


def cmd_classify(args) -> int:
    import numpy as np

    from .classify import accuracy_record, classify, log_prior_of
    from .data.arrays import save_array
    from .plots import confusion_matrix
    from .run_folder import load_run

    check_output("--out", args.out, folder=False)
    check_output("--json", args.json, folder=False)
    check_output("--figure", args.figure, folder=False)
    if args.labels and not args.data:
        raise ConfigError("--labels goes with --data FILE (the run's own held-out set has its labels)")
    cfg, model, meta = load_run(args.run, which=args.checkpoint)
    if not model.num_classes:
        raise ConfigError(f"{args.run}: an unconditional model (model.num_classes = 0) cannot classify; train one "
                          "with labels (--labels FILE, or model.num_classes = -1 on a labelled data set)")
    dataset = _run_data(args, cfg, "a uniform prior over the classes: the run's training labels")
    if args.data:
        y = _data_flag(args, cfg, model)
        labels = _file_labels(args, cfg, y.shape[0])
    else:
        y, labels = dataset.test, dataset.test_labels
    if args.max_examples:
        y = y[: args.max_examples]
        labels = labels[: args.max_examples] if labels is not None else None
    log_prior = log_prior_of(dataset.train_labels if dataset is not None else None, model.num_classes)
    n_t = args.n_t or 16
    print(f"weights: {meta['checkpoint']}")
    started = time.perf_counter()
    post = classify(model, y, log_prior, n_t=n_t, batch_size=cfg.eval.batch_size, seed=cfg.eval.seed,
                    sampler=meta["time_sampler"], progress=not args.quiet)
    save_array(Path(args.out), post.probs.numpy())
    names = list(cfg.model.class_names)
    record = {"n_examples": y.shape[0], "n_t": n_t, "class_names": names,
              "prior": "the training labels' frequencies" if log_prior is not None else "uniform",
              "classify_seconds": time.perf_counter() - started, "checkpoint": meta["checkpoint"]}
    print(f"wrote the class probabilities of {y.shape[0]} examples to {args.out}")
    if labels is not None:
        record.update(accuracy_record(post, labels, names))
        figure = Path(args.figure) if args.figure else Path(args.out).with_suffix(".png")
        acc = record["accuracy"]
        confusion_matrix(figure, np.asarray(record["confusion"]), names,
                         f"likelihood classifier: accuracy {acc:.4f} on {y.shape[0]} examples ({n_t} times each)")
        print(f"wrote the confusion matrix to {figure}")
    _print_record(record, ("accuracy", "accuracy_stderr", "mean_log_prob_true", "prob_stderr_mean", "n_examples",
                           "n_t", "classify_seconds"))
    _write_record(args, record)
    return 0


def _ode_options(args) -> dict:
    """The ODE solver the flags choose: the adaptive one with --rtol / --atol, or a
    fixed-step one with --solver and --steps."""
    from .ode.solvers import ATOL, RTOL

    if args.solver != "adaptive" and args.steps is None:
        raise ConfigError(f"--solver {args.solver} needs --steps N")
    if args.solver == "adaptive" and args.steps is not None:
        raise ConfigError("--steps is for a fixed-step --solver (ddim, heun); the adaptive solver takes --rtol, --atol")
    return dict(rtol=args.rtol if args.rtol is not None else RTOL, atol=args.atol if args.atol is not None else ATOL,
                solver=args.solver, steps=args.steps)


def _read_rows(path, model, what: str):
    """An array of examples of the model's shape (one example may be given flat)."""
    import torch

    from .data.arrays import load_array

    a = torch.as_tensor(load_array(path), dtype=torch.float64)
    if tuple(a.shape[1:]) != model.data_shape:
        if a.numel() == model.n_dims:
            return a.reshape((1,) + model.data_shape)
        raise DataError(f"{path}: {what} of shape {tuple(a.shape)}; the model's examples have shape "
                        f"{model.data_shape} (give N x {' x '.join(map(str, model.data_shape))})")
    return a


def cmd_encode(args) -> int:
    import numpy as np

    from .data.arrays import save_array
    from .ode.latents import decode, encode
    from .run_folder import load_run

    check_output("--out", args.out, folder=False)
    cfg, model, _ = load_run(args.run, which=args.checkpoint)
    options = _ode_options(args)
    y = model.check_data(_read_rows(args.data, model, "data"), args.data)
    z, nfe = encode(model, y, progress=not args.quiet, **options)
    save_array(Path(args.out), np.asarray(z.numpy()))
    print(f"wrote {len(z)} latents to {args.out}")
    print(f"network calls per example (NFE): {nfe:.1f}")
    if not args.no_round_trip:
        back, nfe_back = decode(model, z, progress=not args.quiet, **options)
        err = back - y
        print(f"round trip decode(encode(x)) - x: RMSE {float(err.pow(2).mean().sqrt()):.4g}, "
              f"largest {float(err.abs().max()):.4g} (data units; {nfe_back:.1f} calls per example back)")
    return 0


def cmd_decode(args) -> int:
    import numpy as np
    import torch

    from .data.arrays import load_array, save_array
    from .ode.latents import decode
    from .run_folder import load_run

    check_output("--out", args.out, folder=False)
    cfg, model, _ = load_run(args.run, which=args.checkpoint)
    options = _ode_options(args)
    z = torch.as_tensor(load_array(args.latent), dtype=torch.float64)
    if tuple(z.shape[1:]) != model.data_shape:
        raise DataError(f"{args.latent}: latents of shape {tuple(z.shape)}; the model's examples have shape "
                        f"{model.data_shape}")
    if not bool(torch.isfinite(z).all()):
        raise DataError(f"{args.latent}: the latents hold NaN or inf")
    y, nfe = decode(model, z, progress=not args.quiet, **options)
    save_array(Path(args.out), np.asarray(y.numpy()))
    print(f"wrote {len(y)} examples to {args.out}")
    print(f"network calls per example (NFE): {nfe:.1f}")
    return 0


def _pairs(values) -> list[tuple[int, int]]:
    pairs = []
    for v in values:
        parts = v.split(",")
        if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ConfigError(f"--pairs {v!r}: give row numbers I,J (e.g. 0,5)")
        pairs.append((int(parts[0]), int(parts[1])))
    return pairs


def cmd_interpolate(args) -> int:
    import numpy as np

    from . import data as data_mod
    from .data.arrays import save_array
    from .ode.latents import interpolate
    from .report import interpolation_figure
    from .run_folder import load_run

    check_output("--out", args.out, folder=False)
    check_output("--figure", args.figure, folder=False)
    pairs = _pairs(args.pairs)
    cfg, model, _ = load_run(args.run, which=args.checkpoint)
    y = model.check_data(_read_rows(args.data, model, "data"), args.data)
    record = interpolate(model, y, pairs, args.k, rtol=args.rtol or 1e-5, atol=args.atol or 1e-5,
                         progress=not args.quiet)
    out = Path(args.out)
    save_array(out, np.asarray(record["paths"].numpy()))
    print(f"wrote {len(pairs)} paths of {args.k} points to {out} (shape {tuple(record['paths'].shape)})")
    print(f"round trip of the ends: RMSE {record['round_trip_rmse']:.4g} (data units); network calls per "
          f"example: {record['nfe_encode']:.1f} to encode, {record['nfe_decode']:.1f} to decode")
    try:
        train = data_mod.load(cfg.data).train
    except ThermodiffError as exc:
        train = None
        print(f"thermodiff: the figure has no training data behind it ({exc})", file=sys.stderr)
    figure = Path(args.figure) if args.figure else out.with_suffix(".png")
    drawn = interpolation_figure(model, figure, record["paths"], y, train)
    if drawn:
        print(f"figure: {drawn}")
    return 0


# The most samples one `sample` or `condition` call draws (they are held in memory).
MAX_SAMPLES = 10_000_000


@contextmanager
def _allocation(n: int):
    """Memory the samples do not fit in, as a user's mistake naming -n."""
    try:
        yield
    except MemoryError:
        raise DataError(f"not enough memory for -n {n} samples; draw fewer") from None
    except RuntimeError as exc:
        if "alloc" not in str(exc).lower() and "out of memory" not in str(exc).lower():
            raise
        raise DataError(f"not enough memory for -n {n} samples; draw fewer") from None


def _condition_array(path, model, what: str):
    """A known-values, mask or observation file: one example of the data's shape, or
    one per sample (n, *D)."""
    import torch

    from .data.arrays import load_array

    a = torch.as_tensor(load_array(path), dtype=torch.float64)
    if a.numel() == model.n_dims:
        return a.reshape(model.data_shape)
    if tuple(a.shape[1:]) == model.data_shape:
        return a
    raise DataError(f"{path}: {what} of shape {tuple(a.shape)}; the model's examples have shape {model.data_shape} "
                    f"(give one example, or one per sample)")


def cmd_condition(args) -> int:
    import numpy as np
    import torch

    from .data.arrays import save_array
    from .sampling.conditioning import GaussianObservation, Known, default_method, sample_conditioned

    if (args.known is None) == (args.observe is None):
        raise ConfigError("give --known FILE with --mask FILE (inpainting), or --observe FILE with --noise SIGMA")
    check_output("--out", args.out, folder=False)
    check_output("--figure", args.figure, folder=False)
    if args.guidance is not None and args.cls is None:
        raise ConfigError("--guidance weighs a class against the null class: give --class C")
    cfg, model, _ = _load_model(args)
    if args.cls is not None:  # a conditional model's class, guided: p(x | y) r(x), guidance on its prediction
        from .guidance import Guided

        if cfg is None:
            raise ConfigError("--class: a diffusers model is unconditional here")
        model = Guided(model, _class_index(cfg, args.cls), args.guidance or 0.0)
    mask = _condition_array(args.mask, model, "mask") if args.mask else None
    if args.known is not None:
        if mask is None:
            raise ConfigError("--known needs --mask FILE (1 where the value is known)")
        shown = _condition_array(args.known, model, "known values")
        condition = Known(shown, mask)
    else:
        if args.noise is None:
            raise ConfigError("--observe needs --noise SIGMA (the observation's noise, data units)")
        shown = _condition_array(args.observe, model, "observation")
        condition = GaussianObservation(shown, args.noise, mask)
    options = {k: v for k, v in (("scale", args.scale), ("resample", args.resample), ("particles", args.particles),
                                 ("eta", args.eta)) if v is not None}
    gen = torch.Generator().manual_seed(args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        with _allocation(args.n):
            y = sample_conditioned(model, condition, args.n, gen, method=args.method, steps=args.steps,
                                   progress=not args.quiet, solver=args.solver, **options)
    for w in caught:
        print(f"thermodiff: warning: {w.message}", file=sys.stderr)
    out = Path(args.out)
    figure = Path(args.figure) if args.figure else out.with_suffix(".png")
    original = None
    if args.original:
        original = _condition_array(args.original, model, "original").reshape((-1,) + model.data_shape)
    save_array(out, np.asarray(y.cpu().numpy()))
    print(f"wrote {args.n} samples to {out}")
    from . import data as data_mod
    from .report import condition_figure

    train = dataset = None
    if cfg is None:
        print("thermodiff: no figure: a diffusers model has no training data to draw beside the samples",
              file=sys.stderr)
    else:
        try:
            dataset = data_mod.load(cfg.data)  # the figure's background, value range and exact density
            train = dataset.train
        except ThermodiffError as exc:
            print(f"thermodiff: no figure: the run's training data cannot be read ({exc})", file=sys.stderr)
    if train is not None:
        what = "inpainting" if args.known is not None else f"observation, noise {args.noise:g}"
        drawn = condition_figure(model, figure, y.cpu(), shown, mask, train,
                                 f"Conditioned samples ({what}, method {args.method or default_method(condition)}"
                                 + (f", {args.solver} ODE)" if args.solver != "ancestral" else ")"), original,
                                 dataset.log_density)
        if drawn:
            print(f"figure: {drawn}")
    return 0


def cmd_demo(args) -> int:
    from . import config
    from .config import config_path
    from .bench import run_benchmark

    check_output("--out", args.out, folder=True)
    out = Path(args.out)
    cfg = config.load(config_path("demo"))
    if args.steps is not None:
        cfg = config.replace(cfg, train={"steps": args.steps, "max_seconds": 0.0})
    record = run_benchmark("demo", cfg, out, progress=not args.quiet, figures=True, fresh=True)
    print(f"K = {record['K_bits_scaled']:.3f} bits, exact log-likelihood = {record['exact_bits_scaled']:.3f} bits, "
          f"gap = {record['gap_bits']:.3f} +- {record['gap_stderr_bits']:.3f} bits (scaled data)")
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_bench(args) -> int:
    from .bench import BENCHMARKS, bench_config, run_benchmark

    check_output("--json", args.json, folder=False)
    check_output("--out", args.out, folder=True)
    if args.name == "condition":
        return _bench_condition(args)
    if args.name == "inpaint-mnist":
        return _bench_inpaint(args)
    if args.name in ("ode-likelihood", "samplers"):
        return _bench_ode(args)
    if args.name == "vs-diffusers":
        return _bench_diffusers(args)
    if args.name == "mnist-cond":
        return _bench_conditional(args)
    if args.name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {args.name!r}; choose one of {', '.join(BENCHMARKS)}, condition, "
                        "inpaint-mnist, ode-likelihood, samplers, vs-diffusers")
    cfg = bench_config(args.name, smoke=args.smoke)
    out = Path(args.out) if args.out else Path("runs") / f"bench-{args.name}{'-smoke' if args.smoke else ''}"
    if args.name == "small-data":
        from .bench import small_data_config

        cfg = small_data_config(cfg, out, smoke=args.smoke)
    record = run_benchmark(args.name, cfg, out, progress=not args.quiet, figures=not args.smoke, fresh=True)
    _print_record(record, ("K_bits", "K_bits_scaled", "exact_bits_scaled", "gap_bits", "gap_stderr_bits", "stderr_bits",
                           "gaussian_bits", "K_minus_gaussian_bits", "best_val_bits", "best_step",
                           "K_minus_L_null_bits", "bits_per_dim", "valid_fraction", "parzen_bits", "images_per_second",
                           "iw_bits_scaled", "iw_gap_bits",
                           "iw_gap_stderr_bits", "iw_M", "train_seconds", "device"))
    _write_record(args, record)
    return 0


def _bench_conditional(args) -> int:
    """`bench mnist-cond` (``bench_conditional``): a class-conditional U-Net, its two
    bounds, guided samples' quality and the likelihood classifier."""
    from .bench_conditional import markdown, run

    out = Path(args.out) if args.out else Path("runs") / f"bench-mnist-cond{'-smoke' if args.smoke else ''}"
    record = run(out, smoke=args.smoke, progress=not args.quiet, trained=args.run)
    print(markdown(record), end="")
    _write_record(args, record)
    return 0


def _bench_diffusers(args) -> int:
    """`bench vs-diffusers` (``bench_diffusers``): diffusers' recipe against thermodiff's."""
    from . import diffusers_model
    from .bench import device_name, git_commit
    from .bench_diffusers import markdown, run

    diffusers_model._import_diffusers()  # the extra, before anything is trained
    out = Path(args.out) if args.out else Path("runs") / f"bench-vs-diffusers{'-smoke' if args.smoke else ''}"
    record = run(out, smoke=args.smoke, progress=not args.quiet)
    record.update(device=device_name(), commit=git_commit())
    print(markdown(record), end="")
    _write_record(args, record)
    return 0


def _bench_condition(args) -> int:
    """`bench condition`: the conditioning methods against exact conditionals (no training)."""
    from .bench import device_name, git_commit
    from .bench_conditioning import markdown_table, run

    record = run(smoke=args.smoke, progress=not args.quiet)
    record.update(device=device_name(), commit=git_commit())
    print(markdown_table(record), end="")
    _write_record(args, record)
    return 0


def _bench_ode(args) -> int:
    """`bench ode-likelihood` and `bench samplers` (``bench_ode``): the ODE's likelihood
    and its samplers, on models trained here or given (--run, --mixture-run, --mnist-run)."""
    from .bench_ode import markdown, run_ode_likelihood, run_samplers

    for flag, path in (("--run", args.run), ("--mixture-run", args.mixture_run), ("--mnist-run", args.mnist_run)):
        check_path(flag, path)
    out = Path(args.out) if args.out else Path("runs") / f"bench-{args.name}{'-smoke' if args.smoke else ''}"
    if args.name == "ode-likelihood":
        record = run_ode_likelihood(out, smoke=args.smoke, run=args.run, mixture_run=args.mixture_run,
                                    mnist_run=args.mnist_run, progress=not args.quiet)
    else:
        if args.mixture_run:
            raise ConfigError("bench samplers uses the exact-score mixture; --mixture-run is for bench ode-likelihood")
        record = run_samplers(out, smoke=args.smoke, run=args.run, mnist_run=args.mnist_run, progress=not args.quiet)
    print(markdown(record, args.name), end="")
    for case in record.get("cases", {}).values():
        if case.get("ode_above_exact"):
            print(f"thermodiff: warning: {case['ode_warning']}", file=sys.stderr)
    _write_record(args, record)
    return 0


def _bench_inpaint(args) -> int:
    """`bench inpaint-mnist --run RUN`: inpainting half images with a trained binary-image run."""
    from .bench import device_name, git_commit
    from .bench_conditioning import inpaint_images

    if not args.run:
        raise ConfigError("bench inpaint-mnist needs --run RUN, a binary image run (thermodiff bench binary-mnist)")
    n, steps, votes = (4, 5, 2) if args.smoke else (100, 100, 5)
    out = Path(args.out) if args.out else Path(args.run)
    record = inpaint_images(args.run, out, n_images=n, steps=steps, votes=votes, progress=not args.quiet,
                            method=args.method or "clamp", resample=args.resample or 1)
    record.update(device=device_name(), commit=git_commit())
    _print_record(record, ("error_model_sample", "error_model_majority", "error_mean_fill", "error_nearest_neighbour",
                           "n_images", "sampling_steps", "sampling_seconds", "figure"))
    _write_record(args, record)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thermodiff", description="Diffusion probabilistic models with honest likelihood bounds.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="Swiss roll end to end on CPU in minutes")
    d.add_argument("--out", default="demo")
    d.add_argument("--steps", type=int, help="training steps (default: the demo's time budget)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model (resumes an existing run folder)")
    t.add_argument("config", nargs="?", help="CONFIG.toml")
    t.add_argument("--data", help="training array (.npy, .npz, .csv): N x D")
    t.add_argument("--process", choices=("gaussian", "binomial"),
                   help="forward process: gaussian (continuous data, default) or binomial (0/1 data)")
    t.add_argument("--test", help="held-out array (default: a held-out fraction of --data)")
    t.add_argument("--validation", help="validation array that monitors training (default: data.validation_fraction "
                   "of --data)")
    t.add_argument("--labels", help="class labels of --data's examples (.npy, or a one-column .csv of integers or "
                   "strings, header allowed): a class-conditional model (model.num_classes = -1)")
    t.add_argument("--test-labels", dest="test_labels", help="class labels of --test's examples")
    t.add_argument("--out", help="run folder (default runs/NAME)")
    t.add_argument("--steps", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=3e-4")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="the bound K on held-out data, term by term")
    e.add_argument("run", nargs="?")
    e.add_argument("--diffusers", metavar="DIR",
                   help="evaluate a diffusers model folder (UNet2DModel and scheduler) instead of a RUN")
    e.add_argument("--data", help="held-out array (default: the run's held-out set)")
    e.add_argument("--labels", help="a conditional model: the labels of --data (.npy or a one-column .csv); K is "
                   "then log p(x | y)'s, with log p(x)'s beside it")
    e.add_argument("--json", help="write the record here")
    e.add_argument("--n-t", type=int, dest="n_t", help="diffusion times per example")
    _iw_arguments(e, None, "also the importance-weighted (Jarzynski) estimate with M trajectories per example")
    e.add_argument("--ode", action="store_true",
                   help="also the exact log-likelihood of the model's probability-flow ODE")
    _ode_eval_arguments(e)
    _checkpoint_argument(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="the likelihood report of a run (K, importance-weighted estimate, entropy bounds)")
    r.add_argument("run")
    r.add_argument("--out", help="report folder (default RUN/report)")
    r.add_argument("--html", action="store_true", help="write report.html instead of report.md")
    _iw_arguments(r, 100, "trajectories per example for the importance-weighted estimate (default 100)")
    r.add_argument("--ode", action=argparse.BooleanOptionalAction, default=None,
                   help="the probability-flow ODE's exact log-likelihood beside K and IW (default: for data of at "
                   "most 16 dimensions)")
    _ode_eval_arguments(r)
    _checkpoint_argument(r)
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("sample", help="draw samples in the data's own units")
    s.add_argument("run", nargs="?")
    s.add_argument("--diffusers", metavar="DIR", help="sample a diffusers model folder instead of a RUN "
                   "(8-bit levels, as floats)")
    s.add_argument("-n", type=int, required=True)
    s.add_argument("--out", help="output .npy (default RUN/samples.npy)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--solver", choices=("ancestral", "ddim", "heun", "dpm++"), default="ancestral",
                   help="ancestral: the stochastic chain (default); ddim, heun, dpm++: the probability-flow ODE")
    s.add_argument("--steps", type=int, help="sampling steps (default: every step of the chain; 20 for an ODE solver)")
    s.add_argument("--grid", choices=("edm", "log-snr", "uniform-t"),
                   help="an ODE solver's time grid (default: edm for ddim and heun, log-snr for dpm++)")
    s.add_argument("--eta", type=float, help="DDIM kernels with this eta (0: deterministic; default: the model's own)")
    s.add_argument("--class", action="append", dest="classes", metavar="C",
                   help="a conditional model: -n samples of class C (a name or an index; again for more classes; "
                        "'all': every class), with a figure of them by class")
    s.add_argument("--guidance", type=float, help="classifier-free guidance weight w >= 0 with --class (default 0: "
                   "the plain p(x | y)): (1 + w) pred(x, y) - w pred(x, null)")
    s.add_argument("--figure", help="with --class: the figure's path (default: --out with .png)")
    _checkpoint_argument(s)
    s.set_defaults(func=cmd_sample)

    cl = sub.add_parser("classify", help="the likelihood as a classifier: p(y | x) from a conditional model's bounds")
    cl.add_argument("run")
    cl.add_argument("--data", help="examples to classify (default: the run's held-out set, with its labels)")
    cl.add_argument("--labels", help="the true labels of --data (.npy or a one-column .csv): accuracy and a "
                    "confusion matrix")
    cl.add_argument("--out", required=True, help="class probabilities (.npy), shape (N, classes)")
    cl.add_argument("--n-t", type=int, dest="n_t", help="diffusion times per example, shared by its classes "
                    "(default 16)")
    cl.add_argument("--max-examples", type=int, dest="max_examples", help="classify the first N examples only")
    cl.add_argument("--json", help="write the record here")
    cl.add_argument("--figure", help="the confusion matrix's path (default: --out with .png)")
    _checkpoint_argument(cl)
    cl.set_defaults(func=cmd_classify)

    en = sub.add_parser("encode", help="one latent per example: the probability-flow ODE from the data to noise")
    en.add_argument("run")
    en.add_argument("--data", required=True, help="examples to encode (.npy, .npz, .csv), the data's units")
    en.add_argument("--out", required=True, help="latents (.npy), the prior's units")
    en.add_argument("--no-round-trip", action="store_true", dest="no_round_trip",
                    help="skip decoding the latents back to report the round-trip error")
    _ode_solver_arguments(en, ("ddim", "heun"))
    _checkpoint_argument(en)
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser("decode", help="examples from latents: the probability-flow ODE from noise to the data")
    de.add_argument("run")
    de.add_argument("--latent", required=True, help="latents (.npy), as `encode` writes them")
    de.add_argument("--out", required=True, help="output .npy, the data's units")
    _ode_solver_arguments(de, ("ddim", "heun", "dpm++"))
    _checkpoint_argument(de)
    de.set_defaults(func=cmd_decode)

    ip = sub.add_parser("interpolate", help="paths between examples through their ODE latents, with a figure")
    ip.add_argument("run")
    ip.add_argument("--data", required=True, help="examples (.npy, .npz, .csv), the data's units")
    ip.add_argument("--pairs", required=True, nargs="+", metavar="I,J", help="pairs of row numbers to join")
    ip.add_argument("-k", type=int, default=8, help="points per path, the two ends included (default 8)")
    ip.add_argument("--out", required=True, help="paths (.npy), shape (pairs, k, *D), the data's units")
    ip.add_argument("--figure", help="figure path (default: --out with .png)")
    ip.add_argument("--rtol", type=float, help="adaptive solver's relative tolerance (default 1e-5)")
    ip.add_argument("--atol", type=float, help="adaptive solver's absolute tolerance (default 1e-5)")
    _checkpoint_argument(ip)
    ip.set_defaults(func=cmd_interpolate)

    c = sub.add_parser("condition", help="samples of the model times r(x): inpainting, denoising (paper 2.5)")
    c.add_argument("run", nargs="?")
    c.add_argument("--diffusers", metavar="DIR", help="condition a diffusers model folder instead of a RUN")
    c.add_argument("--known", help="known values (.npy), the data's shape (one example, or one per sample)")
    c.add_argument("--mask", help="0/1 mask of the data's shape, 1 = known (with --observe: 1 = observed)")
    c.add_argument("--observe", help="a noisy observation y = x + noise (.npy), the data's shape")
    c.add_argument("--noise", type=float, help="the observation's noise standard deviation, data units")
    c.add_argument("-n", type=int, required=True, help="samples to draw")
    c.add_argument("--out", required=True, help="output .npy, data units")
    c.add_argument("--method", help="clamp, replace, product, start, guidance or smc (default: per condition)")
    c.add_argument("--particles", type=int, help="smc: particles per sample (default 16)")
    c.add_argument("--resample", type=int, help="replace: round trips per step (RePaint; default 1)")
    c.add_argument("--scale", type=float, help="guidance: multiplier of grad log r (default 1)")
    c.add_argument("--steps", type=int, help="sampling steps (default: all)")
    c.add_argument("--eta", type=float, help="DDIM kernels with this eta (default: the model's own)")
    c.add_argument("--solver", choices=("ancestral", "ddim", "heun", "dpm++"), default="ancestral",
                   help="ancestral: the stochastic chain (default); an ODE solver for methods guidance and product")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--class", dest="cls", metavar="C", help="a conditional model: condition p(x | y = C) (a class "
                   "name or index) instead of p(x)")
    c.add_argument("--guidance", type=float, help="classifier-free guidance weight w >= 0 with --class (default 0)")
    c.add_argument("--figure", help="figure path (default: --out with .png)")
    c.add_argument("--original", help="the clean examples (.npy), shown in the figure")
    _checkpoint_argument(c)
    c.set_defaults(func=cmd_condition)

    b = sub.add_parser("bench", help="train and evaluate a benchmark with a fixed budget")
    b.add_argument("name")
    b.add_argument("--json", help="write the record here")
    b.add_argument("--out", help="run folder (default runs/bench-NAME)")
    b.add_argument("--smoke", action="store_true", help="a tiny version, for CI")
    b.add_argument("--run", help="inpaint-mnist: the trained binary-image run to use; ode-likelihood, samplers: a "
                   "trained swissroll run (default: trained here); mnist-cond: a run trained from its config "
                   "(evaluated, not trained again)")
    b.add_argument("--mixture-run", dest="mixture_run", help="ode-likelihood: a trained iw-mixture run "
                   "(default: trained here)")
    b.add_argument("--mnist-run", dest="mnist_run", help="ode-likelihood, samplers: a trained mnist run for the "
                   "MNIST part (skipped without it)")
    b.add_argument("--method", help="inpaint-mnist: clamp (default) or replace")
    b.add_argument("--resample", type=int, help="inpaint-mnist with replace: round trips per step")
    b.set_defaults(func=cmd_bench)
    return p


def _checkpoint_argument(p) -> None:
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the weights: best (the best held-out check, where the run monitored one; default) or last")


def _ode_solver_arguments(p, fixed) -> None:
    p.add_argument("--solver", choices=("adaptive",) + tuple(fixed), default="adaptive",
                   help="adaptive: Dormand-Prince RK45 with tolerances (default); or a fixed-step solver with --steps")
    p.add_argument("--steps", type=int, help="grid times of a fixed-step solver")
    p.add_argument("--rtol", type=float, help="adaptive solver's relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, help="adaptive solver's absolute tolerance (default 1e-5)")


def _ode_eval_arguments(p) -> None:
    p.add_argument("--ode-probes", type=int, dest="ode_probes", metavar="N",
                   help="Hutchinson probes per example (0: the exact divergence; default: exact up to 16 "
                   "dimensions, else 2)")
    p.add_argument("--ode-rtol", type=float, dest="ode_rtol", metavar="R",
                   help="the ODE solver's relative tolerance (default eval.ode_rtol, 1e-5)")
    p.add_argument("--ode-examples", type=int, dest="ode_examples", metavar="N",
                   help="held-out examples for the ODE likelihood (default eval.ode_examples, 1000)")


def _iw_arguments(p, default, help_m: str) -> None:
    p.add_argument("--iw", type=int, default=default, metavar="M", help=help_m)
    p.add_argument("--iw-steps", type=int, dest="iw_steps",
                   help="hops of the chain for the importance-weighted estimate (default: every step; 1000 in continuous time)")
    p.add_argument("--iw-examples", type=int, dest="iw_examples",
                   help="held-out examples for the importance-weighted estimate (default: eval.iw_examples)")


def _flag_ranges() -> dict:
    """The allowed range of every numeric flag, by argparse dest: (flag, range of
    ``config.RANGES``' form, integer?, description or None)."""
    from .config import SEED

    at_least_1, at_least_0 = (1, None, False, False), (0, None, False, False)
    return {
        "steps": ("--steps", at_least_1, True, None),
        "n": ("-n", (1, MAX_SAMPLES, False, False), True, None),
        "n_t": ("--n-t (eval.n_t)", at_least_1, True, None),
        "iw": ("--iw", at_least_1, True, "an integer M >= 1 (trajectories per example)"),
        "iw_steps": ("--iw-steps (eval.iw_steps)", at_least_0, True, None),
        "iw_examples": ("--iw-examples (eval.iw_examples)", at_least_1, True, None),
        "particles": ("--particles", at_least_1, True, None),
        "resample": ("--resample", at_least_1, True, None),
        "seed": ("--seed", SEED, True, None),
        "eta": ("--eta", (0, 1, False, False), False, None),
        "scale": ("--scale", at_least_0, False, None),
        "noise": ("--noise", (0, None, True, False), False, "a positive finite number"),
        "k": ("-k", (2, 10_000, False, False), True, None),
        "rtol": ("--rtol", (0, 1, True, True), False, None),
        "atol": ("--atol", (0, None, True, False), False, None),
        "ode_rtol": ("--ode-rtol (eval.ode_rtol)", (0, 1, True, True), False, None),
        "ode_probes": ("--ode-probes (eval.ode_probes)", at_least_0, True, None),
        "ode_examples": ("--ode-examples (eval.ode_examples)", at_least_1, True, None),
        "guidance": ("--guidance", at_least_0, False, None),
        "max_examples": ("--max-examples", at_least_1, True, None),
    }


def check_flags(args) -> None:
    """Every numeric flag given, against its range, before a command starts: one
    ``ConfigError`` naming the flag and the range. Shapes: none."""
    from .config import describe_range, in_range

    for dest, (flag, rng, integer, words) in _flag_ranges().items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if not in_range(value, rng, integer):
            raise ConfigError(f"{flag} must be {words or describe_range(rng, integer)}, got {value!r}")


def _os_error(exc: OSError) -> str:
    """An OSError as one line naming its path: "PATH: No such file or directory"."""
    if exc.filename is None:
        return one_line(exc)
    names = " -> ".join(os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{names!s}: {exc.strerror or one_line(exc)}"


# The commands that run across the processes torchrun starts; the rest run in one.
DISTRIBUTED_COMMANDS = ("train", "evaluate", "sample")
# Whether this process reports notes and warnings: under torchrun rank 0 alone does.
_SPEAKS = [True]


def _note(line: str) -> None:
    """A note or warning on standard error, from the process that speaks."""
    if _SPEAKS[0]:
        print(line, file=sys.stderr)


class _Stopped(BaseException):
    """SIGTERM under torchrun: the launcher stops the other processes when one ends. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way
    up takes it for an error of its own."""


# Whether this process has said why it stops: one line, whichever way it learns first
# (its collective fails, or torchrun's SIGTERM arrives), never two.
_SAID = [False]


def _say_once(line: str) -> None:
    if not _SAID[0]:
        _SAID[0] = True
        print(line, file=sys.stderr, flush=True)


def _on_sigterm(signum, frame):
    # Said here, at once: the process may be killed before the exception unwinds.
    _say_once(f"thermodiff: stopped{_WHO[0]}: another process of the job ended; the last checkpoint is "
              "intact: rerun the same command to resume")
    raise _Stopped


# " (process R of N)" under torchrun, for the lines above.
_WHO = [""]


def _world_size() -> int:
    """The processes torchrun started (WORLD_SIZE; 1 without torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def _as_rank(args) -> tuple[int, int]:
    """(rank, processes) of this process under torchrun, (0, 1) without it. Rank 0
    speaks; the others print nothing but their own failures and show no progress."""
    world = _world_size()
    if world <= 1:
        return 0, 1
    rank = int(os.environ.get("RANK", "0")) if os.environ.get("RANK", "0").isdigit() else 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    if rank > 0:
        args.quiet = True
        _SPEAKS[0] = False
        sys.stdout = open(os.devnull, "w")
    return rank, world


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = _run(args)
    except _Stopped:  # SIGTERM while _run was handling another failure: its line is out
        status = 1
    if _world_size() > 1:
        from . import distributed

        distributed.finish(status, together=status == 0)  # does not return
    return status


def _run(args) -> int:
    """The command, with every failure a user can meet as one line and its status."""
    rank, who = 0, ""
    try:
        rank, world = _as_rank(args)
        who = _WHO[0] = f" (process {rank} of {world})" if world > 1 else ""
        if world > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise ConfigError(f"thermodiff {args.command} runs in one process; under torchrun: "
                              f"{', '.join(DISTRIBUTED_COMMANDS)}")
        check_flags(args)
        return args.func(args)
    except _Stopped:  # the line is out (``_on_sigterm``)
        return 1
    except RuntimeError as exc:
        from . import distributed

        if not distributed.lost_peer(exc):
            raise
        # gloo's message opens with its source file and line ("[.../pair.cc:537] Read error
        # ...") and goes on for sentences: its first says what happened.
        text = re.sub(r"^\[[^\]]*\]\s*", "", one_line(exc)).split(". ")[0][:120]
        _say_once(f"thermodiff: error{who}: lost contact with another process of the job ({text}); "
                  "the last checkpoint is intact: rerun the same command to resume")
        return 1
    except ThermodiffError as exc:
        if rank == 0:  # every process reads the same inputs: rank 0 says what is wrong once
            print(f"thermodiff: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written (a folder under a file, a full disk...)
        print(f"thermodiff: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except UnicodeError as exc:
        print(f"thermodiff: error: a file name or text that is not valid UTF-8: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thermodiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
