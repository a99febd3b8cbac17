"""One recipe per Matek class: a random generator in, a :class:`CellModel` out.

Sizes, shapes and colours follow the class table in README.md (diameters in um). Where real
classes overlap (blast vs immature lymphocyte, metamyelocyte vs band) the
ranges are pulled apart on purpose so the classes stay separable: a classifier
trained on one seed's crops is expected to reach >= 0.97 on fresh seeds.
"""

from __future__ import annotations

import numpy as np

from .cells import (CYT_BLUE, CYT_DEEP, CYT_GREYBLUE, CYT_HB, CYT_LILAC, CYT_PALEBLUE, CYT_PINK,
                    CYT_SKY, GRAN_AZUR, GRAN_BASO, GRAN_EOS, GRAN_FINE, NUC, NUC_DARK, NUC_PALE,
                    CellModel, Granules, rgb)
from .shapes import sd_parts

# ----------------------------------------------------------------------------
# helpers for recipes (all lengths in um)
# ----------------------------------------------------------------------------
def _disc_points(rng, n, R, asp=1.0):
    """n points uniform in an ellipse of radii (R*asp, R)."""
    r = R * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(t) * asp, r * np.sin(t)], axis=1).astype(np.float32)


def _points_in(rng, n, parts, box, subtract=()):
    """n points uniform inside a union of parts (rejection within a square of half-side ``box``)."""
    out = np.zeros((0, 2), np.float32)
    for _ in range(20):
        cand = rng.uniform(-box, box, (max(4 * n, 16), 2)).astype(np.float32)
        inside = sd_parts(cand[:, 0], cand[:, 1], parts, subtract) < -0.1
        out = np.concatenate([out, cand[inside]])
        if len(out) >= n:
            break
    return out[:n]


def _body(rng, R, aspect=(1.0, 1.12), wobble=0.03, extra=()):
    harm = [(k, rng.uniform(0, wobble) / k ** 0.5, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)]
    return (R, rng.uniform(*aspect), harm + list(extra))


def _jitter_od(rng, od, amount=0.1):
    return (od * rng.uniform(1 - amount, 1 + amount)).astype(np.float32)


def _offset(rng, dist):
    t = rng.uniform(0, 2 * np.pi)
    return dist * np.cos(t), dist * np.sin(t), t


def _round_nucleus(rng, R, nc, ecc, aspect=(1.0, 1.15)):
    """A round/oval nucleus of diameter ratio ``nc`` placed ``ecc`` (0 central .. 1 touching the membrane)."""
    rn = nc * R
    a = rng.uniform(*aspect)
    ox, oy, t = _offset(rng, ecc * max(R * 0.97 - rn * a, 0.0))
    return [("e", ox, oy, rn * a, rn / a ** 0.3, t)], (ox, oy, rn, t)


def _chromatin(rng, parts, box, spacing, sigma, contrast, subtract=()):
    area = sum(np.pi * p[3] * p[4] if p[0] == "e" else 2 * p[5] * np.hypot(p[3] - p[1], p[4] - p[2]) for p in parts)
    n = max(int(area / spacing ** 2), 3)
    return (_points_in(rng, n, parts, box, subtract), sigma, contrast)


def _nucleoli(rng, n, nx, ny, rn, size=(0.5, 0.9), depth=(0.35, 0.5)):
    out = []
    for _ in range(n):
        x, y, _t = _offset(rng, rng.uniform(0, 0.55) * rn)
        out.append((nx + x, ny + y, rng.uniform(*size), rng.uniform(*depth)))
    return out


def _granules(rng, n, R, asp, sigma, od, over_nucleus=False, inner=0.93):
    return Granules(_disc_points(rng, n, R * inner, asp), sigma, od, over_nucleus)


