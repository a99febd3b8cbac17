"""Tiles over a source at the working resolution, and the foreground mask that skips glass.

Coordinates: a *working pixel* u is a pixel of the source resampled to
``working_mpp``; its centre lies at level-0 coordinate ``(u + 0.5) * f - 0.5``
with ``f = working_mpp / mpp0`` (level-0 pixels per working pixel). Reads are
computed point by point from that mapping, so a pixel's value never depends on
which tile it was read in: results do not depend on the tile size. (Exactly so
on level 0 and on levels of integer downsample; on a level of downsample such
as 4.016 OpenSlide interpolates a sub-pixel offset that differs between reads,
within 0.5 / downsample px.)

Memory is bounded by the tile size: nothing here reads a whole level except the
foreground thumbnail, which is built chunk by chunk at ~8 um/px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import TilingConfig
from .errors import ConfigError
from .sources.base import PAD_VALUE, SlideReader

_EPS = 1e-3
_CHUNK = 1024  # level pixels per chunk when building the thumbnail (1024^2 x 4 = 4 MB per read)


@dataclass(frozen=True)
class Geometry:
    """How a source maps to the working grid."""

    mpp0: float  # level-0 um/px
    working_mpp: float
    level: int  # pyramid level read for tiles
    level_downsample: float
    working_dims: tuple[int, int]  # (w, h) in working pixels
    level0_dims: tuple[int, int]

    @property
    def f(self) -> float:
        """Level-0 pixels per working pixel."""
        return self.working_mpp / self.mpp0

    @property
    def s(self) -> float:
        """Pixels of the read level per working pixel (>= 1 unless upsampling)."""
        return self.f / self.level_downsample

    def to_level0(self, u: np.ndarray | float) -> np.ndarray | float:
        """Working-pixel coordinate (pixel-centre convention) -> level-0 coordinate."""
        return (np.asarray(u, dtype=np.float64) + 0.5) * self.f - 0.5


def best_level(reader: SlideReader, downsample: float) -> int:
    """The coarsest level no coarser than ``downsample`` (so we never upsample a level
    when a finer one exists)."""
    level = 0
    for i, d in enumerate(reader.level_downsamples):
        if d <= downsample * (1 + _EPS):
            level = i
    return level


def geometry(reader: SlideReader, mpp0: float, working_mpp: float) -> Geometry:
    f = working_mpp / mpp0
    level = best_level(reader, f)
    w0, h0 = reader.dimensions
    return Geometry(
        mpp0=mpp0,
        working_mpp=working_mpp,
        level=level,
        level_downsample=reader.level_downsamples[level],
        working_dims=(max(1, math.ceil(w0 / f - _EPS)), max(1, math.ceil(h0 / f - _EPS))),
        level0_dims=(w0, h0),
    )


def read_working(reader: SlideReader, geo: Geometry, ux: int, uy: int, w: int, h: int) -> np.ndarray:
    """uint8 (h, w, 3) of working pixels [ux, ux+w) x [uy, uy+h); white outside the slide."""
    d = geo.level_downsample
    s = geo.s
    if abs(s - 1.0) < 1e-6:
        # The level is the working resolution: a plain read.
        return reader.read_region((round(ux * d), round(uy * d)), geo.level, (w, h))
    from .resample import gaussian_grid_sample

    # Level-L coordinates of the working pixel centres (pixel-centre convention).
    xs = (np.arange(ux, ux + w) + 0.5) * s - 0.5
    ys = (np.arange(uy, uy + h) + 0.5) * s - 0.5
    # Anti-aliasing when shrinking: a Gaussian whose width follows the shrink
    # factor; the margin covers its support so the result is tile-invariant.
    sigma = 0.5 * (s - 1.0) if s > 1.0 else 0.0
    # scipy's kernel reaches int(4 * sigma + 0.5) px; the margin must hold all of
    # it or pixels near a tile edge would see the region's edge, not the slide.
    margin = int(math.ceil(4 * sigma)) + 2
    lx0 = int(math.floor(xs[0])) - margin
    ly0 = int(math.floor(ys[0])) - margin
    lx1 = int(math.ceil(xs[-1])) + margin + 1
    ly1 = int(math.ceil(ys[-1])) + margin + 1
    # Read only what lies inside the level and pad with white here, so every
    # read starts at a non-negative location (see OpenSlideReader.read_region).
    region = np.full((ly1 - ly0, lx1 - lx0, 3), PAD_VALUE, dtype=np.float32)
    lw, lh = reader.level_dimensions[geo.level]
    cx0, cy0, cx1, cy1 = max(lx0, 0), max(ly0, 0), min(lx1, lw), min(ly1, lh)
    ox, oy = float(lx0), float(ly0)  # level coordinate of region pixel (0, 0)
    if cx1 > cx0 and cy1 > cy0:
        loc_x, loc_y = round(cx0 * d), round(cy0 * d)
        region[cy0 - ly0 : cy1 - ly0, cx0 - lx0 : cx1 - lx0] = reader.read_region(
            (loc_x, loc_y), geo.level, (cx1 - cx0, cy1 - cy0))
        # OpenSlide starts the read at level coordinate loc / d: cx0 for an
        # integer downsample (level 0 always), else off by a fraction it
        # interpolates. Sampling from there keeps the geometry right.
        ox, oy = loc_x / d - (cx0 - lx0), loc_y / d - (cy0 - ly0)
    # Blur and bilinear sampling in one separable pass (resample.py): the same
    # pixels as gaussian_filter + map_coordinates, 3-4x faster.
    return gaussian_grid_sample(region, ys - oy, xs - ox, sigma, PAD_VALUE)


# ----------------------------------------------------------------------------
# foreground
# ----------------------------------------------------------------------------
def thumbnail(reader: SlideReader, mpp0: float, target_mpp: float) -> tuple[np.ndarray, float]:
    """Mean-pooled RGB thumbnail at about ``target_mpp``, built chunk by chunk.

    Returns (uint8 array, its exact um/px). Each thumbnail pixel averages the
    level pixels it covers, whichever chunk they were read in.
    """
    want = target_mpp / mpp0  # level-0 px per thumbnail px
    level = best_level(reader, want)
    d = reader.level_downsamples[level]
    lw, lh = reader.level_dimensions[level]
    r = max(1, int(round(want / d)))  # level px per thumbnail px, integer
    tw, th = max(1, math.ceil(lw / r)), max(1, math.ceil(lh / r))
    # Chunks are aligned to thumbnail pixels, so each thumbnail pixel is finished
    # within one chunk and written straight into the uint8 result: memory is
    # one chunk plus the thumbnail (3 bytes per 8 x 8 um).
    thumb = np.full((th, tw, 3), PAD_VALUE, dtype=np.uint8)
    step = max(r, (_CHUNK // r) * r)
    for y in range(0, lh, step):
        for x in range(0, lw, step):
            cw, ch = min(step, lw - x), min(step, lh - y)
            chunk = reader.read_region((round(x * d), round(y * d)), level, (cw, ch))
            rows = np.arange(0, ch, r)
            cols = np.arange(0, cw, r)
            # Integer sums (exact up to r = 4000): no float64 copy of the chunk,
            # which at 2048^2 px would be 100 MB.
            summed = np.add.reduceat(np.add.reduceat(chunk, rows, axis=0, dtype=np.uint32), cols, axis=1)
            n_r = np.diff(np.append(rows, ch))[:, None, None]
            n_c = np.diff(np.append(cols, cw))[None, :, None]
            ty, tx = y // r, x // r
            thumb[ty : ty + len(rows), tx : tx + len(cols)] = np.round(summed / (n_r * n_c)).clip(0, 255)
    return thumb, mpp0 * d * r


def foreground_mask(reader: SlideReader, mpp0: float, cfg: TilingConfig, whole_field: bool = False) -> tuple[np.ndarray, float]:
    """Boolean mask of smear (not glass) at ~``cfg.foreground_mpp_um``, and its um/px.

    A field of view (``whole_field``) is taken whole: it was framed on cells.
    """
    if whole_field:
        w0, h0 = reader.dimensions
        mpp = max(cfg.foreground_mpp_um, mpp0)
        shape = (max(1, math.ceil(h0 * mpp0 / mpp)), max(1, math.ceil(w0 * mpp0 / mpp)))
        return np.ones(shape, dtype=bool), mpp
    from skimage import morphology

    thumb, mpp = thumbnail(reader, mpp0, cfg.foreground_mpp_um)
    rgb = thumb.astype(np.float32) / 255.0
    vmax = rgb.max(axis=2)
    vmin = rgb.min(axis=2)
    saturation = np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1e-6), 0.0)
    mask = (saturation > cfg.foreground_min_saturation) | (vmax < cfg.foreground_max_brightness)
    radius = int(round(cfg.foreground_dilation_um / mpp))
    if radius > 0 and mask.any():
        mask = morphology.dilation(mask, morphology.disk(radius))
    return mask, mpp


# ----------------------------------------------------------------------------
# tile plan
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TileSpec:
    """A tile in working pixels: read [x, x+size) x [y, y+size); own the cells whose
    centroid lies in the core [core_x0, core_x1) x [core_y0, core_y1)."""

    index: int
    x: int
    y: int
    size: int
    core_x0: int
    core_y0: int
    core_x1: int
    core_y1: int

    def owns(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        """Which working-pixel centroids (absolute) this tile's core holds."""
        return (ux >= self.core_x0) & (ux < self.core_x1) & (uy >= self.core_y0) & (uy < self.core_y1)


