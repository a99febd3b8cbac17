"""Cell crops for the classifier: a fixed field of view in micrometres around each centre.

The field of view is physical (``crops.field_of_view_um``), so a cell fills the
same share of the model input whatever the scanner's resolution; it is read from
the coarsest pyramid level that still has at least the output's resolution,
anti-aliased and resampled to ``out_px``. Outside the slide is white glass.
"""

from __future__ import annotations

import math

import numpy as np

from .resample import gaussian_grid_sample
from .sources.base import PAD_VALUE, SlideReader
from .tiling import best_level


def crop_level(reader: SlideReader, mpp0: float, fov_um: float, out_px: int) -> int:
    """The coarsest level whose pixels are no larger than the output's."""
    return best_level(reader, (fov_um / out_px) / mpp0)


def extract_crops(reader: SlideReader, mpp0: float, xs, ys, fov_um: float, out_px: int) -> np.ndarray:
    """uint8 (N, out_px, out_px, 3): ``fov_um`` x ``fov_um`` around each level-0 centre (xs, ys).

    Output pixel i's centre lies at level-0 ``x + (i + 0.5 - out_px / 2) * step``
    with ``step = fov_um / out_px / mpp0``: the crop is centred on the cell to a
    fraction of a pixel, whichever level it is read from.
    """
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = np.asarray(ys, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"extract_crops: {xs.size} x but {ys.size} y coordinates")
    if not (fov_um > 0 and out_px > 0 and mpp0 > 0):
        raise ValueError(f"extract_crops: fov_um, out_px and mpp0 must be > 0 (got {fov_um}, {out_px}, {mpp0})")
    out = np.empty((xs.size, out_px, out_px, 3), dtype=np.uint8)
    if xs.size == 0:
        return out
    level = crop_level(reader, mpp0, fov_um, out_px)
    d = float(reader.level_downsamples[level])
    step = fov_um / out_px / mpp0 / d  # level pixels per output pixel (>= ~1)
    offs = (np.arange(out_px) + 0.5 - out_px / 2.0) * step
    # Shrinking by ``step`` needs a Gaussian of ~0.5*(step-1) px first, or fine
    # granules alias into moire.
    sigma = 0.5 * (step - 1.0) if step > 1.0 else 0.0
    margin = int(math.ceil(3 * sigma)) + 2
    for k, (x, y) in enumerate(zip(xs, ys)):
        # Level coordinates of the centre (pixel-centre convention).
        lx = (x + 0.5) / d - 0.5
        ly = (y + 0.5) / d - 0.5
        px = lx + offs
        py = ly + offs
        x0 = int(math.floor(px[0])) - margin
        y0 = int(math.floor(py[0])) - margin
        x1 = int(math.ceil(px[-1])) + margin + 1
        y1 = int(math.ceil(py[-1])) + margin + 1
        region = reader.read_region((int(round(x0 * d)), int(round(y0 * d))), level, (x1 - x0, y1 - y0))
        # Blur and bilinear sampling in one separable pass (resample.py).
        out[k] = gaussian_grid_sample(region, py - y0, px - x0, sigma, PAD_VALUE)
    return out