def _lobes_on_arc(rng, n, arc_r, lobe_r, strand_r, span):
    """n lobes spread over an arc, joined by thin strands (segmented neutrophil, eosinophil)."""
    t0 = rng.uniform(0, 2 * np.pi)
    angles = t0 + np.linspace(-span / 2, span / 2, n) + rng.normal(0, 0.12, n)
    parts, centres = [], []
    for a in angles:
        rr = arc_r * rng.uniform(0.85, 1.1)
        cx, cy = rr * np.cos(a), rr * np.sin(a)
        lr = lobe_r * rng.uniform(0.85, 1.15)
        parts.append(("e", cx, cy, lr * rng.uniform(1.0, 1.2), lr, a + rng.normal(0, 0.4)))
        centres.append((cx, cy))
    for (ax, ay), (bx, by) in zip(centres[:-1], centres[1:]):
        parts.append(("c", ax, ay, bx, by, strand_r))
    return parts


# ----------------------------------------------------------------------------
# recipes, one per class
# ----------------------------------------------------------------------------
def _blast_like(rng, cls, diam, nc, ecc, nuc_od, cyto_od, chrom, nucleoli, aspect=(1.0, 1.1)):
    R = rng.uniform(*diam) / 2
    nuc, (nx, ny, rn, _t) = _round_nucleus(rng, R, rng.uniform(*nc), ecc, aspect)
    m = CellModel(cls, R * 1.15, body=_body(rng, R), cyto_od=_jitter_od(rng, cyto_od),
                  nucleus=nuc, nuc_od=_jitter_od(rng, nuc_od))
    spacing, sigma, contrast = chrom
    m.chromatin = _chromatin(rng, nuc, R, spacing, sigma, contrast)
    if nucleoli[1] > 0:
        m.nucleoli = _nucleoli(rng, int(rng.integers(nucleoli[0], nucleoli[1] + 1)), nx, ny, rn)
    return m, (nx, ny, rn)


def bla(rng):
    # 14-20 um, N:C ~0.8, fine open pale chromatin, 2-4 nucleoli, scant grey-blue cytoplasm.
    m, (nx, ny, rn) = _blast_like(rng, "BLA", (14, 20), (0.76, 0.84), rng.uniform(0, 0.5), NUC_PALE,
                                  CYT_BLUE, (0.55, 0.22, 0.22), (2, 4))
    if rng.random() < 0.3:  # a few azurophilic granules in some myeloblasts
        m.granules.append(_granules(rng, int(rng.integers(3, 9)), m.body[0], m.body[1], 0.25, GRAN_AZUR))
    return m


def lyi(rng):
    # 10.5-14 um (kept below most blasts), round, moderately dense speckled chromatin,
    # one or two distinct nucleoli, scant deep-blue rim.
    m, _ = _blast_like(rng, "LYI", (10.5, 14), (0.82, 0.88), rng.uniform(0, 0.3), rgb(85, 48, 140),
                       rgb(110, 140, 210), (0.75, 0.35, 0.35), (1, 2))
    return m


def lyt(rng):
    # 7-10.5 um, N:C ~0.9, dense clumped dark chromatin, no nucleoli, thin sky-blue rim.
    m, _ = _blast_like(rng, "LYT", (7, 10.5), (0.84, 0.9), rng.uniform(0.1, 0.6), NUC_DARK,
                       CYT_SKY, (1.0, 0.45, 0.3), (0, 0), aspect=(1.0, 1.08))
    return m


def peb(rng):
    # 15-20 um, large central round nucleus with fine chromatin and nucleoli,
    # deep dark-blue cytoplasm with blebs.
    R = rng.uniform(15, 20) / 2
    nuc, (nx, ny, rn, _t) = _round_nucleus(rng, R, rng.uniform(0.7, 0.78), rng.uniform(0, 0.25), (1.0, 1.06))
    blebs = [(k, rng.uniform(0.015, 0.035), rng.uniform(0, 2 * np.pi)) for k in (7, 9, 11)]
    m = CellModel("PEB", R * 1.2, body=_body(rng, R, (1.0, 1.06), 0.02, blebs),
                  cyto_od=_jitter_od(rng, CYT_DEEP), nucleus=nuc, nuc_od=_jitter_od(rng, rgb(100, 55, 150)))
    m.chromatin = _chromatin(rng, nuc, R, 0.6, 0.25, 0.28)
    m.nucleoli = _nucleoli(rng, int(rng.integers(1, 3)), nx, ny, rn)
    return m


