"""A folder of image files (PNG, JPEG) as one uint8 array.

``load_image_folder(root)`` reads every ``*.png``, ``*.jpg`` and ``*.jpeg`` file
(extension in any case) directly in ``root``, not in subfolders, in order of file
name, with Pillow. The images must form one array, so they must all have the
same size and the same mode; the mode gives the channels:

    "L"     grey                 C = 1
    "LA"    grey and alpha       C = 2
    "RGB"   red, green, blue     C = 3
    "RGBA"  RGB and alpha        C = 4
    "P"     palette              converted to RGB (C = 3): the palette's colours,
                                 any transparency dropped; it then counts as RGB

Every other mode is refused rather than converted, because no conversion is
lossless or obvious: 16-bit ("I;16", "I"), float ("F"), bilevel ("1"), "CMYK",
"YCbCr", "PA", ... PNG is lossless, so its pixel values come back exactly; JPEG
is lossy, so a JPEG's values are those of its decoded image.

Errors, each a one-line ``DataError`` naming the file (or the folder): the folder
is missing or holds no such images; an image cannot be opened or decoded (not an
image, truncated, corrupt); an unsupported mode; a size or mode different from
the first image's (sizes are written width x height, as Pillow reports them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from thermodiff.errors import DataError, one_line

__all__ = ["IMAGE_EXTENSIONS", "IMAGE_MODES", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Supported Pillow modes -> channels.
IMAGE_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _image_files(root: Path) -> list[Path]:
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    try:
        entries = list(root.iterdir())
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({one_line(exc)})") from None
    files = sorted(
        (p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.name,
    )
    if not files:
        raise DataError(f"{root}: no images (*.png, *.jpg, *.jpeg) in the folder")
    return files


def _describe(size: tuple[int, int], mode: str) -> str:
    return f"{size[0]}x{size[1]} {mode}"


def _read(path: Path, expected: tuple[tuple[int, int], str, str] | None) -> Image.Image:
    """The decoded image, in a supported mode, checked against the first image's
    (size, mode, name) where given."""
    try:
        with Image.open(path) as im:
            # The mode and size come from the header: a mismatch is reported
            # without decoding the pixels.
            mode = "RGB" if im.mode == "P" else im.mode
            if mode not in IMAGE_MODES:
                raise DataError(
                    f"{path}: unsupported image mode {im.mode!r}; expected one of {', '.join(IMAGE_MODES)} or P (palette)"
                )
            if expected is not None and (im.size, mode) != expected[:2]:
                size0, mode0, name0 = expected
                raise DataError(
                    f"{path}: image is {_describe(im.size, mode)}, but {name0} is {_describe(size0, mode0)};"
                    " all images in the folder must have the same size and mode"
                )
            im.load()
            return im.convert("RGB") if im.mode == "P" else im.copy()
    except DataError:
        raise
    # Pillow reports bad files with many types: UnidentifiedImageError and OSError
    # (not an image, truncated), SyntaxError, ValueError, DecompressionBombError...
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({one_line(exc)})") from None


def load_image_folder(root: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read every PNG and JPEG file directly in ``root``, sorted by file name.

    All images must share one size and one mode (L, LA, RGB or RGBA; palette
    images are converted to RGB). Raises a one-line DataError naming the folder
    or the file for a missing folder, a folder without images, an unreadable or
    corrupt image, an unsupported mode (16-bit, CMYK, ...), or a size or mode that
    differs from the first image's.

    Shapes: -> images (N, C, H, W) uint8, C from the mode (1, 2, 3 or 4);
    names: N file names (without the folder), in the images' order.
    """
    root = Path(root)
    files = _image_files(root)
    first = _read(files[0], None)
    expected = (first.size, first.mode, files[0].name)
    images = [np.asarray(first)]
    for path in files[1:]:
        images.append(np.asarray(_read(path, expected)))
    stacked = np.stack(images)
    if stacked.ndim == 3:  # single-channel modes decode to (H, W)
        stacked = stacked[..., None]
    # Pillow gives (H, W, C); the networks take (N, C, H, W).
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)), [p.name for p in files]


def load_class_folders(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """An image folder, or a folder of class sub-folders: ``root/CLASS/*.png`` (no
    images directly in root) gives every sub-folder's images with the sub-folder's
    name as their class, classes in sorted order; images directly in root are read
    as ``load_image_folder`` reads them, unlabelled. Every image shares one size and
    mode across the classes; a sub-folder without images is an error naming it.

    Shapes: -> images (N, C, H, W) uint8, labels (N,) int64 or None, class names (K,).
    """
    root = Path(root)
    if not root.is_dir():
        return load_image_folder(root)[0], None, ()  # its one-line error
    try:
        direct = any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in root.iterdir())
        folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({one_line(exc)})") from None
    if direct or not folders:
        return load_image_folder(root)[0], None, ()
    parts, labels, expected = [], [], None
    for k, folder in enumerate(folders):
        files = _image_files(folder)
        if expected is None:
            first = _read(files[0], None)
            expected = (first.size, first.mode, f"{folder.name}/{files[0].name}")
        images = [np.asarray(_read(path, expected)) for path in files]
        parts.extend(images)
        labels.extend([k] * len(images))
    stacked = np.stack(parts)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return (np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)), np.asarray(labels, dtype=np.int64),
            tuple(p.name for p in folders))
