"""Tiny hand-drawn MGG-like fields with exact cell centres, for the detection tests.

Drawn in optical density (Beer-Lambert), in micrometres, so one description
renders at any resolution. Colours follow May-Gruenwald-Giemsa staining: purple-blue nuclei, blue or
pale lilac cytoplasm, pink red cells with a pale centre, small purple platelets.
"""

from __future__ import annotations

import numpy as np

GLASS = np.array([246.0, 244.0, 248.0])
NUCLEUS = np.array([0.55, 0.95, 0.22])
CYTO_BLUE = np.array([0.22, 0.16, 0.04])
CYTO_PALE = np.array([0.07, 0.13, 0.07])
RBC = np.array([0.05, 0.33, 0.20])
PLATELET = np.array([0.25, 0.40, 0.12])


def _disc(u, v, cx, cy, r, soft_um=0.4):
    return np.clip((r - np.hypot(u - cx, v - cy)) / soft_um + 0.5, 0.0, 1.0)


def render(width_um: float, height_um: float, mpp: float, cells=(), rbcs=(), platelets=(),
           stain: float = 1.0, brightness: float = 1.0, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3). ``cells``: (x_um, y_um, kind) with kind lym | blast | ngs | ery | plm.
    ``rbcs``/``platelets``: (x_um, y_um). ``stain`` scales all OD; ``brightness`` the lamp."""
    w, h = int(round(width_um / mpp)), int(round(height_um / mpp))
    v, u = (np.mgrid[0:h, 0:w] + 0.5) * mpp
    od = np.zeros((h, w, 3))
    for x, y in rbcs:
        body = _disc(u, v, x, y, 3.75)
        pale = 1.0 - 0.45 * _disc(u, v, x, y, 1.8, 1.0)
        od += (body * pale)[..., None] * RBC
    for x, y in platelets:
        od += _disc(u, v, x, y, 1.2)[..., None] * PLATELET
    for x, y, kind in cells:
        if kind == "lym":
            od += _disc(u, v, x, y, 4.5)[..., None] * CYTO_BLUE
            od += _disc(u, v, x + 0.4, y, 3.5)[..., None] * NUCLEUS
        elif kind == "blast":
            od += _disc(u, v, x, y, 7.5)[..., None] * CYTO_BLUE
            od += _disc(u, v, x + 0.8, y - 0.5, 5.5)[..., None] * NUCLEUS * 0.8
        elif kind == "plm":  # eccentric nucleus in abundant deep-blue cytoplasm
            od += _disc(u, v, x, y, 6.0)[..., None] * CYTO_BLUE * 1.6
            od += _disc(u, v, x + 2.5, y, 3.2)[..., None] * NUCLEUS
        elif kind == "ery":
            od += _disc(u, v, x, y, 4.5)[..., None] * np.array([0.12, 0.22, 0.10])
            od += _disc(u, v, x, y, 2.6)[..., None] * NUCLEUS * 1.2
        elif kind == "ngs":  # three lobes on an arc inside pale lilac cytoplasm
            od += _disc(u, v, x, y, 6.0)[..., None] * CYTO_PALE
            for ang in (-1.9, -0.2, 1.5):
                od += _disc(u, v, x + 3.2 * np.cos(ang), y + 3.2 * np.sin(ang), 1.7)[..., None] * NUCLEUS
        else:
            raise ValueError(kind)
    rng = np.random.default_rng(seed)
    img = GLASS * brightness * 10 ** (-od * stain) + rng.normal(0, 2.0, od.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def demo_field(mpp: float = 0.5, **kw):
    """A 100 x 80 um field: one cell of each kind, red cells touching them, platelets.
    Returns (image, [(x_um, y_um, kind)])."""
    cells = [(18.0, 20.0, "lym"), (50.0, 20.0, "blast"), (80.0, 22.0, "ngs"), (20.0, 58.0, "ery"),
             (52.0, 58.0, "plm")]
    rbcs = [(27.0, 20.0), (34.0, 26.0), (66.0, 26.0), (88.0, 32.0), (30.0, 62.0), (36.0, 52.0),
            (70.0, 50.0), (75.0, 60.0), (90.0, 70.0), (10.0, 72.0)]
    platelets = [(40.0, 40.0), (44.0, 42.0), (88.0, 50.0), (8.0, 40.0)]
    return render(100.0, 80.0, mpp, cells, rbcs, platelets, **kw), cells
