"""The probability-flow ODE against exact answers: Gaussian data with the exact score
(the flow is affine, the likelihood is log N(x; mu, Sigma)), the Gaussian-mixture
oracle (the exact log-density), Hutchinson's estimator against the exact divergence,
the round trip, and the order of the fixed-step solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import oracle_model

from thermodiff.data.toy import GaussianMixture, gaussian_mixture_2d_default
from thermodiff.errors import ConfigError
from thermodiff.model import count_calls
from thermodiff.ode.flow import Flow, time_grid
from thermodiff.ode.latents import decode, encode, slerp
from thermodiff.ode.likelihood import divergence, log_likelihood, rademacher
from thermodiff.ode.solvers import nfe, solve_fixed
from thermodiff.oracle import mixture_model
from thermodiff.schedules import ContinuousSchedule, DiscreteSchedule


def _gaussian(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5
    cov = a @ a.T + 0.2 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return mu, cov, GaussianMixture(torch.ones(1), mu[None], cov[None])


def _sqrtm(m, power=0.5):
    w, q = torch.linalg.eigh(m)
    return q @ torch.diag(w**power) @ q.T


def _flow_map(mu, cov, abar):
    """The exact ODE's map from x_0 to x_t for N(mu, cov) data: affine,
    x_t = sqrt(abar) mu + (abar cov + (1 - abar) I)^(1/2) cov^(-1/2) (x_0 - mu)."""
    c_t = abar * cov + (1 - abar) * torch.eye(len(mu), dtype=torch.float64)
    return _sqrtm(c_t) @ _sqrtm(cov, -0.5)


def test_gaussian_likelihood_equals_log_normal():
    # gamma_max = 20: abar_T = 2e-9, so the prior N(0, I) is the forward marginal at t = 1
    # to a part in 1e4 and the ODE model is N(mu, Sigma) itself.
    mu, cov, mix = _gaussian()
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr", -13.3, 20.0))
    x = mix.sample(40, torch.Generator().manual_seed(1))
    res = log_likelihood(model, x)
    assert res.probes == 0  # 3 dimensions: the exact divergence
    assert (res.log_p - mix.log_prob(x)).abs().max() < 1e-3


def test_gaussian_likelihood_equals_the_flow_models_closed_form():
    # At an ordinary gamma_max the ODE model is the push-forward of N(0, I) through the
    # inverse of the affine map: log p(x) = log N(M (x - mu) + sqrt(abar_T) mu; 0, I) + log det M.
    mu, cov, mix = _gaussian()
    sched = ContinuousSchedule("linear-logsnr", -13.3, 5.0)
    model = mixture_model(mix, sched)
    x = mix.sample(40, torch.Generator().manual_seed(2))
    closed = _closed_form_flow_log_p(mu, cov, float(sched.abar_last()), x)
    assert (log_likelihood(model, x).log_p - closed).abs().max() < 1e-3


def test_encode_is_the_affine_map_onto_the_forward_marginal():
    mu, cov, mix = _gaussian()
    sched = ContinuousSchedule("linear-logsnr", -13.3, 5.0)
    model = mixture_model(mix, sched)
    x = mix.sample(2000, torch.Generator().manual_seed(3))
    z, calls = encode(model, x)
    abar = float(sched.abar_last())
    expected = math.sqrt(abar) * mu + (x - mu) @ _flow_map(mu, cov, abar).T
    assert (z - expected).abs().max() < 1e-3
    # ... which carries N(mu, Sigma) onto N(sqrt(abar) mu, abar Sigma + (1 - abar) I).
    c_t = abar * cov + (1 - abar) * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(torch.cov(z.T), c_t, atol=0.08)
    assert calls > 0


def test_mixture_likelihood_equals_exact_log_density_within_tolerance():
    mix = gaussian_mixture_2d_default()  # eight narrow Gaussians on a ring
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr", -16.0, 16.0))
    x = mix.sample(30, torch.Generator().manual_seed(4))
    exact = mix.log_prob(x)
    loose = (log_likelihood(model, x, rtol=1e-5, atol=1e-5).log_p - exact).abs().max()
    tight = (log_likelihood(model, x, rtol=1e-7, atol=1e-7).log_p - exact).abs().max()
    assert tight < 1e-3
    assert tight < loose  # the error is the solver's: it falls with the tolerance


def _closed_form_flow_log_p(mu, cov, abar, x):
    """The ODE model of N(mu, cov) data with the exact score: N(0, I) pushed through the
    inverse of the affine map, log p(x) = log N(M (x - mu) + sqrt(abar_T) mu; 0, I) + log det M."""
    m = _flow_map(mu, cov, abar)
    z = math.sqrt(abar) * mu + (x - mu) @ m.T
    return -0.5 * (z**2).sum(1) - 0.5 * len(mu) * math.log(2 * math.pi) + torch.logdet(m)


def test_discrete_schedule_through_its_continuous_extension():
    # DDPM's linear schedule, T = 1000: the solver asks for times between the steps.
    mu, cov, mix = _gaussian(d=2, seed=5)
    sched = DiscreteSchedule("linear", 1000)
    model = mixture_model(mix, sched)
    x = mix.sample(20, torch.Generator().manual_seed(6))
    # Below the first step (beta_1 = 1e-4) the flow keeps the field of step 1: a part in 1e3.
    closed = _closed_form_flow_log_p(mu, cov, float(sched.abar_last()), x)
    assert (log_likelihood(model, x).log_p - closed).abs().max() < 5e-3
    back, _ = decode(model, encode(model, x)[0])
    assert (back - x).abs().max() < 1e-3


def test_hutchinson_is_unbiased_for_the_divergence():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
    y = torch.randn(3, 5, dtype=torch.float64)
    _, exact = divergence(net, y, None)
    jac = torch.stack([torch.autograd.functional.jacobian(net, y[i]) for i in range(3)])
    assert torch.allclose(exact, jac.diagonal(dim1=1, dim2=2).sum(-1))
    probes = rademacher((4000, 3, 5), torch.Generator().manual_seed(1))
    _, est = divergence(net, y, probes)  # (3, 4000)
    mean, se = est.mean(1), est.std(1) / math.sqrt(est.shape[1])
    assert ((mean - exact).abs() < 4 * se).all()
    assert (se > 0).all()  # a non-diagonal Jacobian: the estimate has a spread


def test_hutchinson_likelihood_agrees_with_exact_divergence():
    mu, cov, mix = _gaussian(d=4, seed=7)
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr", -13.3, 5.0))
    x = mix.sample(60, torch.Generator().manual_seed(8))
    exact = log_likelihood(model, x, probes=0).log_p
    hutch = log_likelihood(model, x, probes=4, seed=3)
    diff = hutch.log_p - exact
    assert hutch.probe_var is not None and (hutch.probe_var > 0).all()
    # Each example's probe noise is its own: the mean difference is within its standard error.
    assert abs(float(diff.mean())) < 4 * float(hutch.probe_var.sum().sqrt()) / len(x)


def test_round_trip_within_tolerance():
    model = mixture_model(gaussian_mixture_2d_default(), ContinuousSchedule("linear-logsnr", -13.3, 5.0))
    x = gaussian_mixture_2d_default().sample(50, torch.Generator().manual_seed(9))
    z, _ = encode(model, x)
    back, _ = decode(model, z)
    assert (back - x).abs().max() < 1e-3
    z_tight, _ = encode(model, x, rtol=1e-8, atol=1e-8)
    assert (decode(model, z_tight, rtol=1e-8, atol=1e-8)[0] - x).abs().max() < (back - x).abs().max()


@pytest.mark.parametrize("kind", ["eps", "x0"])
def test_x0_and_eps_models_give_the_same_flow(kind):
    # N(0, s2) data with the exact x0 or eps prediction: the same ODE either way.
    sched = ContinuousSchedule("linear-logsnr", -13.3, 16.0)
    model = oracle_model(sched, 0.3, kind, "fixed-small")
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * math.sqrt(0.3)
    exact = -0.5 * (x**2).sum(1) / 0.3 - math.log(2 * math.pi * 0.3)
    assert (log_likelihood(model, x).log_p - exact).abs().max() < 1e-3


def _solver_errors(solver, steps_list):
    mu, cov, mix = _gaussian(seed=11)
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr", -13.3, 5.0))
    flow = Flow(model)
    z = torch.randn(100, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    ref, _ = decode(model, z, rtol=1e-10, atol=1e-10)
    out = []
    for steps in steps_list:
        with count_calls(model) as calls:
            y = solve_fixed(flow, flow.to_y(z), solver, steps)
        assert calls.per_example(100) == nfe(solver, steps)
        out.append((nfe(solver, steps), float((y - ref).norm(dim=1).mean())))
    return out


@pytest.mark.parametrize("solver,order", [("ddim", 1), ("heun", 2), ("dpm++", 2)])
def test_fixed_step_solvers_converge_at_their_order(solver, order):
    steps = [20, 50] if solver != "heun" else [10, 25]
    (n1, e1), (n2, e2) = _solver_errors(solver, steps)
    slope = math.log(e2 / e1) / math.log(n2 / n1)
    assert -order - 0.6 < slope < -order + 0.4, (solver, slope)


def test_time_grids_run_from_one_to_the_first_latent():
    model = mixture_model(gaussian_mixture_2d_default(), DiscreteSchedule("cosine", 100))
    flow = Flow(model)
    for kind in ("uniform-t", "log-snr", "edm"):
        ts = time_grid(flow, 10, kind)
        assert ts[0] == 1.0 and ts[-1] == pytest.approx(0.01) and len(ts) == 10
        assert all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ConfigError, match="unknown time grid"):
        time_grid(flow, 10, "quadratic")


def test_slerp_keeps_the_ends_and_the_norm_of_orthogonal_latents():
    a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0, 0], a[0]) and torch.allclose(path[0, -1], b[0])
    assert torch.allclose(path.norm(dim=-1), torch.ones(1, 5, dtype=torch.float64))
    same = slerp(a, a, torch.linspace(0, 1, 3))  # parallel: the straight line
    assert torch.allclose(same, a.expand(3, 2)[None])


def test_models_without_an_ode_are_refused(heartbeat_run):
    from thermodiff.run_folder import load_run

    _, model, _ = load_run(heartbeat_run)
    with pytest.raises(ConfigError, match="Gaussian diffusion"):
        Flow(model)
    sched = DiscreteSchedule("binomial", 10)
    from thermodiff.model import DiffusionModel, ModelSpec
    from thermodiff.nets import build_net

    paper = DiffusionModel(build_net("mlp", 2, 4, 10, width=8, depth=1), sched, ModelSpec("paper", "fixed-small"), (2,), 2)
    with pytest.raises(ConfigError, match="eps, x0 or v"):
        Flow(paper)


def test_ancestral_sampler_refuses_ode_options():
    from thermodiff.sampling.ancestral import sample

    model = mixture_model(gaussian_mixture_2d_default(), DiscreteSchedule("cosine", 20))
    with pytest.raises(ConfigError, match="ancestral chain"):
        sample(model, 4, torch.Generator().manual_seed(0), solver="heun", eta=0.0)
    with pytest.raises(ConfigError, match="ODE solver"):
        sample(model, 4, torch.Generator().manual_seed(0), grid="edm")
    x = sample(model, 4, torch.Generator().manual_seed(0), solver="dpm++", steps=5)
    assert x.shape == (4, 2) and torch.isfinite(x).all()


# -- the command line -------------------------------------------------------------------


def test_cli_sample_encode_decode_interpolate(mixture_run, cli, tmp_path):
    s = tmp_path / "s.npy"
    r = cli("sample", mixture_run, "-n", 20, "--solver", "heun", "--steps", 4, "--out", s)
    assert r.returncode == 0, r.stderr
    assert "NFE): 7 (heun)" in r.stdout
    assert np.load(s).shape == (20, 2)
    z = tmp_path / "z.npy"
    r = cli("encode", mixture_run, "--data", s, "--out", z)
    assert r.returncode == 0, r.stderr
    assert "round trip" in r.stdout and np.load(z).shape == (20, 2)
    back = tmp_path / "back.npy"
    r = cli("decode", mixture_run, "--latent", z, "--out", back)
    assert r.returncode == 0, r.stderr
    # The tiny run is barely trained (its samples spread over hundreds of units): the round
    # trip holds to a part in 1e3 of that spread.
    assert np.abs(np.load(back) - np.load(s)).max() < 1e-3 * np.load(s).std()
    p = tmp_path / "paths.npy"
    r = cli("interpolate", mixture_run, "--data", s, "--pairs", "0,1", "2,3", "-k", 5, "--out", p)
    assert r.returncode == 0, r.stderr
    assert np.load(p).shape == (2, 5, 2) and (tmp_path / "paths.png").stat().st_size > 0


def test_cli_evaluate_ode_fields(mixture_run, cli, tmp_path):
    import json

    out = tmp_path / "e.json"
    r = cli("evaluate", mixture_run, "--ode", "--ode-examples", 20, "--json", out)
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    for key in ("ode_bits", "ode_bits_scaled", "ode_stderr_bits", "ode_nfe", "ode_bits_per_dim", "ode_gap_bits",
                "ode_minus_K_bits"):
        assert key in rec and rec[key] is not None, key
    assert rec["ode_n_examples"] == 20 and rec["ode_probes"] == 0
    assert rec["ode_bits_per_dim"] == pytest.approx(-rec["ode_bits"] / 2)
    assert "ode_bits" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["sample", "-n", 3, "--solver", "ddim", "--eta", 0.5], "--eta"),
    (["sample", "-n", 3, "--grid", "edm"], "--grid"),
    (["encode", "--data", "X", "--out", "z.npy", "--solver", "ddim"], "--steps"),
    (["interpolate", "--data", "X", "--pairs", "0-1", "--out", "p.npy"], "--pairs"),
    (["evaluate", "--ode", "--ode-rtol", 0], "--ode-rtol"),
])
def test_cli_ode_flag_errors_are_one_line(mixture_run, cli, tmp_path, args, needle):
    from conftest import _one_line_error

    args = [a if a != "X" else tmp_path / "missing.npy" for a in args]
    command, rest = args[0], args[1:]
    _one_line_error(cli(command, mixture_run, *rest), needle)


def test_cli_binary_model_has_no_ode(heartbeat_run, cli, tmp_path):
    from conftest import _one_line_error

    _one_line_error(cli("sample", heartbeat_run, "-n", 3, "--solver", "dpm++", "--out", tmp_path / "s.npy"),
                    "Gaussian diffusion")
    _one_line_error(cli("evaluate", heartbeat_run, "--ode"), "Gaussian diffusion")


def test_ode_conditioning_moves_samples_towards_the_observation_and_refuses_chain_methods():
    from thermodiff.bench_ode import oracle_mixture_model, sliced_wasserstein
    from thermodiff.sampling.conditioning import GaussianObservation, Known, sample_conditioned

    mix, model = oracle_mixture_model()
    y, sigma = torch.tensor([1.0, 1.2], dtype=torch.float64), 0.5
    exact = mix.observe(y, sigma).sample(3000, torch.Generator().manual_seed(1))
    prior = mix.sample(3000, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(0)
    # A fixed r pulls hard at the noise end: guidance needs more steps than the product's
    # r_t, which widens with the noise.
    for method, steps in (("product", 20), ("guidance", 50)):
        x = sample_conditioned(model, GaussianObservation(y, sigma), 3000, gen, method=method, steps=steps,
                               solver="dpm++")
        # An approximation (see sampling.ode_conditioning), but far nearer the posterior than the prior is.
        assert sliced_wasserstein(x, exact) < 0.3 * sliced_wasserstein(prior, exact)
    with pytest.raises(ConfigError, match="stochastic chain"):
        sample_conditioned(model, Known(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])), 4, gen, method="clamp",
                           solver="heun")
    with pytest.raises(ConfigError, match="option scale only"):
        sample_conditioned(model, GaussianObservation(y, sigma), 4, gen, solver="heun", particles=4)


@pytest.mark.parametrize("name", ["samplers", "ode-likelihood"])
def test_ode_bench_smoke(cli, tmp_path, name):
    import json

    out = tmp_path / name
    r = cli("bench", name, "--smoke", "--out", out, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "r.json").read_text())
    assert (out / "report.md").exists() and "mnist_note" in rec
    if name == "samplers":
        for case in ("mixture-exact-score", "swissroll"):
            c = rec[case]
            assert set(c["curves"]) == {"ancestral", "ddim", "heun", "dpm++"}
            assert c["floor"] > 0 and c["full_chain"]["nfe"] >= 1000 and (out / c["figure"]).exists()
    else:
        for case in ("swissroll", "iw-mixture"):
            c = rec["cases"][case]
            for key in ("K_bits_scaled", "iw_bits_scaled", "ode_bits_scaled", "exact_bits_scaled", "ode_gap_bits"):
                assert key in c, key
        assert abs(rec["cases"]["mixture-exact-score"]["ode_gap_bits"]) < 0.05


def test_fixed_step_encode_and_decode_invert_each_other_as_steps_grow():
    # DDIM inversion: the same points both ways; its round trip closes at first order.
    mu, cov, mix = _gaussian(d=2, seed=13)
    model = mixture_model(mix, ContinuousSchedule("linear-logsnr", -13.3, 5.0))
    x = mix.sample(50, torch.Generator().manual_seed(14))
    errors = []
    for steps in (20, 80):
        z, calls = encode(model, x, solver="ddim", steps=steps)
        assert calls == steps
        back, _ = decode(model, z, solver="ddim", steps=steps)
        errors.append(float((back - x).abs().max()))
    assert errors[1] < errors[0] / 2
    with pytest.raises(ConfigError, match="needs steps"):
        encode(model, x, solver="heun")
    with pytest.raises(ConfigError, match="noise to the data only"):
        encode(model, x, solver="dpm++", steps=5)


def test_cli_latents_far_outside_the_prior_fail_in_one_line(mixture_run, cli, tmp_path):
    from conftest import _one_line_error

    z = tmp_path / "huge.npy"
    np.save(z, np.full((2, 2), 1e30))
    _one_line_error(cli("decode", mixture_run, "--latent", z, "--out", tmp_path / "x.npy"), "could not follow")
    assert not (tmp_path / "x.npy").exists()
