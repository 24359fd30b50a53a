"""The bound K on log p(x_0), term by term, per example, and its evaluation on held-out data.

-K = prior + diffusion + reconstruction   (Luo eq. 58; paper eq. 14 per example)
  prior          KL(q(x_T | x_0) || pi)                               analytic
  diffusion      sum_{t=2..T} E_q KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))  analytic KL, MC over x_t
                 (continuous time: 1/2 int_0^1 gamma'(t) E|eps - eps_hat|^2 dt, VDM)
  reconstruction -E_q log p(x_0 | x_1)                                paper decoder: analytic
The same split holds for the binomial process (binary data), with Bernoulli KLs and
the prior B(1/2); only discrete time there.
Terms are in nats on the model's (scaled) data; ``summarize`` converts to bits once and
adds the Jacobian of the data scaling for figures in the data's own units.
For a class-conditional model every function takes ``cond``, the labels (B,) of the
examples (the null class: the bound on log p(x)); None is the null class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import distributed
from .model import DiffusionModel
from .tensors import expand_as, sum_dims
from .time_sampler import TimeSampler
from .units import LN2, bits


@dataclass(frozen=True)
class BoundTerms:
    """-K split into named terms, one value per example, nats on scaled data.

    per_t holds the diffusion term's contributions per step (discrete: t = 2..T) or
    per equal-width time bin (continuous); they sum to ``diffusion``.
    """

    prior: torch.Tensor  # (B,)
    diffusion: torch.Tensor  # (B,)
    reconstruction: torch.Tensor  # (B,)
    per_t: torch.Tensor | None = None  # (B, n)
    t: torch.Tensor | None = None  # (n,) time of each per_t column, in [0, 1]
    # The diffusion term's estimate from each of the n_t draws (time and noise) alone:
    # their mean is ``diffusion``. For the spread of comparisons that share the draws.
    draws: torch.Tensor | None = None  # (B, n_t)

    @property
    def nll(self) -> torch.Tensor:
        """-K per example, nats. Shapes: (B,)."""
        return self.prior + self.diffusion + self.reconstruction


def kl_term(model: DiffusionModel, x0, i, noise, detach_mean: bool = False, cond=None) -> torch.Tensor:
    """KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i)) at one sampled x_i, nats (discrete time).

    noise is the process's (``process.noise``): the posterior and the reverse kernel are
    the same kernels the sampler draws from. detach_mean stops the gradient through the
    kernel's mean (the hybrid objective trains only the variance on the bound).

    Shapes: x0, noise (B, *D), i (B,) long in 2..T, cond (B,) or None -> (B,).
    """
    abar = model.schedule.abar()
    abar_t, abar_s = abar[i], abar[i - 1]
    x_t = model.process.q_sample(x0, abar_t, noise)
    p = model.reverse(x_t, i.to(torch.float64) / model.schedule.T, abar_s, abar_t, cond, detach_mean=detach_mean)
    return model.process.posterior(x_t, x0, abar_s, abar_t).kl(p)


def diffusion_integrand(model: DiffusionModel, x0, t, eps, cond=None) -> torch.Tensor:
    """The continuous-time diffusion loss at t, less its analytic reference part, nats.

    The diffusion term is 1/2 int_0^1 gamma'(t) E|eps - eps_hat(x_t, t)|^2 dt (VDM), the
    T -> infinity limit of the sum of KL terms. It is split as
      1/2 gamma' (|eps - eps_hat|^2 - |eps - eps_ref|^2)  +  1/2 gamma' |eps - eps_ref|^2
    with eps_ref = sqrt(1 - abar_t) x_t, the exact prediction for N(0, I) data. The
    second part has a closed-form expectation (``reference_diffusion``); this function
    returns the first, a control variate: where eps cannot be predicted from x_t (low
    noise relative to the data's structure) or where the reference is already right
    (high noise), both squares carry the same chi-square noise and it cancels.

    Shapes: x0, eps (B, *D), t (B,) in [0, 1], cond (B,) or None -> (B,) float64.
    """
    gamma, dgamma = model.schedule.gamma_and_derivative(t, create_graph=torch.is_grad_enabled())
    abar_t = torch.sigmoid(-gamma)
    x_t = model.process.q_sample(x0, abar_t, eps)
    eps_hat = model.predict(x_t, t, cond, abar_t=abar_t).eps
    eps_ref = expand_as((1 - abar_t).sqrt(), x_t) * x_t
    # |e - a|^2 - |e - b|^2 = (b - a).(2e - a - b): no cancellation of two large squares.
    diff = sum_dims(((eps_ref - eps_hat) * (2 * eps - eps_hat - eps_ref)).to(torch.float64))
    return 0.5 * dgamma * diff


def _reference_antiderivatives(gamma):
    """F, G with dF/dgamma = sigmoid(-gamma)^2 = alpha^4 and dG/dgamma = alpha^2 sigma^2."""
    return torch.sigmoid(-gamma) + torch.nn.functional.logsigmoid(gamma), torch.sigmoid(gamma)


def reference_diffusion(x0, gamma_lo, gamma_hi) -> torch.Tensor:
    """1/2 int E|eps - eps_ref|^2 dgamma over [gamma_lo, gamma_hi], in closed form, nats.

    With x_t = alpha x0 + sigma eps and eps_ref = sigma x_t: eps - eps_ref =
    alpha^2 eps - alpha sigma x0, so E|.|^2 = D alpha^4 + alpha^2 sigma^2 |x0|^2.

    Shapes: x0 (B, *D); gamma_lo, gamma_hi () or (n,) float64 -> (B,) or (B, n).
    """
    f_lo, g_lo = _reference_antiderivatives(gamma_lo)
    f_hi, g_hi = _reference_antiderivatives(gamma_hi)
    sq = sum_dims(x0.to(torch.float64) ** 2)
    sq = sq.reshape(sq.shape + (1,) * torch.as_tensor(gamma_lo).dim())  # broadcast over the bins
    return 0.5 * (x0[0].numel() * (f_hi - f_lo) + sq * (g_hi - g_lo))


def reconstruction_term(model: DiffusionModel, x0, noise, cond=None) -> torch.Tensor:
    """-E_q log p(x_0 | x_1), nats.

    ``paper`` decoder: the last step fixed to the forward kernel (App. B.2), analytic.
    ``learned`` decoder: the reverse kernel at the first step, one MC sample of x_1.

    Shapes: x0, noise (B, *D), cond (B,) or None -> (B,) float64.
    """
    b = x0.shape[0]
    abar_1 = model.schedule.abar_first().expand(b)
    if model.spec.decoder == "paper":
        return model.process.fixed_decoder_nll(x0, abar_1)
    x_1 = model.process.q_sample(x0, abar_1, noise)
    t_1 = torch.full((b,), model.schedule.t_first).to(x0.device)
    # In the data's precision (as the diffusion terms are); the decoder is a Normal or a
    # Bernoulli, whose log-probability is float64 whatever is asked.
    return -model.reverse(x_1, t_1, torch.ones_like(abar_1), abar_1, cond).log_prob(x0, dtype=None)


def prior_term(model: DiffusionModel, x0) -> torch.Tensor:
    """KL(q(x_T | x_0) || pi), nats. Shapes: x0 (B, *D) -> (B,) float64."""
    abar_T = model.schedule.abar_last().expand(x0.shape[0])
    return model.process.prior_kl(x0.to(torch.float64), abar_T)


def bound_terms(model: DiffusionModel, x0: torch.Tensor, n_t: int, generator: torch.Generator, sampler=None,
                cond=None) -> BoundTerms:
    """-K's terms for a batch, with the diffusion term estimated at n_t times per example.

    Discrete time with T - 1 <= n_t: every step t = 2..T once (one x_t per step).
    Otherwise the times are stratified: n_t equal strata of [0, 1] for each example,
    mapped through the time sampler's proposal (importance sampling, if it learned one;
    continuous time), or n_t strata of the steps 2..T (discrete). per_t holds unbiased
    estimates of each step's or time bin's contribution.

    The draws (times and noise) depend only on the generator and x0's shape, never on
    cond: the same generator state gives every class of an example the same draws.

    Shapes: x0 (B, *D), cond (B,) or None -> BoundTerms with (B,) fields, per_t (B, n)
    and draws (B, n).
    """
    b = x0.shape[0]
    dev = x0.device
    noise = model.process.noise
    cond = None if cond is None else cond.to(dev)

    def repeated(n):  # the labels of x0.repeat_interleave(n, 0)
        return None if cond is None else cond.repeat_interleave(n, 0)

    if model.schedule.continuous:
        sampler = sampler or TimeSampler(n_t)
        k = sampler.n_bins
        u = (torch.arange(n_t, dtype=torch.float64) + torch.rand(b, n_t, generator=generator, dtype=torch.float64)) / n_t
        bins, pos, weight = sampler.quantile(u.reshape(-1))
        t = ((bins + pos) / k).to(dev)
        eps = noise((b * n_t,) + x0.shape[1:], generator, dev)
        resid = diffusion_integrand(model, x0.repeat_interleave(n_t, 0), t, eps, repeated(n_t)) * weight.to(dev) / n_t
        edges = model.schedule.gamma(torch.linspace(0, 1, k + 1, dtype=torch.float64, device=dev))
        vals = reference_diffusion(x0, edges[:-1], edges[1:])  # (B, k), exact
        draws = vals.sum(1, keepdim=True) + n_t * resid.reshape(b, n_t)
        vals = vals.scatter_add(1, bins.to(dev).reshape(b, n_t), resid.reshape(b, n_t))
        centres = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    else:
        T = model.schedule.T
        steps = T - 1
        if steps <= n_t:
            n = steps
            i = torch.arange(2, T + 1, device=dev).expand(b, n)
            weight = 1.0
            centres = torch.arange(2, T + 1, dtype=torch.float64) / T
        else:
            # n strata of the steps 2..T, as equal as integers allow.
            n = n_t
            edges = torch.linspace(0, steps, n + 1, dtype=torch.float64)
            lo, width = edges[:-1].floor(), (edges[1:].floor() - edges[:-1].floor())
            u = torch.rand(b, n, generator=generator, dtype=torch.float64)
            i = (lo + (u * width).floor()).long().to(dev) + 2
            weight = width.to(dev)
            centres = (lo + 2 + (width - 1) / 2) / T  # middle step of each stratum
        eps = noise((b * n,) + x0.shape[1:], generator, dev)
        kl = kl_term(model, x0.repeat_interleave(n, 0), i.reshape(-1), eps, cond=repeated(n)).reshape(b, n)
        vals = kl.to(torch.float64) * weight
        draws = vals * n
    eps0 = noise(x0.shape, generator, dev)
    return BoundTerms(
        prior=prior_term(model, x0),
        diffusion=vals.sum(1),
        reconstruction=reconstruction_term(model, x0, eps0, cond),
        per_t=vals,
        t=centres,
        draws=draws,
    )


@torch.no_grad()
def evaluate(
    model: DiffusionModel,
    y: torch.Tensor,
    n_t: int = 64,
    batch_size: int = 1024,
    seed: int = 0,
    progress: bool = False,
    sampler=None,
    labels: torch.Tensor | int | None = None,
) -> BoundTerms:
    """-K's terms on data y in the data's own units, batched, on the model's device.

    batch_size counts network evaluations: about batch_size // n_t examples a batch.
    sampler: the run's time sampler, whose learned proposal lowers the variance of the
    continuous-time estimate (uniform when None). labels: a conditional model's class
    per example (the bound on log p(x | y)), one class for every example, or None (the
    null class: log p(x)); the draws are the same whatever the labels.

    Shapes: y (N, *D), labels (N,) int64, an int or None -> BoundTerms with (N,)
    fields, per_t (N, n), draws (N, n_t).
    """
    model.eval()
    dev = next(model.parameters()).device
    # Discrete time evaluates at most the T - 1 steps per example.
    per_batch = max(1, batch_size // max(1, min(n_t, (model.schedule.n_steps or 10**9) - 1)))
    starts = list(range(0, y.shape[0], per_batch))
    bar = None
    if progress:
        from tqdm import tqdm  # progress bars are optional: imported where shown

        bar = tqdm(total=distributed.own_chunks(len(starts)), desc="evaluate", unit="batch", leave=False)

    def chunk(k: int) -> BoundTerms:
        # Batch k draws from stream k of the seed, whichever rank computes it.
        x0 = model.scaler(y[starts[k] : starts[k] + per_batch]).to(dev)
        cond = None
        if isinstance(labels, int):
            cond = torch.full((x0.shape[0],), labels, dtype=torch.long)
        elif labels is not None:
            cond = labels[starts[k] : starts[k] + per_batch]
        terms = bound_terms(model, x0, n_t, distributed.stream(seed, k), sampler, cond)
        if bar is not None:
            bar.update(1)
        return terms

    parts = distributed.map_chunks(chunk, len(starts))
    if bar is not None:
        bar.close()
    return BoundTerms(
        prior=torch.cat([p.prior.cpu() for p in parts]),
        diffusion=torch.cat([p.diffusion.cpu() for p in parts]),
        reconstruction=torch.cat([p.reconstruction.cpu() for p in parts]),
        per_t=torch.cat([p.per_t.cpu() for p in parts]),
        t=parts[0].t,
        draws=torch.cat([p.draws.cpu() for p in parts]),
    )


def summarize(model: DiffusionModel, terms: BoundTerms, y: torch.Tensor) -> dict:
    """The evaluation record (DESIGN section 4), in bits.

    K_bits: mean K per example in the data's own units (Jacobian of the scaling included);
    K_bits_scaled: the paper's convention (unit-variance data); L_null_bits: mean log
    likelihood under pi = N(0, I) on scaled data, or for binary data under independent
    Bernoullis at the training data's rate of ones (binary data are never scaled, so
    there K_bits equals K_bits_scaled); bits_per_dim: -K_bits / D;
    stderr_bits: standard error of the mean K over examples (covers both the spread
    of K over the data and the Monte Carlo noise of each example's estimate; NaN for
    a single example, with a ``stderr_note`` saying why; ``write_json`` writes null);
    terms_bits: the diffusion term's contributions to -K per step or time bin,
    at times terms_t.

    Shapes: terms fields (N,), y (N, *D) -> dict of floats and lists.
    """
    n = terms.nll.shape[0]
    d = model.n_dims
    k_scaled = -terms.nll
    log_det = model.scaler.log_det(d)
    l_null = model.null_log_likelihood(y)
    k_scaled_bits = float(bits(k_scaled.mean()))
    k_bits = k_scaled_bits + log_det / LN2
    l_null_bits = float(bits(l_null.mean()))
    stderr = float(bits(k_scaled.std(unbiased=True)) / math.sqrt(n)) if n > 1 else float("nan")
    record = {
        "K_bits": k_bits,
        "K_bits_scaled": k_scaled_bits,
        "L_null_bits": l_null_bits,
        "K_minus_L_null_bits": k_scaled_bits - l_null_bits,
        "bits_per_dim": -k_bits / d,
        "stderr_bits": stderr,
        "n_examples": n,
        "n_dims": d,
        "prior_bits": float(bits(terms.prior.mean())),
        "diffusion_bits": float(bits(terms.diffusion.mean())),
        "reconstruction_bits": float(bits(terms.reconstruction.mean())),
        "terms_bits": [float(v) for v in bits(terms.per_t.mean(0))],
        "terms_t": [float(v) for v in terms.t],
        "scale": model.scaler.geometric_scale(),
    }
    if n < 2:
        record["stderr_note"] = "one example: no standard errors (NaN here, null in JSON)"
    return record
