"""Fixed-seed draws of the library's estimators and samplers, for checking that a
refactoring changes nothing draw for draw.

    python scripts/draws.py OUT.pt            # record
    python scripts/draws.py OUT.pt --against BEFORE.pt   # record and compare

Cases: a Gaussian model in discrete time (learned-range variance, learned decoder),
a binomial model, a continuous-time model, a conditioned (Gaussian observation by SMC,
and known coordinates by replacement) case and the exact-score mixture oracle. Each
case's networks are freshly initialised from a fixed seed: the figures test the code
path, not a trained model. Uses only functions whose names and signatures are stable.
"""

from __future__ import annotations

import argparse
import sys

import torch

from thermodiff import config
from thermodiff.jarzynski import evaluate_iw
from thermodiff.likelihood import evaluate
from thermodiff.model import build_model
from thermodiff.sampling.ancestral import sample
from thermodiff.sampling.conditioning import GaussianObservation, Known, sample_conditioned

CASES = {
    "gaussian": ["process.time=discrete", "process.T=30", "process.schedule=cosine", "model.variance=learned-range",
                 "model.decoder=learned", "model.width=16", "model.depth=1"],
    "gaussian-paper": ["process.time=discrete", "process.T=20", "process.schedule=learned", "model.net=rbf",
                       "model.parametrization=paper"],
    "binomial": ["process.kind=binomial", "process.time=discrete", "process.T=20", "process.schedule=binomial",
                 "process.beta_1=0", "model.parametrization=x0", "model.width=16", "model.depth=1"],
    "continuous": ["process.time=continuous", "model.parametrization=v", "model.width=16", "model.depth=1"],
}


def model_for(sets, shape=(3,)):
    cfg = config.apply_overrides(config.Config(), sets)
    torch.manual_seed(0)
    model = build_model(cfg, shape)
    y = torch.randn(256, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if cfg.process.kind == "binomial":
        y = (y > 0.3).to(torch.float64)
    model.fit_data(y)
    return model.eval(), y


def record() -> dict:
    out = {}
    for name, sets in CASES.items():
        model, y = model_for(sets)
        terms = evaluate(model, y[:64], n_t=8, seed=3)
        out[f"{name}/bound_nll"] = terms.nll
        out[f"{name}/bound_per_t"] = terms.per_t
        out[f"{name}/samples"] = sample(model, 16, torch.Generator().manual_seed(4))
        if name != "gaussian-paper":
            out[f"{name}/samples_respaced"] = sample(model, 16, torch.Generator().manual_seed(5), steps=7)
        if name in ("gaussian", "continuous"):
            out[f"{name}/samples_ddim"] = sample(model, 16, torch.Generator().manual_seed(6), steps=7, eta=0.5)
        out[f"{name}/iw_logw"] = evaluate_iw(model, y[:8], 4, steps=10 if name == "continuous" else None, seed=7)
    model, y = model_for(CASES["continuous"], (2,))
    obs = GaussianObservation(torch.tensor([0.5, -0.2]), 0.3)
    out["conditioned/smc"] = sample_conditioned(model, obs, 8, torch.Generator().manual_seed(8), method="smc",
                                                steps=10, particles=4)
    out["conditioned/guidance"] = sample_conditioned(model, obs, 8, torch.Generator().manual_seed(9),
                                                     method="guidance", steps=10)
    known = Known(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0]))
    out["conditioned/replace"] = sample_conditioned(model, known, 8, torch.Generator().manual_seed(10),
                                                    method="replace", steps=10, resample=2)
    model, y = model_for(CASES["binomial"])
    from thermodiff.sampling.conditioning import BitProbabilities

    bits = BitProbabilities(torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64))
    out["conditioned/binomial-smc"] = sample_conditioned(model, bits, 8, torch.Generator().manual_seed(11),
                                                         method="smc", particles=4)
    from thermodiff.data.toy import GaussianMixture
    from thermodiff.oracle import mixture_model
    from thermodiff.schedules import ContinuousSchedule

    mix = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, -0.5], [1.0, 0.5]]),
                          torch.stack([0.3 * torch.eye(2), 0.2 * torch.eye(2)]))
    oracle = mixture_model(mix, ContinuousSchedule("linear-logsnr"))
    out["oracle/samples"] = sample(oracle, 16, torch.Generator().manual_seed(12), steps=20)
    out["oracle/iw_logw"] = evaluate_iw(oracle, mix.sample(8, torch.Generator().manual_seed(13)), 4, steps=20, seed=14)
    return {k: v.detach().cpu() for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--against")
    args = p.parse_args()
    rec = record()
    torch.save(rec, args.out)
    if not args.against:
        print(f"recorded {len(rec)} arrays to {args.out}")
        return 0
    before = torch.load(args.against)
    worst = 0
    for key in sorted(set(before) | set(rec)):
        if key not in before or key not in rec:
            print(f"{key:32s}  only in {'after' if key in rec else 'before'}")
            worst = max(worst, 1)
            continue
        a, b = before[key].to(torch.float64), rec[key].to(torch.float64)
        same = a.shape == b.shape and bool(torch.equal(a, b))
        diff = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
        print(f"{key:32s}  {tuple(a.shape)!s:14s} {'identical' if same else f'max |diff| {diff:.3g}'}")
        worst = max(worst, 0 if same else (1 if diff > 1e-12 else 0))
    return worst


if __name__ == "__main__":
    sys.exit(main())