def ebo(rng):
    # 7-15 um, very round cell, central round nucleus; with maturation the nucleus shrinks and
    # condenses (checkerboard -> pyknotic) and the cytoplasm turns blue -> grey-lilac -> pink.
    mat = rng.random()
    R = rng.uniform(13 - 5 * mat, 15 - 5 * mat) / 2
    nuc, _ = _round_nucleus(rng, R, 0.66 - 0.2 * mat, rng.uniform(0, 0.25), (1.0, 1.04))
    grey = rgb(185, 172, 208)
    cyto = (1 - 2 * mat) * CYT_DEEP + 2 * mat * grey if mat < 0.5 else (2 - 2 * mat) * grey + (2 * mat - 1) * CYT_HB
    m = CellModel("EBO", R * 1.1, body=(R, rng.uniform(1.0, 1.04), []), cyto_od=cyto.astype(np.float32),
                  nucleus=nuc, nuc_od=_jitter_od(rng, NUC_DARK * (0.85 + 0.3 * mat)))
    rn = nuc[0][3]
    # checkerboard: clumps on a jittered 1.1 um lattice, tightening as the cell matures
    g = np.arange(-rn, rn + 1e-6, 1.1)
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel()], 1) + rng.normal(0, 0.12, (gx.size, 2))
    pts = pts + np.array(nuc[0][1:3])
    m.chromatin = (pts.astype(np.float32), 0.32 + 0.15 * mat, 0.45)
    return m


def plm(rng):
    # 8-15 um oval cell, eccentric round nucleus with clock-face clumps, abundant deep-blue
    # cytoplasm and a pale perinuclear hof.
    R = rng.uniform(9, 15) / 2
    asp = rng.uniform(1.15, 1.4)
    rn = rng.uniform(0.5, 0.58) * R
    t = rng.uniform(0, 2 * np.pi)
    off = R * asp * 0.95 - rn
    nx, ny = off * np.cos(t) * 0.9, off * np.sin(t) * 0.9 / asp
    m = CellModel("PLM", R * asp * 1.1, body=_body(rng, R, (asp, asp)), cyto_od=_jitter_od(rng, CYT_DEEP),
                  nucleus=[("e", nx, ny, rn, rn * rng.uniform(0.9, 1.0), t)], nuc_od=_jitter_od(rng, NUC_DARK * 0.95))
    k = int(rng.integers(7, 11))
    a = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k
    ring = np.stack([nx + 0.62 * rn * np.cos(a), ny + 0.62 * rn * np.sin(a)], 1)
    centre = np.array([[nx, ny]]) + rng.normal(0, 0.2 * rn, (2, 2))
    m.chromatin = (np.concatenate([ring, centre]).astype(np.float32), 0.55, 0.55)
    hx, hy = nx - np.cos(t) * rn * 1.35, ny - np.sin(t) * rn * 1.35
    m.pale = [(hx, hy, rn * 0.55, 0.55)]
    return m


def _myeloid(rng, cls, diam, nc, cyto, chrom, granules, nucleoli=(0, 0), pale=False, aspect=(1.0, 1.15)):
    R = rng.uniform(*diam) / 2
    nuc, (nx, ny, rn, t) = _round_nucleus(rng, R, rng.uniform(*nc), rng.uniform(0.6, 1.0), aspect)
    m = CellModel(cls, R * 1.15, body=_body(rng, R), cyto_od=_jitter_od(rng, cyto), nucleus=nuc,
                  nuc_od=_jitter_od(rng, NUC))
    m.chromatin = _chromatin(rng, nuc, R, *chrom)
    if nucleoli[1]:
        m.nucleoli = _nucleoli(rng, int(rng.integers(*nucleoli)), nx, ny, rn, depth=(0.2, 0.3))
    for n, sig, od in granules:
        m.granules.append(_granules(rng, n, R, m.body[1], sig, od))
    if pale:  # Golgi zone: pale area beside the nucleus, towards the cell centre
        m.pale = [(nx - np.cos(t) * rn * 1.05, ny - np.sin(t) * rn * 1.05, rn * 0.5, 0.5)]
    return m


