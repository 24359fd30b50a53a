"""Benchmarks of the probability-flow ODE (``ode``): `bench ode-likelihood` and
`bench samplers`.

``ode-likelihood``: on the trained Swiss roll and eight-Gaussian benchmark models (and
the exact-score mixture oracle), the ODE model's exact log-likelihood next to K,
IW(100) and the exact log-density, paired over the same held-out points; on a
trained MNIST run, ``ode_bits_per_dim`` next to ``bits_per_dim``, the round trip of
100 test images and an interpolation figure between test digits.

``samplers``: sample error against network calls per sample (NFE) for each solver
(ancestral respaced, DDIM, Heun, DPM-Solver++(2M)) at 5, 10, 20, 50, 100 calls and the
full ancestral chain, on the eight-Gaussian mixture with the exact score (the error
is the solver's alone) and on the trained Swiss roll, against exact samples; on MNIST,
the Parzen figure at 10 and 20 calls next to the 100-hop ancestral chain's.

The error statistic is the sliced Wasserstein-1 distance (``sliced_wasserstein``): the
mean over random directions of the 1-D Wasserstein distance between the projections.
It is a metric on distributions (it sees location, spread and shape, unlike a moment),
its 1-D pieces are exact for equal-size sets (sorted differences), and its floor, the
distance between two independent exact sets of the same size, is measured beside it:
a sampler at the floor is indistinguishable from exact at that sample size.

Models not given (--run, --mixture-run) are trained from their benchmark configs into
the output folder; MNIST needs --mnist-run (an hour of training: `bench mnist`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from .atomic import atomic_write
from .errors import ConfigError
from .evaluation import evaluate_run, iw_record
from .model import count_calls
from .run_folder import CHECKPOINT, load_run, refuse_trained
from .sampling.ancestral import sample

NFES = (5, 10, 20, 50, 100)
SOLVERS = ("ancestral", "ddim", "heun", "dpm++")
SW_DIRECTIONS = 256
FLOOR_PAIRS = 5  # pairs of exact sample sets behind the floor's mean and spread

# Samples per sampler: the statistic's noise at 40,000 (about 0.005 for the mixture,
# from its eight modes' multinomial counts) is the size of the differences between
# solvers at 20 calls; the exact-score mixture is cheap enough for 100,000.
FULL = {"points": 1000, "iw_M": 100, "iw_points": 500, "samples": 40_000, "oracle_samples": 100_000, "mnist_images": 100,
        "mnist_samples": 1000, "mnist_pairs": 6, "k": 10}
SMOKE = {"points": 40, "iw_M": 4, "iw_points": 10, "samples": 300, "oracle_samples": 300, "mnist_images": 4, "mnist_samples": 40,
         "mnist_pairs": 2, "k": 4}


# ----------------------------------------------------------------------------- statistics


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: int = SW_DIRECTIONS, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size sample sets: the mean over
    ``directions`` random unit directions (seeded) of the 1-D W1 distance between the
    projections, the mean absolute difference of their sorted values.

    Shapes: a, b (n, D) -> float (data units).
    """
    if a.shape != b.shape:
        raise ConfigError(f"sliced Wasserstein needs sets of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.reshape(a.shape[0], -1).to(torch.float64), b.reshape(b.shape[0], -1).to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(a.shape[1], directions, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    pa, pb = (a @ u).sort(0).values, (b @ u).sort(0).values
    return float((pa - pb).abs().mean())


def sw_floor(draw_exact, n: int, pairs: int = FLOOR_PAIRS, seed: int = 1000) -> dict:
    """The statistic between two independent exact sets of n samples, over ``pairs``
    pairs: its mean (the floor) and standard deviation (the statistic's noise).

    draw_exact(n, generator) -> (n, D). Shapes: returns a dict of floats.
    """
    values = []
    for i in range(pairs):
        g = torch.Generator().manual_seed(seed + 2 * i)
        h = torch.Generator().manual_seed(seed + 2 * i + 1)
        values.append(sliced_wasserstein(draw_exact(n, g), draw_exact(n, h)))
    v = torch.tensor(values, dtype=torch.float64)
    return {"floor": float(v.mean()), "floor_sd": float(v.std()) if pairs > 1 else 0.0}


# ----------------------------------------------------------------------------- samplers


def _steps_for(solver: str, calls: int, model) -> int:
    """Steps of a solver that make at most ``calls`` network calls per sample."""
    from .ode.solvers import steps_for_nfe

    if solver == "ancestral":
        # One call per latent of the chain's grid (a learned decoder included): a
        # discrete grid of `steps` has that many, a continuous one steps + 1.
        return calls if len(model.time_grid(calls)) <= calls else max(1, calls - 1)
    return steps_for_nfe(solver, calls)


def sampler_curves(model, exact: torch.Tensor, nfes=NFES, solvers=SOLVERS, seed: int = 0,
                   progress: bool = False) -> dict:
    """Sample error (sliced W1 against ``exact``, data units) of each solver at each NFE
    budget, and of the full ancestral chain, n = len(exact) samples each, the same
    prior draws (seed) for every solver.

    Shapes: exact (n, *D) data units; returns {"curves": {solver: [{nfe, error, seconds}]},
    "full_chain": {nfe, error, seconds}}.
    """
    n = exact.shape[0]
    curves = {}

    def run(solver, steps):
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        with count_calls(model) as calls:
            x = sample(model, n, gen, steps=steps, solver=solver, chunk=10_000)
        y = model.scaler.inverse(x.cpu())
        return {"nfe": calls.per_example(n), "steps": steps, "error": sliced_wasserstein(y, exact),
                "seconds": time.perf_counter() - t0}

    for solver in solvers:
        points = []
        for budget in nfes:
            points.append(run(solver, _steps_for(solver, budget, model)))
            if progress:
                p = points[-1]
                print(f"  {solver:>9} {p['nfe']:6.0f} calls: sliced W1 {p['error']:.4f}", flush=True)
        curves[solver] = points
    full = run("ancestral", None)
    return {"curves": curves, "full_chain": full}


def smallest_nfe_reaching(curves: dict, target: float) -> dict:
    """Per solver, the smallest NFE whose error is at most ``target`` (None: none does).
    Shapes: none."""
    out = {}
    for solver, points in curves.items():
        hits = [p["nfe"] for p in points if p["error"] <= target]
        out[solver] = min(hits) if hits else None
    return out


def _sampler_case(name: str, model, draw_exact, n: int, out: Path, title: str, progress: bool) -> dict:
    """One case of `bench samplers`: the curves, the floor, the reach of the full chain's
    error (its error plus twice the statistic's noise), and the figure."""
    from . import plots

    exact = draw_exact(n, torch.Generator().manual_seed(12345))
    res = sampler_curves(model, exact, progress=progress)
    floor = sw_floor(draw_exact, n)
    target = res["full_chain"]["error"] + 2 * floor["floor_sd"]
    res.update(floor, target=target, reached_at=smallest_nfe_reaching(res["curves"], target), n_samples=n)
    plots.error_vs_nfe(
        out / f"samplers_{name}.png",
        {s: ([p["nfe"] for p in pts], [p["error"] for p in pts]) for s, pts in res["curves"].items()},
        title, floor=floor["floor"],
        reference=(f"full ancestral chain ({res['full_chain']['nfe']:.0f} calls)", res["full_chain"]["error"]),
        ylabel=f"sliced Wasserstein-1 to {n} exact samples",
    )
    res["figure"] = f"samplers_{name}.png"
    return res


# The oracle's schedule: VDM's log-SNR line from gamma = -13.3 to 10, where abar_T =
# 4.5e-5 (the prior N(0, I) is the forward marginal at t = 1 to well below the statistic's
# floor) and s_T = sigma / alpha = 148, near EDM's sigma_max = 80 (a cosine chain's
# abar_T ~ 1e-9 would put s_T at 2e4, where few-step solvers spend their steps).
ORACLE_GAMMA = (-13.3, 10.0)


def oracle_mixture_model():
    """The eight-Gaussian ring with its exact score, in continuous time (``ORACLE_GAMMA``;
    the full ancestral chain is 1000 hops), the posterior variance and a learned
    (network) decoder: the sampler's error is its own."""
    from .data.toy import gaussian_mixture_2d_default
    from .oracle import mixture_model
    from .schedules import ContinuousSchedule

    mix = gaussian_mixture_2d_default()
    return mix, mixture_model(mix, ContinuousSchedule("linear-logsnr", *ORACLE_GAMMA))


# ----------------------------------------------------------------------------- trained models


def _trained(name: str, run: str | None, out: Path, smoke: bool, progress: bool):
    """A trained benchmark model: the given run folder, or the benchmark `name` trained
    into out/name (refused where a trained run is there already)."""
    from .bench import bench_config
    from .train import fit

    if run is None:
        folder = out / name
        if (folder / CHECKPOINT).exists():
            raise ConfigError(refuse_trained(folder))
        cfg = bench_config(name, smoke=smoke)
        fit(cfg, data_mod.load(cfg.data), folder, progress=progress, fresh=True)
        run = folder
    cfg, model, meta = load_run(run)
    return cfg, model, meta, data_mod.load(cfg.data), str(run)


def _likelihood_case(cfg, model, meta, dataset, sizes: dict, progress: bool) -> dict:
    """K, IW(M), the ODE likelihood and the exact value on the same first points (K with
    the run's time sampler, as `thermodiff evaluate` computes it)."""
    ev = config_mod.replace(cfg, eval={"max_examples": sizes["points"], "ode_examples": sizes["points"],
                                       "iw_examples": sizes["iw_points"]}).eval
    y = dataset.test
    rec = evaluate_run(model, y, ev, dataset.log_density, progress=progress, ode=True, sampler=meta["time_sampler"])
    rec.update(iw_record(model, y, ev, sizes["iw_M"], dataset.log_density, progress))
    keep = ("K_bits_scaled", "stderr_bits", "exact_bits_scaled", "gap_bits", "gap_stderr_bits", "n_examples",
            "iw_bits_scaled", "iw_stderr_bits", "iw_gap_bits", "iw_gap_stderr_bits", "iw_M", "iw_n_examples",
            "iw_steps", "ode_bits_scaled", "ode_stderr_bits", "ode_gap_bits", "ode_gap_stderr_bits",
            "ode_minus_K_bits", "ode_minus_K_stderr_bits", "ode_nfe", "ode_n_examples", "ode_probes", "ode_warning",
            "warning")
    out = {k: rec[k] for k in keep if k in rec}
    out["ode_above_exact"] = "ode_warning" in rec
    return out


def _mnist_case(run: str, out: Path, sizes: dict, progress: bool) -> dict:
    """On a trained MNIST run: bits/dim by K and by the ODE on the same test images, the
    round trip of test images (levels of 255) and an interpolation figure."""
    from .ode.latents import interpolate, round_trip
    from .report import interpolation_figure

    cfg, model, meta = load_run(run)
    dataset = data_mod.load(cfg.data)
    n = sizes["mnist_images"]
    ev = config_mod.replace(cfg, eval={"max_examples": n, "ode_examples": n}).eval
    t0 = time.perf_counter()
    rec = evaluate_run(model, dataset.test, ev, None, progress=progress, ode=True)
    ode_seconds = time.perf_counter() - t0
    keep = ("bits_per_dim", "ode_bits_per_dim", "K_bits", "stderr_bits", "ode_bits", "ode_stderr_bits",
            "ode_probe_stderr_bits", "ode_minus_K_bits", "ode_minus_K_stderr_bits", "ode_nfe", "ode_probes",
            "ode_n_examples")
    result = {k: rec[k] for k in keep if k in rec}
    result.update(run=run, seconds=ode_seconds, train_steps=meta["trained_steps"],
                  train_seconds=meta["trained_seconds"])
    images = dataset.test[:n].floor()  # the test images' own levels (no dequantisation noise)
    trip = round_trip(model, images, progress=progress)
    result["round_trip_rmse_levels"] = trip["round_trip_rmse"]
    result["round_trip_max_levels"] = trip["round_trip_max"]
    result["round_trip_nfe"] = (trip["nfe_encode"], trip["nfe_decode"])
    result["round_trip_images"] = trip["n_examples"]
    pairs = [(2 * i, 2 * i + 1) for i in range(sizes["mnist_pairs"])]
    paths = interpolate(model, images, pairs, sizes["k"], progress=progress)["paths"]
    drawn = interpolation_figure(model, out / "mnist_interpolation.png", paths, images, dataset.train[:1000])
    result["interpolation_figure"] = drawn.name if drawn else None
    return result


def _mnist_parzen(run: str, sizes: dict, progress: bool) -> dict:
    """Parzen bits per image of MNIST samples at 10 and 20 ODE calls (DPM-Solver++(2M))
    and of the 100-hop ancestral chain, the same number of samples each."""
    from .bench import image_samples_parzen

    cfg, model, meta = load_run(run)
    dataset = data_mod.load(cfg.data)
    rows = []
    for solver, steps in (("dpm++", 10), ("dpm++", 20), ("ancestral", 100)):
        ev = config_mod.replace(cfg, eval={"samples": sizes["mnist_samples"], "sample_steps": steps}).eval
        t0 = time.perf_counter()
        rec = image_samples_parzen(model, dataset, ev, progress=progress, solver=solver)
        rows.append({"solver": solver, "steps": steps, "nfe": rec["nfe"], "parzen_bits": rec["parzen_bits"],
                     "parzen_stderr_bits": rec.get("parzen_stderr_bits"), "n_samples": rec["n_samples"],
                     "seconds": time.perf_counter() - t0})
        if progress:
            print(f"  MNIST {solver} {rec['nfe']:.0f} calls: Parzen {rec['parzen_bits']:.1f} bits", flush=True)
    return {"run": run, "rows": rows}


# ----------------------------------------------------------------------------- the benchmarks


def run_ode_likelihood(out: Path, smoke: bool = False, run: str | None = None, mixture_run: str | None = None,
                       mnist_run: str | None = None, progress: bool = False) -> dict:
    """`bench ode-likelihood`: see the module. Writes out/eval.json and out/report.md."""
    sizes = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "ode-likelihood", "cases": {}}
    for name, given in (("swissroll", run), ("iw-mixture", mixture_run)):
        cfg, model, meta, dataset, folder = _trained(name, given, out, smoke, progress)
        case = _likelihood_case(cfg, model, meta, dataset, sizes, progress)
        case.update(run=folder, train_steps=meta["trained_steps"], train_seconds=meta["trained_seconds"])
        record["cases"][name] = case
    # The exact score: the ODE figure must be the exact log-density up to the solver.
    from .evaluation import ode_record

    mix, oracle = oracle_mixture_model()
    y = mix.sample(sizes["points"], torch.Generator().manual_seed(7))
    ev = config_mod.EvalConfig()
    rec = ode_record(oracle, y, ev, mix.log_prob)
    record["cases"]["mixture-exact-score"] = {k: rec[k] for k in ("ode_bits_scaled", "ode_stderr_bits", "ode_gap_bits",
                                                                  "ode_gap_stderr_bits", "ode_nfe", "ode_n_examples")}
    record["cases"]["mixture-exact-score"]["exact_bits_scaled"] = float(mix.log_prob(y).mean() / math.log(2))
    if mnist_run:
        record["mnist"] = _mnist_case(mnist_run, out, sizes, progress)
    else:
        record["mnist_note"] = "no --mnist-run given: the MNIST part needs a trained run (thermodiff bench mnist)"
    _finish(record, out, "ode-likelihood")
    return record


def run_samplers(out: Path, smoke: bool = False, run: str | None = None, mnist_run: str | None = None,
                 progress: bool = False) -> dict:
    """`bench samplers`: see the module. Writes out/eval.json, out/report.md and figures."""
    from .data.toy import swissroll_sample

    sizes = SMOKE if smoke else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "samplers", "nfes": list(NFES), "statistic": "sliced Wasserstein-1, 256 directions"}
    mix, oracle = oracle_mixture_model()
    record["mixture-exact-score"] = _sampler_case(
        "mixture", oracle, lambda n, g: mix.sample(n, g), sizes["oracle_samples"], out,
        "Eight Gaussians, exact score: sample error against calls", progress)
    cfg, model, meta, dataset, folder = _trained("swissroll", run, out, smoke, progress)
    case = _sampler_case("swissroll", model, swissroll_sample, sizes["samples"], out,
                         "Swiss roll, trained model: sample error against calls", progress)
    case.update(run=folder)
    record["swissroll"] = case
    if mnist_run:
        record["mnist"] = _mnist_parzen(mnist_run, sizes, progress)
    else:
        record["mnist_note"] = "no --mnist-run given: the MNIST part needs a trained run (thermodiff bench mnist)"
    _finish(record, out, "samplers")
    return record


def _finish(record: dict, out: Path, name: str) -> None:
    from .bench import device_name, git_commit
    from .report import write_json

    record.update(device=device_name(), commit=git_commit())
    write_json(out / "eval.json", record)
    with atomic_write(out / "report.md") as f:
        f.write(markdown(record, name))


