"""CIFAR-10 in its "python version" batch files, read without running pickled code.

The archive ``cifar-10-python.tar.gz`` unpacks to a folder ``cifar-10-batches-py``
holding six batches (``data_batch_1`` .. ``data_batch_5``: 50000 training images;
``test_batch``: 10000 test images) and ``batches.meta``. Each batch is a pickle
(written by Python 2) of a dict with byte-string keys:

    b"data"         numpy uint8 array (N, 3072): one image per row, the 1024 red
                    values, then the 1024 green, then the 1024 blue, each channel
                    a 32x32 image in row-major order, so that row k reshaped to
                    (3, 32, 32) is image k with image[c, i, j] = data[k, c*1024 + i*32 + j]
    b"labels"       list of N ints in 0..9 (class names in CIFAR10_CLASSES)
    b"batch_label"  bytes, e.g. b"training batch 1 of 5"
    b"filenames"    list of N bytes

Unpickling can run arbitrary code: a pickle names functions that are called while
it loads. ``read_cifar_batch`` therefore loads with an unpickler that resolves
only the few names a batch needs (numpy's array reconstruction, under its
numpy 1 and numpy 2 module paths, ``numpy.ndarray``, ``numpy.dtype``, and, as
Python 3 pickles bytes at protocol 2, ``_codecs.encode`` for latin-1 only and
``bytes`` without arguments) and refuses every other name, so a malicious file is reported, never executed.
Strings are loaded with ``encoding="bytes"``, as Python 2 pickles require; keys
written as str by Python 3 are accepted too.

Checks, each a one-line ``DataError`` naming the file: the file exists and can be
read; it is a complete pickle with nothing after it; it holds a dict with "data"
and "labels"; data is a uint8 array of shape (N, 3072) with N > 0; labels are N
integers in 0..9. ``load_cifar10`` finds the batches in ``root`` or in
``root/cifar-10-batches-py``.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from thermodiff.data.images import read_file
from thermodiff.errors import ConfigError, DataError, one_line

__all__ = ["CIFAR10_CLASSES", "CIFAR10_FILES", "load_cifar10", "read_cifar_batch"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# The batch files of each split, in the order their images are concatenated.
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

CIFAR_IMAGE_SHAPE = (3, 32, 32)
_ROW_LENGTH = 3 * 32 * 32

# The folder name inside the published archive.
_SUBFOLDER = "cifar-10-batches-py"

_ROOT_HINT = "set data.root to the folder holding the CIFAR-10 python batches"


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode`` as protocol-2 pickles use it (bytes saved as latin-1 text),
    and nothing else: other codecs have no business in a batch file."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refuses _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    """``bytes()``, as protocol-2 pickles write b"" (as a call of ``bytes`` with no
    arguments); with arguments ``bytes`` could allocate at will, so none are taken."""
    if args:
        raise pickle.UnpicklingError("refuses bytes() with arguments")
    return b""


def _array_reconstruct():
    # numpy 2 moved numpy.core to numpy._core (numpy.core still imports, with a
    # deprecation warning); a batch may name either, so both resolve here.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    # Protocols 0-2 name builtins by their Python 2 module, __builtin__.
    ("builtins", "bytes"): lambda: _empty_bytes,
    ("__builtin__", "bytes"): lambda: _empty_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names a CIFAR batch needs."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise DataError(f"{self.path}: refuses to load pickled object {module}.{name}")
        return resolve()

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: refuses to load a persistent pickle reference")


def _unpickle(path: Path):
    raw = read_file(path)
    if not raw:
        raise DataError(f"{path}: file is empty")
    stream = io.BytesIO(raw)
    try:
        obj = _BatchUnpickler(stream, path).load()
    except DataError:
        raise
    # A truncated or corrupt pickle raises any of UnpicklingError, EOFError,
    # ValueError, TypeError, KeyError, IndexError, MemoryError... all mean the same.
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch pickle ({one_line(exc)})") from None
    trailing = len(raw) - stream.tell()
    if trailing:
        raise DataError(f"{path}: {trailing} trailing bytes after the pickle")
    return obj


def _get(batch: dict, key: str, path: Path):
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path}: CIFAR-10 batch has no {key!r} entry (keys: {sorted(map(repr, batch))})")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file (e.g. ``data_batch_1``, ``test_batch``).

    Never runs code from the file: any pickled name other than numpy's array
    reconstruction is refused. Raises a one-line DataError starting with the path
    for a missing or unreadable file, a truncated or corrupt pickle, a refused
    pickled object, no dict, a missing "data" or "labels" entry, data that are not
    a uint8 array of shape (N, 3072) with N > 0, or labels that are not N
    integers in 0..9.

    Shapes: -> images (N, 3, 32, 32) uint8 (red, green, blue), labels (N,) int64
    in 0..9.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR-10 batch), got {type(batch).__name__}")
    data = _get(batch, "data", path)
    labels = _get(batch, "labels", path)

    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: CIFAR-10 data must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: CIFAR-10 data must be unsigned bytes (uint8), got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != _ROW_LENGTH:
        raise DataError(f"{path}: expected CIFAR-10 data of shape (N, {_ROW_LENGTH}), got {data.shape}")
    n = data.shape[0]
    if n == 0:
        raise DataError(f"{path}: batch holds no images")

    try:
        labels = np.asarray(labels)
    except Exception as exc:  # ragged nesting and the like
        raise DataError(f"{path}: CIFAR-10 labels are not a list of integers ({one_line(exc)})") from None
    # Kind "b" (bools) is refused with floats and strings: True is not a class index.
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataError(f"{path}: CIFAR-10 labels must be a list of integers, got {labels.dtype} of shape {labels.shape}")
    if labels.shape[0] != n:
        raise DataError(f"{path}: {labels.shape[0]} labels for {n} images")
    bad = (labels < 0) | (labels >= len(CIFAR10_CLASSES))
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{path}: {int(bad.sum())} labels outside 0..9, first at index {first} (value {int(labels[first])})"
        )
    # reshape is exact because each row is the three channel planes one after the
    # other, each row-major; ascontiguousarray gives an array that owns its data.
    images = np.ascontiguousarray(data.reshape(n, *CIFAR_IMAGE_SHAPE))
    return images, labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 split from the python batch files under ``root``.

    ``split`` is "train" (data_batch_1 .. data_batch_5, concatenated in that order)
    or "test" (test_batch). The batches are looked for in ``root``, else in
    ``root/cifar-10-batches-py`` (the archive's own folder). Raises DataError for a
    missing folder or batch file (with a hint about ``data.root``) or anything
    ``read_cifar_batch`` refuses; ConfigError for an unknown split.

    Shapes: -> images (N, 3, 32, 32) uint8, labels (N,) int64 in 0..9; N = 50000
    for train and 10000 for test with the published files.
    """
    if split not in CIFAR10_FILES:
        raise ConfigError(f"unknown CIFAR-10 split {split!r}; choose one of {', '.join(CIFAR10_FILES)}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found; {_ROOT_HINT}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; {_ROOT_HINT}")
    names = CIFAR10_FILES[split]
    # One folder for the whole split: batches are never mixed from two places.
    folder = next(
        (d for d in (root, root / _SUBFOLDER) if any((d / name).is_file() for name in names)),
        None,
    )
    if folder is None:
        raise DataError(f"{root}: no CIFAR-10 {split} batches ({', '.join(names)}) here or in {_SUBFOLDER}/; {_ROOT_HINT}")
    for name in names:
        if not (folder / name).is_file():
            raise DataError(f"{folder}: CIFAR-10 batch {name} not found; {_ROOT_HINT}")
    batches = [read_cifar_batch(folder / name) for name in names]
    if len(batches) == 1:
        return batches[0]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