def pmo(rng):
    # 15-25 um, eccentric nucleus N:C ~0.6, blue cytoplasm full of coarse purple-red granules.
    return _myeloid(rng, "PMO", (15, 24), (0.55, 0.63), CYT_BLUE, (0.7, 0.3, 0.25),
                    [(int(rng.integers(90, 170)), 0.3, GRAN_AZUR)], nucleoli=(0, 3), pale=True)


def fgc(rng):
    # A promyelocyte carrying bundles of stick-like Auer rods (APL).
    # Rods 4-8 um long, ~0.4-0.5 um thick: visible even after a crop is shrunk to 128 px.
    m = _myeloid(rng, "FGC", (16, 24), (0.52, 0.6), CYT_BLUE, (0.7, 0.3, 0.25),
                 [(int(rng.integers(25, 60)), 0.3, GRAN_AZUR)], nucleoli=(0, 2))
    R = m.body[0]
    for _ in range(int(rng.integers(2, 5))):
        bx, by, _t = _offset(rng, rng.uniform(0.35, 0.65) * R)
        ang = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(4, 9))):
            L = rng.uniform(4.0, 8.0)
            a = ang + rng.normal(0, 0.1)
            cx, cy = bx + rng.normal(0, 0.7), by + rng.normal(0, 0.7)
            m.rods.append((cx - L / 2 * np.cos(a), cy - L / 2 * np.sin(a),
                           cx + L / 2 * np.cos(a), cy + L / 2 * np.sin(a), rng.uniform(0.2, 0.26)))
    return m


def myb(rng):
    # 12-18 um, eccentric round/oval nucleus N:C ~0.5, coarser chromatin, no nucleoli,
    # lilac-pink cytoplasm with fine granules.
    return _myeloid(rng, "MYB", (13, 18), (0.5, 0.58), CYT_LILAC, (0.8, 0.4, 0.4),
                    [(int(rng.integers(120, 220)), 0.17, GRAN_FINE)], aspect=(1.0, 1.12))


def _neutrophil_body(rng, cls, diam):
    R = rng.uniform(*diam) / 2
    m = CellModel(cls, R * 1.15, body=_body(rng, R), cyto_od=_jitter_od(rng, CYT_PINK),
                  nuc_od=_jitter_od(rng, NUC * 1.05))
    m.granules.append(_granules(rng, int(rng.integers(100, 180)), R, m.body[1], 0.16, GRAN_FINE))
    return m, R


def mmz(rng):
    # 10-15 um, kidney/bean nucleus: indent shallower than half its width; condensed chromatin.
    m, R = _neutrophil_body(rng, "MMZ", (11, 15))
    a, b = R * rng.uniform(0.55, 0.62), R * rng.uniform(0.42, 0.5)
    ox, oy, t = _offset(rng, rng.uniform(0, 0.15) * R)
    depth = rng.uniform(0.3, 0.45) * 2 * b
    ri = a * rng.uniform(0.45, 0.6)
    ix, iy = ox - np.sin(t) * (b + ri - depth), oy + np.cos(t) * (b + ri - depth)
    m.nucleus, m.indents = [("e", ox, oy, a, b, t)], [("e", ix, iy, ri, ri, 0.0)]
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.35, m.indents)
    return m


def ngb(rng):
    # 10-14 um, nucleus a horseshoe band of even width, not segmented.
    m, R = _neutrophil_body(rng, "NGB", (10, 14))
    arc = R * rng.uniform(0.42, 0.52)
    half = R * rng.uniform(0.15, 0.19)  # band ~1.6-2.5 um wide
    span = rng.uniform(3.6, 4.6)  # 205-265 degrees
    t0 = rng.uniform(0, 2 * np.pi)
    ang = t0 + np.linspace(-span / 2, span / 2, 9)
    wig = rng.normal(0, 0.05 * arc, 9)
    pts = [((arc + w) * np.cos(a), (arc + w) * np.sin(a)) for a, w in zip(ang, wig)]
    m.nucleus = [("c", *p, *q, half) for p, q in zip(pts[:-1], pts[1:])]
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.35)
    return m


