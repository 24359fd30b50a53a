"""Class labels beside the data: read, checked and encoded as indices 0..K-1.

A labels file holds one label per example, in the examples' order: a .npy array of
integers or strings (shape (N,) or (N, 1)), or a one-column .csv/.txt file, with or
without a header line (a file of N + 1 lines for N examples has one: the header is
told by the count, since a header can look like any class name). Integer labels are
their own indices, named "0", "1", ...; string labels are indexed in sorted order
and keep their names. Class names live in the run's config (``model.class_names``),
so a sampled class can be asked for by name.

Errors are one line naming the file: a missing or empty label, a label out of
range (a negative integer, or one beyond model.num_classes), a number that is not an
integer, or a count that is not the data's.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..errors import DataError, one_line


def read_labels(path: str | Path, n: int) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """The labels of n examples from a file: (values, None) for integer labels (their
    own indices) or (indices, sorted class names) for string labels.

    Shapes: -> (n,) int64, names (K,) or None.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    if path.suffix.lower() == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy file of labels ({one_line(exc)})") from None
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        if raw.ndim != 1:
            raise DataError(f"{path}: labels must be one column, got shape {raw.shape}")
        values = [str(v) for v in raw.tolist()] if raw.dtype.kind in "US" else raw.tolist()
    elif path.suffix.lower() in (".csv", ".txt"):
        values = _read_column(path)
    else:
        raise DataError(f"{path}: labels must be a .npy, .csv or .txt file")
    if len(values) == n + 1:  # a header line
        values = values[1:]
    if len(values) != n:
        raise DataError(f"{path}: {len(values)} labels for {n} examples")
    return encode(values, str(path))


def _read_column(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]  # a blank line is no row; "," is a row
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the labels ({one_line(exc)})") from None
    for i, row in enumerate(rows):
        if len(row) != 1:
            raise DataError(f"{path}: line {i + 1} has {len(row)} columns; a labels file is one column")
    return [row[0].strip() for row in rows]


def _as_integer(v) -> int | None:
    """An integer label (1, 3.0, "7"), or None where v is not one."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float):
        return int(v) if math.isfinite(v) and v == int(v) else None
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _is_number(v) -> bool:
    try:
        return not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def encode(values: list, what: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Labels as indices: integers as they are (refusing negatives), otherwise strings
    indexed in sorted order with their names. A missing label (an empty string, NaN)
    is an error naming its row.

    Shapes: values (N,) -> (N,) int64, names (K,) or None.
    """
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise DataError(f"{what}: label {i + 1} is missing")
    ints = [_as_integer(v) for v in values]
    if all(k is not None for k in ints):
        bad = [i for i, k in enumerate(ints) if k < 0]
        if bad:
            raise DataError(f"{what}: label {bad[0] + 1} is {ints[bad[0]]}: integer labels count from 0")
        return np.asarray(ints, dtype=np.int64), None
    # Numbers that are not all integers (2.5, or 1e3 among integers) are a mistake, not names.
    if all(_is_number(v) for v in values):
        first = next(i for i, k in enumerate(ints) if k is None)
        raise DataError(f"{what}: label {first + 1} is {values[first]!r}, not an integer")
    names = tuple(sorted({str(v).strip() for v in values}))
    index = {name: k for k, name in enumerate(names)}
    return np.asarray([index[str(v).strip()] for v in values], dtype=np.int64), names


def class_names_for(labels: np.ndarray, names: tuple[str, ...] | None) -> tuple[str, ...]:
    """The class names of a labelled training set: the strings' own names, or "0".."K-1"
    for integer labels, K the largest label + 1 (``train.with_classes`` checks K
    against model.num_classes).

    Shapes: labels (N,) int64 -> (K,) names.
    """
    return names if names is not None else tuple(str(i) for i in range(int(labels.max()) + 1))


def index_by_names(labels: np.ndarray, names: tuple[str, ...] | None, classes: tuple[str, ...], what: str) -> np.ndarray:
    """Labels read from another file (held-out data) as indices of the training set's
    classes: string labels by name, integer labels checked in range.

    Shapes: labels (M,) int64 -> (M,) int64.
    """
    if names is None:
        bad = np.nonzero(labels >= len(classes))[0]
        if len(bad):
            raise DataError(f"{what}: label {bad[0] + 1} is {int(labels[bad[0]])}, out of range for "
                            f"{len(classes)} classes")
        return labels
    index = {name: k for k, name in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{what}: class {unknown[0]!r} is not one of the training labels' classes")
    return np.asarray([index[names[k]] for k in labels], dtype=np.int64)
