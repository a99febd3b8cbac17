"""Write a synthetic archive: slides, image folders, crops, truth.csv.

Layout (OUT = ``out_dir``)::

    slides/slide_000.tiff            one slide = one sample (pyramidal tiled TIFF, mpp set)
    folders/folder_000/field_000.png one folder = one sample, each image one field of view
    manifest.csv                     sample_id,path,mpp for the folder samples (images carry no mpp)
    crops/<CLASS>/<CLASS>_00001.png  single-cell crops, class-folder layout (--kind crops):
                                     250 px over 23.5 um (the Matek framing) around the cell
    truth.csv                        sample_id,source,x,y,class for every nucleated cell placed
    samples.csv                      sample_id,kind,sample_type,path,mpp,width,height,n_cells

truth x, y: centroid of the cell's nuclear material (all lobes of a neutrophil
together; the stained mass for debris and smudges) in level-0 pixels of
``source``, the file name relative to the sample's own folder (``slide_000.tiff``,
``field_000.png``; for crops sample_id ``crops`` and source ``BLA/BLA_00001.png``,
the centre cell and any neighbour whose centroid lies inside the crop).
Sample types cycle normal, aml, myeloma, erythroid over the sample index.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from PIL import Image

from ..errors import UsageError
from ..schema import MATEK_CLASSES
from .background import Background
from .samples import CROP_FOV_UM, FIELD_SIZE, crop, folder_sample, slide_sample
from .tiff_writer import write_pyramid

log = logging.getLogger("slideproc.synth")

DEFAULT_SIZE = (4096, 4096)   # 1 x 1 mm at 0.25 um/px: seconds to write
KINDS = ("slide", "folder", "crops", "both")
TRUTH_COLUMNS = ("sample_id", "source", "x", "y", "class")


def _check(samples, cells, kind, seed, size, mpp, crop_fov_um, crop_px):
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(samples, int) or samples < 1:
        raise UsageError(f"--samples must be a positive integer, got {samples!r}")
    if not isinstance(cells, int) or cells < 1:
        raise UsageError(f"--cells must be a positive integer, got {cells!r}")
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed!r}")
    if not mpp > 0 or not 0.05 <= mpp <= 2.0:
        raise UsageError(f"--mpp must be between 0.05 and 2 um/px (cells are drawn in um), got {mpp!r}")
    if size is not None and (len(size) != 2 or min(size) < 256):
        raise UsageError(f"--size must be at least 256x256 px, got {size!r}")
    if not crop_fov_um > 0 or crop_px < 16:
        raise UsageError(f"crop field of view must be > 0 um and at least 16 px, got {crop_fov_um} um, {crop_px} px")


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def write_archive(out_dir, samples: int = 3, cells: int = 300, kind: str = "both", seed: int = 0,
                  size: tuple[int, int] | None = None, mpp: float = 0.25, cells_from=None, *,
                  field_size: tuple[int, int] = FIELD_SIZE, crop_fov_um: float = CROP_FOV_UM, crop_px: int = 250,
                  crop_counts: dict[str, int] | None = None, compression: str = "jpeg") -> dict:
    """Write a synthetic archive to ``out_dir`` and return a summary dict.

    ``samples`` per kind (slide and/or folder); ``cells`` nucleated cells per sample, or with
    ``kind="crops"`` crops in all, balanced over the classes unless ``crop_counts`` gives
    them per class. ``size`` (W, H) level-0 px of each slide; ``mpp`` um/px of slides and fields.
    ``cells_from``: a class-folder directory of real single-cell crops to cut cells from.
    """
    _check(samples, cells, kind, seed, size, mpp, crop_fov_um, crop_px)
    t0 = time.perf_counter()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out}: cannot create the output folder ({err.strerror}); choose a writable path") from None
    bank = None
    if cells_from is not None:
        from .from_real import RealCellBank
        bank = RealCellBank.load(Path(cells_from))
    width, height = size or DEFAULT_SIZE
    truth: list[tuple] = []
    summary: dict = {"out_dir": str(out), "slides": [], "folders": [], "crops": 0, "seed": seed, "mpp": mpp}
    rows = []

    if kind in ("slide", "both"):
        (out / "slides").mkdir(exist_ok=True)
        for i in range(samples):
            s = slide_sample(seed, i, width, height, mpp, cells, real_bank=bank)
            name, scene = s.scenes[0]
            ts = time.perf_counter()
            write_pyramid(out / "slides" / name, width, height, mpp, scene.render, compression=compression,
                          description=f"slideproc synthetic bone-marrow smear {s.sample_id} seed={seed}")
            log.info("wrote %s (%dx%d, %d cells) in %.1f s", name, width, height, len(scene.cells),
                     time.perf_counter() - ts)
            truth += [(s.sample_id, name, c.tx, c.ty, c.cls) for c in scene.cells]
            rows.append((s.sample_id, "slide", s.sample_type, f"slides/{name}", mpp, width, height, len(scene.cells)))
            summary["slides"].append(str(out / "slides" / name))

    if kind in ("folder", "both"):
        manifest = []
        for i in range(samples):
            s = folder_sample(seed, i, mpp, cells, field_size, real_bank=bank)
            folder = out / "folders" / s.sample_id
            folder.mkdir(parents=True, exist_ok=True)
            n = 0
            for name, scene in s.scenes:
                img = scene.render(0, 0, scene.width, scene.height, 1)
                Image.fromarray(img).save(folder / name, compress_level=1)
                truth += [(s.sample_id, name, c.tx, c.ty, c.cls) for c in scene.cells]
                n += len(scene.cells)
            manifest.append((s.sample_id, f"folders/{s.sample_id}", mpp))
            rows.append((s.sample_id, "folder", s.sample_type, f"folders/{s.sample_id}", mpp,
                         field_size[0], field_size[1], n))
            summary["folders"].append(str(folder))
        with open(out / "manifest.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(("sample_id", "path", "mpp"))
            w.writerows(manifest)

    if kind == "crops":
        classes = bank.classes if bank is not None else list(MATEK_CLASSES)
        if crop_counts is None:
            per, extra = divmod(cells, len(classes))
            crop_counts = {c: per + (1 if j < extra else 0) for j, c in enumerate(classes)}
        unknown = set(crop_counts) - set(classes)
        if unknown:
            raise UsageError(f"crop_counts names classes {sorted(unknown)} not in {', '.join(classes)}")
        background = Background((seed, 3), crop_fov_um / crop_px, None)
        k = 0
        for cls in classes:
            n = int(crop_counts.get(cls, 0))
            if n <= 0:
                continue
            (out / "crops" / cls).mkdir(parents=True, exist_ok=True)
            for j in range(1, n + 1):
                img, placed = crop(seed, cls, k, crop_fov_um, crop_px, background, real_bank=bank)
                k += 1
                name = f"{cls}/{cls}_{j:05d}.png"
                Image.fromarray(img).save(out / "crops" / name, compress_level=1)
                truth += [("crops", name, c.tx, c.ty, c.cls) for c in placed
                          if 0 <= c.tx < crop_px and 0 <= c.ty < crop_px]
        rows.append(("crops", "crops", "crops", "crops", crop_fov_um / crop_px, crop_px, crop_px, k))
        summary["crops"] = k
        summary["crop_mpp"] = crop_fov_um / crop_px

    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(TRUTH_COLUMNS)
        for sid, src, x, y, cls in truth:
            w.writerow((sid, src, _fmt(x), _fmt(y), cls))
    with open(out / "samples.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("sample_id", "kind", "sample_type", "path", "mpp", "width", "height", "n_cells"))
        w.writerows(rows)
    summary["n_cells"] = len(truth)
    summary["truth"] = str(out / "truth.csv")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary
