"""A synthetic smear as a description, and rendering of any region of it.

``Scene`` holds what was decided from the seed (the smear, the stain, every
nucleated cell's class, place and own seed) and draws pixels on demand:
``render(x0, y0, w, h, downsample)`` gives any region at any pyramid level
without drawing the rest of the slide. Every pixel is a function of its own
level-grid position only (objects are added in a fixed order, OD is mapped to
bytes by a lookup table), so a region drawn whole or in pieces is identical.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .background import Background, Smear
from .recipes import make_cell
from .stain import Stain

# A cell's centre is kept this far inside the smear's full-thickness area and
# away from the image edge (beyond its own radius), so no cell is cut.
EDGE_MARGIN_UM = 3.0
# Share of cells placed against an already placed one (touching pairs, clusters).
TOUCHING = 0.3


@dataclass(frozen=True)
class PlacedCell:
    cls: str
    x: float            # anchor (the cell's own origin), level-0 px
    y: float
    radius: float       # um, bounding radius
    seed: tuple         # regenerates the CellModel
    tx: float           # truth: centroid of the nuclear material, level-0 px
    ty: float
    nuc_radius: float   # um, radius of a disc around (tx, ty) holding the nucleus
    real: int = -1      # index into a RealCellBank, or -1 for a procedural cell


class Scene:
    """One field or slide: background, stain and placed cells; draws any region."""

    def __init__(self, width: int, height: int, mpp: float, seed: tuple, cells: list[PlacedCell],
                 smear: Smear | None, stain: Stain, real_bank=None, cache_mb: float = 96,
                 background: Background | None = None):
        self.width, self.height, self.mpp = int(width), int(height), float(mpp)
        self.seed, self.cells, self.smear, self.stain = tuple(seed), list(cells), smear, stain
        self.background = background or Background(self.seed, self.mpp, smear)
        self.real_bank = real_bank
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_mb * 2**20
        # spatial index: cell indices per 128-um bucket, for region queries
        self._bucket = 128.0 / self.mpp
        self._grid: dict = {}
        self._max_r = max((c.radius for c in self.cells), default=0.0) / self.mpp
        for i, c in enumerate(self.cells):
            key = (int(c.x // self._bucket), int(c.y // self._bucket))
            self._grid.setdefault(key, []).append(i)

    # ------------------------------------------------------------------
    def cells_in(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        """Indices (ascending) of cells whose drawing may touch the level-0 box."""
        pad = self._max_r + 2
        b = self._bucket
        out = []
        for by in range(int((y0 - pad) // b), int((y1 + pad) // b) + 1):
            for bx in range(int((x0 - pad) // b), int((x1 + pad) // b) + 1):
                for i in self._grid.get((bx, by), ()):
                    c = self.cells[i]
                    r = c.radius / self.mpp + 2
                    if c.x + r > x0 and c.x - r < x1 and c.y + r > y0 and c.y - r < y1:
                        out.append(i)
        return sorted(out)

    def _patch(self, i: int, d: float):
        """(gx, gy, od) of cell i at downsample d, cached (a cell spans several tiles)."""
        key = (i, d)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        c = self.cells[i]
        if c.real >= 0:
            od = self.real_bank.render(c.real, d * self.mpp)  # (h, w, 3), centred on the anchor
            gx = math.floor(c.x / d) - od.shape[1] // 2
            gy = math.floor(c.y / d) - od.shape[0] // 2
        else:
            model = make_cell(c.cls, np.random.default_rng(c.seed))
            r = c.radius / self.mpp + d  # px
            gx, gy = math.floor((c.x - r) / d), math.floor((c.y - r) / d)
            gx1, gy1 = math.ceil((c.x + r) / d), math.ceil((c.y + r) / d)
            xs = ((np.arange(gx, gx1) + 0.5) * d - c.x) * self.mpp
            ys = ((np.arange(gy, gy1) + 0.5) * d - c.y) * self.mpp
            od, _ = model.render(xs, ys, d * self.mpp)
        od = np.ascontiguousarray(od.transpose(2, 0, 1))  # planar, as the region buffer
        hit = (gx, gy, od)
        self._cache[key] = hit
        self._cache_bytes += od.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, (_, _, old) = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return hit

    def render_od(self, gx0: int, gy0: int, w: int, h: int, d: float) -> np.ndarray:
        """Planar (3, h, w) optical density of a level-grid region."""
        od = np.zeros((3, h, w), np.float32)
        self.background.draw(od, gx0, gy0, d)
        for i in self.cells_in(gx0 * d, gy0 * d, (gx0 + w) * d, (gy0 + h) * d):
            px, py, t = self._patch(i, d)
            px, py = px - gx0, py - gy0
            x0, y0 = max(px, 0), max(py, 0)
            x1, y1 = min(px + t.shape[2], w), min(py + t.shape[1], h)
            if x1 > x0 and y1 > y0:
                od[:, y0:y1, x0:x1] += t[:, y0 - py:y1 - py, x0 - px:x1 - px]
        return od

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1) -> np.ndarray:
        """uint8 (h, w, 3) RGB of the region at level-0 position (x0, y0), ``w`` x ``h`` pixels
        of the level ``downsample`` times coarser (OpenSlide's read_region convention).
        Past the image edge the scene simply continues (glass around a slide's smear)."""
        d = float(downsample)
        gx0, gy0 = math.floor(x0 / d + 1e-9), math.floor(y0 / d + 1e-9)
        od = self.render_od(gx0, gy0, int(w), int(h), d)
        return self.stain.to_rgb(od, gx0, gy0)


# ----------------------------------------------------------------------------
# placement
# ----------------------------------------------------------------------------
def place_cells(rng: np.random.Generator, classes: list[str], width: int, height: int, mpp: float,
                smear: Smear | None, seed: tuple, models=None, touching: float = TOUCHING) -> list[PlacedCell]:
    """Place one cell per entry of ``classes`` (in that order) inside the image and the smear.

    A share ``touching`` of the cells is put against an already placed one. Cell
    centres keep 0.85 x the sum of the two body radii apart (cytoplasm may touch and
    overlap a little) and nuclear material keeps 1.5 um apart, so every cell stays
    countable.
    ``models(cls, i) -> (model_or_None, radius_um, (cx_um, cy_um), nuc_radius_um, real_index)``
    supplies each cell; by default a procedural one.
    """
    placed: list[PlacedCell] = []
    bucket = 40.0 / mpp
    grid: dict = {}

    def add(c):
        grid.setdefault((int(c.x // bucket), int(c.y // bucket)), []).append(c)

    for i, cls in enumerate(classes):
        cseed = (*seed, 3, i)
        if models is None:
            m = make_cell(cls, np.random.default_rng(cseed))
            radius = m.radius
            cx, cy, nr = m.geometry()
            real = -1
        else:
            _m, radius, (cx, cy), nr, real = models(cls, i)
        r_px = radius / mpp
        margin = r_px + EDGE_MARGIN_UM / mpp
        ok = False
        for attempt in range(400):
            if placed and rng.random() < touching and attempt < 50:
                other = placed[int(rng.integers(len(placed)))]
                a = rng.uniform(0, 2 * np.pi)
                dist = 0.87 * (radius + other.radius) / mpp * rng.uniform(0.86, 1.0)
                x, y = other.x + dist * np.cos(a), other.y + dist * np.sin(a)
            else:
                x = rng.uniform(margin, width - margin) if width > 2 * margin else width / 2
                y = rng.uniform(margin, height - margin) if height > 2 * margin else height / 2
            if not (margin <= x <= width - margin and margin <= y <= height - margin):
                continue
            if smear is not None and smear.mask(np.array([x]), np.array([y]))[0] < 1.0:
                continue
            tx, ty = x + cx / mpp, y + cy / mpp
            if _clear(grid, bucket, x, y, tx, ty, radius, nr, mpp):
                ok = True
                break
        if not ok:
            raise UsageError(f"could not place {len(classes)} cells in a {width}x{height} px image at "
                             f"{mpp} um/px: use a larger --size or fewer --cells")
        c = PlacedCell(cls, float(x), float(y), float(radius), cseed, float(tx), float(ty), float(nr), real)
        add(c)
        placed.append(c)
    return placed


def _clear(grid, bucket, x, y, tx, ty, radius, nr, mpp) -> bool:
    reach = int(np.ceil((2 * 35.0 / mpp) / bucket)) + 1  # 35 um: the largest bounding radius
    bx, by = int(x // bucket), int(y // bucket)
    for gy in range(by - reach, by + reach + 1):
        for gx in range(bx - reach, bx + reach + 1):
            for o in grid.get((gx, gy), ()):
                d_cell = math.hypot(o.x - x, o.y - y) * mpp
                d_nuc = math.hypot(o.tx - tx, o.ty - ty) * mpp
                if d_cell < 0.85 * (radius * 0.87 + o.radius * 0.87) or d_nuc < nr + o.nuc_radius + 1.5:
                    return False
    return True
