"""Benchmark `vs-diffusers`: diffusers' own recipe and thermodiff's, on MNIST as 8-bit
levels, for the same minutes on the same machine, both scored by thermodiff's evaluator.

(a) diffusers: a ``UNet2DModel`` of about the `mnist` benchmark U-Net's size (block
    channels 16, 32, 32, one ResNet block per level, no attention: 0.27 M parameters
    against 0.29 M), ``DDPMScheduler`` with 1,000 linear steps, the eps-MSE loss, AdamW
    (lr 1e-4, betas 0.95 / 0.999, weight decay 1e-6), 500 warm-up steps then cosine
    decay over the budget, and diffusers' ``EMAModel`` (power 3/4, decay up to 0.9999),
    as diffusers' unconditional training example does; images as 2 y / 255 - 1, batch
    64, no flips (digits are not mirror-symmetric). Scored with improved DDPM's
    discretised decoder (``diffusers_model``).
(b) thermodiff: the `mnist` benchmark's config (``configs/mnist.toml``) with the same
    budget.

Each recipe trains alone for `BUDGET_SECONDS` of wall-clock time on the same threads;
then K on the full test set (the `mnist` config's 4 stratified times per image), the
training images per second, and sampling milliseconds per image with DDIM (the ODE's
Euler steps) at `SAMPLE_STEPS` network calls, for both, in one run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import config as config_mod
from . import data as data_mod
from .errors import ConfigError
from .evaluation import evaluate_run
from .run_folder import CHECKPOINT, load_run, refuse_trained
from .sampling.ancestral import sample
from .train import fit

BUDGET_SECONDS = 20 * 60
SAMPLE_STEPS = 20
SAMPLE_IMAGES = 64
UNET = dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8)
RECIPE = dict(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8, warmup=500, batch=64, ema_power=0.75,
              ema_max=0.9999, timesteps=1000)
SMOKE = dict(budget=8.0, n_train=256, n_test=64, sample_images=4, sample_steps=3)


def train_diffusers(dataset, out: Path, budget: float, seed: int = 0) -> dict:
    """diffusers' recipe on the dataset's training levels for `budget` seconds; saves the
    EMA weights with the scheduler as a DDPMPipeline folder under `out`. Returns the
    training figures. Shapes: dataset.train (N, 1, 28, 28) levels."""
    import diffusers
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**UNET)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=RECIPE["timesteps"], beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=RECIPE["lr"], betas=RECIPE["betas"],
                            weight_decay=RECIPE["weight_decay"], eps=RECIPE["eps"])
    ema = EMAModel(unet.parameters(), decay=RECIPE["ema_max"], use_ema_warmup=True, inv_gamma=1.0,
                   power=RECIPE["ema_power"])
    images = (dataset.train.to(torch.float32) / 127.5 - 1)  # diffusers' ToTensor + Normalize(0.5, 0.5)
    gen = torch.Generator().manual_seed(seed)
    n, b = images.shape[0], RECIPE["batch"]
    total, steps, start = None, 0, time.perf_counter()
    unet.train()
    while time.perf_counter() - start < budget:
        # diffusers' get_cosine_schedule_with_warmup, its length from the first 50 steps' pace.
        if total is None and steps == 50:
            total = max(int(budget / ((time.perf_counter() - start) / 50)), RECIPE["warmup"] + 1)
        warm = min(1.0, (steps + 1) / RECIPE["warmup"])
        done = 0.0 if total is None else min(1.0, max(0.0, (steps - RECIPE["warmup"]) / (total - RECIPE["warmup"])))
        for g in opt.param_groups:
            g["lr"] = RECIPE["lr"] * (warm if steps < RECIPE["warmup"] else 0.5 * (1 + math.cos(math.pi * done)))
        x0 = images[torch.randint(0, n, (b,), generator=gen)]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, RECIPE["timesteps"], (b,), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        steps += 1
    seconds = time.perf_counter() - start
    ema.copy_to(unet.parameters())
    folder = out / "diffusers"
    diffusers.DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(str(folder))
    return {"train_steps": steps, "train_seconds": seconds, "images_per_second": steps * b / seconds,
            "parameters": sum(p.numel() for p in unet.parameters()), "folder": str(folder)}


def _sampling_ms(model, n: int, steps: int, seed: int = 0) -> float:
    """Milliseconds per image for n DDIM samples of `steps` network calls."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        sample(model, n, gen, solver="ddim", steps=steps)
    return 1000 * (time.perf_counter() - start) / n


