"""Reading, writing and splitting user data arrays.

Data sets are arrays with examples along the first axis: (N, D) for vectors, or
(N, H, W, ...) for images. Every way a file can be unusable (missing, malformed,
empty, non-numeric, NaN or inf) is reported as a one-line ``DataError`` naming
the file, because these are user mistakes, not bugs.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from thermodiff.atomic import atomic_write
from thermodiff.errors import DataError, one_line

__all__ = ["load_array", "save_array", "split_holdout", "interpret", "image_layout", "KINDS", "SUPPORTED_EXTENSIONS"]

# How an array's values are read (data.kind): "auto" decides by dtype and shape.
KINDS = ("auto", "vectors", "levels", "images")
MAX_CHANNELS = 4

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".csv", ".txt")

# Keys tried, in order, in an .npz holding several arrays.
_NPZ_KEYS = ("x", "data")

_NPY_MAGIC = b"\x93NUMPY"


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{path}: unknown extension {path.suffix or '(none)'!r}; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return ext


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_npy(path: Path) -> np.ndarray:
    # Without this check numpy would report a non-.npy file as "pickled data".
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({one_line(exc)})") from None
    if magic != _NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file (no NUMPY header)")
    try:
        # allow_pickle=False: unpickling object arrays can run arbitrary code.
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for malformed headers
        raise DataError(f"{path}: cannot read .npy file ({one_line(exc)})") from None
    return arr


def _read_npz(path: Path) -> np.ndarray:
    # Without this check numpy would report a non-zip file as "pickled data".
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (not a zip archive)")
    try:
        # allow_pickle=False: pickled members would run arbitrary code on load.
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # BadZipFile, ValueError, OSError...
        raise DataError(f"{path}: cannot read .npz file ({one_line(exc)})") from None
    with archive:
        keys = list(archive.files)
        if not keys:
            raise DataError(f"{path}: .npz archive holds no arrays")
        if len(keys) == 1:
            key = keys[0]
        else:
            key = next((k for k in _NPZ_KEYS if k in keys), None)
            if key is None:
                raise DataError(
                    f"{path}: .npz archive holds {len(keys)} arrays {keys}; "
                    f"name the data array 'x' or 'data', or save it alone"
                )
        try:
            arr = archive[key]
        except Exception as exc:  # a corrupt member, or an object array needing pickle
            raise DataError(f"{path}: cannot read array {key!r} from .npz file ({one_line(exc)})") from None
    # NpzFile hands back raw bytes for zip members that are not .npy files.
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: member {key!r} of the .npz archive is not a .npy array")
    return arr


# Separators a spreadsheet may use instead of the expected one (semicolons: locales
# with a decimal comma).
_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _separator_hint(cell: str, delimiter: str | None) -> str:
    """' (the values are separated by semicolons ...)' where a cell holds another separator."""
    for sep, name in _OTHER_SEPARATORS.items():
        if sep != delimiter and sep in cell:
            expected = "commas" if delimiter == "," else "whitespace"
            return f" (the values look separated by {name}; expected {expected})"
    return ""


def _numbers_by_other_separator(line: str, delimiter: str | None) -> str | None:
    """The name of another separator that splits `line` into numbers, else None: such
    a line is data written with the wrong separator, not a header."""
    for sep, name in _OTHER_SEPARATORS.items():
        if sep != delimiter and sep in line and all(_is_number(c) for c in line.split(sep)):
            return name
    return None


def _locate_text_error(path: Path, lines: list[str], kept: list[int], start: int, delimiter: str | None) -> None:
    """Find the first ragged row or non-numeric cell and raise a DataError naming
    its line. Only run after the fast parser has failed, so the per-line Python
    scan costs nothing on good files."""
    n_cols = None
    for i in kept[start:]:
        cells = lines[i].split(delimiter)
        if n_cols is None:
            n_cols = len(cells)
        elif len(cells) != n_cols:
            raise DataError(f"{path}: line {i + 1} has {len(cells)} columns, expected {n_cols}")
        for j, cell in enumerate(cells):
            if not _is_number(cell):
                raise DataError(
                    f"{path}: line {i + 1}, column {j + 1}: non-numeric value {cell.strip()!r}"
                    + _separator_hint(cell, delimiter)
                )


def _read_text(path: Path, ext: str) -> np.ndarray:
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs write first: left
        # in, it would make the first number unreadable (and the first row a "header").
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read text file ({one_line(exc)})") from None
    lines = text.splitlines()
    kept = [i for i, line in enumerate(lines) if line.strip()]  # blank lines are ignored
    if not kept:
        raise DataError(f"{path}: file holds no data")
    first = lines[kept[0]]
    # .csv is comma-separated; .txt may be either (np.savetxt writes spaces by default).
    delimiter = "," if ext == ".csv" or "," in first else None
    # A header is a first line none of whose cells is a number; a line mixing names
    # and numbers is a malformed data line and is reported as such below.
    start = 1 if not any(_is_number(cell) for cell in first.split(delimiter)) else 0
    other = _numbers_by_other_separator(first, delimiter) if start else None
    if other:
        expected = "commas" if delimiter == "," else "commas or whitespace"
        raise DataError(f"{path}: line {kept[0] + 1}: the values are separated by {other}; expected {expected}")
    if start == len(kept):
        raise DataError(f"{path}: file holds a header line but no data")
    body = [lines[i] for i in kept[start:]]
    try:
        return np.loadtxt(body, delimiter=delimiter, dtype=np.float64, ndmin=2, comments=None)
    except ValueError as exc:
        _locate_text_error(path, lines, kept, start, delimiter)
        raise DataError(f"{path}: cannot parse text file ({one_line(exc)})") from None


def _validate(path: Path, arr: np.ndarray, as_float: bool = True) -> np.ndarray:
    if arr.dtype.fields is not None or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise DataError(f"{path}: array has non-numeric dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{path}: array has complex dtype {arr.dtype}; data must be real")
    if arr.ndim == 0:
        raise DataError(f"{path}: array is a 0-d scalar; expected examples along the first axis")
    if arr.ndim == 1:
        arr = arr[:, None]  # a 1-D array is N one-dimensional examples
    if arr.size == 0:
        raise DataError(f"{path}: array is empty (shape {arr.shape})")
    stored = arr
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = ~finite.reshape(arr.shape[0], -1).all(axis=1)
        n_bad = int(arr.size - np.count_nonzero(finite))
        raise DataError(
            f"{path}: {n_bad} NaN or inf value(s) in {int(bad_rows.sum())} row(s), first at row {int(np.argmax(bad_rows))} (0-based)"
        )
    return arr if as_float else stored


def load_array(path: str | os.PathLike, as_float: bool = True) -> np.ndarray:
    """Load a data array, examples along the first axis, as float64 (`as_float` False:
    in its stored dtype, which tells 8-bit images from others: ``interpret``).

    Formats: .npy; .npz (its only array, else the array named 'x' or 'data');
    .csv/.txt (comma-separated, or whitespace-separated for .txt; an optional first
    line of non-numeric column names; blank lines ignored). A 1-D array becomes
    (N, 1); arrays with more axes (e.g. images) are returned as they are.

    Raises DataError (naming the path) for a missing file, unknown extension,
    malformed file, non-numeric or complex dtype, 0-d or empty array, NaN or inf.

    Shapes: file -> (N, D) or (N, ...) float64. Units: as stored.
    """
    path = Path(path)
    ext = _extension(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if ext == ".npy":
        arr = _read_npy(path)
    elif ext == ".npz":
        arr = _read_npz(path)
    else:
        arr = _read_text(path, ext)
    return _validate(path, arr, as_float)


def split_holdout(x: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split examples at random into a training part and a held-out part.

    ``fraction`` of the N examples (rounded to the nearest integer) are held out;
    the split depends only on N, ``fraction`` and ``seed``. Each part keeps the
    original order of its examples.

    Shapes: x (N, ...) -> train (N - M, ...), test (M, ...), M = round(fraction N).
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise DataError("split_holdout: expected an array with examples along the first axis, got a scalar")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"split_holdout: seed must be an integer, got {seed!r}")
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise DataError(f"split_holdout: fraction must be a number, got {fraction!r}") from None
    if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
        raise DataError(f"split_holdout: fraction must be in (0, 1), got {fraction!r}")
    n = x.shape[0]
    n_test = int(round(fraction * n))
    if n_test < 1 or n_test > n - 1:
        raise DataError(
            f"split_holdout: holding out {fraction!r} of {n} examples leaves an empty part ({n - n_test} train, {n_test} test)"
        )
    perm = np.random.default_rng(int(seed)).permutation(n)
    test_idx = np.sort(perm[:n_test])
    train_idx = np.sort(perm[n_test:])
    return x[train_idx], x[test_idx]


def _write_payload(handle, ext: str, x: np.ndarray) -> None:
    if ext == ".npy":
        np.save(handle, x, allow_pickle=False)
    elif ext == ".npz":
        np.savez(handle, x=x)
    else:
        # %.17g round-trips every float64 exactly.
        text = io.StringIO()
        np.savetxt(text, x if x.ndim == 2 else x[:, None], fmt="%.17g", delimiter=",")
        handle.write(text.getvalue().encode("utf-8"))


def save_array(path: str | os.PathLike, x: np.ndarray) -> None:
    """Write an array to .npy, .npz (under key 'x'), or .csv/.txt (comma-separated,
    17 significant digits, so float64 round-trips exactly), atomically: the data go
    to a temporary file in the same directory that then replaces ``path``, so an
    interrupted write never leaves a partial file.

    Shapes: x (N, ...) for .npy/.npz, (N,) or (N, D) for .csv/.txt -> file.
    """
    path = Path(path)
    ext = _extension(path)
    try:
        x = np.asarray(x)
    except Exception as exc:
        raise DataError(f"{path}: cannot convert data to an array ({one_line(exc)})") from None
    if x.dtype == object:
        raise DataError(f"{path}: cannot save an object array")
    if ext in (".csv", ".txt") and x.ndim not in (1, 2):
        raise DataError(f"{path}: text formats hold 1-D or 2-D arrays, got shape {x.shape}; use .npy")
    directory = path.parent
    if not directory.is_dir():
        raise DataError(f"{path}: directory {directory} does not exist")
    try:
        with atomic_write(path, "wb") as handle:
            _write_payload(handle, ext, x)
    except OSError as exc:
        raise DataError(f"{path}: cannot write file ({one_line(exc)})") from None


def image_layout(shape: tuple[int, ...]) -> str | None:
    """How an array of this shape holds images: "NHW" (one channel), "NCHW" or "NHWC"
    (1 to 4 channels; channels first where the second axis could be either), or None
    (not images: vectors)."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        if 1 <= shape[1] <= MAX_CHANNELS:
            return "NCHW"
        if 1 <= shape[3] <= MAX_CHANNELS:
            return "NHWC"
    return None


