"""Dead-leaves images: grey occluding disks, a generated image data set.

The dead-leaves model (Matheron; Jeulin; Lee, Mumford & Huang 2001) lays disks
("leaves") one after another on the plane, each new disk hiding whatever it
falls on; an image is a window onto the result once the window is covered. The
disks here have:

- centres uniform over the window widened by ``r_max`` on every side, the region
  where a centre can put a disk over the window, so that pixels near the edges
  are covered as often as pixels in the middle (disks that miss the window are
  drawn and have no effect);
- radii from the power law p(r) proportional to r^-alpha on [r_min, r_max],
  drawn by inverse CDF (``sample_radii``); alpha = 3 makes the images
  statistically scale invariant over that range, like natural images;
- intensities uniform in [0, 1).

A pixel is the point at its centre: pixel (i, j) (row i, column j) is at
(y, x) = (i + 0.5, j + 0.5) in a window [0, size] x [0, size], and a disk covers
it when the distance from its centre is at most its radius.

Rather than paint a fixed number of disks back to front (which may leave pixels
unpainted, or paint many disks that end up hidden), the disks are drawn front to
back: the first disk drawn is on top, and each later one fills only the pixels
no earlier disk covers, until every pixel is covered. This is exactly the
picture of an unbounded back-to-front sequence and needs no more disks than the
image shows. Each disk uses four uniforms from the image's generator, in order
(radius, centre y, centre x, intensity), so an image does not depend on how many
disks are tested at once. Image k is drawn from the k-th stream spawned from
``numpy.random.default_rng(seed)``, so the first m of n images are the m images
drawn with n = m.

The parameters (size, r_min, r_max, alpha) and these conventions are part of the
data set's definition: likelihoods are comparable only between images drawn
with the same ones. ``n_disks`` is not: it only bounds the work per image, and
an image drawn within the bound is the same whatever the bound.
"""

from __future__ import annotations

import math

import numpy as np

from thermodiff.errors import ConfigError

__all__ = ["deadleaves", "paint_disks", "sample_radii"]

# Disks tested against the uncovered pixels at once; any value gives the same images.
_BATCH = 256

_UNPAINTED = np.nan


def _check_int(value, name: str, minimum: int) -> int:
    # bool is an int to Python, but never a count.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"deadleaves: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_radii(r_min: float, r_max: float, alpha: float) -> tuple[float, float, float]:
    r_min, r_max, alpha = float(r_min), float(r_max), float(alpha)
    if not (math.isfinite(r_min) and r_min > 0):
        raise ConfigError(f"deadleaves: r_min must be a positive number, got {r_min}")
    if not (math.isfinite(r_max) and r_max >= r_min):
        raise ConfigError(f"deadleaves: r_max must be a number >= r_min = {r_min}, got {r_max}")
    if not math.isfinite(alpha):
        raise ConfigError(f"deadleaves: alpha must be a finite number, got {alpha}")
    return r_min, r_max, alpha


