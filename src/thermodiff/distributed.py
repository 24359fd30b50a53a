"""Many processes on ``torch.distributed``: the ranks, their random streams, and the
few collectives thermodiff needs.

A process started by ``torchrun`` finds WORLD_SIZE, RANK and LOCAL_RANK in its
environment; ``init`` then joins the process group (NCCL where the device is CUDA, one
GPU per process by LOCAL_RANK; gloo on the CPU). Without torchrun nothing is
initialised, every helper here is the identity of one process, and thermodiff runs as
it always did.

Random streams: rank r draws from ``stream_seed(seed, r)``. Stream 0 is the seed
itself, so rank 0 (and one process) draws what a single process always drew; the
others come from numpy's SeedSequence, whose streams are independent by construction.
The same function numbers the batches of an evaluation, so that batch k draws the same
noise whichever rank computes it.

Every function below that communicates is collective: every rank must call it, in the
same order, or the others wait for it (``init``'s timeout, then an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from .errors import ConfigError

# How long a rank waits in one collective for the others before it gives up. A killed
# rank is noticed at once (its sockets close) and torchrun stops the others; this
# bounds the wait where a rank hangs without dying. It must cover the longest stretch
# one rank works alone: rank 0 writing a checkpoint.
TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: rank in [0, world), its index on its machine, and
    the device its tensors live on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process is one of several that torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        raise ConfigError(f"torchrun's environment lacks a valid {name}; start several processes with torchrun") from None


def init(device: torch.device) -> Ranks:
    """Join torchrun's process group (once per process) for training on `device`
    ("cpu" or "cuda"); one process: ``Ranks()`` on `device`.

    Shapes: none.
    """
    if not launched():
        return Ranks(device=device)
    world, rank, local = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many processes per node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, timeout=TIMEOUT,
                                             device_id=device if device.type == "cuda" else None)
    return Ranks(rank, world, local, device)


def current() -> Ranks:
    """The ranks of the joined process group (``Ranks()`` where none is joined)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return Ranks()
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")), dev)


def stream_seed(seed: int, index: int) -> int:
    """The seed of stream `index` of `seed`: `seed` itself for index 0, else an
    independent stream from SeedSequence((seed, index)). Shapes: none."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed) % 2**63, int(index))).generate_state(1, np.uint64)[0] >> 1)


def stream(seed: int, index: int) -> torch.Generator:
    """A CPU generator on stream `index` of `seed` (``stream_seed``)."""
    return torch.Generator().manual_seed(stream_seed(seed, index))


def shares(n: int, world: int) -> list[int]:
    """n items split over `world` ranks as evenly as can be: the first n % world ranks
    take one more. Shapes: returns a list of `world` ints summing to n."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `values` over the ranks (collective; `values` itself on
    one process). Shapes: values (K,) -> (K,), on values' device."""
    ranks = current()
    if ranks.world == 1:
        return values
    out = values.to(ranks.device, copy=True)
    torch.distributed.all_reduce(out)
    return out.to(values.device)


def barrier() -> None:
    """Wait until every rank gets here (collective; nothing on one process)."""
    if current().world > 1:
        torch.distributed.barrier()


def all_gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (collective; [obj] on one
    process). The objects travel between this job's processes only, as pickles in
    memory: nothing from a file is unpickled."""
    ranks = current()
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    torch.distributed.all_gather_object(out, obj)
    return out


def own_chunks(n_chunks: int) -> int:
    """How many of n_chunks this rank computes in ``map_chunks`` (for its progress bar)."""
    ranks = current()
    return len(range(ranks.rank, n_chunks, ranks.world))


def map_chunks(fn, n_chunks: int) -> list:
    """[fn(0), ..., fn(n_chunks - 1)] on every rank, computed across the ranks: rank r
    computes the chunks k = r, r + world, ... and the results are gathered in chunk
    order (collective). fn(k) must not depend on which rank runs it: draw chunk k's
    noise from ``stream(seed, k)``.

    Shapes: returns a list of n_chunks results.
    """
    ranks = current()
    if ranks.world == 1:
        return [fn(k) for k in range(n_chunks)]
    mine = {k: _to_cpu(fn(k)) for k in range(ranks.rank, n_chunks, ranks.world)}
    merged: dict = {}
    for part in all_gather(mine):
        merged.update(part)
    return [merged[k] for k in range(n_chunks)]


def _to_cpu(obj):
    """Tensors (in tuples, lists, dicts and dataclasses of them) moved to the CPU before
    they are gathered, so that no rank receives another rank's device."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import fields, replace

        return replace(obj, **{f.name: _to_cpu(getattr(obj, f.name)) for f in fields(obj) if f.init})
    return obj


def finish(status: int, together: bool = True) -> None:
    """End this process with `status`. together: the command succeeded here, and every
    rank's work is awaited first (collective): a barrier, so that no rank leaves while
    another still talks to it, then the process group's end (a failed rank leaves at
    once; torchrun stops the others). The exit is immediate either way. The immediate exit skips the C++ destructors at
    interpreter shutdown, where a torch thread still running aborts the process now
    and then ("terminate called without an active exception", a failed job after the
    work is done and written); every file is closed by then."""
    if together and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank went away (its
    connection closed, or the wait timed out), not a fault of this rank's own work."""
    if not launched():  # (the process group may not be joined yet: a failed rendezvous)
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("connection closed", "connection reset", "broken pipe", "timed out", "gloo", "nccl"))


__all__ = ["Ranks", "TIMEOUT", "init", "current", "launched", "stream_seed", "stream", "shares", "all_sum",
           "barrier", "all_gather", "own_chunks", "map_chunks", "finish", "lost_peer"]