def markdown(record: dict, name: str) -> str:
    """The benchmark's tables. Shapes: dict -> str."""
    lines = [f"# thermodiff bench {name}", ""]
    if name == "ode-likelihood":
        lines += ["| model | K | IW(M) | ODE (calls) | exact | exact - K | exact - IW | exact - ODE |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for case, c in record["cases"].items():
            def pm(a, b):
                return f"{c[a]:.4f} ± {c[b]:.4f}" if a in c else ""
            lines.append(f"| {case} | {pm('K_bits_scaled', 'stderr_bits')} | {pm('iw_bits_scaled', 'iw_stderr_bits')}"
                         f" | {pm('ode_bits_scaled', 'ode_stderr_bits')} ({c['ode_nfe']:.0f}) | "
                         f"{c.get('exact_bits_scaled', float('nan')):.4f} | {pm('gap_bits', 'gap_stderr_bits')} | "
                         f"{pm('iw_gap_bits', 'iw_gap_stderr_bits')} | {pm('ode_gap_bits', 'ode_gap_stderr_bits')} |")
        if "mnist" in record:
            m = record["mnist"]
            lines += ["", f"MNIST ({m['ode_n_examples']} test images): bits/dim by K {m['bits_per_dim']:.4f}, "
                      f"by the ODE {m['ode_bits_per_dim']:.4f} ({m['ode_nfe']:.0f} calls, {m['ode_probes']} probes); "
                      f"round trip of {m['round_trip_images']} images: RMSE {m['round_trip_rmse_levels']:.4f} levels.",
                      "", f"![interpolation]({m['interpolation_figure']})"]
    else:
        for case in ("mixture-exact-score", "swissroll"):
            c = record[case]
            lines += [f"## {case}", "", f"floor {c['floor']:.4f} ± {c['floor_sd']:.4f}; full ancestral chain "
                      f"({c['full_chain']['nfe']:.0f} calls): {c['full_chain']['error']:.4f}; reached at: "
                      + ", ".join(f"{s} {v if v is None else f'{v:.0f}'}" for s, v in c["reached_at"].items()), "",
                      "| solver | " + " | ".join(f"~{n}" for n in record["nfes"]) + " |",
                      "| --- |" + " --- |" * len(record["nfes"])]
            for s, pts in c["curves"].items():
                lines.append(f"| {s} | " + " | ".join(f"{p['error']:.4f} ({p['nfe']:.0f})" for p in pts) + " |")
            lines += ["", f"![{case}]({c['figure']})", ""]
        if "mnist" in record:
            lines += ["## MNIST Parzen", "", "| solver | calls | Parzen bits | samples |", "| --- | --- | --- | --- |"]
            lines += [f"| {r['solver']} | {r['nfe']:.0f} | {r['parzen_bits']:.1f} | {r['n_samples']} |"
                      for r in record["mnist"]["rows"]]
    return "\n".join(lines) + "\n"