def resolve_kind(x: np.ndarray, kind: str) -> str:
    """data.kind for this array: "auto" is "levels" for uint8 images, "images" for other
    images, "vectors" for the rest. Raises ConfigError for an unknown kind."""
    from thermodiff.errors import ConfigError

    if kind not in KINDS:
        raise ConfigError(f"unknown data.kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    if image_layout(x.shape) is None:
        return "vectors"
    return "levels" if x.dtype == np.uint8 else "images"


def interpret(x: np.ndarray, kind: str, what: str) -> tuple[np.ndarray, str]:
    """The array as the model sees it, and its kind (``resolve_kind``).

    - vectors: (N, D), any other shape flattened per example;
    - levels: 8-bit images, integers 0..255 (the caller dequantises them), and
    - images: continuous images, both as (N, C, H, W): (N, H, W) gains a channel axis,
      (N, H, W, C) is moved to channels first.

    Raises DataError naming `what` where the array cannot be what kind asks.

    Shapes: x (N, ...) -> (N, D) or (N, C, H, W).
    """
    kind = resolve_kind(x, kind)
    if kind == "vectors":
        return (x.reshape(x.shape[0], -1) if x.ndim > 2 else x), kind
    layout = image_layout(x.shape)
    if layout is None:
        raise DataError(f"{what}: an array of shape {x.shape} is not images (N, H, W), (N, C, H, W) or (N, H, W, C) "
                        f"with C from 1 to {MAX_CHANNELS}; set data.kind = \"vectors\" to read it as vectors")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = np.moveaxis(x, 3, 1)
    if kind == "levels":
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise DataError(f"{what}: 8-bit images must be finite numbers")
        if ((x < 0) | (x > 255) | (x != np.floor(x))).any():
            raise DataError(f"{what}: data.kind = \"levels\" needs integers from 0 to 255 (8-bit images); "
                            "set data.kind = \"images\" for continuous values")
    return np.ascontiguousarray(x), kind
