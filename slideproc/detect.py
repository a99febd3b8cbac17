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


def plan_source(ref: SourceRef, cfg: RunConfig) -> tuple[Geometry, list[TileSpec]]:
    """Geometry and the foreground tiles of one source. An image field is taken whole."""
    reader = cached_reader(ref)
    mpp0 = resolve_mpp(reader, ref, cfg.source.fallback_mpp_um)
    geo = geometry(reader, mpp0, cfg.source.working_mpp_um)
    mask, mask_mpp = foreground_mask(reader, mpp0, cfg.tiling, whole_field=ref.reader == "image")
    return geo, plan_tiles(geo, cfg.tiling, mask, mask_mpp)


@functools.lru_cache(maxsize=32)
def source_stain(ref: SourceRef, cfg: RunConfig) -> Stain:
    """The source's glass level and nuclear threshold, from up to 12 windows of
    384 working px spread evenly over its foreground.

    The windows lie on a fixed grid that ignores the tile size, so the stain
    (and every cell's outline) is the same whatever tiling a run uses.
    Deterministic, so each worker that computes it (once per process, cached)
    gets the same values.
    """
    reader = cached_reader(ref)
    mpp0 = resolve_mpp(reader, ref, cfg.source.fallback_mpp_um)
    geo = geometry(reader, mpp0, cfg.source.working_mpp_um)
    mask, mask_mpp = foreground_mask(reader, mpp0, cfg.tiling, whole_field=ref.reader == "image")
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
        return estimate_stain([], geo.working_mpp, cfg.segment)
    picks = np.unique(np.linspace(0, len(spots) - 1, min(_STAIN_TILES, len(spots))).round().astype(int))
    patches = [read_working(reader, geo, *spots[i]) for i in picks]
    return estimate_stain(patches, geo.working_mpp, cfg.segment)


def detect_tile(ref: SourceRef, tile: TileSpec, geo: Geometry, cfg: RunConfig) -> pd.DataFrame:
    """The cells whose centroid this tile's core owns, in level-0 pixels of ``ref``."""
    reader = cached_reader(ref)
    stain = source_stain(ref, cfg)
    x, y, w, h = _clip_to_source(tile, geo)
    if w <= 0 or h <= 0:
        return empty_cells()
    rgb = read_working(reader, geo, x, y, w, h)
    res = segment_tile(rgb, geo.working_mpp, cfg.segment, stain=stain)
    if len(res) == 0:
        return empty_cells()
    ux = x + res.centroid[:, 0]
    uy = y + res.centroid[:, 1]
    own = tile.owns(ux, uy)
    if not own.any():
        return empty_cells()
    return cells_frame(ref.name, geo, ux[own], uy[own], res.bbox[own] + [x, y, x, y], res.area_um2[own])


# White margin kept around the source when a tile hangs over its edge: more
# than the blur's reach (4 sigma of 0.4 um = 3 px at 0.5 um/px), so clipping
# the rest of the padding changes no pixel that segmentation looks at.
_EDGE_PAD_PX = 16


def _clip_to_source(tile: TileSpec, geo: Geometry) -> tuple[int, int, int, int]:
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
    "plan_source", "source_stain", "detect_tile", "detect_source", "detect_sample",
    "cells_frame", "concat_cells", "empty_cells", "tiles_in_plan",
]
