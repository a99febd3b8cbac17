"""Detection of one source, tile by tile: read -> segment -> cells in level-0 coordinates.

``plan_source`` (geometry + foreground tiles) and ``detect_tile`` are the two
pieces the Dask engine calls; ``detect_source`` and ``detect_sample`` are the
same work as plain serial loops, for tests, benchmarks and small jobs.

Exactness across tiles: a tile reads its core plus ``tiling.overlap_um`` on
each side (more than a cell diameter), segments it, and keeps the cells whose
nucleus centroid its core owns, so every cell is found once, whole, by one tile.
The glass level and nuclear threshold are fixed per source
(:func:`source_stain`, from sample patches spread over the foreground), not per
tile, so a cell is cut the same way whichever tile reads it.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from .config import RunConfig
from .errors import SourceError
from .schema import DETECT_COLUMNS
from .segment import Stain, estimate_stain, segment_tile
from .sources import cached_reader, resolve_mpp
from .sources.base import SourceRef
from .tiling import Geometry, TileSpec, foreground_mask, geometry, plan_tiles, read_working

# Stain sampling: up to this many windows of this many working pixels
# (384 px at 0.5 um/px = 192 um, dozens of cells each).
_STAIN_TILES = 12
_STAIN_WINDOW_PX = 384


def empty_cells() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in DETECT_COLUMNS})
    df["source"] = df["source"].astype(object)
    for c in ("x0", "y0", "x1", "y1"):
        df[c] = df[c].astype("int64")
    return df


def _open_and_mask(ref: SourceRef, cfg: RunConfig):
    """(reader, geometry, foreground mask, mask um/px) of one source."""
    reader = cached_reader(ref, cfg.source.max_image_pixels)
    mpp0 = resolve_mpp(reader, ref, cfg.source).mpp
    check_holds_a_cell(ref.path, reader.dimensions, mpp0, cfg)
    geo = geometry(reader, mpp0, cfg.source.working_mpp_um)
    mask, mask_mpp = foreground_mask(reader, mpp0, cfg.tiling, whole_field=ref.reader == "image")
    return reader, geo, mask, mask_mpp


def check_holds_a_cell(path: str, dims: tuple[int, int], mpp0: float, cfg: RunConfig) -> None:
    """SourceError when the source is narrower than the smallest nucleus detected
    (2 x segment.min_nucleus_radius_um): no cell can lie in it, so it is a
    thumbnail or icon, or its mpp is wrong; said rather than counted as 0 cells."""
    w, h = dims
    least = 2 * cfg.segment.min_nucleus_radius_um
    if min(w, h) * mpp0 < least:
        raise SourceError(
            f"{path}: {w} x {h} px is {w * mpp0:.3g} x {h * mpp0:.3g} um at {mpp0:g} um/px, narrower than "
            f"the smallest nucleus detected ({least:g} um, 2 x segment.min_nucleus_radius_um), so it cannot "
            "hold a cell; check its mpp, or leave thumbnails and icons out of the input")


def plan_source(ref: SourceRef, cfg: RunConfig) -> tuple[Geometry, list[TileSpec]]:
    """Geometry and the foreground tiles of one source. An image field is taken whole."""
    _, geo, mask, mask_mpp = _open_and_mask(ref, cfg)
    return geo, plan_tiles(geo, cfg.tiling, mask, mask_mpp)


def plan_source_and_stain(ref: SourceRef, cfg: RunConfig) -> tuple[Geometry, list[TileSpec], Stain]:
    """:func:`plan_source` and :func:`source_stain` from one look at the source,
    for the engine's plan task: its detect tasks then take the stain as an
    argument instead of each worker finding the foreground again."""
    reader, geo, mask, mask_mpp = _open_and_mask(ref, cfg)
    return geo, plan_tiles(geo, cfg.tiling, mask, mask_mpp), _stain_of(reader, geo, mask, mask_mpp, cfg)


@functools.lru_cache(maxsize=32)
def source_stain(ref: SourceRef, cfg: RunConfig) -> Stain:
    """The source's glass level and nuclear threshold, from up to 12 windows of
    384 working px spread evenly over its foreground.

    The windows lie on a fixed grid that ignores the tile size, so the stain
    (and every cell's outline) is the same whatever tiling a run uses.
    Deterministic, so each worker that computes it (once per process, cached)
    gets the same values.
    """
    return _stain_of(*_open_and_mask(ref, cfg), cfg)


def _stain_of(reader, geo: Geometry, mask: np.ndarray, mask_mpp: float, cfg: RunConfig, reads=()) -> Stain:
    """The stain from the :func:`stain_windows` of one source; a window inside
    one of ``reads`` ((window, working pixels) pairs already read) is cut from it."""
    patches = [_cut_or_read(reader, geo, w, reads) for w in stain_windows(geo, mask, mask_mpp)]
    return estimate_stain(patches, geo.working_mpp, cfg.segment)


def stain_windows(geo: Geometry, mask: np.ndarray, mask_mpp: float) -> list[tuple[int, int, int, int]]:
    """The (x, y, w, h) working-pixel windows :func:`source_stain` samples."""
    ww, wh = geo.working_dims
    win = _STAIN_WINDOW_PX
    k = geo.working_mpp / mask_mpp  # mask px per working px
    spots = []
    for y in range(0, wh, win):
        for x in range(0, ww, win):
            w, h = min(win, ww - x), min(win, wh - y)
            sub = mask[int(y * k):max(int(y * k) + 1, int((y + h) * k)),
                       int(x * k):max(int(x * k) + 1, int((x + w) * k))]
            if sub.size and sub.mean() >= 0.5:
                spots.append((x, y, w, h))
    if not spots:
        return []
    picks = np.unique(np.linspace(0, len(spots) - 1, min(_STAIN_TILES, len(spots))).round().astype(int))
    return [spots[i] for i in picks]


def detect_tile(ref: SourceRef, tile: TileSpec, geo: Geometry, cfg: RunConfig,
                stain: Stain | None = None, rgb: np.ndarray | None = None) -> pd.DataFrame:
    """The cells whose centroid this tile's core owns, in level-0 pixels of ``ref``.

    ``stain`` and ``rgb`` (the tile's working pixels, :func:`tile_window`) may be
    passed by a caller that already has them; they are computed otherwise.
    """
    x, y, w, h = tile_window(tile, geo)
    if w <= 0 or h <= 0:
        return empty_cells()
    if stain is None:
        stain = source_stain(ref, cfg)
    if rgb is None:
        rgb = read_working(cached_reader(ref), geo, x, y, w, h)
    res = segment_tile(rgb, geo.working_mpp, cfg.segment, stain=stain)
    if len(res) == 0:
        return empty_cells()
    ux = x + res.centroid[:, 0]
    uy = y + res.centroid[:, 1]
    own = tile.owns(ux, uy)
    if not own.any():
        return empty_cells()
    return cells_frame(ref.name, geo, ux[own], uy[own], res.bbox[own] + [x, y, x, y], res.area_um2[own])


def detect_field(ref: SourceRef, cfg: RunConfig) -> tuple[Geometry, pd.DataFrame]:
    """Plan and detect one source in one call: (geometry, its cells).

    The same cells as :func:`plan_source` + :func:`detect_tile` per tile, for
    the engine's image-folder path, where a field is small and the separate
    calls would read it and find its foreground twice: here the tiles are read
    once and the stain windows, which lie inside them, are cut from those reads
    (``read_working`` gives the same pixels for a window whatever read it is
    part of, see tiling.py).
    """
    reader, geo, mask, mask_mpp = _open_and_mask(ref, cfg)
    tiles = plan_tiles(geo, cfg.tiling, mask, mask_mpp)
    reads = [(tile_window(t, geo), None) for t in tiles]
    if len(tiles) <= 4:  # a field, not a slide: hold its few tile reads
        reads = [(win, read_working(reader, geo, *win) if win[2] > 0 and win[3] > 0 else None)
                 for win, _ in reads]
    stain = _stain_of(reader, geo, mask, mask_mpp, cfg, reads)
    frames = [detect_tile(ref, t, geo, cfg, stain=stain, rgb=rgb) for t, (_, rgb) in zip(tiles, reads)]
    return geo, concat_cells(frames)


def _cut_or_read(reader, geo: Geometry, win, reads) -> np.ndarray:
    """Working pixels of ``win``: a slice of a held read that contains it, else a read."""
    x, y, w, h = win
    for (rx, ry, rw, rh), rgb in reads:
        if rgb is not None and rx <= x and ry <= y and x + w <= rx + rw and y + h <= ry + rh:
            return rgb[y - ry:y - ry + h, x - rx:x - rx + w]
    return read_working(reader, geo, x, y, w, h)


# White margin kept around the source when a tile hangs over its edge: more
# than the blur's reach (4 sigma of 0.4 um = 3 px at 0.5 um/px), so clipping
# the rest of the padding changes no pixel that segmentation looks at.
_EDGE_PAD_PX = 16


def tile_window(tile: TileSpec, geo: Geometry) -> tuple[int, int, int, int]:
    """The tile's read window less the blank padding beyond the source's edge
    (a small image field in a 1024-px tile would otherwise be mostly padding)."""
    ww, wh = geo.working_dims
    x0 = max(tile.x, -_EDGE_PAD_PX)
    y0 = max(tile.y, -_EDGE_PAD_PX)
    x1 = min(tile.x + tile.size, ww + _EDGE_PAD_PX)
    y1 = min(tile.y + tile.size, wh + _EDGE_PAD_PX)
    return x0, y0, x1 - x0, y1 - y0


def cells_frame(name: str, geo: Geometry, ux: np.ndarray, uy: np.ndarray, ubox: np.ndarray,
                area_um2: np.ndarray) -> pd.DataFrame:
    """DETECT_COLUMNS from working-pixel centroids and boxes (x1, y1 exclusive)."""
    f = geo.f
    w0, h0 = geo.level0_dims
    # A working pixel u covers level-0 [u*f, (u+1)*f): box edges scale by f.
    x0 = np.clip(np.floor(ubox[:, 0] * f), 0, w0).astype(np.int64)
    y0 = np.clip(np.floor(ubox[:, 1] * f), 0, h0).astype(np.int64)
    x1 = np.clip(np.ceil(ubox[:, 2] * f), 0, w0).astype(np.int64)
    y1 = np.clip(np.ceil(ubox[:, 3] * f), 0, h0).astype(np.int64)
    return pd.DataFrame({
        "source": np.full(len(ux), name, dtype=object),
        "x": np.asarray(geo.to_level0(ux), np.float64),
        "y": np.asarray(geo.to_level0(uy), np.float64),
        "x0": x0, "y0": y0, "x1": x1, "y1": y1,
        "area_um2": np.asarray(area_um2, np.float64),
    }, columns=list(DETECT_COLUMNS))


def concat_cells(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_cells()
    return pd.concat(frames, ignore_index=True)


def detect_source(ref: SourceRef, cfg: RunConfig) -> pd.DataFrame:
    """Every cell of one source, tile by tile (serial)."""
    geo, tiles = plan_source(ref, cfg)
    return concat_cells([detect_tile(ref, t, geo, cfg) for t in tiles])


def detect_sample(sample, cfg: RunConfig) -> pd.DataFrame:
    """Every cell of one sample (``SampleSpec``), its sources in order."""
    return concat_cells([detect_source(ref, cfg) for ref in sample.sources])


def tiles_in_plan(ref: SourceRef, cfg: RunConfig) -> int:
    """Number of tiles detection will read (for progress bars and logs)."""
    return len(plan_source(ref, cfg)[1])


__all__ = [
    "check_holds_a_cell", "plan_source", "plan_source_and_stain", "source_stain", "stain_windows", "detect_tile", "detect_field",
    "tile_window", "detect_source", "detect_sample",
    "cells_frame", "concat_cells", "empty_cells", "tiles_in_plan",
]
