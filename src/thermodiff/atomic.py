"""Atomic file writes: every file thermodiff writes appears whole or not at all.

The content goes to a temporary file in the destination's folder, is flushed to disk,
gets the usual umask-based permissions (mkstemp makes files private) and is then
renamed over the destination with os.replace. Any failure, Ctrl-C included, removes
the temporary file and leaves an existing destination untouched.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the data are on disk before the rename makes them visible
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Yield an open file ("w" or "wb"); on success it replaces `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh
