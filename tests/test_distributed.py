"""Many processes: torchrun with the gloo backend on the CPU, two ranks of one thread.

The exact answer for training on two ranks is one process that takes the same draws:
each step, rank r's share of the global batch and its noise come from stream r of the
seed (``distributed.stream``), the loss is the mean over the whole global batch, and
the time sampler records every rank's terms. The reference below computes that step
by hand in this process, and the weights, the EMA and the time sampler's statistics of
the torchrun run must agree with it to float tolerance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from thermodiff import config as config_mod
from thermodiff import data as data_mod
from thermodiff import distributed
from thermodiff.checkpoint import load as load_checkpoint
from thermodiff.config import config_path
from thermodiff.objectives import make_time_sampler
from thermodiff.run_folder import CHECKPOINT, CONFIG, load_run
from thermodiff.train import Objective, _fitted_model, _monitor, lr_factor, make_optimizer

# Continuous time with a learned schedule (its variance gradient passes through DDP),
# the bound with importance-sampled times (4 bins, so that the proposal leaves the
# uniform within the run), the EMA, a global batch that 2 ranks share unequally, and
# held-out checks (computed across the ranks) every 7 steps.
SETTINGS = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=63",
            "--set", "train.max_seconds=0", "--set", "data.n_train=400", "--set", "data.n_test=300",
            "--set", "process.schedule=learned", "--set", "train.t_bins=4", "--set", "train.ema_decay=0.9",
            "--set", "train.checkpoint_every=5", "--set", "eval.n_t=8", "--set", "eval.batch_size=32",
            "--set", "eval.iw_examples=40", "--set", "eval.iw_steps=10", "--set", "train.validate_every=7",
            "--set", "train.validate_examples=200", "--set", "train.validate_n_t=4"]
STEPS = 14


def torchrun(*args, timeout=180, nproc=2):
    """`torchrun --standalone --nproc_per_node 2 -m thermodiff --quiet ARGS`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "thermodiff", "--quiet", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def train_args(out, steps=STEPS):
    return ["train", config_path("swissroll"), "--out", out, "--steps", steps, *SETTINGS]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun(*train_args(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def reference_weights(cfg, steps: int, world: int = 2):
    """One process taking the steps of `world` ranks: rank r's share of the global
    batch from stream r of the seed, one backward of the global mean, the time sampler
    fed every rank's terms. Returns (model state, EMA state, sampler state)."""
    tc = cfg.train
    data = data_mod.load(cfg.data)
    torch.manual_seed(tc.seed)
    model = _fitted_model(cfg, data)
    sampler = make_time_sampler(model, tc.t_sampling, tc.t_bins)
    optimizer, ema = make_optimizer(model, tc)
    objective = Objective(model, tc.objective, sampler, tc.hybrid_lambda)
    gens = [distributed.stream(tc.seed, r) for r in range(world)]
    shares = distributed.shares(tc.batch_size, world)
    x_train = model.scaler(data.train)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = tc.lr * lr_factor(tc.lr_schedule, step / tc.steps, step, tc.warmup_steps)
        losses, bins, terms = [], [], []
        for r in range(world):
            x = x_train[torch.randint(0, x_train.shape[0], (shares[r],), generator=gens[r])]
            loss, (b, term) = objective(x, gens[r])
            losses.append(loss)
            bins.append(b)
            terms.append(term)
        optimizer.zero_grad(set_to_none=True)
        torch.cat(losses).mean().backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), tc.grad_clip)
        optimizer.step()
        sampler.update(torch.cat(bins), torch.cat(terms))
        ema.update_parameters(model)
    val_bits = _monitor(cfg, data, lambda *a: None)(ema.module)["val_bits"]
    return model.state_dict(), ema.state_dict(), sampler.state_dict(), val_bits