def run(out: Path, smoke: bool = False, progress: bool = False) -> dict:
    """Both recipes, scored side by side; returns the record. Shapes: none."""
    from . import diffusers_model

    out = Path(out)
    if (out / "thermodiff" / CHECKPOINT).exists() or (out / "diffusers").exists():
        raise ConfigError(refuse_trained(out))
    cfg = config_mod.load(config_mod.config_path("mnist"))
    budget = SMOKE["budget"] if smoke else BUDGET_SECONDS
    train_over = {"max_seconds": budget, "steps": 10**9}
    data_over = {"n_train": SMOKE["n_train"], "n_test": SMOKE["n_test"]} if smoke else {}
    cfg = config_mod.replace(cfg, name="vs-diffusers", train=train_over, data=data_over)
    if smoke:
        cfg = config_mod.replace(cfg, model={"base_channels": 8, "channel_mults": (1,)}, train={"checkpoint_every": 10**6})
    dataset = data_mod.load(cfg.data)
    n_img, n_steps = (SMOKE["sample_images"], SMOKE["sample_steps"]) if smoke else (SAMPLE_IMAGES, SAMPLE_STEPS)
    record = {"benchmark": "vs-diffusers", "budget_seconds": budget, "threads": torch.get_num_threads(),
              "test_images": int(dataset.test.shape[0]), "sample_steps": n_steps}

    a = train_diffusers(dataset, out, budget)
    model = diffusers_model.load(a["folder"])
    ev = evaluate_run(model, dataset.test, cfg.eval, progress=progress)
    a.update(bits_per_dim=ev["bits_per_dim"], stderr_bits_per_dim=ev["stderr_bits"] / ev["n_dims"],
             K_bits=ev["K_bits"], sampling_ms_per_image=_sampling_ms(model, n_img, n_steps))
    record["diffusers"] = a

    fit(cfg, dataset, out / "thermodiff", progress=progress, fresh=True)
    cfg_t, model_t, meta = load_run(out / "thermodiff")
    ev = evaluate_run(model_t, dataset.test, cfg_t.eval, sampler=meta["time_sampler"], progress=progress)
    record["thermodiff"] = {
        "train_steps": meta["trained_steps"], "train_seconds": meta["trained_seconds"],
        "images_per_second": meta["trained_steps"] * cfg_t.train.batch_size / max(meta["trained_seconds"], 1e-9),
        "parameters": sum(p.numel() for p in model_t.parameters()), "bits_per_dim": ev["bits_per_dim"],
        "stderr_bits_per_dim": ev["stderr_bits"] / ev["n_dims"], "K_bits": ev["K_bits"],
        "sampling_ms_per_image": _sampling_ms(model_t, n_img, n_steps)}
    d, t = record["diffusers"], record["thermodiff"]
    record["bits_per_dim_ahead"] = d["bits_per_dim"] - t["bits_per_dim"]
    record["bits_per_dim_ahead_stderr"] = math.hypot(d["stderr_bits_per_dim"], t["stderr_bits_per_dim"])
    record["throughput_ratio"] = t["images_per_second"] / d["images_per_second"]
    return record


def markdown(record: dict) -> str:
    """The two rows of the README's results table. Shapes: none."""
    lines = ["| recipe | bits/dim (test set) | training | images/s | parameters | sampling, DDIM "
             f"{record['sample_steps']} calls |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ("diffusers", "thermodiff"):
        r = record[name]
        lines.append(f"| {name} | {r['bits_per_dim']:.4f} ± {r['stderr_bits_per_dim']:.4f} | {r['train_steps']} "
                     f"steps, {r['train_seconds']:.0f} s | {r['images_per_second']:.0f} | {r['parameters']:,} | "
                     f"{r['sampling_ms_per_image']:.1f} ms/image |")
    lines.append(f"\nthermodiff ahead by {record['bits_per_dim_ahead']:.4f} ± {record['bits_per_dim_ahead_stderr']:.4f} "
                 f"bits/dim; training throughput ratio thermodiff / diffusers {record['throughput_ratio']:.2f}")
    return "\n".join(lines) + "\n"