def ngs(rng):
    # 10-14 um, 3-5 lobes joined by thin strands, dense chromatin.
    m, R = _neutrophil_body(rng, "NGS", (10, 14))
    n = int(rng.integers(3, 6))
    arc = R * rng.uniform(0.46, 0.55)
    span = rng.uniform(3.4, 4.4) + 0.3 * (n - 3)  # 5 lobes spread further round (up to ~290 deg)
    # Lobes ~3-4 um across (real ones), but no wider than 0.8 of their spacing so the thin
    # strands between them show.
    lobe = min(R * rng.uniform(0.27, 0.32), 0.4 * arc * span / (n - 1))
    m.nucleus = _lobes_on_arc(rng, n, arc, lobe, 0.18, span)
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.3)
    return m


def _eos_like(rng, cls):
    R = rng.uniform(12, 17) / 2
    m = CellModel(cls, R * 1.15, body=_body(rng, R), cyto_od=_jitter_od(rng, rgb(225, 200, 205)),
                  nuc_od=_jitter_od(rng, NUC * 1.05))
    m.nucleus = _lobes_on_arc(rng, 2, R * rng.uniform(0.35, 0.45), R * rng.uniform(0.3, 0.36), 0.25,
                              rng.uniform(1.6, 2.6))
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.3)
    return m, R


def eos(rng):
    # 12-17 um, usually 2 lobes, cytoplasm packed with large round orange-red granules.
    m, R = _eos_like(rng, "EOS")
    m.granules.append(_granules(rng, int(np.pi * R * R / 0.55), R, m.body[1], 0.33, GRAN_EOS * 0.8))
    return m