def test_two_ranks_train_the_weights_of_one_process_on_the_same_draws(two_rank_run):
    states, meta = load_checkpoint(two_rank_run / CHECKPOINT)
    assert meta["step"] == STEPS and meta["world_size"] == 2
    cfg = config_mod.load(two_rank_run / CONFIG)
    model, ema, sampler, val_bits = reference_weights(cfg, STEPS)
    assert int(sampler["counts"].min()) >= 10  # the proposal left the uniform within the run
    assert torch.equal(states["sampler"]["counts"], sampler["counts"])
    torch.testing.assert_close(states["sampler"]["second_moment"], sampler["second_moment"], rtol=1e-6, atol=0)
    assert any("schedule" in k for k in model)  # the learned schedule's weights are compared too
    for name, value in model.items():
        torch.testing.assert_close(states["model"][name], value, rtol=2e-5, atol=2e-6, msg=name)
    for name, value in ema.items():
        torch.testing.assert_close(states["ema"][name], value, rtol=2e-5, atol=2e-6, msg=name)
    # A weight the run changed: the comparison is not of two initialisations.
    torch.manual_seed(cfg.train.seed)
    start = _fitted_model(cfg, data_mod.load(cfg.data)).state_dict()
    assert any(not torch.allclose(start[k], model[k]) for k in model if model[k].is_floating_point())
    # Rank 0 alone wrote the metrics: one line a logged step and one a check, no duplicates;
    # the last check, computed across the ranks, is one process's on the same weights.
    lines = [json.loads(line) for line in (two_rank_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [STEPS]  # train.log_every = 100: the end alone
    checks = [r for r in lines if "val_bits" in r]
    assert [r["step"] for r in checks] == [7, STEPS]
    assert checks[-1]["val_bits"] == pytest.approx(val_bits, rel=1e-5)


def test_a_run_moves_between_one_and_two_processes(two_rank_run, tmp_path, cli):
    # Written by two processes, continued by one...
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_rank_run, out)
    r = cli(*train_args(out, STEPS + 6))
    assert r.returncode == 0, r.stderr
    assert "written by 2 process(es), this run has 1" in r.stdout
    states, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["step"] == STEPS + 6 and "world_size" not in meta and set(states["rng"]) == {"generator"}
    # ... and back on two, where rank 1 finds no stream of its own and starts a new one.
    r = torchrun(*train_args(out, STEPS + 12))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 1 process(es), this run has 2" in r.stdout
    _, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["step"] == STEPS + 12 and meta["world_size"] == 2
    cfg, model, meta = load_run(out)
    assert meta["step"] == STEPS + 12


def test_evaluate_on_two_ranks_gives_the_figures_of_one(two_rank_run, tmp_path, cli):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    # eval.batch_size = 32: K in 75 batches, IW(4) in 5, the ODE in 2 (32 examples a
    # solve), each drawn from its own stream: the ranks split every one of them.
    flags = ["--iw", "4", "--ode", "--ode-examples", "40", "--ode-rtol", "1e-2"]
    r1 = cli("evaluate", two_rank_run, "--json", one, *flags)
    assert r1.returncode == 0, r1.stderr
    r2 = torchrun("evaluate", two_rank_run, "--json", two, *flags)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["n_examples"] == 300 and a.keys() == b.keys()
    for key in ("K_bits", "stderr_bits", "iw_bits", "iw_stderr_bits", "ode_bits", "ode_stderr_bits", "ode_nfe"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9), key
    assert [s.split()[0] for s in r2.stdout.splitlines()].count("K_bits") == 1  # rank 0 alone prints the record
    assert (a["eval_processes"], b["eval_processes"]) == (1, 2)


def test_sample_on_two_ranks_writes_every_sample_once(two_rank_run, tmp_path):
    import numpy as np

    out = tmp_path / "x.npy"
    r = torchrun("sample", two_rank_run, "-n", "9", "--solver", "ddim", "--steps", "4", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    x = np.load(out)
    assert x.shape == (9, 2) and np.isfinite(x).all()
    assert len({tuple(row) for row in x.round(6)}) == 9  # the two ranks drew different samples
    assert "by 2 processes" in r.stdout and "NFE): 4" in r.stdout


def test_a_command_that_runs_in_one_process_refuses_torchrun(two_rank_run, tmp_path):
    # What torchrun gives each process; the command refuses before it joins the others.
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    r = subprocess.run([sys.executable, "-m", "thermodiff", "--quiet", "report", str(two_rank_run), "--out",
                        str(tmp_path / "rep")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["thermodiff: error: thermodiff report runs in one process; under torchrun: "
                                     "train, evaluate, sample"], r.stderr[-2000:]
    assert not (tmp_path / "rep").exists()
    r = subprocess.run([sys.executable, "-m", "thermodiff", "--quiet", "report", str(two_rank_run)],
                       capture_output=True, text=True, env=dict(env, RANK="1"), timeout=60)
    assert r.returncode == 2 and r.stderr == ""  # rank 0 alone says it


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=`rank` among `parent`'s children."""
    try:
        children = open(f"/proc/{parent}/task/{parent}/children").read().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


# The kill test's run, and the seconds within which the job must end after the kill.
KILL_STEPS = 40
KILL_TIMEOUT = 30.0


def kill_one_rank_and_resume(out, steps: int = KILL_STEPS, timeout: float = 60.0, rank: int = 1) -> dict:
    """Start a two-rank training, SIGKILL rank `rank` once a checkpoint is on disk, then rerun
    the same command. Returns what happened: the first job's status and seconds from
    the kill to its end, its lines from thermodiff, the checkpoint's step, the rerun's
    status and final step. Used by the test below and by scripts/kill_resume.py."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "thermodiff", "--quiet", *map(str, train_args(out, steps))]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    while not (out / CHECKPOINT).exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    pid = _rank_pid(job.pid, rank)
    assert pid is not None and job.poll() is None, "the job ended before a checkpoint was written"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        raise AssertionError(f"the job did not end within {timeout} s of the kill") from None
    ended = time.monotonic() - killed
    cfg, model, meta = load_run(out, which="last")  # the checkpoint left is whole
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout * 3)
    _, final = load_checkpoint(out / CHECKPOINT)
    return {"killed_rank": rank, "status": job.returncode, "seconds_to_end": ended, "checkpoint_step": meta["step"],
            "lines": [s for s in err.splitlines() if s.startswith("thermodiff:")], "stderr": err,
            "rerun_status": rerun.returncode,
            "rerun_stdout": rerun.stdout, "rerun_stderr": rerun.stderr, "final_step": final["step"]}


def test_killing_one_rank_ends_the_job_and_the_rerun_resumes(tmp_path):
    # A checkpoint every 5 steps: rank 0, the one that writes, is killed soon after the
    # first, long before the end (scripts/kill_resume.py kills either, ten times).
    out = tmp_path / "run"
    result = kill_one_rank_and_resume(out, rank=0)
    assert result["status"] != 0 and result["seconds_to_end"] < KILL_TIMEOUT, result
    assert len(result["lines"]) == 1 and "rerun the same command to resume" in result["lines"][0], result["stderr"]
    assert result["rerun_status"] == 0, result["rerun_stderr"][-3000:]
    assert f"resuming {out} from step {result['checkpoint_step']}" in result["rerun_stdout"]
    assert result["final_step"] == KILL_STEPS
