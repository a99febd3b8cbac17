"""What lies between the nucleated cells: glass, the smear, red cells, platelets, debris.

The smear is a rounded, feathered region inside the slide; outside it is bare
glass (so a foreground mask matters). Inside, red cells are dense, touching and
overlapping. Background objects are generated per fixed world block of
64 x 64 um, each block from its own seed (scene seed, block x, block y), so any
region renders the same whatever the tiling and without the rest of the slide.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .cells import rgb
from .shapes import sd_ellipse, soft, splat

BLOCK_UM = 64.0
# Red cells: 7-8 um discs (area ~44 um2). 0.021 per um2 covers ~60 % of a thick
# area with overlaps, as in a marrow aspirate; thin areas and the feathered edge
# hold fewer.
RBC_PER_UM2 = 0.021
PLATELET_PER_UM2 = 0.0012
DEBRIS_PER_UM2 = 0.0003
RBC_OD = rgb(230, 190, 192)
PLASMA_OD = rgb(236, 230, 240)    # faint lilac protein film inside the smear
PLATELET_OD = rgb(190, 150, 205)
PLATELET_GRAN = rgb(120, 70, 150)
DEBRIS_OD = rgb(120, 100, 130)
N_TEMPLATES = (32, 16, 8)         # red cells, platelets, debris specks
MAX_OBJ_UM = 5.0                  # largest background object radius


@dataclass(frozen=True)
class Smear:
    """A rounded-rectangle smear with a wavy, feathered border, in level-0 pixels."""

    cx: float
    cy: float
    rx: float
    ry: float
    power: float            # superellipse exponent: 2 ellipse .. 6 nearly rectangular
    feather: float          # px over which the smear thins out into glass
    waves: tuple            # ((k, amp, phase), ...) border wobble

    @classmethod
    def random(cls, rng, width, height, mpp):
        # a 60 um feathered edge, narrower on small images so they keep a full-thickness core
        feather = min(60.0 / mpp, 0.15 * min(width, height))
        return cls(width / 2 + rng.uniform(-0.03, 0.03) * width, height / 2 + rng.uniform(-0.03, 0.03) * height,
                   width * rng.uniform(0.36, 0.42), height * rng.uniform(0.36, 0.42), rng.uniform(3, 5), feather,
                   tuple((k, rng.uniform(0, 0.04), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)))

    def mask(self, x, y):
        """Smear thickness 0 (glass) .. 1 (full smear) at level-0 pixel positions."""
        u, v = (x - self.cx) / self.rx, (y - self.cy) / self.ry
        r = (np.abs(u) ** self.power + np.abs(v) ** self.power) ** (1 / self.power)
        phi = np.arctan2(v, u)
        edge = np.ones_like(r)
        for k, a, p in self.waves:
            edge = edge + a * np.cos(k * phi + p)
        dist = (edge - r) * min(self.rx, self.ry)  # px inside the border
        return np.clip(dist / self.feather, 0.0, 1.0)


def _template(od_fn, step, radius_um):
    n = int(np.ceil(radius_um / step)) + 1
    ax = (np.arange(-n, n + 1) * step).astype(np.float32)
    U, V = np.meshgrid(ax, ax)
    # planar (3, h, w): the renderer adds channel planes, which are contiguous
    return np.ascontiguousarray(od_fn(U, V, step, ax).astype(np.float32).transpose(2, 0, 1))


def _rbc(rng):
    d = rng.uniform(6.8, 8.2)
    a, asp, rot = d / 2, rng.uniform(1.0, 1.12), rng.uniform(0, np.pi)
    pallor, depth, dens = rng.uniform(0.35, 0.5), rng.uniform(0.35, 0.6), rng.uniform(0.85, 1.15)

    def fn(U, V, step, ax):
        aa = max(step, 0.35)
        disc = soft(sd_ellipse(U, V, 0, 0, a * asp, a, rot), aa)
        # pale centre: the biconcave disc is thinner in the middle
        centre = np.exp(-(U ** 2 + V ** 2) / (2 * (pallor * a) ** 2))
        return (disc * (1 - depth * centre) * dens)[..., None] * RBC_OD
    return fn, a * asp + 0.5


def _platelet(rng):
    r = rng.uniform(1.0, 1.5)
    rr = rng.uniform(0.7, 1.3)
    pts = rng.uniform(-r * 0.7, r * 0.7, (int(rng.integers(4, 9)), 2))

    def fn(U, V, step, ax):
        aa = max(step, 0.3)
        body = soft(sd_ellipse(U, V, 0, 0, r * rr, r, 0.3), aa)
        g = splat((pts[:, 0] - ax[0]) / step, (pts[:, 1] - ax[0]) / step, 1.0, U.shape, 0.25 / step)
        return body[..., None] * PLATELET_OD * 0.7 + (np.minimum(g, 1) * body)[..., None] * PLATELET_GRAN * 0.6
    return fn, r * max(rr, 1) + 0.5


def _debris(rng):
    r = rng.uniform(0.3, 0.8)

    def fn(U, V, step, ax):
        return soft(sd_ellipse(U, V, 0, 0, r, r * 0.7, 1.0), max(step, 0.3))[..., None] * DEBRIS_OD * 0.8
    return fn, r + 0.5


class Background:
    """Glass, smear film and the red cells, platelets and debris of one scene."""

    def __init__(self, seed: tuple, mpp: float, smear: Smear | None, density: float = 1.0):
        self.seed, self.mpp, self.smear, self.density = tuple(seed), mpp, smear, density
        self.block_px = BLOCK_UM / mpp
        self._blocks: OrderedDict = OrderedDict()
        self._templates: dict = {}
        rng = np.random.default_rng([*self.seed, 1])
        self._makers = [[f(rng) for _ in range(n)] for f, n in zip((_rbc, _platelet, _debris), N_TEMPLATES)]
        # thick and thin areas: red-cell density varies slowly over ~400 um
        self._waves = [(rng.uniform(0.5, 1.5) * 2 * np.pi / 400 * mpp, rng.uniform(0, 2 * np.pi),
                        rng.uniform(0, 2 * np.pi)) for _ in range(3)]

    def thickness(self, x, y):
        t = np.full(np.shape(x), 0.8, np.float32)
        for f, p, a in self._waves:
            t = t + 0.07 * np.sin(f * (np.cos(a) * x + np.sin(a) * y) + p)
        if self.smear is not None:
            t = t * self.smear.mask(x, y)
        return t

    def templates(self, d: float):
        """OD templates for every background object variant at downsample ``d``."""
        t = self._templates.get(d)
        if t is None:
            step = d * self.mpp
            t = [[_template(fn, step, rad) for fn, rad in group] for group in self._makers]
            self._templates[d] = t
        return t

    def block(self, bx: int, by: int):
        """(kind, variant, x, y) arrays of the objects of one block, level-0 px."""
        key = (bx, by)
        hit = self._blocks.get(key)
        if hit is not None:
            self._blocks.move_to_end(key)
            return hit
        # block indices may be negative at padded edges; SeedSequence wants non-negative words
        rng = np.random.default_rng([*self.seed, 2, bx + 2**20, by + 2**20])
        B = self.block_px
        area = BLOCK_UM ** 2
        kinds, xs, ys = [], [], []
        for kind, rate in enumerate((RBC_PER_UM2 * self.density, PLATELET_PER_UM2, DEBRIS_PER_UM2)):
            n = rng.poisson(rate * area)
            x = bx * B + rng.random(n) * B
            y = by * B + rng.random(n) * B
            if kind == 1 and n:  # a third of the platelets sit in clumps of 3-7
                k = n // 3
                cx, cy = x[:k], y[:k]
                m = rng.integers(2, 7, k)
                x = np.concatenate([x] + [cx[i] + rng.normal(0, 1.5 / self.mpp, m[i]) for i in range(k)])
                y = np.concatenate([y] + [cy[i] + rng.normal(0, 1.5 / self.mpp, m[i]) for i in range(k)])
            keep = rng.random(len(x)) < self.thickness(x, y) / (0.8 if kind == 0 else 1.0)
            kinds.append(np.full(keep.sum(), kind))
            xs.append(x[keep])
            ys.append(y[keep])
        kind = np.concatenate(kinds)
        variant = rng.integers(0, 1 << 30, len(kind)) % np.array(N_TEMPLATES)[kind]
        hit = (kind, variant, np.concatenate(xs), np.concatenate(ys))
        self._blocks[key] = hit
        if len(self._blocks) > 4096:
            self._blocks.popitem(last=False)
        return hit

    def draw(self, od: np.ndarray, gx0: int, gy0: int, d: float) -> None:
        """Add the background's OD to planar ``od`` (3, h, w) whose pixel (0, 0) is level-grid pixel (gx0, gy0)."""
        _, h, w = od.shape
        # plasma film, evaluated on an 8-px grid aligned to the level grid (cheap, tiling-independent)
        if self.smear is None:
            od += PLASMA_OD[:, None, None]
        else:
            cy0, cx0 = gy0 // 8, gx0 // 8
            cy1, cx1 = (gy0 + h - 1) // 8 + 1, (gx0 + w - 1) // 8 + 1
            xx = ((np.arange(cx0, cx1) * 8 + 4) * d).astype(np.float64)
            yy = ((np.arange(cy0, cy1) * 8 + 4) * d).astype(np.float64)
            m = self.smear.mask(xx[None, :], yy[:, None]).astype(np.float32)
            m = np.repeat(np.repeat(m, 8, 0), 8, 1)
            m = m[gy0 - cy0 * 8: gy0 - cy0 * 8 + h, gx0 - cx0 * 8: gx0 - cx0 * 8 + w]
            od += m[None] * PLASMA_OD[:, None, None]
        tpl = self.templates(d)
        B = self.block_px
        pad = MAX_OBJ_UM / self.mpp
        bx0 = int(np.floor((gx0 * d - pad) / B))
        bx1 = int(np.floor(((gx0 + w) * d + pad) / B))
        by0 = int(np.floor((gy0 * d - pad) / B))
        by1 = int(np.floor(((gy0 + h) * d + pad) / B))
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                kind, variant, xs, ys = self.block(bx, by)
                for k, v, x, y in zip(kind.tolist(), variant.tolist(), xs.tolist(), ys.tolist()):
                    t = tpl[k][v]
                    n = t.shape[1]
                    px = math.floor(x / d) - n // 2 - gx0
                    py = math.floor(y / d) - n // 2 - gy0
                    x0, y0 = max(px, 0), max(py, 0)
                    x1, y1 = min(px + n, w), min(py + n, h)
                    if x1 > x0 and y1 > y0:
                        od[:, y0:y1, x0:x1] += t[:, y0 - py:y1 - py, x0 - px:x1 - px]
