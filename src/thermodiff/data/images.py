"""MNIST in its original IDX files, and its binarisation for the binomial process.

The IDX format (LeCun et al.) is a small header and a flat array:

    offset 0  2 bytes       always 0x00 0x00
    offset 2  1 byte        element type: 0x08 uint8, 0x09 int8, 0x0B int16,
                            0x0C int32, 0x0D float32, 0x0E float64
    offset 3  1 byte        number of dimensions d (3 for images, 1 for labels)
    offset 4  4 d bytes     the size of each dimension, outermost first
    then                    the elements in C order

Every multi-byte number, header and data alike, is big-endian. MNIST images are
``0x00000803`` N 28 28 followed by N*784 bytes (0 background, 255 full ink);
labels are ``0x00000801`` N followed by N bytes 0..9; image i goes with label i.
The files are usually distributed gzip-compressed; ``read_idx`` recognises gzip
by its magic bytes (1f 8b), not by the file name.

Checks, each a one-line ``DataError`` naming the file: the file exists and can
be read; a gzip stream is intact (CRC, not truncated); the two leading zero
bytes; a known type code; at least one dimension; a complete header; exactly
prod(dims) elements of data (a short file reports the bytes expected and found,
and trailing bytes are refused too, since either means the file is not what its
header says). ``load_mnist`` then checks that the images are 28x28 unsigned
bytes, the labels unsigned bytes in 0..9, and that both files hold the same N.

Binarisation (for binary data, e.g. the binomial process):

- ``threshold``: a pixel is 1 where its intensity exceeds half, pixel/255 > 0.5,
  i.e. pixel >= 128. Deterministic; about 13% of MNIST pixels are ink.
- ``stochastic``: each pixel is one Bernoulli draw with p = pixel/255, made once
  from ``np.random.default_rng(seed)``; the static binarisation of Salakhutdinov
  & Murray (2008), the usual convention for likelihoods on binary MNIST. The
  draw is fixed, deterministic in the seed, and is not redrawn per epoch, so the
  data set, and a likelihood reported on it, is the same in every run with the
  same seed.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from thermodiff.errors import ConfigError, DataError, one_line

__all__ = [
    "BINARIZE_METHODS",
    "IDX_TYPES",
    "MNIST_FILES",
    "binarize",
    "load_binary_mnist",
    "load_mnist",
    "read_idx",
]

# IDX element type codes -> big-endian numpy dtypes, as the format defines them.
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Canonical names of the four files as published (images, labels) per split.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

BINARIZE_METHODS = ("threshold", "stochastic")

MNIST_IMAGE_SHAPE = (28, 28)
MNIST_CLASSES = 10

_GZIP_MAGIC = b"\x1f\x8b"

# The held-out split's stochastic binarisation is drawn with seed + this offset,
# so train and test never share a random stream (the same offset the generated
# data sets in thermodiff.data use between their training and held-out draws).
_TEST_SEED_OFFSET = 1_000_003

_ROOT_HINT = "set data.root to the folder holding the MNIST IDX files"


def read_file(path: Path) -> bytes:
    """A data file's bytes, or a one-line DataError naming it (missing, not a regular
    file, unreadable). Shapes: none."""
    _check_regular_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({one_line(exc)})") from None


# A deflate stream expands at most about 1032-fold: a header declaring more data than
# the compressed file can hold is refused before anything is read or allocated.
_MAX_DEFLATE_RATIO = 1032
# Trailing bytes are counted up to this many, then the file is refused unread.
_TRAILING_COUNT_LIMIT = 1 << 20
_CHUNK = 1 << 24


def _open(path: Path):
    """(a binary stream of the file's contents, decompressed if it is gzip; the most
    bytes it can yield). Shapes: none."""
    _check_regular_file(path)
    try:
        size = path.stat().st_size
        handle = open(path, "rb")
        magic = handle.read(len(_GZIP_MAGIC))
        handle.seek(0)
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({one_line(exc)})") from None
    if magic != _GZIP_MAGIC:
        return handle, size
    handle.close()
    try:
        return gzip.open(path, "rb"), size * _MAX_DEFLATE_RATIO + 1024
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({one_line(exc)})") from None


def _read_exactly(path: Path, stream, n: int) -> bytes:
    """Up to n bytes of the stream (fewer only at its end), read in bounded chunks.

    Raises a one-line DataError for a corrupt gzip stream (truncated, bad CRC, bad
    deflate data) or an unreadable file."""
    parts, left = [], n
    try:
        while left > 0:
            part = stream.read(min(left, _CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
    # EOFError: stream cut short; BadGzipFile (an OSError): bad header or CRC;
    # zlib.error: corrupt deflate data.
    except (EOFError, OSError, zlib.error) as exc:
        what = "corrupt gzip stream" if isinstance(stream, gzip.GzipFile) else "cannot read file"
        raise DataError(f"{path}: {what} ({one_line(exc)})") from None
    return b"".join(parts)


def _check_regular_file(path: Path) -> None:
    """A one-line DataError naming a missing path or one that is not a regular file."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a native-endian array.

    Gzip is recognised by its magic bytes, whatever the file's name. The header is
    read first and then exactly the bytes it declares, so a small compressed file
    cannot expand into more memory than its own header asks for (and a header cannot
    ask for more than the compressed file could hold). Raises a one-line DataError
    starting with the path for a missing or unreadable file, a corrupt or truncated
    gzip stream, a bad magic number, an unknown type code, no dimensions, a
    truncated header, or data that are shorter or longer than the header's
    dimensions require.

    Shapes: file with dims (d1, ..., dk) -> (d1, ..., dk), dtype from the type
    code (uint8, int8, int16, int32, float32, float64), native byte order.
    """
    path = Path(path)
    stream, most = _open(path)
    with stream:
        buf = _read_exactly(path, stream, 4)
        if not buf:
            raise DataError(f"{path}: file is empty")
        if len(buf) < 4:
            raise DataError(f"{path}: not an IDX file ({len(buf)} bytes, shorter than the 4-byte magic number)")
        zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
        if zero0 != 0 or zero1 != 0:
            raise DataError(
                f"{path}: not an IDX file (magic number 0x{buf[:4].hex()} does not start with two zero bytes)"
            )
        if code not in IDX_TYPES:
            known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
            raise DataError(f"{path}: unknown IDX element type code 0x{code:02X}; known codes are {known}")
        if ndim == 0:
            raise DataError(f"{path}: IDX header declares 0 dimensions; expected at least 1")
        header = 4 + 4 * ndim
        buf += _read_exactly(path, stream, header - 4)
        if len(buf) < header:
            raise DataError(
                f"{path}: truncated IDX header: {ndim} dimensions need {header} header bytes, the file holds {len(buf)}"
            )
        dims = struct.unpack(f">{ndim}I", buf[4:header])
        dtype = IDX_TYPES[code]
        # Python integers: the product of four 32-bit sizes can overflow int64, and the
        # comparison with what the file can hold must come before anything is allocated.
        count = math.prod(dims)
        expected = count * dtype.itemsize
        if expected > most - header:
            found = (f"more than a compressed file of {path.stat().st_size} bytes can hold"
                     if isinstance(stream, gzip.GzipFile) else f"found {most - header}")
            raise DataError(f"{path}: truncated IDX data: shape {dims} of {dtype.name} needs {expected} bytes, {found}")
        data = _read_exactly(path, stream, expected)
        found = len(data)
        if found < expected:
            raise DataError(
                f"{path}: truncated IDX data: shape {dims} of {dtype.name} needs {expected} bytes, found {found}"
            )
        # Reading on to the end checks a gzip stream's CRC; what follows the data is
        # counted only up to a bound (a stream of trailing zeros can be enormous).
        trailing = len(_read_exactly(path, stream, _TRAILING_COUNT_LIMIT + 1))
    if trailing:
        many = f"more than {_TRAILING_COUNT_LIMIT}" if trailing > _TRAILING_COUNT_LIMIT else str(trailing)
        raise DataError(
            f"{path}: {many} trailing bytes after the IDX data (shape {dims} of {dtype.name} needs {expected} bytes)"
        )
    try:
        arr = np.frombuffer(data, dtype=dtype, count=count).reshape(dims)
    except ValueError as exc:  # e.g. more dimensions than numpy supports
        raise DataError(f"{path}: cannot hold IDX data of shape {dims} ({one_line(exc)})") from None
    # astype copies: the result is writable and owns its memory (frombuffer's view
    # of the bytes object is read-only), and in native byte order so that torch
    # and every numpy routine take it as it is.
    return arr.astype(dtype.newbyteorder("="))


def _candidates(name: str) -> list[str]:
    """File names tried for one canonical MNIST name, canonical first: the older
    dotted form (``train-images.idx3-ubyte.gz``) and the uncompressed files."""
    stem = name[: -len(".gz")]
    dotted = stem.replace("-idx", ".idx")
    return [name, dotted + ".gz", stem, dotted]


def _find(root: Path, name: str) -> Path:
    for candidate in _candidates(name):
        path = root / candidate
        if path.is_file():
            return path
    others = ", ".join(_candidates(name)[1:])
    raise DataError(f"{root}: MNIST file {name} not found (nor {others}); {_ROOT_HINT}")


def load_mnist(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one MNIST split from the folder ``root`` holding its IDX files.

    ``split`` is "train" (60000 images) or "test" (10000). The files are looked up
    by the names in MNIST_FILES, else their dotted or uncompressed variants.
    Raises DataError for a missing folder or file (naming both, with a hint about
    ``data.root``), a malformed file, images that are not 28x28 unsigned bytes,
    labels that are not unsigned bytes in 0..9, or files of different lengths;
    ConfigError for an unknown split.

    Shapes: -> images (N, 28, 28) uint8 in 0..255, labels (N,) int64 in 0..9
    (int64 because that is what torch's embeddings and losses index with).
    """
    if split not in MNIST_FILES:
        raise ConfigError(f"unknown MNIST split {split!r}; choose one of {', '.join(MNIST_FILES)}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found; {_ROOT_HINT}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; {_ROOT_HINT}")
    images_name, labels_name = MNIST_FILES[split]
    images_path = _find(root, images_name)
    labels_path = _find(root, labels_name)

    images = read_idx(images_path)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: MNIST images must be unsigned bytes (IDX type 0x08), got {images.dtype}")
    if images.ndim != 3 or images.shape[1:] != MNIST_IMAGE_SHAPE:
        raise DataError(f"{images_path}: expected MNIST images of shape (N, 28, 28), got {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: file holds no images")

    labels = read_idx(labels_path)
    if labels.dtype != np.uint8:
        raise DataError(f"{labels_path}: MNIST labels must be unsigned bytes (IDX type 0x08), got {labels.dtype}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected MNIST labels of shape (N,), got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels, but {images_path} holds {images.shape[0]} images")
    bad = labels >= MNIST_CLASSES
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{labels_path}: {int(bad.sum())} labels outside 0..9, first at index {first} (value {int(labels[first])})"
        )
    return images, labels.astype(np.int64)


