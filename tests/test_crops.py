"""extract_crops: physical field of view, centring, pyramid level, white padding."""

from __future__ import annotations

import numpy as np
import pytest

from slideproc.config import CropConfig
from slideproc.crops import crop_level, extract_crops
from slideproc.sources.image_reader import ArrayReader


def _marker_image(w=400, h=300):
    img = np.full((h, w, 3), 230, np.uint8)
    img[148:153, 198:203] = (20, 20, 120)  # a 5 px dark square centred on (200, 150)
    return img


def test_crop_is_centred_and_sized():
    reader = ArrayReader(_marker_image(), mpp=0.25)
    crops = extract_crops(reader, 0.25, [200.0], [150.0], fov_um=25.0, out_px=100)
    assert crops.shape == (1, 100, 100, 3) and crops.dtype == np.uint8
    dark = crops[0].sum(axis=2) < 400
    ys, xs = np.nonzero(dark)
    # 25 um over 100 px at 0.25 um/px: 1 output px = 1 source px, square centred.
    assert abs(xs.mean() - 49.5) <= 0.6 and abs(ys.mean() - 49.5) <= 0.6


def test_field_of_view_is_physical():
    # The same 5 px (1.25 um) square shows as 1.25/fov of the output at any mpp0.
    for mpp0 in (0.25, 0.5):
        reader = ArrayReader(_marker_image(), mpp=mpp0)
        crop = extract_crops(reader, mpp0, [200.0], [150.0], fov_um=50.0, out_px=80)[0]
        dark = (crop.sum(axis=2) < 500).sum()
        expected = (5 * mpp0 / 50.0 * 80) ** 2
        assert 0.4 * expected <= dark <= 2.0 * expected + 2


def test_edges_are_padded_white():
    reader = ArrayReader(np.full((100, 100, 3), 120, np.uint8), mpp=0.5)
    crop = extract_crops(reader, 0.5, [0.0], [99.0], fov_um=20.0, out_px=40)[0]
    # Left half and bottom half lie outside the image.
    assert np.all(crop[:18, 22:] == 120)
    assert np.all(crop[:, :18] == 255) and np.all(crop[22:, :] == 255)


def test_empty_and_bad_arguments():
    reader = ArrayReader(_marker_image(), mpp=0.25)
    assert extract_crops(reader, 0.25, [], [], 25.0, 64).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError):
        extract_crops(reader, 0.25, [1.0, 2.0], [1.0], 25.0, 64)
    with pytest.raises(ValueError):
        extract_crops(reader, 0.25, [1.0], [1.0], 0.0, 64)


def test_reads_the_coarsest_sufficient_pyramid_level(tmp_path):
    from slideproc.sources import open_path
    from slideproc.synthetic.tiff_writer import write_pyramid

    def render(x0, y0, w, h, d):
        yy, xx = (np.mgrid[0:h, 0:w] * d + np.array([y0, x0])[:, None, None])
        img = np.full((h, w, 3), 235, np.uint8)
        img[(np.hypot(xx - 2048, yy - 1536) < 40)] = (60, 30, 140)  # a 20 um disc
        return img

    path = tmp_path / "p.tiff"
    write_pyramid(path, 4096, 3072, 0.25, render, compression="deflate")
    reader = open_path(path)
    # 80 um over 80 px = 1 um/px = 4 level-0 px: level with downsample 4.
    assert reader.level_downsamples[crop_level(reader, 0.25, 80.0, 80)] == 4.0
    fine = extract_crops(reader, 0.25, [2048], [1536], 25.0, 100)[0]  # 0.25 um/px: level 0
    coarse = extract_crops(reader, 0.25, [2048], [1536], 80.0, 80)[0]
    # The 20 um disc: 80 px across at 0.25 um/px (fills the 25 um crop centre), 20 px at 1 um/px.
    assert fine[50, 50].tolist() == [60, 30, 140]
    dark = coarse.sum(axis=2) < 400
    ys, xs = np.nonzero(dark)
    assert abs(xs.mean() - 39.5) < 1 and abs(ys.mean() - 39.5) < 1
    assert 250 < dark.sum() < 380  # pi * 10^2 = 314
    reader.close()


def test_default_field_of_view_matches_matek_framing():
    # 250 px Matek crops at the estimated ~0.095 um/px (configs/default.yaml).
    assert 21.0 <= CropConfig().field_of_view_um <= 27.0
