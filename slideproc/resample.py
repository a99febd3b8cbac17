"""Anti-aliased shrinking of an image region onto a grid of sample points.

``gaussian_grid_sample(region, ys, xs, sigma)`` is what tiling (working
pixels for detection) and crops (classifier inputs) both do: blur by a
Gaussian whose width follows the shrink factor, then sample bilinearly at a
separable grid of points. Both steps are linear and separable, so they are
done here as one weight matrix per axis and two matrix products: the same
result as ``scipy.ndimage.gaussian_filter(mode="nearest")`` followed by
``map_coordinates(order=1, mode="constant")`` (to float rounding), at a
fraction of the cost, because the blur is only evaluated where it is sampled
(a few taps per point instead of every input pixel).
"""

from __future__ import annotations

import numpy as np


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage's kernel: radius int(4 sigma + 0.5), normalised to sum 1."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def axis_taps(coords: np.ndarray, n: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(taps (m, K) int, weights (m, K) float32, outside (m,) bool) for one axis.

    Point i's value is the sum over k of ``weights[i, k]`` times input sample
    ``taps[i, k]``: the Gaussian (edges extended by their nearest sample, as
    mode="nearest") combined with linear interpolation between the point's two
    neighbours, K = 2 * radius + 2 taps. Points outside [0, n - 1] are flagged;
    they take the constant fill.
    """
    coords = np.asarray(coords, dtype=np.float64)
    outside = (coords < 0) | (coords > n - 1)
    i0 = np.clip(np.floor(coords), 0, n - 1).astype(np.int64)
    f = np.where(outside, 0.0, coords - i0)[:, None]
    kernel = _gaussian_kernel(sigma) if sigma > 0 else np.ones(1)
    r = (kernel.size - 1) // 2
    # Tap t sits at i0 - r + t: kernel[t] from the left neighbour i0, kernel[t - 1]
    # from the right neighbour i0 + 1.
    weights = (1.0 - f) * np.append(kernel, 0.0)[None, :] + f * np.insert(kernel, 0, 0.0)[None, :]
    taps = np.clip(i0[:, None] - r + np.arange(kernel.size + 1)[None, :], 0, n - 1)
    weights[outside] = 0.0
    return taps, weights.astype(np.float32), outside


def gaussian_grid_sample(region: np.ndarray, ys: np.ndarray, xs: np.ndarray, sigma: float,
                         cval: float) -> np.ndarray:
    """uint8 (len(ys), len(xs), C): ``region`` (H, W, C) blurred by ``sigma`` px
    on both image axes and sampled bilinearly at rows ``ys`` x columns ``xs``
    (region pixel coordinates); points outside the region are ``cval``."""
    region = np.asarray(region, dtype=np.float32)
    ty, wy, out_y = axis_taps(ys, region.shape[0], sigma)
    tx, wx, out_x = axis_taps(xs, region.shape[1], sigma)
    # Rows first (a gather of K rows per output row), then columns: only the
    # sampled rows are ever blurred.
    rows = np.einsum("ik,ikwc->iwc", wy, region[ty], optimize=True)  # (h, W, C)
    out = np.einsum("jk,ijkc->ijc", wx, rows[:, tx], optimize=True)  # (h, w, C)
    if out_y.any():
        out[out_y] = cval
    if out_x.any():
        out[:, out_x] = cval
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