def _check_method(method: str) -> None:
    if method not in BINARIZE_METHODS:
        raise ConfigError(f"unknown binarisation {method!r}; choose one of {', '.join(BINARIZE_METHODS)}")


def _check_seed(seed: int) -> int:
    # default_rng refuses negative seeds; bool is an int to Python but never a seed.
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"stochastic binarisation needs a non-negative integer seed (data.seed), got {seed!r}")
    return int(seed)


def binarize(images: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Binary images from 8-bit ones.

    ``threshold``: 1 where pixel/255 > 0.5 (pixel >= 128), else 0; ``seed`` unused.
    ``stochastic``: 1 with probability pixel/255, one draw per pixel from
    ``np.random.default_rng(seed)``, made once: the result is a fixed function of
    the images and the seed (pixel 0 is always 0, pixel 255 always 1).
    Raises ConfigError for an unknown method or a seed that is not a non-negative
    integer, DataError for images that are not uint8.

    Shapes: images (N, ...) uint8 -> (N, ...) float64 of 0.0 and 1.0.
    """
    _check_method(method)
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"binarize: expected 8-bit images (uint8, 0..255), got dtype {images.dtype}")
    if method == "threshold":
        return (images > 127).astype(np.float64)
    u = np.random.default_rng(_check_seed(seed)).random(images.shape)
    # u < pixel/255 written as 255 u < pixel, in place: the result overwrites the
    # uniforms, so the full training set needs one float64 array, not three.
    u *= 255.0
    return np.less(u, images, out=u)


def load_binary_mnist(
    root: str | os.PathLike, method: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both MNIST splits, binarised, in the project's image layout (N, C, H, W).

    The training set is binarised with ``seed``, the test set with
    ``seed + 1_000_003``, so that a stochastic binarisation never draws the two
    sets from the same random stream. Raises as ``load_mnist`` and ``binarize``;
    an unknown method or a bad seed is reported before any file is read.

    Shapes: -> train (N, 1, 28, 28) float64 of 0/1, test (M, 1, 28, 28),
    train_labels (N,) int64, test_labels (M,) int64; N = 60000, M = 10000 for MNIST.
    """
    _check_method(method)
    if method == "stochastic":
        seed = _check_seed(seed)
    train_images, train_labels = load_mnist(root, "train")
    test_images, test_labels = load_mnist(root, "test")
    train = binarize(train_images, method, seed)
    # The seed is unused by the threshold, so only a stochastic run offsets it.
    test = binarize(test_images, method, seed + _TEST_SEED_OFFSET if method == "stochastic" else seed)
    # A single channel axis: the images enter the networks as (N, C, H, W).
    return train[:, None], test[:, None], train_labels, test_labels


def downsample_levels(images: np.ndarray, factor: int) -> np.ndarray:
    """Area averaging by `factor` in each direction, rounded back to 8-bit levels.

    Shapes: images (N, H, W) uint8 with H, W divisible by factor -> (N, H / factor,
    W / factor) uint8.
    """
    n, h, w = images.shape
    if h % factor or w % factor:
        raise DataError(f"images of {h} x {w} pixels do not divide into {factor} x {factor} blocks")
    blocks = images.reshape(n, h // factor, factor, w // factor, factor).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def small_mnist_vectors(root: str | os.PathLike, n: int, factor: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The `small-data` benchmark's arrays: the first n MNIST training and test images,
    area-averaged by `factor` (28 x 28 -> 14 x 14 for 2), as 8-bit levels dequantised
    once by uniform noise in [0, 1) (seeded), flattened to vectors.

    Shapes: -> train (n, 784 / factor^2), test (n, 784 / factor^2) float64.
    """
    rng = np.random.default_rng(_check_seed(seed))
    out = []
    for split in ("train", "test"):
        images = downsample_levels(load_mnist(root, split)[0][:n], factor)
        x = images.reshape(images.shape[0], -1).astype(np.float64)
        out.append(x + rng.random(x.shape))
    return out[0], out[1]
