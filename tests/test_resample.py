"""resample.gaussian_grid_sample equals scipy's blur + bilinear sampling (to rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from slideproc.resample import gaussian_grid_sample


def _scipy(region, ys, xs, sigma, cval):
    blurred = ndimage.gaussian_filter(region, sigma=(sigma, sigma, 0), mode="nearest") if sigma > 0 else region
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    chans = [ndimage.map_coordinates(blurred[..., c], [yy, xx], order=1, mode="constant", cval=cval)
             for c in range(region.shape[2])]
    return np.clip(np.stack(chans, axis=-1) + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shrink", [0.6, 1.0, 1.7, 2.66, 5.32])
def test_equals_gaussian_filter_and_map_coordinates(shrink):
    rng = np.random.default_rng(int(shrink * 100))
    # smooth random texture plus sharp edges, like a stained field
    region = ndimage.gaussian_filter(rng.uniform(0, 255, (180, 210, 3)), (2, 2, 0)).astype(np.float32)
    region[60:90, 40:120] = (90, 40, 140)
    sigma = 0.5 * (shrink - 1.0) if shrink > 1 else 0.0
    ys = 3.3 + np.arange(int(170 / shrink)) * shrink
    xs = 1.7 + np.arange(int(200 / shrink)) * shrink
    got = gaussian_grid_sample(region, ys, xs, sigma, 255.0)
    want = _scipy(region, ys, xs, sigma, 255.0)
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float rounding at .5 only


def test_points_outside_take_the_fill_value():
    region = np.random.default_rng(0).uniform(0, 255, (40, 50, 3)).astype(np.float32)
    ys, xs = np.linspace(-4, 44, 31), np.linspace(-3, 53, 29)
    np.testing.assert_array_equal(gaussian_grid_sample(region, ys, xs, 0.0, 255.0), _scipy(region, ys, xs, 0.0, 255.0))
    out = gaussian_grid_sample(region, ys, xs, 1.2, 255.0)
    assert (out[ys < 0] == 255).all() and (out[:, xs > 49] == 255).all()
