"""Procedural MGG-stained cells: the palette and the :class:`CellModel` that draws them.

A CellModel is analytic shapes and point sets in micrometres, in the cell's own
frame (``recipes`` builds one per Matek class). ``CellModel.render`` evaluates
it at any pixel size, so the same cell appears in a 0.1 um/px crop and at every
pyramid level of a 0.25 um/px slide.

Colours are optical densities (OD = -ln(I / I0)) so stains add where objects
overlap (a red cell over cytoplasm looks like both), as in transmitted light.
Sizes, shapes and colours follow the class table in README.md (typical diameters
of May-Gruenwald-Giemsa stained cells); where real classes overlap
(blast vs immature lymphocyte) the ranges are pulled apart on purpose so the
classes stay separable (a classifier is expected to reach >= 0.97 on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .shapes import sd_capsule, sd_ellipse, sd_parts, soft, splat

WHITE = 245.0


def rgb(r: float, g: float, b: float) -> np.ndarray:
    """OD of a stain that, fully present on white glass, shows as (r, g, b)."""
    return -np.log(np.array([r, g, b], np.float32) / WHITE).astype(np.float32)


# Palette (MGG/Pappenheim): nuclei purple-blue, basophilic cytoplasm blue,
# haemoglobin pink-salmon, eosinophil granules orange-red.
NUC = rgb(95, 55, 150)            # ordinary nucleus
NUC_DARK = rgb(62, 30, 112)       # condensed (lymphocyte, pyknotic)
NUC_PALE = rgb(125, 90, 178)      # open blast chromatin: paler than a mature nucleus, still purple
CYT_BLUE = rgb(150, 172, 222)
CYT_DEEP = rgb(92, 115, 195)      # plasma cell, proerythroblast: deep blue, lighter than the nucleus
CYT_SKY = rgb(165, 200, 238)      # lymphocyte rim
CYT_GREYBLUE = rgb(178, 182, 212)  # monocyte ground glass
CYT_LILAC = rgb(212, 182, 212)    # myelocyte
CYT_PINK = rgb(228, 202, 218)     # neutrophils
CYT_PALEBLUE = rgb(190, 208, 235)  # hairy cell
CYT_HB = rgb(222, 178, 188)       # haemoglobinised erythroblast
GRAN_AZUR = rgb(120, 30, 105)     # coarse azurophilic, purple-red
GRAN_FINE = rgb(185, 135, 185)    # fine neutrophilic, pink-lilac
GRAN_EOS = rgb(235, 120, 80)      # eosinophilic, orange-red
GRAN_BASO = rgb(45, 15, 70)       # basophilic, purple-black
AUER = rgb(150, 25, 90)           # Auer rods, red-purple


@dataclass
class Granules:
    pts: np.ndarray            # (N, 2) um, cell frame
    sigma: float               # um (blob radius ~ 1.5 sigma)
    od: np.ndarray             # OD at a blob's peak
    over_nucleus: bool = False  # basophil granules lie over the nucleus


@dataclass
class CellModel:
    cls: str
    radius: float                       # um, bounding radius of everything drawn
    theta: float = 0.0                  # rotation, radians
    body: tuple | None = None           # (R, aspect, [(k, amp, phase), ...]) or None (no cytoplasm)
    hairs: list = field(default_factory=list)       # capsules joined to the body (hairy cell)
    cyto_od: np.ndarray | None = None
    nucleus: list = field(default_factory=list)     # parts for sd_parts
    indents: list = field(default_factory=list)
    nuc_od: np.ndarray = field(default_factory=lambda: NUC.copy())
    chromatin: tuple | None = None      # (pts, sigma um, contrast)
    nucleoli: list = field(default_factory=list)    # (x, y, r, depth)
    pale: list = field(default_factory=list)        # (x, y, r, depth): Golgi zone / hof / vacuole
    granules: list = field(default_factory=list)
    rods: list = field(default_factory=list)        # capsules (Auer rods)
    blobs: list = field(default_factory=list)       # Granules-like free material (debris, smudge)
    mottle: np.ndarray | None = None    # (N, 2) um: centres of faint cytoplasm density variation
    blur: float = 0.0                   # um, out-of-focus / damaged (NIF)
    od_scale: float = 1.0

    # ------------------------------------------------------------------
    def nucleus_alpha(self, u, v, aa):
        if not self.nucleus:
            return np.zeros_like(u)
        return soft(sd_parts(u, v, self.nucleus, self.indents), aa)

    def geometry(self, step: float = 0.4) -> tuple[float, float, float]:
        """(cx, cy, r) in um, image frame, from the anchor: centroid of the nuclear material and
        the radius around it that holds that material.

        The centroid is the point truth.csv reports: what a detector that groups
        nuclear fragments (the lobes of a neutrophil) into one cell finds. Objects
        without a nucleus (debris, smudges) use their stained mass.
        """
        n = int(np.ceil(self.radius / step))
        ax = (np.arange(-n, n + 1) * step).astype(np.float32)
        if self.nucleus and self.blur == 0:  # only the nucleus matters: skip textures and granules
            X, Y = np.meshgrid(ax, ax)
            c, s = np.cos(self.theta), np.sin(self.theta)
            wgt = self.nucleus_alpha(c * X + s * Y, -s * X + c * Y, max(step, 0.35))
        else:
            od, nuc = self.render(ax, ax, step)
            wgt = nuc if nuc.sum() > 0 else od.sum(axis=2)
        tot = float(wgt.sum())
        if tot <= 0:
            return 0.0, 0.0, 1.0
        cx = float((wgt.sum(axis=0) * ax).sum() / tot)
        cy = float((wgt.sum(axis=1) * ax).sum() / tot)
        X, Y = np.meshgrid(ax, ax)
        sel = wgt > 0.5 * wgt.max()
        r = float(np.hypot(X[sel] - cx, Y[sel] - cy).max()) + 0.5
        return cx, cy, r

    # ------------------------------------------------------------------
    def render(self, xs: np.ndarray, ys: np.ndarray, step: float):
        """OD (H, W, 3) and nucleus coverage (H, W) at pixel centres ``xs``/``ys`` (um from the anchor)."""
        h, w = len(ys), len(xs)
        X, Y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        c, s = np.float32(np.cos(self.theta)), np.float32(np.sin(self.theta))
        U, V = c * X + s * Y, -s * X + c * Y
        # Edges ramp over one pixel or 0.35 um (the optics blur a membrane at 100x), whichever is wider.
        aa = max(step, 0.35)

        def to_px(pts):
            pu, pv = pts[:, 0], pts[:, 1]
            return (c * pu - s * pv - xs[0]) / step, (s * pu + c * pv - ys[0]) / step

        def box(x, y, r):
            """Pixel slices holding a feature of radius r um at (x, y) in the cell frame: small
            features (nucleoli, vacuoles, rods, hairs) are evaluated there only."""
            px, py = (c * x - s * y - xs[0]) / step, (s * x + c * y - ys[0]) / step
            rp = (r + aa) / step + 1
            return (slice(max(int(py - rp), 0), max(min(int(py + rp) + 2, h), 0)),
                    slice(max(int(px - rp), 0), max(min(int(px + rp) + 2, w), 0)))

        def capsule_box(cap):
            ax_, ay_, bx_, by_, r = cap
            return box((ax_ + bx_) / 2, (ay_ + by_) / 2, np.hypot(bx_ - ax_, by_ - ay_) / 2 + r)

        od = np.zeros((h, w, 3), np.float32)
        nuc = np.zeros_like(U)
        if self.nucleus:
            nsdf = sd_parts(U, V, self.nucleus, self.indents)
            nuc = soft(nsdf, aa)
        cyt = np.zeros_like(U)
        if self.body is not None:
            R, asp, harm = self.body
            r = np.hypot(U / asp, V)
            phi = np.arctan2(V, U)
            rad = np.ones_like(U)
            for k, a, p in harm:
                rad += a * np.cos(k * phi + p)
            sdf = r - R * rad
            for cap in self.hairs:
                b = capsule_box(cap)
                sdf[b] = np.minimum(sdf[b], sd_capsule(U[b], V[b], *cap))
            cyt = soft(sdf, aa)
            fac = np.ones_like(U)
            for x, y, rr, depth in self.pale:
                b = box(x, y, rr)
                fac[b] -= depth * soft(sd_ellipse(U[b], V[b], x, y, rr, rr), aa)
            if self.mottle is not None:  # +-12 % density variation
                fac *= 0.88 + 0.24 * np.tanh(splat(*to_px(self.mottle), 1.0, (h, w), 0.7 / step))
            # Under the nucleus the cytoplasm is thinner (the nucleus displaces it).
            od += (cyt * np.clip(fac, 0.05, 1) * (1 - 0.6 * nuc))[..., None] * self.cyto_od
        if self.nucleus:
            tex = np.ones_like(U)
            if self.chromatin is not None:
                pts, sig, contrast = self.chromatin
                F = splat(*to_px(pts), 1.0, (h, w), sig / step)
                tex = (1 - contrast) + 2 * contrast * np.tanh(F)
            # chromatin condenses along the nuclear membrane: a darker rim ~0.4 um wide
            tex += 0.15 * np.clip(1 - np.abs(nsdf + 0.3) / 0.35, 0, 1)
            for x, y, rr, depth in self.nucleoli:
                b = box(x, y, rr)
                tex[b] *= 1 - depth * soft(sd_ellipse(U[b], V[b], x, y, rr, rr), aa)
            od += (nuc * tex)[..., None] * self.nuc_od
        for g in self.granules:
            F = splat(*to_px(g.pts), 1.0, (h, w), g.sigma / step)
            F = np.minimum(F, 1.3)
            mask = cyt if g.over_nucleus else cyt * (1 - 0.85 * nuc)
            od += (F * mask)[..., None] * g.od
        for g in self.blobs:
            F = splat(*to_px(g.pts), 1.0, (h, w), g.sigma / step)
            od += np.minimum(F, 1.5)[..., None] * g.od
        if self.rods:
            cover = np.zeros_like(U)
            for cap in self.rods:
                b = capsule_box(cap)
                cover[b] = np.maximum(cover[b], soft(sd_capsule(U[b], V[b], *cap), max(step, 0.2)))
            od += cover[..., None] * AUER
        if self.od_scale != 1.0:
            od *= self.od_scale
        if self.blur > 0:
            sig = self.blur / step
            od = ndimage.gaussian_filter(od, (sig, sig, 0), mode="constant", truncate=2.5)
            nuc = ndimage.gaussian_filter(nuc, sig, mode="constant", truncate=2.5)
        return od, nuc
