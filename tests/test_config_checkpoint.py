"""Configs round-trip through TOML and reject what they do not know; checkpoints
round-trip through safetensors and reject what is corrupted."""

import pytest
import torch

from thermodiff import checkpoint, config
from thermodiff.errors import CheckpointError, ConfigError


def test_config_round_trip_through_toml():
    cfg = config.apply_overrides(config.Config(), ["train.lr=3e-4", "model.net=rbf", "process.T=40", "name=2024"])
    assert cfg.train.lr == 3e-4 and cfg.model.net == "rbf" and cfg.process.T == 40 and cfg.name == "2024"
    assert config.loads(config.dumps(cfg)) == cfg


def test_shipped_configs_load():
    from thermodiff.config import CONFIG_DIR

    paths = sorted(CONFIG_DIR.rglob("*.toml"))
    assert len(paths) >= 4
    for path in paths:
        config.load(path)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[train]\nlrr = 1", "train.lrr"),
        ("[train]\nsteps = 'many'", "train.steps"),
        ("[trian]\nsteps = 1", "trian"),
        ("[train\nsteps = 1", "malformed TOML"),
        ("train = 3", "train"),
        ("[train]\nsteps = true", "train.steps"),
    ],
)
def test_bad_configs_name_the_problem(text, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config.loads(text)


def test_bad_overrides():
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        config.apply_overrides(config.Config(), ["train.nope=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        config.apply_overrides(config.Config(), ["train.lr"])
    with pytest.raises(ConfigError):
        config.apply_overrides(config.Config(), ["train=1"])


def test_checkpoint_round_trip(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"model": net.state_dict(), "optimizer": opt.state_dict()}, {"step": 7})
    states, meta = checkpoint.load(path, run=False)  # not a run folder's checkpoint
    assert meta == {"step": 7}
    for k, v in net.state_dict().items():
        assert torch.equal(states["model"][k], v)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    states["optimizer"]["state"] = {int(k): v for k, v in states["optimizer"]["state"].items()}
    opt2.load_state_dict(states["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_corrupted_or_missing_checkpoint(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"model": {"w": torch.ones(100)}}, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted"):
        checkpoint.load(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.safetensors")
