"""What several test files share, in one place, so that no test file imports another.

Fixtures, for what runs processes or costs time (request them by name):
- ``run``: the command line ``python -m thermodiff --quiet ...`` in a subprocess;
  ``cli``: the same in this process (fast; for the many one-line-error cases).
- ``mixture_run``, ``heartbeat_run``: tiny trained run folders with a known density
  (the iw-mixture and heartbeat configs, 20 steps), trained once per session.

Plain names, for pure functions and constants that need no setup and are also used
where a fixture cannot reach (``skipif`` and ``parametrize`` arguments, module-level
helpers of a test file); import them with ``from conftest import ...``:
- the command line's contract: ``CONTRACT_KEYS``, ``_one_line_error``;
- ``MNIST_ROOT``, where the real MNIST files live when a machine has them;
- the Gaussian oracle of ``test_bound``: ``Oracle``, ``oracle_model``;
- binary vectors by enumeration (D = 3, all 2^D states): ``D``, ``STATES``, ``PROBS``,
  ``bern_table``, ``step_matrix``, ``state_transition``, ``exact_model``,
  ``model_likelihood``;
- network checks: ``_inputs``, ``assert_float64_agrees``, ``fit_fixed_target``.

pytest rewrites the asserts of a conftest, so the helpers that assert report values
as a test's own asserts do.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

# The feature classifiers that benchmarks train (``bench.cache_dir``) go to a folder of
# the test session, not to the user's cache; subprocesses inherit it.
os.environ.setdefault("THERMODIFF_CACHE", tempfile.mkdtemp(prefix="thermodiff-test-cache-"))

# -- the command line -----------------------------------------------------------------

# The fields `evaluate --json` promises (DESIGN section 4).
CONTRACT_KEYS = ("K_bits", "K_bits_scaled", "L_null_bits", "K_minus_L_null_bits", "bits_per_dim",
                 "stderr_bits", "n_examples", "terms_bits")


def _run_cli(*args, cwd=None, timeout=120):
    """`thermodiff --quiet ARGS` in a fresh interpreter; the CompletedProcess, text mode."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "thermodiff", "--quiet", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def run():
    """The command line runner: run(*args, cwd=None, timeout=120) -> CompletedProcess."""
    return _run_cli


@pytest.fixture
def cli(capsys):
    """The command line in this process: cli(*args) -> an object with returncode, stdout
    and stderr, like ``run``'s, in milliseconds instead of a second of torch import.
    An exception that escapes ``main`` (a traceback a user would see) fails the test."""
    from types import SimpleNamespace

    from thermodiff.cli import main

    def call(*args):
        capsys.readouterr()
        try:
            code = main(["--quiet", *map(str, args)])
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return call


def _one_line_error(r, needle):
    """The command failed with exit status 2 and one line on stderr that names `needle`."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0], lines[0]


# Settings of the tiny runs behind `mixture_run` and `heartbeat_run`.
TINY_RUN = ["--set", "model.width=16", "--set", "model.depth=1", "--set", "train.batch_size=64",
            "--set", "train.max_seconds=0", "--set", "data.n_train=500", "--set", "data.n_test=300",
            "--set", "eval.n_t=4", "--set", "process.T=12", "--set", "eval.iw_examples=30"]


def _tiny_run(config, out):
    from thermodiff.config import config_path

    r = _run_cli("train", config_path(config), "--out", out, "--steps", 20, *TINY_RUN)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def mixture_run(tmp_path_factory):
    """A run folder trained 20 steps on the iw-mixture config (2-d, exact density known)."""
    return _tiny_run("iw-mixture", tmp_path_factory.mktemp("runs") / "mix")


@pytest.fixture(scope="session")
def heartbeat_run(tmp_path_factory):
    """A run folder trained 20 steps on the heartbeat config (20 bits, exact density known)."""
    return _tiny_run("heartbeat", tmp_path_factory.mktemp("runs") / "hb")


# -- data on disk ---------------------------------------------------------------------

MNIST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# -- the Gaussian oracle --------------------------------------------------------------


class Oracle(nn.Module):
    """The exact x0 or eps prediction for N(0, s^2) data (not a network: reads the schedule)."""

    def __init__(self, model_ref, s2, kind):
        super().__init__()
        self.ref = [model_ref]
        self.s2 = s2
        self.kind = kind
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        abar = self.ref[0].abar_at(t.to(torch.float64)).to(x.dtype)[:, None]
        v = abar * self.s2 + 1 - abar
        if self.kind == "x0":
            return abar.sqrt() * self.s2 * x / v
        return (1 - abar).sqrt() * x / v


def oracle_model(schedule, s2, kind, variance, D=2, decoder="paper"):
    """A float64 DiffusionModel for N(0, s2 I) data in D dimensions with the exact
    ``kind`` ("x0" or "eps") prediction and the given variance and decoder."""
    from thermodiff.model import DiffusionModel, ModelSpec

    model = DiffusionModel(nn.Identity(), schedule, ModelSpec(kind, variance, decoder), (D,), 1)
    model.net = Oracle(model, s2, kind)
    return model.double()


# -- binary vectors by enumeration ----------------------------------------------------

D = 3
STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=torch.float64)  # (8, D)
PROBS = torch.tensor([0.30, 0.02, 0.08, 0.15, 0.05, 0.20, 0.12, 0.08], dtype=torch.float64)


def bern_table(logits):
    """Probabilities of every state under a product of Bernoullis. (B, D) -> (B, 2^D)."""
    p1 = torch.sigmoid(logits)[:, None, :]
    p0 = torch.sigmoid(-logits)[:, None, :]
    return torch.where(STATES[None] == 1, p1, p0).prod(-1)


def step_matrix(a):
    """Per-bit transition matrix of a hop of kept fraction a: M[i, j] = q(x_t = j | x_s = i)."""
    return torch.tensor([[a + (1 - a) / 2, (1 - a) / 2], [(1 - a) / 2, a + (1 - a) / 2]], dtype=torch.float64)


def state_transition(a):
    """q(x_t = state j | x_s = state i) over all 2^D states, (8, 8)."""
    m = step_matrix(a)
    idx = STATES.long()
    return m[idx[:, None, :], idx[None, :, :]].prod(-1)


def exact_model(support, probs, T, decoder="learned"):
    """The binomial model with the exact x0 prediction for `probs` over the rows of `support`."""
    from thermodiff.oracle import table_model

    return table_model(support, probs, T, decoder)


def model_likelihood(model):
    """p_theta(x0) of the model's reverse chain for every state, by matrix products (D = 3)."""
    from thermodiff.parametrization import binomial_reverse_logits

    abar = model.schedule.abar()
    T = model.schedule.T
    p = torch.full((8,), 1 / 8, dtype=torch.float64)  # x_T ~ B(1/2)
    for t in range(T, 0, -1):
        out = model(STATES, torch.full((8,), t / T, dtype=torch.float64))
        lp, _ = binomial_reverse_logits("x0", out, STATES, abar[t - 1].expand(8), abar[t].expand(8))
        p = p @ bern_table(lp)  # rows: x_t, columns: x_{t-1}
    return p


# -- network checks -------------------------------------------------------------------


def _inputs(b: int, dim: int, dtype=torch.float32):
    """A fixed batch of b inputs of dim features and times in [0, 1)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, dim, generator=g, dtype=dtype), torch.rand(b, generator=g, dtype=dtype)


def assert_float64_agrees(net: torch.nn.Module, dim: int) -> None:
    """The net cast to float64 runs in float64 and agrees with its float32 self."""
    x, t = _inputs(2, dim)
    with torch.no_grad():
        out32 = net(x, t)
        out64 = net.double()(x.double(), t.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-4)


def fit_fixed_target(net, out_dim: int, lr: float, steps: int) -> tuple[float, float]:
    """Adam on a fixed random regression target at t = 0.3 for 4 random 8x8 inputs:
    (first loss, final loss)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 64, generator=g)
    target = torch.randn(4, out_dim, generator=g)
    t = torch.full((4,), 0.3)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = (net(x, t) - target).square().mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    return first, (net(x, t) - target).square().mean().item()
