"""A diffusers model folder read as a thermodiff model: the schedule against diffusers'
alphas_cumprod, the predictions against diffusers' own step, the network call for call.
Skipped where the optional extra (diffusers) is not installed."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="the optional extra is absent: pip install 'thermodiff[diffusers]'")

from thermodiff import diffusers_model  # noqa: E402
from thermodiff.errors import CheckpointError, ConfigError  # noqa: E402
from thermodiff.schedules import DiscreteSchedule  # noqa: E402


def _tiny_pipeline(folder, prediction_type="epsilon", variance_type="fixed_small", channels=1, T=50):
    torch.manual_seed(0)
    out = channels * (2 if variance_type == "learned_range" else 1)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=channels, out_channels=out, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type=prediction_type,
                                        variance_type=variance_type, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(folder))
    return unet.eval(), scheduler


@pytest.mark.parametrize("kind", diffusers_model.BETA_SCHEDULES)
def test_the_schedule_is_diffusers_alphas_cumprod(kind):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
    schedule = DiscreteSchedule.from_betas(diffusers_model.scheduler_betas(dict(scheduler.config)))
    torch.testing.assert_close(schedule.abar()[1:].float(), scheduler.alphas_cumprod, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_the_x0_of_each_prediction_type_is_diffusers_own(tmp_path, prediction_type):
    _, scheduler = _tiny_pipeline(tmp_path / "p", prediction_type)
    model = diffusers_model.load(tmp_path / "p")
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(4, 1, 8, 8, generator=gen)
    out = torch.randn(4, 1, 8, 8, generator=gen)
    for k in (0, 17, 49):
        want = scheduler.step(out, k, x_t, generator=gen).pred_original_sample
        abar = model.schedule.abar()[k + 1].expand(4)
        got = model.param.predict(out[:, None].double(), x_t.double(), abar).x0
        torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)


def test_the_network_is_called_with_diffusers_timestep_and_units(tmp_path):
    unet, scheduler = _tiny_pipeline(tmp_path / "p", variance_type="learned_range")
    model = diffusers_model.load(tmp_path / "p")
    assert model.data_shape == (1, 8, 8) and model.schedule.T == 50 and model.spec.variance == "learned-range"
    levels = torch.randint(0, 256, (3, 1, 8, 8)).double()
    torch.testing.assert_close(model.scaler(levels + 0.5).double(), levels / 127.5 - 1)  # bins centred on diffusers' levels
    x = model.scaler(levels + torch.rand(levels.shape, dtype=torch.float64))
    assert model.scaler.log_det(model.n_dims) == pytest.approx(-64 * torch.log(torch.tensor(127.5)).item())
    i = torch.tensor([1, 20, 50])
    with torch.no_grad():
        ours = model(x, i / 50.0)
        theirs = unet(x, i - 1).sample
    torch.testing.assert_close(ours, theirs.reshape(3, 2, 1, 8, 8))  # eps, then the variance channel
    # The learned-range variance: diffusers' interpolation of log beta and log beta-tilde.
    with torch.no_grad():
        t = torch.full((3,), 20 / 50.0)
        abar_t, abar_s = model.schedule.abar(t), model.schedule.abar(t - 1 / 50)
        kernel = model.reverse(x, t, abar_s, abar_t)
        v = unet(x, torch.full((3,), 19)).sample[:, 1:]  # the variance channel at timestep 19
    frac = (v + 1) / 2
    beta = scheduler.betas[19]
    small = (1 - scheduler.alphas_cumprod[18]) / (1 - scheduler.alphas_cumprod[19]) * beta
    want = torch.exp(frac * beta.log() + (1 - frac) * small.log())
    torch.testing.assert_close(kernel.var.float(), want, rtol=1e-4, atol=1e-7)


def test_a_folder_thermodiff_cannot_read_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="diffusers model folder not found"):
        diffusers_model.load(tmp_path / "none")
    _tiny_pipeline(tmp_path / "p")
    (tmp_path / "p" / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match="no scheduler_config.json"):
        diffusers_model.load(tmp_path / "p")
    _tiny_pipeline(tmp_path / "q")
    path = tmp_path / "q" / "scheduler" / "scheduler_config.json"
    for key, value, message in (("prediction_type", "flow", "prediction_type 'flow' is not supported"),
                                ("variance_type", "learned", "variance_type 'learned' is not supported"),
                                ("beta_schedule", "sigmoid", "beta_schedule 'sigmoid' is not supported")):
        config = json.loads(path.read_text())
        path.write_text(json.dumps(dict(config, **{key: value})))
        with pytest.raises(ConfigError, match=message):
            diffusers_model.load(tmp_path / "q")
        path.write_text(json.dumps(config))


class _ExactEps(torch.nn.Module):
    """Called as a UNet2DModel is, (sample, timestep) -> .sample: the exact eps of
    N(0, s2 I) data in diffusers' units, read from diffusers' own alphas_cumprod at the
    timestep it is given (an off-by-one step would change every term of the bound)."""

    def __init__(self, alphas_cumprod, s2):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.double())
        self.s2 = s2
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # models are asked for their device
    def forward(self, sample, timestep):
        from types import SimpleNamespace

        abar = self.abar[timestep][:, None, None, None]
        eps = (1 - abar).sqrt() * sample.double() / (abar * self.s2 + 1 - abar)
        return SimpleNamespace(sample=eps.to(sample.dtype))


def test_exact_eps_through_the_wrapper_gives_the_bound_of_the_thermodiff_oracle():
    from conftest import oracle_model

    from thermodiff.likelihood import evaluate

    s2, shape = 0.09, (1, 4, 4)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=40, beta_schedule="squaredcos_cap_v2")
    config = dict(scheduler.config)
    wrapped = diffusers_model.from_unet(_ExactEps(scheduler.alphas_cumprod, s2), config, shape).double()
    oracle = oracle_model(DiscreteSchedule.from_betas(diffusers_model.scheduler_betas(config)), s2, "eps",
                          "fixed-small", D=16, decoder="learned")
    x0 = torch.randn((200,) + shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * s2 ** 0.5
    levels = 128 + 127.5 * x0  # the same examples in the data's own units
    a = evaluate(wrapped, levels, n_t=39, seed=5)
    b = evaluate(oracle, x0.reshape(200, 16), n_t=39, seed=5)
    for name in ("prior", "diffusion"):  # the decoder is the discretised one (tests/test_discretized_decoder.py)
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, msg=name)
    # In the data's units the figures differ by the Jacobian of diffusers' map alone.
    assert wrapped.scaler.log_det(16) == pytest.approx(-16 * torch.log(torch.tensor(127.5, dtype=torch.float64)).item())


def test_a_saved_pipeline_is_evaluated_and_sampled_from_the_command_line(tmp_path, cli):
    import numpy as np

    _tiny_pipeline(tmp_path / "p")
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8)).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    r = cli("evaluate", "--diffusers", tmp_path / "p", "--data", tmp_path / "x.npy", "--n-t", 7, "--iw", 2,
            "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "e.json").read_text())
    assert rec["n_examples"] == 12 and rec["n_dims"] == 64 and "iw_bits" in rec
    assert rec["bits_per_dim"] == pytest.approx(-rec["K_bits"] / 64) and "discretised Gaussian" in rec["decoder"]
    # K in the data's units (levels) is the scaled figure plus the Jacobian of y / 127.5 - 1.
    assert rec["K_bits"] - rec["K_bits_scaled"] == pytest.approx(-64 * np.log2(127.5))
    r = cli("sample", "--diffusers", tmp_path / "p", "-n", 3, "--solver", "ddim", "--steps", 4,
            "--out", tmp_path / "s.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "s.npy").shape == (3, 1, 8, 8)
    # Inpainting: the known half of an image stays as given.
    mask = np.zeros((1, 8, 8))
    mask[:, :4] = 1
    np.save(tmp_path / "m.npy", mask)
    np.save(tmp_path / "k.npy", images[:1].astype(np.float64))
    r = cli("condition", "--diffusers", tmp_path / "p", "--known", tmp_path / "k.npy", "--mask", tmp_path / "m.npy",
            "-n", 2, "--steps", 5, "--out", tmp_path / "c.npy")
    assert r.returncode == 0, r.stderr
    c = np.load(tmp_path / "c.npy")
    assert c.shape == (2, 1, 8, 8) and np.allclose(c[:, 0, :4], images[0, :4])


def test_the_command_line_errors_are_one_line(tmp_path, cli):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), dtype=np.uint8))

    def one_line(r, needle):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr

    one_line(cli("evaluate", "--diffusers", tmp_path / "none", "--data", tmp_path / "x.npy"), "folder not found")
    _tiny_pipeline(tmp_path / "p")
    (tmp_path / "p" / "scheduler" / "scheduler_config.json").unlink()
    one_line(cli("evaluate", "--diffusers", tmp_path / "p", "--data", tmp_path / "x.npy"), "no scheduler_config.json")
    _tiny_pipeline(tmp_path / "q", prediction_type="epsilon")
    path = tmp_path / "q" / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), prediction_type="flow")))
    one_line(cli("evaluate", "--diffusers", tmp_path / "q", "--data", tmp_path / "x.npy", "--json", tmp_path / "e.json"),
             "prediction_type 'flow' is not supported")
    assert not (tmp_path / "e.json").exists()
    one_line(cli("evaluate", "--diffusers", tmp_path / "q"), "--diffusers needs --data FILE")


def test_the_vs_diffusers_bench_smoke(tmp_path, cli):
    from conftest import MNIST_ROOT

    if not MNIST_ROOT.exists():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT}")
    r = cli("bench", "vs-diffusers", "--smoke", "--out", tmp_path / "b", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    for side in ("diffusers", "thermodiff"):
        for key in ("bits_per_dim", "stderr_bits_per_dim", "images_per_second", "sampling_ms_per_image", "train_steps"):
            assert key in rec[side] and rec[side][key] > 0, (side, key)
    assert rec["test_images"] == 64 and "bits_per_dim_ahead" in rec and "throughput_ratio" in rec
    assert (tmp_path / "b" / "diffusers" / "model_index.json").is_file()
    r = cli("bench", "vs-diffusers", "--smoke", "--out", tmp_path / "b")  # a trained folder is refused
    assert r.returncode == 2 and "holds a trained run" in r.stderr