def abe(rng):
    # As EOS, often less segmented; orange granules mixed with large dark purple ones (inv(16)).
    m, R = _eos_like(rng, "ABE")
    if rng.random() < 0.5:
        m.nucleus = [m.nucleus[0][:3] + (m.nucleus[0][3] * 1.5, m.nucleus[0][4] * 1.3, m.nucleus[0][5])]
        m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.3)
    n = int(np.pi * R * R / 0.6)
    m.granules.append(_granules(rng, n // 2, R, m.body[1], 0.33, GRAN_EOS * 0.8))
    m.granules.append(_granules(rng, n // 3, R, m.body[1], 0.4, GRAN_BASO * 0.6))
    return m


def bas(rng):
    # 10-14 um, lobed nucleus often hidden under large dark purple-black granules.
    R = rng.uniform(10, 14) / 2
    m = CellModel("BAS", R * 1.15, body=_body(rng, R), cyto_od=_jitter_od(rng, rgb(215, 195, 220)),
                  nuc_od=_jitter_od(rng, NUC * 0.9))
    m.nucleus = _lobes_on_arc(rng, int(rng.integers(2, 4)), R * 0.35, R * 0.33, 0.3, rng.uniform(1.5, 2.5))
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.9, 0.4, 0.25)
    m.granules.append(_granules(rng, int(rng.integers(35, 70)), R, m.body[1], 0.42, GRAN_BASO * 0.75, over_nucleus=True))
    return m


def mon(rng):
    # 15-22 um, large folded kidney nucleus, lacy chromatin, abundant grey-blue cytoplasm with
    # vacuoles and fine granules, irregular outline.
    R = rng.uniform(15, 22) / 2
    m = CellModel("MON", R * 1.2, body=_body(rng, R, (1.0, 1.15), 0.08), cyto_od=_jitter_od(rng, CYT_GREYBLUE),
                  nuc_od=_jitter_od(rng, rgb(110, 75, 160)))
    a, b = R * rng.uniform(0.6, 0.68), R * rng.uniform(0.45, 0.52)
    ox, oy, t = _offset(rng, rng.uniform(0.05, 0.2) * R)
    ri = a * rng.uniform(0.4, 0.55)
    depth = rng.uniform(0.35, 0.55) * 2 * b
    ix, iy = ox - np.sin(t) * (b + ri - depth), oy + np.cos(t) * (b + ri - depth)
    m.nucleus = [("e", ox, oy, a, b, t), ("e", ox + np.cos(t) * a * 0.5, oy + np.sin(t) * a * 0.5, a * 0.5, b * 1.1, t + 0.6)]
    m.indents = [("e", ix, iy, ri, ri * 0.8, t)]
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.5, 0.3, 0.3, m.indents)
    fx, fy = ox + np.cos(t + 1) * a * 0.3, oy + np.sin(t + 1) * a * 0.3  # a fold: a darker crease
    m.blobs.append(Granules(np.stack([np.linspace(fx - 1.5, fx + 1.5, 12), np.linspace(fy - 1, fy + 1, 12)], 1).astype(np.float32),
                            0.35, rgb(150, 110, 190) * 0.5))
    for _ in range(int(rng.integers(3, 9))):
        x, y, _t = _offset(rng, rng.uniform(0.55, 0.9) * R)
        m.pale.append((x, y, rng.uniform(0.4, 0.9), 0.8))
    m.granules.append(_granules(rng, int(rng.integers(30, 60)), R, m.body[1], 0.15, GRAN_FINE * 0.8))
    return m


def hac(rng):
    # 10-20 um, oval/bean nucleus, pale-blue cytoplasm with hair-like ragged projections.
    R = rng.uniform(11, 17) / 2
    ragged = [(k, rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi)) for k in (9, 13, 17, 23)]
    m = CellModel("HAC", R * 1.6, body=_body(rng, R, (1.0, 1.15), 0.05, ragged),
                  cyto_od=_jitter_od(rng, CYT_PALEBLUE * 1.1), nuc_od=_jitter_od(rng, rgb(100, 65, 155)))
    nuc, (nx, ny, rn, t) = _round_nucleus(rng, R, rng.uniform(0.55, 0.62), rng.uniform(0, 0.3), (1.15, 1.3))
    m.nucleus = nuc
    if rng.random() < 0.5:  # bean-shaped
        m.indents = [("e", nx - np.sin(t) * rn * 1.3, ny + np.cos(t) * rn * 1.3, rn * 0.55, rn * 0.55, 0.0)]
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.7, 0.35, 0.25, m.indents)
    for a in rng.uniform(0, 2 * np.pi, int(rng.integers(18, 34))):
        r0, L = R * 0.9, rng.uniform(1.5, 0.55 * R)
        a2 = a + rng.normal(0, 0.25)
        m.hairs.append((r0 * np.cos(a), r0 * np.sin(a), (r0 + L) * np.cos(a2), (r0 + L) * np.sin(a2), rng.uniform(0.15, 0.28)))
    return m


def oth(rng):
    # "Other" rare types, drawn as a megakaryocyte-like giant: 24-32 um, a big multilobed nucleus,
    # pink-lilac finely granular cytoplasm.
    R = rng.uniform(24, 32) / 2
    m = CellModel("OTH", R * 1.15, body=_body(rng, R, (1.0, 1.12), 0.06), cyto_od=_jitter_od(rng, rgb(210, 180, 210)),
                  nuc_od=_jitter_od(rng, NUC))
    for _ in range(int(rng.integers(5, 9))):
        x, y, t = _offset(rng, rng.uniform(0, 0.35) * R)
        rr = R * rng.uniform(0.2, 0.3)
        m.nucleus.append(("e", x, y, rr * 1.2, rr, t))
    m.chromatin = _chromatin(rng, m.nucleus, R, 0.8, 0.4, 0.35)
    m.granules.append(_granules(rng, int(rng.integers(200, 350)), R, m.body[1], 0.16, GRAN_FINE))
    return m