def overlap_px(cfg: TilingConfig, working_mpp: float) -> int:
    return int(math.ceil(cfg.overlap_um / working_mpp - _EPS))


def plan_tiles(geo: Geometry, cfg: TilingConfig, mask: np.ndarray | None = None,
               mask_mpp: float | None = None) -> list[TileSpec]:
    """Tiles whose cores partition the working grid; those with no foreground skipped.

    Cores are ``tile_size - 2 * overlap`` wide, so a tile read with its overlap
    holds every cell whose centroid its core owns (overlap >= a cell diameter).
    """
    o = overlap_px(cfg, geo.working_mpp)
    core = cfg.tile_size_px - 2 * o
    if core < 1:
        raise ConfigError(
            f"config key 'tiling.overlap_um' ({cfg.overlap_um} um = {o} px at {geo.working_mpp} um/px) "
            f"leaves no core in a {cfg.tile_size_px} px tile; lower it or raise 'tiling.tile_size_px'"
        )
    ww, wh = geo.working_dims
    tiles = []
    for iy in range(math.ceil(wh / core)):
        for ix in range(math.ceil(ww / core)):
            cx0, cy0 = ix * core, iy * core
            cx1, cy1 = min(cx0 + core, ww), min(cy0 + core, wh)
            if mask is not None:
                k = geo.working_mpp / mask_mpp  # mask px per working px
                mx0, my0 = int(math.floor(cx0 * k)), int(math.floor(cy0 * k))
                mx1, my1 = max(mx0 + 1, int(math.ceil(cx1 * k))), max(my0 + 1, int(math.ceil(cy1 * k)))
                window = mask[my0:my1, mx0:mx1]
                if window.size == 0 or window.mean() < cfg.min_foreground_fraction or not window.any():
                    continue
            tiles.append(TileSpec(len(tiles), cx0 - o, cy0 - o, cfg.tile_size_px, cx0, cy0, cx1, cy1))
    return tiles