def _radii_from_uniform(u: np.ndarray, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """The power law's inverse CDF at u in [0, 1)."""
    if alpha == 1.0:  # p(r) proportional to 1/r: log-uniform
        return r_min * (r_max / r_min) ** u
    a, b = r_min ** (1.0 - alpha), r_max ** (1.0 - alpha)
    return (a + u * (b - a)) ** (1.0 / (1.0 - alpha))


def sample_radii(rng: np.random.Generator, n: int, r_min: float, r_max: float, alpha: float) -> np.ndarray:
    """n radii from p(r) proportional to r^-alpha on [r_min, r_max], by inverse CDF.

    Uses one uniform per radius from ``rng``. Raises ConfigError unless
    0 < r_min <= r_max and alpha is finite (any real alpha is a valid truncated
    power law; alpha = 1 is log-uniform).

    Shapes: -> (n,) float64 in [r_min, r_max].
    """
    n = _check_int(n, "n", 0)
    r_min, r_max, alpha = _check_radii(r_min, r_max, alpha)
    # clip: rounding in the power can stray an ulp outside the range.
    return np.clip(_radii_from_uniform(rng.random(n), r_min, r_max, alpha), r_min, r_max)


def _first_cover(ys, xs, cy, cx, r) -> tuple[np.ndarray, np.ndarray]:
    """For each point, whether any disk covers it and the first disk (in the
    given order) that does.

    Shapes: ys, xs (m,); cy, cx, r (k,) -> covered (m,) bool, first (m,) int.
    """
    # One boolean mask per disk over the points: (k, m).
    hits = (ys[None, :] - cy[:, None]) ** 2 + (xs[None, :] - cx[:, None]) ** 2 <= (r**2)[:, None]
    return hits.any(axis=0), hits.argmax(axis=0)


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (row-major) pixel centres. Shapes: -> ys, xs (size * size,)."""
    centres = np.arange(size) + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    return ys.ravel(), xs.ravel()


def paint_disks(size: int, centres, radii, intensities) -> np.ndarray:
    """Paint disks on an empty size x size image in the order given, each disk
    painting over the ones before it (the last disk is on top).

    ``centres`` are (y, x) in pixel units with pixel (i, j) at (i + 0.5, j + 0.5);
    a disk paints the pixels whose centres lie within its radius. Pixels no disk
    covers are NaN. Used to check ``deadleaves`` against the back-to-front
    definition, and to build small hand-made cases.

    Shapes: centres (k, 2), radii (k,), intensities (k,) -> (size, size) float64.
    """
    size = _check_int(size, "size", 1)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.float64).reshape(-1)
    intensities = np.asarray(intensities, dtype=np.float64).reshape(-1)
    ys, xs = _pixel_centres(size)
    image = np.full(size * size, _UNPAINTED)
    if radii.size:
        # The last painted disk is the first seen from the front.
        covered, first = _first_cover(ys, xs, centres[::-1, 0], centres[::-1, 1], radii[::-1])
        image[covered] = intensities[::-1][first[covered]]
    return image.reshape(size, size)


def _draw_disks(rng: np.random.Generator, k: int, size: int, r_min: float, r_max: float, alpha: float):
    """The next k disks of an image's stream, front to back: radii, centres
    (y, x) and intensities, from four uniforms per disk.

    Shapes: -> r (k,), cy (k,), cx (k,), value (k,).
    """
    u = rng.random((k, 4))
    r = np.clip(_radii_from_uniform(u[:, 0], r_min, r_max, alpha), r_min, r_max)
    span = size + 2.0 * r_max
    cy = -r_max + span * u[:, 1]
    cx = -r_max + span * u[:, 2]
    return r, cy, cx, u[:, 3]


def _image(rng: np.random.Generator, size: int, r_min: float, r_max: float, alpha: float, n_disks: int) -> np.ndarray:
    ys, xs = _pixel_centres(size)
    image = np.full(size * size, _UNPAINTED)
    uncovered = np.arange(size * size)
    drawn = 0
    while uncovered.size:
        if drawn >= n_disks:
            raise ConfigError(
                f"deadleaves: {n_disks} disks left {uncovered.size} of {size * size} pixels uncovered;"
                " raise n_disks (or r_min)"
            )
        k = min(_BATCH, n_disks - drawn)
        r, cy, cx, value = _draw_disks(rng, k, size, r_min, r_max, alpha)
        # Only pixels that no earlier disk covers: earlier disks are in front.
        covered, first = _first_cover(ys[uncovered], xs[uncovered], cy, cx, r)
        image[uncovered[covered]] = value[first[covered]]
        uncovered = uncovered[~covered]
        drawn += k
    return image.reshape(size, size)


def deadleaves(
    n: int,
    size: int = 32,
    seed: int = 0,
    r_min: float = 1.0,
    r_max: float | None = None,
    alpha: float = 3.0,
    n_disks: int = 100_000,
) -> np.ndarray:
    """n dead-leaves images of size x size pixels, deterministic in ``seed``.

    Disks with radii from p(r) proportional to r^-alpha on [r_min, r_max]
    (r_max defaults to size / 2), centres uniform over the window widened by
    r_max, intensities uniform in [0, 1), are drawn front to back until every
    pixel is covered (see the module docstring). ``n_disks`` bounds the disks
    drawn per image; with the defaults an image needs a few thousand. Raises
    ConfigError for a bad parameter, or if an image is still not covered after
    n_disks disks.

    Shapes: -> (n, 1, size, size) float64 in [0, 1).
    """
    n = _check_int(n, "n", 0)
    size = _check_int(size, "size", 1)
    seed = _check_int(seed, "seed", 0)
    n_disks = _check_int(n_disks, "n_disks", 1)
    r_min, r_max, alpha = _check_radii(r_min, size / 2 if r_max is None else r_max, alpha)
    streams = np.random.default_rng(seed).spawn(n)
    out = np.empty((n, 1, size, size))
    for k, rng in enumerate(streams):
        out[k, 0] = _image(rng, size, r_min, r_max, alpha, n_disks)
    return out
