"""Build the scenes of one archive: slide samples, image-folder samples, single-cell crops.

Each builder turns (seed, index, sizes) into Scenes and their truth; nothing
here writes files. Seeds are tuples so every sample, field and cell has its own
stream: sample 3 is the same whether 3 or 30 samples are asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .background import Background, Smear
from .recipes import make_cell
from .composition import SAMPLE_TYPES, counts, proportions
from .scene import PlacedCell, Scene, place_cells
from .stain import Stain

FIELD_SIZE = (1024, 768)
# 75 cells in a 1024 x 768 field at 0.25 um/px (256 x 192 um) cover ~20 % of it,
# a cellular marrow field.
CELLS_PER_FIELD = 75


# Crops are framed like the Matek crops: 250 px at their 0.094 um/px
# (from_real.MATEK_MPP, measured on their red cells) = 23.5 um around the cell.
CROP_FOV_UM = 23.5


@dataclass
class Sample:
    sample_id: str
    kind: str                     # "slide" or "folder"
    sample_type: str
    scenes: list                  # [(file name, Scene)]


def _class_list(rng, sample_type, n, classes=None) -> list[str]:
    cnt = counts(proportions(sample_type, rng, classes), n)
    out = [c for c, k in cnt.items() for _ in range(k)]
    rng.shuffle(out)
    return out


def _models(bank, seed):
    if bank is None:
        return None
    return lambda cls, i: bank.pick(cls, np.random.default_rng((*seed, 3, i)))


def slide_sample(seed: int, index: int, width: int, height: int, mpp: float, n_cells: int,
                 real_bank=None) -> Sample:
    """One slide = one sample: a smear with ``n_cells`` nucleated cells inside it."""
    sid = f"slide_{index:03d}"
    stype = SAMPLE_TYPES[index % len(SAMPLE_TYPES)]
    sseed = (seed, 1, index)
    rng = np.random.default_rng(sseed)
    smear = Smear.random(rng, width, height, mpp)
    stain = Stain.random(rng)
    classes = _class_list(rng, stype, n_cells, real_bank.classes if real_bank else None)
    cells = place_cells(rng, classes, width, height, mpp, smear, sseed, models=_models(real_bank, sseed))
    scene = Scene(width, height, mpp, sseed, cells, smear, stain, real_bank=real_bank)
    return Sample(sid, "slide", stype, [(f"{sid}.tiff", scene)])


def folder_sample(seed: int, index: int, mpp: float, n_cells: int, field_size=FIELD_SIZE,
                  real_bank=None) -> Sample:
    """A folder of fields of view = one sample; fields lie inside the smear (no glass)."""
    sid = f"folder_{index:03d}"
    stype = SAMPLE_TYPES[index % len(SAMPLE_TYPES)]
    sseed = (seed, 2, index)
    rng = np.random.default_rng(sseed)
    stain = Stain.random(rng)  # one stain per sample: its fields come from one slide
    classes = _class_list(rng, stype, n_cells, real_bank.classes if real_bank else None)
    w, h = field_size
    scale = (0.25 / mpp) ** 2  # fields hold as many cells per um2 at any mpp
    n_fields = max(1, math.ceil(n_cells / max(1, int(CELLS_PER_FIELD / scale))))
    # Cells that do not fit (real cut-outs are larger than procedural cells, or a small field
    # size) are spread over more fields: a field that places fine is unchanged by this.
    for attempt in range(8):
        try:
            scenes = _fields(sseed, classes, n_fields, w, h, mpp, stain, real_bank)
            break
        except UsageError:
            if attempt == 7 or n_fields >= len(classes):
                raise
            n_fields = min(len(classes), math.ceil(n_fields * 1.5))
    return Sample(sid, "folder", stype, scenes)


def _fields(sseed, classes, n_fields, w, h, mpp, stain, real_bank) -> list:
    scenes = []
    for f in range(n_fields):
        part = classes[f::n_fields]
        fseed = (*sseed, 10 + f)
        cells = place_cells(np.random.default_rng(fseed), part, w, h, mpp, None, fseed,
                            models=_models(real_bank, fseed))
        scenes.append((f"field_{f:03d}.png", Scene(w, h, mpp, fseed, cells, None, stain, real_bank=real_bank)))
    return scenes


def crop(seed: int, cls: str, k: int, fov_um: float = CROP_FOV_UM, size_px: int = 250, background=None,
         real_bank=None, neighbours: float = 0.5):
    """A single-cell crop framed like the Matek crops: ``fov_um`` around the cell's nuclear
    centroid, ``size_px`` square. Returns (uint8 image, [PlacedCell] with the centre cell first)."""
    mpp = fov_um / size_px
    cseed = (seed, 3, k)
    rng = np.random.default_rng(cseed)
    stain = Stain.random(rng)
    if background is None:
        background = Background((seed, 3), mpp, None)
    # each crop looks at its own spot of one endless smear (blocks 400 um apart)
    ox, oy = (k % 1000) * 400.0 / mpp, (k // 1000) * 400.0 / mpp
    jitter = rng.normal(0, 0.5, 2) / mpp  # detectors centre within ~1 um
    cx, cy = ox + size_px / 2 + jitter[0], oy + size_px / 2 + jitter[1]
    if real_bank is not None:
        _m, radius, (gx, gy), nr, real = real_bank.pick(cls, rng)
    else:
        m = make_cell(cls, np.random.default_rng((*cseed, 0)))
        radius, real = m.radius, -1
        gx, gy, nr = m.geometry()
    centre = PlacedCell(cls, cx - gx / mpp, cy - gy / mpp, radius, (*cseed, 0), cx, cy, nr, real)
    cells = [centre]
    if rng.random() < neighbours:
        pool = _class_list(rng, "normal", 40, real_bank.classes if real_bank else None)
        for j in range(int(rng.integers(1, 3))):
            ncls = pool[j]
            if real_bank is not None:
                _m, nrad, (ngx, ngy), nnr, nreal = real_bank.pick(ncls, rng)
            else:
                nm = make_cell(ncls, np.random.default_rng((*cseed, 1 + j)))
                nrad, nreal = nm.radius, -1
                ngx, ngy, nnr = nm.geometry()
            for _ in range(20):
                a = rng.uniform(0, 2 * np.pi)
                dist = 0.87 * (radius + nrad) * rng.uniform(0.95, 1.2) / mpp
                x, y = centre.x + dist * np.cos(a), centre.y + dist * np.sin(a)
                tx, ty = x + ngx / mpp, y + ngy / mpp
                if all(math.hypot(tx - c.tx, ty - c.ty) * mpp > nnr + c.nuc_radius + 1.5 for c in cells):
                    cells.append(PlacedCell(ncls, x, y, nrad, (*cseed, 1 + j), tx, ty, nnr, nreal))
                    break
    scene = Scene(int(ox + 2 * size_px), int(oy + 2 * size_px), mpp, cseed, cells, None, stain,
                  real_bank=real_bank, background=background)
    img = scene.render(int(round(ox)), int(round(oy)), size_px, size_px, 1)
    # report positions in crop pixels
    x0, y0 = int(round(ox)), int(round(oy))
    shifted = [PlacedCell(c.cls, c.x - x0, c.y - y0, c.radius, c.seed, c.tx - x0, c.ty - y0, c.nuc_radius, c.real)
               for c in cells]
    return img, shifted
