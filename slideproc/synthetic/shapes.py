"""Signed-distance shapes and point splats, in micrometres.

Every procedural object (cell, red cell, platelet) is a few analytic shapes
evaluated at pixel centres, so one description renders at any resolution.
Distances are in um; negative inside.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def soft(sdf: np.ndarray, width: float) -> np.ndarray:
    """Coverage 0..1 with a linear ramp ``width`` um wide across the boundary (anti-aliasing)."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0)


def sd_ellipse(u, v, cx, cy, a, b, rot=0.0):
    """Approximate signed distance to an ellipse (exact for circles; good enough for 1-3 um ramps)."""
    du, dv = u - cx, v - cy
    if rot:
        c, s = np.cos(rot), np.sin(rot)
        du, dv = c * du + s * dv, -s * du + c * dv
    return (np.hypot(du / a, dv / b) - 1.0) * min(a, b)


def sd_capsule(u, v, ax, ay, bx, by, r):
    """Signed distance to a segment of half-width ``r`` (rods, strands, hairs)."""
    pu, pv = u - ax, v - ay
    bu, bv = bx - ax, by - ay
    h = np.clip((pu * bu + pv * bv) / max(bu * bu + bv * bv, 1e-9), 0.0, 1.0)
    return np.hypot(pu - bu * h, pv - bv * h) - r


def sd_parts(u, v, parts, subtract=()):
    """Union of ellipse ('e', cx, cy, a, b, rot) and capsule ('c', ax, ay, bx, by, r) parts, minus ``subtract``."""
    out = None
    for p in parts:
        d = sd_ellipse(u, v, *p[1:]) if p[0] == "e" else sd_capsule(u, v, *p[1:])
        out = d if out is None else np.minimum(out, d)
    for p in subtract:
        d = sd_ellipse(u, v, *p[1:]) if p[0] == "e" else sd_capsule(u, v, *p[1:])
        out = np.maximum(out, -d)
    return out


def splat(px: np.ndarray, py: np.ndarray, amp, shape, sigma_px: float) -> np.ndarray:
    """Sum of Gaussian blobs of peak ``amp`` at pixel positions (px, py), on a grid of ``shape``.

    Points are binned to the nearest pixel and blurred, which costs one filter
    per layer instead of one exponential per point and pixel. The deposit is
    scaled by 2*pi*sigma^2 so a blob's peak stays ``amp`` at every resolution.
    """
    h, w = shape
    out = np.zeros(h * w, np.float32)
    if len(px):
        ix = np.rint(px).astype(np.int64)
        iy = np.rint(py).astype(np.int64)
        ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        amp = np.broadcast_to(np.asarray(amp, np.float32), px.shape)[ok]
        gain = max(2.0 * np.pi * sigma_px * sigma_px, 1.0)
        out += np.bincount(iy[ok] * w + ix[ok], weights=amp * gain, minlength=h * w).astype(np.float32)
    out = out.reshape(h, w)
    if sigma_px > 0.3 and out.any():
        out = ndimage.gaussian_filter(out, sigma_px, mode="constant", truncate=3.0)
    return out