def ksc(rng):
    # Smudge cell: ruptured nucleus smeared into a streaky, ragged, pale-purple patch, no cytoplasm.
    L = rng.uniform(10, 22)
    Wd = L * rng.uniform(0.4, 0.75)
    n = int(L * Wd * 2.5)
    pts = np.stack([rng.uniform(-L / 2, L / 2, n) * 1.0, rng.normal(0, Wd / 4, n)], 1)
    pts[:, 1] += 0.6 * np.sin(pts[:, 0] * rng.uniform(0.3, 0.6))
    m = CellModel("KSC", L / 2 + 2, theta=0.0)
    m.blobs.append(Granules(pts.astype(np.float32), 0.5, _jitter_od(rng, rgb(150, 110, 190), 0.15) * 0.6))
    # streaks: thin darker strands along the smear direction
    for _ in range(int(rng.integers(3, 8))):
        y0, x0 = rng.normal(0, Wd / 5), rng.uniform(-L / 2, 0)
        xs = np.linspace(x0, x0 + rng.uniform(3, L / 2), 25)
        m.blobs.append(Granules(np.stack([xs, y0 + rng.normal(0, 0.1, 25)], 1).astype(np.float32), 0.3, rgb(110, 70, 160) * 0.35))
    return m


def art(rng):
    # Artefact: stain precipitate, amorphous debris or broken nuclear fragments, no cell outline.
    # Each kind stays one compact object (within ~4 um) so it counts once, as truth does.
    kind = int(rng.integers(0, 3))
    size = rng.uniform(4, 10)  # um across
    m = CellModel("ART", size + 2)
    if kind == 0:  # stain precipitate: a tight clump of small very dark dots
        m.blobs.append(Granules(_disc_points(rng, int(rng.integers(40, 90)), size * 0.35), rng.uniform(0.35, 0.5), rgb(60, 40, 80)))
    elif kind == 1:  # amorphous grey-violet debris with dark specks
        m.blobs.append(Granules(_disc_points(rng, int(size * size * 3), size * 0.45, rng.uniform(0.6, 1.5)), 0.7, rgb(160, 135, 180) * 0.6))
        m.blobs.append(Granules(_disc_points(rng, int(rng.integers(8, 20)), size * 0.35), 0.4, rgb(80, 50, 105)))
    else:  # broken nuclear fragments, still lying together
        for _ in range(int(rng.integers(3, 7))):
            x, y, t = _offset(rng, rng.uniform(0, size * 0.3))
            m.nucleus.append(("e", x, y, rng.uniform(0.6, 1.6), rng.uniform(0.4, 1.0), t))
        m.nuc_od = rgb(70, 40, 120)
    return m


def nif(rng):
    # Not identifiable: a damaged, poorly stained, out-of-focus cell.
    base = RECIPES[("BLA", "NGS", "MON", "LYT", "MYB", "PMO")[int(rng.integers(0, 6))]](rng)
    base.cls = "NIF"
    # Paler and blurred, but still clearly stained: a detector must still count it (truth does).
    base.od_scale = rng.uniform(0.7, 0.9)
    base.blur = rng.uniform(0.5, 0.9)
    if base.body is not None:
        R, asp, harm = base.body
        base.body = (R, asp, harm + [(k, rng.uniform(0.05, 0.12), rng.uniform(0, 2 * np.pi)) for k in (3, 6, 11)])
    base.radius += 3 * base.blur
    return base


RECIPES = {
    "ABE": abe, "ART": art, "BAS": bas, "BLA": bla, "EBO": ebo, "EOS": eos, "FGC": fgc,
    "HAC": hac, "KSC": ksc, "LYI": lyi, "LYT": lyt, "MMZ": mmz, "MON": mon, "MYB": myb,
    "NGB": ngb, "NGS": ngs, "NIF": nif, "OTH": oth, "PEB": peb, "PLM": plm, "PMO": pmo,
}


def make_cell(cls: str, rng: np.random.Generator) -> CellModel:
    """A random cell of class ``cls``, randomly rotated."""
    m = RECIPES[cls](rng)
    m.theta = float(rng.uniform(0, 2 * np.pi))
    if m.body is not None:  # cytoplasm is never flat: faint mottling ~1.5 um across
        R, asp, _h = m.body
        m.mottle = _disc_points(rng, int(np.pi * R * R * asp / 2.5), R, asp)
    return m
