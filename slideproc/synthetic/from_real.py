"""Cells cut out of real single-cell crops (``--cells-from``), pasted onto the synthetic smear.

The input is a class-folder directory (``DIR/<CLASS>/**/*.jpg|png|tif``, the
Matek layout) of crops centred on one cell. For each crop used, the central
cell (nucleus + cytoplasm) is separated from glass, red cells and touching
neighbours, turned into optical density with a soft edge, and resampled from
the crops' resolution to the slide's. Truth class = folder name.

Resolution of the Matek crops: see ``MATEK_MPP``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
# Resolution of the Matek et al. crops, from their red cells (7.5 um across):
# estimate_mpp() on ../shared/data/real/matek_bm finds 30 isolated, round red
# cells in 26 of the 1127 crops, median 79.7 px across (IQR 74-85 px), so
# 7.5 / 79.7 = 0.094 um/px (IQR 0.088-0.101): a 250-px crop spans ~23.5 um.
MATEK_MPP = 0.094
RBC_UM = 7.5
# A cut cell's edge fades over this width (um), so pasted cells have no hard border.
FEATHER_UM = 0.6


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _segment_central(img: np.ndarray, strict: bool = True):
    """(alpha, nucleus mask, white) of the cell at the crop centre of an RGB uint8 image; None
    if there is none, or (``strict``) its nucleus is cut by the crop border."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    im = img.astype(np.float32)
    white = np.percentile(im.reshape(-1, 3), 99, axis=0).clip(150, 255)
    od = -np.log(np.clip(im / white, 1e-3, 1.0))
    r, g, b = im[..., 0], im[..., 1], im[..., 2]
    # MGG: nuclei and basophilic cytoplasm are blue-purple (blue well above red); red cells and
    # glass are grey-pink (blue ~ red). Cytoplasm of neutrophils is lilac: weaker but still bluish.
    purple = b - r
    dens = od.sum(axis=2)
    try:
        t_n = max(threshold_otsu(dens[purple > 30]) if (purple > 30).sum() > 50 else 1.2, 0.8)
    except ValueError:
        t_n = 1.2
    nucleus = (purple > 45) & (dens > t_n)
    nucleus = ndimage.binary_opening(nucleus, iterations=2)
    cellish = ((purple > 18) & (dens > 0.35)) | nucleus
    cellish = ndimage.binary_closing(cellish, iterations=3)
    cellish = ndimage.binary_fill_holes(cellish)
    cellish = ndimage.binary_opening(cellish, iterations=2)
    h, w = dens.shape
    cy, cx = h / 2, w / 2
    lab, n = ndimage.label(nucleus)
    if n == 0:  # nothing purple: take the densest object at the centre (debris, smudges)
        fg = dens > max(0.3, np.percentile(dens, 60))
        lab2, n2 = ndimage.label(fg)
        if n2 == 0:
            return None
        k = lab2[int(cy), int(cx)] or 1 + int(np.argmin([np.hypot(*(np.array(c) - (cy, cx)))
                                                         for c in ndimage.center_of_mass(fg, lab2, range(1, n2 + 1))]))
        alpha = ndimage.gaussian_filter((lab2 == k).astype(np.float32), 1.5)
        return alpha, lab2 == k, white
    # Nucleus components centred within 0.18 of the crop (4.5 um in a Matek crop) of its centre
    # belong to the central cell (the lobes of a neutrophil lie within ~3.5 um); the others are
    # neighbours' nuclei and seed their own watershed regions.
    cents = ndimage.center_of_mass(nucleus, lab, range(1, n + 1))
    dist = np.array([np.hypot(y - cy, x - cx) for y, x in cents])
    sizes = np.asarray(ndimage.sum(nucleus, lab, range(1, n + 1)))
    near = dist - np.sqrt(sizes / np.pi)  # distance from the centre to the component's edge (approx.)
    central = [i + 1 for i in range(n) if dist[i] < 0.18 * h or i == int(np.argmin(near))]
    markers = np.zeros_like(lab)
    for i in range(1, n + 1):
        markers[lab == i] = 1 if i in central else i + 1
    markers[~cellish] = 0
    bg = ~ndimage.binary_dilation(cellish, iterations=2)
    markers[bg] = n + 2
    region = watershed(-ndimage.distance_transform_edt(cellish), markers, mask=cellish | bg) == 1
    region &= cellish
    nuc = region & np.isin(lab, central)
    if not nuc.any():  # the central nucleus lost to a neighbour's watershed basin
        return None
    # The threshold leaves the pale chromatin of an open nucleus as holes and may run out along
    # a dense strand of cytoplasm: close, fill and open it, so its centroid (the truth point)
    # is that of the whole nucleus.
    solid = ndimage.binary_opening(ndimage.binary_fill_holes(ndimage.binary_closing(nuc, _disk(4))), _disk(6))
    if solid.sum() > 0.5 * nuc.sum():
        nuc = solid & cellish
    # Cytoplasm reaches at most ~2x the nuclear radius beyond the nucleus; this stops the
    # region leaking into a lilac plasma background.
    ny, nx = ndimage.center_of_mass(nuc)
    rn = np.sqrt(nuc.sum() / np.pi)
    yy, xx = np.ogrid[:h, :w]
    region &= np.hypot(yy - ny, xx - nx) < min(max(2.0 * rn, 0.24 * h), 0.45 * h)
    # Nuclear blobs that are not the central cell's (neighbours cut by the crop border, or
    # touching it) and their surroundings are no part of the cut-out: each would paste as a
    # second "nucleus" next to the true one.
    others = nucleus & ~np.isin(lab, central)
    region &= ~ndimage.binary_dilation(others, iterations=3)
    # A cut-out whose own nucleus is cut by the crop border (a large cell filling the crop, or
    # its nucleus merged with a neighbour's that runs out of the crop) cannot be pasted whole.
    # (The openings above keep masks ~3 px off the border: "at the border" is within 8 px.)
    edge = np.zeros((h, w), bool)
    edge[:8, :] = edge[-8:, :] = edge[:, :8] = edge[:, -8:] = True
    if strict and (nuc & edge).sum() > 20:
        return None
    # Thin strands and slivers of neighbouring cytoplasm go; what stays is the piece holding the
    # nucleus, holes filled.
    disk = _disk(6)
    region = ndimage.binary_opening(region, structure=disk) | nuc
    lab_r, n_r = ndimage.label(region)
    if n_r > 1:  # keep the piece holding the nucleus
        keep = np.bincount(lab_r[nuc], minlength=n_r + 1)
        keep[0] = 0
        region = lab_r == int(np.argmax(keep))
    region = ndimage.binary_fill_holes(region)
    # Cytoplasm cut by the crop border would paste with a straight edge: round it off with a
    # disc around the nucleus that stops short of the border, then smooth the outline.
    ny, nx = ndimage.center_of_mass(nuc)
    yy, xx = np.mgrid[:h, :w]
    rr = np.hypot(yy - ny, xx - nx)
    cut = region & ndimage.binary_dilation(edge, iterations=6)  # the openings keep it a few px off
    if cut.any():
        region &= rr < float(rr[cut].min()) - 6.0
        region |= nuc
    region = ndimage.binary_closing(region, structure=disk) | nuc
    region = ndimage.binary_opening(region, structure=disk) | nuc
    region = ndimage.binary_fill_holes(region)
    feather = 2.5  # px at the crop's ~0.094 um/px: a soft ~0.5 um rim
    alpha = ndimage.gaussian_filter(region.astype(np.float32), feather)
    alpha[~ndimage.binary_dilation(region, iterations=8)] = 0
    alpha[:3, :] = alpha[-3:, :] = alpha[:, :3] = alpha[:, -3:] = 0
    return alpha, nuc, white


def estimate_mpp(root: Path, rbc_um: float = RBC_UM) -> tuple[float, int, float]:
    """(mpp, red cells measured, median diameter px) of a folder of crops, from its red cells.

    Red cells are the grey-pink objects (blue not above red, unlike nucleated
    cells) that are round (solidity > 0.95, eccentricity < 0.6), whole (not
    touching the crop border) and alone; their equivalent diameter is taken as
    ``rbc_um``.
    """
    from skimage.measure import label, regionprops

    diams = []
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        im = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
        white = np.percentile(im.reshape(-1, 3), 99, axis=0).clip(150, 255)
        dens = -np.log(np.clip(im / white, 1e-3, 1.0)).sum(axis=2)
        rbc = (dens > 0.15) & (im[..., 2] - im[..., 0] < 30)
        rbc = ndimage.binary_closing(rbc, iterations=2)
        rbc = ndimage.binary_opening(ndimage.binary_fill_holes(rbc), iterations=3)
        h, w = rbc.shape
        for p in regionprops(label(rbc)):
            r0, c0, r1, c1 = p.bbox
            if 1200 <= p.area <= 12000 and r0 > 0 and c0 > 0 and r1 < h and c1 < w \
                    and p.solidity > 0.95 and p.eccentricity < 0.6:
                diams.append(p.equivalent_diameter_area)
    if not diams:
        raise InputError(f"{root}: no isolated red cells found to estimate the resolution; give it explicitly")
    med = float(np.median(diams))
    return rbc_um / med, len(diams), med


