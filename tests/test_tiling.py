"""slideproc/tiling.py on pyramidal TIFFs written here with tifffile and opened by OpenSlide."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from slideproc.config import TilingConfig
from slideproc.errors import ConfigError
from slideproc.sources import ArrayReader, OpenSlideReader, open_path
from slideproc.tiling import (
    Geometry,
    best_level,
    foreground_mask,
    geometry,
    overlap_px,
    plan_tiles,
    read_working,
    thumbnail,
)

GLASS = (238, 240, 242)
SMEAR = (150, 70, 160)  # May-Grunwald-Giemsa purple


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 block mean (the odd last row/column is dropped, as scanners do)."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    blocks = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.float64)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def write_pyramid(path: Path, level0: np.ndarray, mpp: float = 0.25, n_levels: int = 3,
                  tile: int = 256, compression: str | None = "zlib") -> list[np.ndarray]:
    """A tiled pyramidal TIFF, each level a page downsampled 2x, with its resolution
    in pixels per centimetre so OpenSlide reports openslide.mpp-x. Returns the levels."""
    levels = [level0]
    for _ in range(n_levels - 1):
        levels.append(_halve(levels[-1]))
    with tifffile.TiffWriter(path) as tw:
        for i, img in enumerate(levels):
            ppcm = 1e4 / (mpp * 2**i)
            tw.write(img, tile=(tile, tile), photometric="rgb", compression=compression,
                     resolution=(ppcm, ppcm), resolutionunit="CENTIMETER",
                     subfiletype=0 if i == 0 else 1)
    return levels


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise: any misplaced or mis-weighted pixel shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None] * np.array([1.0, -0.6, 0.3])
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """1024 x 768 at 0.25 um/px, levels 1, 2, 4."""
    path = tmp_path_factory.mktemp("pyr") / "slide.tif"
    levels = write_pyramid(path, _texture(768, 1024), mpp=0.25, n_levels=3)
    return path, levels


# ----------------------------------------------------------------------------
# the test slides are what OpenSlide calls a generic TIFF with mpp
# ----------------------------------------------------------------------------
def test_written_pyramid_opens_in_openslide(pyramid):
    import openslide

    path, levels = pyramid
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.25)
    assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    with open_path(path) as r:
        assert isinstance(r, OpenSlideReader) and r.format == "generic-tiff"
        assert r.mpp == pytest.approx(0.25) and r.dimensions == (1024, 768)
        for i, lvl in enumerate(levels):
            np.testing.assert_array_equal(r.read_region((0, 0), i, lvl.shape[1::-1]), lvl)


# ----------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------
def test_geometry_picks_the_level(pyramid):
    path, levels = pyramid
    with open_path(path) as r:
        g = geometry(r, 0.25, 0.5)  # 40x scan, detection at 0.5 um/px: level 1 as is
        assert (g.level, g.level_downsample, g.s, g.f) == (1, 2.0, 1.0, 2.0)
        assert g.working_dims == (512, 384) and g.level0_dims == (1024, 768)
        g = geometry(r, 0.25, 0.4)  # between levels: the finer one, shrunk
        assert g.level == 0 and g.s == pytest.approx(1.6)
        g = geometry(r, 0.25, 1.0)
        assert g.level == 2 and g.s == pytest.approx(1.0) and g.working_dims == (256, 192)
        g = geometry(r, 0.25, 5.0)  # coarser than the pyramid: the last level, shrunk
        assert g.level == 2 and g.s == pytest.approx(5.0)
        g = geometry(r, 0.25, 0.2)  # finer than level 0: upsample level 0
        assert g.level == 0 and g.s < 1
        assert g.working_dims == (1280, 960)
        # level 1 is not taken for a hair less than its downsample
        assert best_level(r, 1.99) == 0 and best_level(r, 2.0) == 1


def test_s1_read_is_the_level(pyramid):
    path, levels = pyramid
    with open_path(path) as r:
        g = geometry(r, 0.25, 0.5)
        np.testing.assert_array_equal(read_working(r, g, 0, 0, 512, 384), levels[1])
        np.testing.assert_array_equal(read_working(r, g, 100, 50, 30, 20), levels[1][50:70, 100:130])


def _pieces_equal_whole(r, g, x0, y0, w, h, cuts_x, cuts_y):
    whole = read_working(r, g, x0, y0, w, h)
    assert whole.shape == (h, w, 3) and whole.dtype == np.uint8
    xs = [x0, *sorted(cuts_x), x0 + w]
    ys = [y0, *sorted(cuts_y), y0 + h]
    stitched = np.zeros_like(whole)
    for ya, yb in zip(ys[:-1], ys[1:]):
        for xa, xb in zip(xs[:-1], xs[1:]):
            stitched[ya - y0 : yb - y0, xa - x0 : xb - x0] = read_working(r, g, xa, ya, xb - xa, yb - ya)
    return whole, stitched


@pytest.mark.parametrize("working_mpp", [0.5, 0.4, 0.7, 1.0, 0.2])
def test_read_working_is_tile_invariant(pyramid, working_mpp):
    """A region read whole equals the same region read in pieces (edges included)."""
    path, _ = pyramid
    rng = np.random.default_rng(int(working_mpp * 100))
    with open_path(path) as r:
        g = geometry(r, 0.25, working_mpp)
        ww, wh = g.working_dims
        # a window straddling the top-left corner and one straddling the bottom-right
        for x0, y0, w, h in [(-7, -5, 90, 70), (ww - 60, wh - 50, 75, 64)]:
            cuts_x = rng.choice(np.arange(x0 + 1, x0 + w), 3, replace=False)
            cuts_y = rng.choice(np.arange(y0 + 1, y0 + h), 2, replace=False)
            whole, stitched = _pieces_equal_whole(r, g, x0, y0, w, h, cuts_x, cuts_y)
            np.testing.assert_array_equal(whole, stitched)
        # outside the slide is white
        out = read_working(r, g, -40, -40, 30, 30)
        assert (out == 255).all()


def test_read_working_tile_invariant_at_large_shrink():
    """s = 8 (a single-level 0.1 um/px field read at 0.8 um/px): the anti-alias
    kernel is wide, and pieces still match the whole."""
    arr = _texture(400, 480, seed=3)
    r = ArrayReader(arr, mpp=0.1)
    g = geometry(r, 0.1, 0.8)
    assert g.s == pytest.approx(8.0)
    whole, stitched = _pieces_equal_whole(r, g, 0, 0, 60, 50, [7, 31, 32], [1, 25])
    np.testing.assert_array_equal(whole, stitched)


def test_read_working_samples_the_right_place(pyramid):
    """On a linear ramp the working pixel u holds the value at level-0 (u + 0.5) f - 0.5."""
    xx = np.arange(1024, dtype=np.float64)
    ramp = np.repeat(np.repeat((xx / 4.1)[None, :, None], 96, axis=0), 3, axis=2).round().astype(np.uint8)
    r = ArrayReader(ramp, mpp=0.25)
    for working in (0.4, 0.5, 0.7):
        g = geometry(r, 0.25, working)
        ww, _ = g.working_dims
        row = read_working(r, g, 0, 20, ww, 1)[0, :, 0].astype(float)
        u = np.arange(ww)
        expect = g.to_level0(u) / 4.1
        inner = (u > 8) & (u < ww - 8)
        assert np.abs(row[inner] - expect[inner]).max() <= 1.0


def test_read_working_non_integer_downsample_is_close(real_slides):
    """boxes.tiff level 2 has downsample 4.016. A read there starts at a fractional
    level pixel that OpenSlide interpolates, so pieces agree with the whole only
    nearly: within 0.12 px of shift (on its black/white box edges, ~30 levels)."""
    with open_path(real_slides / "boxes.tiff") as r:
        for working in (5.0, 9.0):  # level 2 (4.016), s = 1.245; level 3 (8.086), s = 1.113
            g = geometry(r, 1.0, working)
            assert g.level_downsample != int(g.level_downsample)
            ww, wh = g.working_dims
            whole, stitched = _pieces_equal_whole(r, g, -3, -2, ww + 5, wh + 4, [13, 29], [17])
            diff = np.abs(whole.astype(int) - stitched)
            assert diff.max() <= 40 and diff.mean() < 1.0


# ----------------------------------------------------------------------------
# tile plan
# ----------------------------------------------------------------------------
def _geo(w: int, h: int, mpp: float = 0.5) -> Geometry:
    return Geometry(mpp0=mpp, working_mpp=mpp, level=0, level_downsample=1.0,
                    working_dims=(w, h), level0_dims=(w, h))


@pytest.mark.parametrize("tile,overlap_um", [(64, 0.0), (100, 5.0), (256, 16.0), (300, 74.0), (1024, 30.0)])
@pytest.mark.parametrize("dims", [(1000, 777), (64, 64), (1, 1), (2049, 130)])
def test_tile_cores_partition_the_grid(tile, overlap_um, dims):
    cfg = TilingConfig(tile_size_px=tile, overlap_um=overlap_um)
    g = _geo(*dims)
    tiles = plan_tiles(g, cfg)
    o = overlap_px(cfg, g.working_mpp)
    hits = np.zeros(dims[::-1], dtype=np.int32)
    for i, t in enumerate(tiles):
        assert t.index == i and t.size == tile
        assert t.core_x0 - t.x == o and t.core_y0 - t.y == o  # overlap before the core
        assert t.x + t.size - t.core_x1 >= o and t.y + t.size - t.core_y1 >= o  # and after
        assert t.core_x1 > t.core_x0 and t.core_y1 > t.core_y0
        hits[t.core_y0 : t.core_y1, t.core_x0 : t.core_x1] += 1
    assert (hits == 1).all()  # every working pixel in exactly one core
    # TileSpec.owns agrees: any point of the grid is owned by exactly one tile
    rng = np.random.default_rng(0)
    ux = rng.uniform(0, dims[0], 500)
    uy = rng.uniform(0, dims[1], 500)
    owners = np.sum([t.owns(ux, uy) for t in tiles], axis=0)
    assert (owners == 1).all()


def test_overlap_leaving_no_core_is_a_config_error():
    cfg = TilingConfig(tile_size_px=64, overlap_um=16.0)  # 32 px each side at 0.5 um/px
    with pytest.raises(ConfigError, match="tiling.overlap_um"):
        plan_tiles(_geo(500, 500), cfg)


# ----------------------------------------------------------------------------
# foreground
# ----------------------------------------------------------------------------
def _smear_slide(h: int, w: int, box: tuple[int, int, int, int] | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Glass with slight noise, and (optionally) a smear of cells in box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = GLASS
    img += rng.integers(0, 4, (h, w, 1), dtype=np.uint8)
    smear = np.zeros((h, w), bool)
    if box is not None:
        x0, y0, x1, y1 = box
        smear[y0:y1, x0:x1] = True
        region = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        region[:] = SMEAR
        # red cells and paler patches inside the smear
        region[::9, ::7] = (200, 90, 90)
        region[3::11] = (220, 170, 200)
        img[y0:y1, x0:x1] = region
    return img, smear


def test_foreground_mask_skips_glass(tmp_path):
    # 2048 x 2048 at 0.25 um/px (512 um), the smear in the middle
    img, smear = _smear_slide(2048, 2048, (700, 800, 1300, 1250))
    path = tmp_path / "smear.tif"
    write_pyramid(path, img, mpp=0.25, n_levels=4)
    cfg = TilingConfig(tile_size_px=256, overlap_um=8.0)
    with open_path(path) as r:
        mask, mask_mpp = foreground_mask(r, 0.25, cfg)
        assert mask_mpp == pytest.approx(8.0) and mask.shape == (64, 64)
        g = geometry(r, 0.25, 0.5)
        kept = plan_tiles(g, cfg, mask, mask_mpp)
        every = plan_tiles(g, cfg)
    assert 0 < len(kept) < len(every)
    kept_cores = {(t.core_x0, t.core_y0) for t in kept}
    f = g.f
    n_smear_kept = 0
    for t in every:
        # the tile's core in level-0 pixels
        core = smear[int(t.core_y0 * f) : int(math.ceil(t.core_y1 * f)), int(t.core_x0 * f) : int(math.ceil(t.core_x1 * f))]
        if (t.core_x0, t.core_y0) in kept_cores:
            n_smear_kept += int(core.sum())
        else:
            assert not core.any(), f"skipped tile {t} holds smear"
    assert n_smear_kept == smear.sum()  # every smear pixel lies in a kept core


def test_blank_slide_has_no_tiles(tmp_path):
    img, _ = _smear_slide(1024, 1024, None)
    path = tmp_path / "blank.tif"
    write_pyramid(path, img, mpp=0.25, n_levels=3)
    cfg = TilingConfig(tile_size_px=256, overlap_um=8.0)
    with open_path(path) as r:
        mask, mask_mpp = foreground_mask(r, 0.25, cfg)
        assert not mask.any()
        assert plan_tiles(geometry(r, 0.25, 0.5), cfg, mask, mask_mpp) == []


def test_all_smear_slide_has_every_tile(tmp_path):
    img, _ = _smear_slide(1024, 1024, (0, 0, 1024, 1024))
    path = tmp_path / "full.tif"
    write_pyramid(path, img, mpp=0.25, n_levels=3)
    cfg = TilingConfig(tile_size_px=256, overlap_um=8.0)
    with open_path(path) as r:
        mask, mask_mpp = foreground_mask(r, 0.25, cfg)
        assert mask.all()
        g = geometry(r, 0.25, 0.5)
        assert plan_tiles(g, cfg, mask, mask_mpp) == plan_tiles(g, cfg)


def test_whole_field_mask():
    r = ArrayReader(np.full((480, 640, 3), 255, np.uint8), mpp=0.5)
    mask, mpp = foreground_mask(r, 0.5, TilingConfig(), whole_field=True)
    assert mask.all() and mpp == 8.0 and mask.shape == (30, 40)


# ----------------------------------------------------------------------------
# thumbnail
# ----------------------------------------------------------------------------
def _block_mean(level: np.ndarray, r: int) -> np.ndarray:
    h, w = level.shape[:2]
    th, tw = math.ceil(h / r), math.ceil(w / r)
    out = np.zeros((th, tw, 3), np.uint8)
    for ty in range(th):
        for tx in range(tw):
            block = level[ty * r : (ty + 1) * r, tx * r : (tx + 1) * r].astype(np.int64)
            out[ty, tx] = np.round(block.sum(axis=(0, 1)) / (block.shape[0] * block.shape[1])).clip(0, 255)
    return out


def test_thumbnail_is_the_block_mean_across_chunks():
    # 2500 x 2200 at 0.5 um/px, thumbnail at 8 um/px: 16 x 16 blocks, several
    # 2048 px chunks and partial blocks at the right and bottom edges.
    arr = _texture(2200, 2500, seed=5)
    r = ArrayReader(arr, mpp=0.5)
    thumb, mpp = thumbnail(r, 0.5, 8.0)
    assert mpp == pytest.approx(8.0) and thumb.shape == (138, 157, 3)
    np.testing.assert_array_equal(thumb, _block_mean(arr, 16))


def test_thumbnail_of_a_pyramid_uses_a_coarse_level(tmp_path):
    img = _texture(1024, 1280, seed=7)
    path = tmp_path / "p.tif"
    levels = write_pyramid(path, img, mpp=0.25, n_levels=3)
    with open_path(path) as r:
        thumb, mpp = thumbnail(r, 0.25, 8.0)  # 32 level-0 px = 8 px of level 2
    assert mpp == pytest.approx(8.0)
    np.testing.assert_array_equal(thumb, _block_mean(levels[2], 8))


# ----------------------------------------------------------------------------
# memory: tiling a large slide never holds a whole level
# ----------------------------------------------------------------------------
def _constant_jpeg_slide(path: Path, w: int, h: int, colour, mpp: float = 0.25, downsamples=(1, 2, 4), tile: int = 512):
    """A large slide of constant colour, small on disk: one JPEG tile written many times."""
    import imagecodecs

    block = np.empty((tile, tile, 3), np.uint8)
    block[:] = colour
    encoded = imagecodecs.jpeg_encode(block, level=95)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, d in enumerate(downsamples):
            lw, lh = math.ceil(w / d), math.ceil(h / d)
            n = math.ceil(lw / tile) * math.ceil(lh / tile)
            ppcm = 1e4 / (mpp * d)
            tw.write((encoded for _ in range(n)), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", resolution=(ppcm, ppcm),
                     resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1)


def test_large_slide_memory_is_bounded(tmp_path):
    path = tmp_path / "big.tif"
    _constant_jpeg_slide(path, 30000, 30000, SMEAR)
    cfg = TilingConfig()
    with open_path(path) as r:
        assert r.dimensions == (30000, 30000) and r.level_downsamples == pytest.approx((1, 2, 4))
        tracemalloc.start()
        try:
            mask, mask_mpp = foreground_mask(r, 0.25, cfg)  # reads level 2, 7500 x 7500 (169 MB)
            g = geometry(r, 0.25, 0.5)
            tiles = plan_tiles(g, cfg, mask, mask_mpp)
            tile = read_working(r, g, tiles[-1].x, tiles[-1].y, tiles[-1].size, tiles[-1].size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert mask.all() and len(tiles) == math.ceil(15000 / (1024 - 2 * 60)) ** 2
    assert tile.shape == (1024, 1024, 3)
    # level 0 is 2.7 GB and level 2 169 MB; chunks of 2048^2 px stay far below
    assert peak < 80e6, f"peak {peak / 1e6:.0f} MB"