class RealCellBank:
    """Real cells by class, cut on first use and cached; renders them at any pixel size."""

    def __init__(self, files: dict[str, list[Path]], source_mpp: float = MATEK_MPP):
        self.files = files
        self.classes = sorted(files)
        self.source_mpp = source_mpp
        self._by_path: dict = {}
        self.cuts: list = []      # (od (h, w, 3) at source mpp, anchor (y, x), cls, radius px, centroid offset px, nuclear radius px)
        self.variants: list = []  # (cut index, rotation, mirrored): what pick() hands out

    @classmethod
    def load(cls, root: Path, source_mpp: float = MATEK_MPP, **_ignored) -> "RealCellBank":
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"{root}: --cells-from needs a folder of class folders (e.g. matek_bm/BLA/*.jpg)")
        files = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            imgs = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if imgs:
                files[d.name] = imgs
        if not files:
            raise InputError(f"{root}: no class folders with images (jpg/png/tif) found; "
                             "--cells-from expects DIR/<CLASS>/<image>")
        return cls(files, source_mpp)

    def _cut(self, path: Path, cls: str, strict: bool = True) -> int:
        key = path if strict else (path, False)
        hit = self._by_path.get(key)
        if hit is not None:
            return hit
        try:
            img = np.asarray(Image.open(path).convert("RGB"))
        except OSError as err:
            raise InputError(f"{path}: cannot read this image ({err}); remove it from the class folder") from None
        seg = _segment_central(img, strict)
        if seg is None:
            idx = -1
        else:
            alpha, nuc, white = seg
            od = -np.log(np.clip(img.astype(np.float32) / white, 1e-3, 1.0)) * alpha[..., None]
            h, w = alpha.shape
            anchor = (h / 2, w / 2)
            ys, xs = np.nonzero(alpha > 0.02)
            radius_px = float(np.hypot(ys - anchor[0], xs - anchor[1]).max()) + 1
            wgt = nuc if nuc.any() else alpha > 0.5
            ny, nx = ndimage.center_of_mass(wgt)
            yy, xx = np.nonzero(wgt)
            nr = float(np.hypot(yy - ny, xx - nx).max()) + 1
            # centre_of_mass gives pixel indices; pixel i covers [i, i + 1), the anchor is continuous
            self.cuts.append((od.astype(np.float32), anchor, cls, radius_px,
                              (nx + 0.5 - anchor[1], ny + 0.5 - anchor[0]), nr))
            idx = len(self.cuts) - 1
        self._by_path[key] = idx
        return idx

    def pick(self, cls: str, rng: np.random.Generator):
        """A random cut cell of ``cls``, randomly rotated and flipped (a crop seen again is not the
        same picture): (None, radius um, (centroid dx, dy) um from the anchor, nuclear radius um,
        index for ``render``). Deterministic for a given rng state."""
        files = self.files[cls]
        order = rng.permutation(len(files))
        theta, flip = float(rng.uniform(0, 2 * np.pi)), bool(rng.random() < 0.5)
        # Crops whose cell is cut by the crop border are passed over; a class with none whole
        # in its first 20 crops (a class of one or two large cells) takes them as they are.
        tries = [(j, True) for j in order[:20]] + [(j, False) for j in order[:20]]
        for j, strict in tries:
            cut = self._cut(files[j], cls, strict)
            if cut >= 0:
                _od, _a, _c, rad, (dx, dy), nr = self.cuts[cut]
                A = self._transform(theta, flip)
                ox, oy = A.T @ np.array([dx, dy])  # source offset -> output frame (A is orthogonal)
                self.variants.append((cut, theta, flip))
                s = self.source_mpp
                return None, rad * s, (float(ox) * s, float(oy) * s), nr * s, len(self.variants) - 1
        raise InputError(f"{self.files[cls][0].parent}: no cell could be cut from the images of class {cls}")

    @staticmethod
    def _transform(theta: float, flip: bool) -> np.ndarray:
        """Output (x, y) -> source (x, y): a rotation after an optional mirror."""
        c, s = np.cos(theta), np.sin(theta)
        return np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])

    def render(self, idx: int, step_um: float) -> np.ndarray:
        """OD (h, w, 3) of variant ``idx`` at ``step_um`` per pixel; the anchor is pixel (h // 2, w // 2)."""
        cut, theta, flip = self.variants[idx]
        od, (ay, ax), _cls, rad, _c, _nr = self.cuts[cut]
        scale = step_um / self.source_mpp          # source px per output px
        n = int(np.ceil(rad / scale)) + 1
        g = (np.arange(-n, n + 1) * scale).astype(np.float64)
        X, Y = np.meshgrid(g, g)
        A = self._transform(theta, flip)
        sx = A[0, 0] * X + A[0, 1] * Y
        sy = A[1, 0] * X + A[1, 1] * Y
        src = od
        if scale > 1.5:  # shrinking: blur first so fine granules average instead of aliasing
            src = ndimage.gaussian_filter(od, (0.45 * scale, 0.45 * scale, 0))
        coords = [ay - 0.5 + sy, ax - 0.5 + sx]
        out = np.stack([ndimage.map_coordinates(src[..., c], coords, order=1, mode="constant", cval=0.0)
                        for c in range(3)], axis=-1)
        return out.astype(np.float32)
